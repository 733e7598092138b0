import keras
import numpy as np
import pytest

from common.errors import InputError
from components.networks import build_model, load_model_file


@pytest.mark.parametrize("network", ["deotte", "compact", "strided"])
def test_model_takes_raw_pixels_and_returns_probabilities(network):
    model = build_model(network)
    assert model.name == network  # load_model_file rebuilds it by name
    probabilities = model.predict(np.full((3, 28, 28, 1), 255, np.float32), verbose=0)
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


def test_an_unknown_network_is_refused():
    with pytest.raises(ValueError, match="network must be one of deotte, compact, strided, got 'resnet'"):
        build_model("resnet")


def test_models_of_earlier_versions_and_foreign_models_load_or_are_refused_in_one_line(tmp_path):
    compact = build_model("compact")
    # The compact network as earlier versions saved it, before networks had names.
    keras.Model(compact.inputs, compact.outputs, name="digit_cnn").save(tmp_path / "model-0.keras")
    model = load_model_file(tmp_path / "model-0.keras")
    assert model.name == "compact"
    for loaded, saved in zip(model.get_weights(), compact.get_weights(), strict=True):
        np.testing.assert_array_equal(loaded, saved)
    inputs = keras.Input((28, 28, 1))
    foreign = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)), name="mine")
    foreign.save(tmp_path / "model-0.keras")
    with pytest.raises(
        InputError,
        match=r"model-0.keras: a model named 'mine', not one of train's networks "
        r"\(deotte, compact, strided\)",
    ):
        load_model_file(tmp_path / "model-0.keras")
