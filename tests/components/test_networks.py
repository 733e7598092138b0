import keras
import numpy as np
import pytest
import tensorflow as tf

from common.errors import InputError
from components.networks import FusedBatchNormalization, build_model, load_model_file


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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_batch_normalization_trains_as_keras_own(dtype):
    features = np.random.default_rng(0).normal(3, 2, (16, 7, 7, 5)).astype(np.float32)
    scale = np.random.default_rng(1).normal(size=5).astype(np.float32)
    results = []
    for layer in (keras.layers.BatchNormalization(momentum=0.9), FusedBatchNormalization(momentum=0.9)):
        layer.build(features.shape)
        layer.gamma.assign(scale)
        layer.beta.assign(scale / 3)
        inputs = tf.cast(features, dtype)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = tf.cast(layer(inputs, training=True), tf.float32)
            loss = tf.reduce_sum(outputs**3)
        results.append([outputs, *tape.gradient(loss, [inputs, layer.gamma, layer.beta])])
        results[-1] += [layer.moving_mean, layer.moving_variance, layer(inputs, training=False)]
    tolerance = 1e-5 if dtype == "float32" else 2e-2  # bfloat16 keeps 8 bits of mantissa
    for keras_own, fused in zip(*results):
        keras_own, fused = (np.asarray(tf.cast(value, tf.float32)) for value in (keras_own, fused))
        np.testing.assert_allclose(fused, keras_own, atol=tolerance * np.abs(keras_own).max(), rtol=0)


def test_fused_batch_normalization_normalizes_channels_of_feature_maps_only():
    with pytest.raises(ValueError, match=r"channels \(axis -1\) of NHWC feature maps; got axis 1"):
        FusedBatchNormalization(axis=1).build((None, 7, 7, 5))
    with pytest.raises(ValueError, match=r"for inputs of shape \(None, 5\)"):
        FusedBatchNormalization().build((None, 5))


def test_a_trained_model_saves_and_loads_with_its_fused_batch_normalization(tmp_path):
    model = build_model("deotte")
    model.save(tmp_path / "model-0.keras")
    loaded = keras.models.load_model(tmp_path / "model-0.keras", compile=False)
    assert any(isinstance(layer, FusedBatchNormalization) for layer in loaded.layers)
    for loaded_weights, saved in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(loaded_weights, saved)
