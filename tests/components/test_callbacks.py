import keras
import numpy as np
import pytest

from components.callbacks import EpochProgress, Float32Finish, WeightAverage, duration


def test_weight_average_averages_every_weight_with_a_warm_up():
    class RawWeights(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            initial.extend(weight.numpy().copy() for weight in self.model.weights)

        def on_train_batch_end(self, batch, logs=None):
            raw.append([weight.numpy().copy() for weight in self.model.weights])

    initial, raw = [], []
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization(), keras.layers.Dense(2)]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    images, targets = np.random.default_rng(0).normal(size=(64, 4)), np.random.default_rng(1).normal(size=(64, 2))
    model.fit(images, targets, batch_size=16, epochs=2, callbacks=[RawWeights(), WeightAverage(0.5)], verbose=0)
    # The warm-up's first momentum: 0.1.
    expected = [0.1 * start + 0.9 * first for start, first in zip(initial, raw[0], strict=True)]
    for step, weights in enumerate(raw[1:], start=1):
        momentum = min(0.5, (1 + step) / (10 + step))
        expected = [
            momentum * average + (1 - momentum) * weight for average, weight in zip(expected, weights, strict=True)
        ]
    assert len(raw) == 8  # 4 steps an epoch
    assert len(model.weights) == 8  # 2 kernels, 2 biases, batch norm's gamma, beta, mean and variance
    for average, weight in zip(expected, model.weights, strict=True):
        np.testing.assert_allclose(weight.numpy(), average, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])  # float16: with Keras' loss scaling
def test_a_mixed_precision_fit_finishes_in_float32_on_the_same_variables_and_optimizer(policy):
    class Traced(keras.layers.Layer):
        def call(self, inputs, training=None):
            traced.append((bool(training), inputs.dtype))  # Python runs once per trace of a train or test function
            return inputs

    traced = []
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), Traced(), keras.layers.Dense(2)])
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.optimizer.build(model.trainable_variables)  # as train compiles: a step making variables traces twice
    kernel, optimizer, iterations = model.layers[0].kernel, model.optimizer, []
    count = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: iterations.append(int(optimizer.iterations)))
    traced.clear()  # the functional build's call
    images, targets = np.random.default_rng(0).normal(size=(64, 4)), np.random.default_rng(1).normal(size=(64, 2))
    model.fit(
        images,
        targets,
        batch_size=16,
        epochs=3,
        validation_data=(images[:32], targets[:32]),
        callbacks=[Float32Finish(2), count],
        verbose=0,
    )
    # Epochs 1 and 2 trained and validated in bfloat16 (or float16), epoch 3 in float32.
    mixed = policy.removeprefix("mixed_")
    assert traced == [(True, mixed), (False, mixed), (True, "float32"), (False, "float32")]
    assert {layer.compute_dtype for layer in [model, *model.layers]} == {"float32"}
    assert model.layers[0].kernel is kernel and kernel.dtype == "float32"
    # One optimizer throughout, its step count going on (float16's loss scaling may skip a step that overflowed).
    assert model.optimizer is optimizer and 0 < iterations[1] and iterations[2] - iterations[1] == 4


def test_each_epoch_prints_one_line_with_the_time_left(capsys):
    progress = EpochProgress(member=0, members=2, epochs=3)
    logs = {
        "loss": 0.51234,
        "accuracy": 0.9,
        "val_loss": 0.4,
        "val_accuracy": 0.95,
        "images_per_second": 2100.4,
        "seconds": 30.0,
    }
    progress.on_epoch_end(0, logs)
    progress.on_epoch_end(1, {key: value for key, value in logs.items() if not key.startswith("val_")})
    assert capsys.readouterr().out.splitlines() == [
        # 2 epochs of this member and 3 of the next left, at 30 s each
        "epoch 1/3 (member 1/2): loss 0.5123 accuracy 0.9000, validation loss 0.4000 accuracy 0.9500, "
        "2100 images/s, about 2 min left",
        "epoch 2/3 (member 1/2): loss 0.5123 accuracy 0.9000, 2100 images/s, about 2 min left",
    ]


def test_durations_read_as_a_person_says_them():
    assert [duration(seconds) for seconds in (42, 420, 3900)] == ["42 s", "7 min", "1 h 05 min"]
