import numpy as np
import onnx
import pytest

from components.artifacts import InputError, load_arrays
from components.export import export
from components.onnx_model import load_session, predict
from components.train import load_model


def test_onnx_graph_takes_raw_pixels_with_a_dynamic_batch(onnx_model):
    graph = onnx.load(onnx_model).graph
    (pixels,) = graph.input
    assert pixels.name == "pixels"
    dims = pixels.type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value")  # any batch size
    assert [d.dim_value for d in dims[1:]] == [28, 28, 1]
    assert sorted(output.name for output in graph.output) == ["label", "probabilities"]


def test_onnx_agrees_with_keras(onnx_model, trained_model, arrays):
    (images,) = load_arrays(arrays["test"], "images")
    keras_probabilities = load_model(trained_model[0]).predict(images.astype(np.float32), verbose=0)
    onnx_probabilities, labels = predict(load_session(onnx_model), images, batch_size=7)
    assert np.abs(keras_probabilities - onnx_probabilities).max() < 1e-4
    np.testing.assert_array_equal(keras_probabilities.argmax(axis=1), labels)


def test_a_model_that_fails_parity_is_not_written(tmp_path, trained_model, arrays):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous model")
    with pytest.raises(InputError, match="the ONNX model disagrees with Keras"):
        export(trained_model[0], arrays["validation"], target, tolerance=0.0)
    assert target.read_bytes() == b"previous model"
    assert list(tmp_path.iterdir()) == [target]


def test_export_returns_parity_figures(tmp_path, trained_model, arrays):
    parity = export(trained_model[0], arrays["validation"], tmp_path / "model.onnx")
    assert parity["max_probability_difference"] < 1e-4
    assert parity["label_mismatches"] == 0
    assert parity["parity_images"] == 30


def test_missing_model(tmp_path, arrays):
    with pytest.raises(InputError, match="no-model/model.keras: file not found"):
        export(tmp_path / "no-model", arrays["validation"], tmp_path / "model.onnx")
