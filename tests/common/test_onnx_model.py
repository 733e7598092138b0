import re

import numpy as np
import onnx
import pytest

from common.errors import InputError
from common.onnx_model import INPUT_NAME, OUTPUT_NAMES, load_session, predict


def test_a_session_predicts_in_batches_as_in_one(served_model):
    session = load_session(served_model, threads=1, spin=False)
    images = np.random.default_rng(0).integers(0, 256, (10, 28, 28, 1), dtype=np.uint8)
    probabilities, labels = predict(session, images, batch_size=3)
    whole_probabilities, whole_labels = predict(session, images)
    assert probabilities.shape == (10, 10) and labels.shape == (10,)
    np.testing.assert_allclose(probabilities, whole_probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, whole_labels)
    np.testing.assert_array_equal(labels, probabilities.argmax(axis=1))
    empty_probabilities, empty_labels = predict(session, images[:0])
    assert empty_probabilities.shape == (0, 10) and empty_labels.shape == (0,)


def test_a_missing_or_foreign_file_is_refused_in_one_line(tmp_path, served_model):
    with pytest.raises(InputError, match=r"none.onnx: file not found"):
        load_session(tmp_path / "none.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(InputError, match=r"bad.onnx: not an ONNX model onnxruntime can load"):
        load_session(tmp_path / "bad.onnx")
    model = onnx.load(served_model)
    model.graph.input[0].name = "images"  # a valid model, but not the one export writes
    for node in model.graph.node:
        node.input[:] = ["images" if name == INPUT_NAME else name for name in node.input]
    onnx.save(model, tmp_path / "renamed.onnx")
    expected = f"expected input 'pixels' and outputs {', '.join(OUTPUT_NAMES)}; found inputs ['images']"
    with pytest.raises(InputError, match=re.escape(f"renamed.onnx: {expected}")):
        load_session(tmp_path / "renamed.onnx")
