import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from components.artifacts import InputError, load_arrays, save_arrays
from components.train import (
    build_model,
    elastic_distortion,
    load_models,
    random_affine,
    read_checkpoint,
    train,
    WeightAverage,
    training_dataset,
    precision_policy,
)
from tests.conftest import ROOT, run_module


@pytest.mark.parametrize("network", ["compact", "deotte"])
def test_model_takes_raw_pixels_and_returns_probabilities(network):
    model = build_model(network)
    assert model.name == network  # load_models rebuilds it by name
    probabilities = model.predict(np.full((3, 28, 28, 1), 255, np.float32), verbose=0)
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


def test_random_affine_without_change_is_the_identity():
    images = tf.random.uniform([4, 28, 28, 1], 0, 255, seed=0)
    same = random_affine(images, seed=[1, 2], rotation_degrees=0, shift=0, shear_degrees=0, zoom=0)
    np.testing.assert_allclose(same.numpy(), images.numpy(), atol=1e-3)


def test_random_affine_shift_moves_ink_and_keeps_it_on_the_canvas():
    image = np.zeros([1, 28, 28, 1], np.float32)
    image[0, 10:18, 10:18, 0] = 255
    moved = random_affine(tf.constant(np.repeat(image, 64, axis=0)), seed=[0, 5],
                          rotation_degrees=0, shift=0.1, shear_degrees=0, zoom=0).numpy()
    centres = [np.argwhere(m[..., 0] > 127).mean(axis=0) for m in moved]
    offsets = np.abs(np.array(centres) - 13.5)
    assert offsets.max() <= 0.1 * 28 + 1  # never more than the shift allows
    assert offsets.max() > 1  # and it does move
    assert np.all(moved.sum(axis=(1, 2, 3)) > 0.8 * image.sum())  # the digit stays in the picture


def test_elastic_distortion_without_strength_is_the_identity():
    images = tf.random.uniform([4, 28, 28, 1], 0, 255, seed=0)
    same = elastic_distortion(images, seed=[1, 2], alpha=0.0)
    np.testing.assert_allclose(same.numpy(), images.numpy(), atol=1e-3)


def test_elastic_distortion_bends_strokes_locally_and_keeps_the_digit(arrays):
    images, _ = load_arrays(arrays["train"], "images", "labels")
    images = tf.constant(images[:32], tf.float32)
    warped = elastic_distortion(images, seed=[3, 4]).numpy()
    assert warped.shape == images.shape
    changed = np.abs(warped - images.numpy()).mean(axis=(1, 2, 3))
    assert (changed > 5).all()  # every image is bent ...
    def centre_of_ink(batch):
        grid = np.indices((28, 28)).reshape(2, 1, 28, 28)
        return (grid * batch[..., 0]).sum(axis=(2, 3)) / batch[..., 0].sum(axis=(1, 2))

    # ... locally: strokes thin or thicken, but the digit stays where it was
    assert np.abs(centre_of_ink(warped) - centre_of_ink(images.numpy())).max() < 3
    np.testing.assert_array_equal(warped, elastic_distortion(images, seed=[3, 4]).numpy())  # repeatable


def test_training_dataset_is_repeatable_and_changes_each_epoch():
    images = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    labels = np.arange(8, dtype=np.uint8)

    def batches():
        return [(x.numpy(), y.numpy()) for x, y in training_dataset(images, labels, 8, epochs=2, seed=3, augment=True)]

    first, second = batches(), batches()
    np.testing.assert_array_equal(first[0][0], second[0][0])
    assert not np.allclose(np.sort(first[0][0].ravel()), np.sort(first[1][0].ravel()))  # a new augmentation in epoch 2
    assert first[0][1].shape == (8, 10)  # one-hot labels for label smoothing


def test_train_writes_the_best_model_history_and_curves(trained_model, arrays):
    folder, history = trained_model
    assert json.loads((folder / "history.json").read_text()) == history
    assert history["pseudo_labels"] == 0
    (member,) = history["members"]
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds", "images_per_second"):
        assert len(member[metric]) == len(member["loss"]) >= 1
    assert (folder / "curves.png").read_bytes()[:4] == b"\x89PNG"
    (model,) = load_models(folder)
    assert model.output_shape == (None, 10)
    assert sorted(p.name for p in folder.iterdir()) == ["curves.png", "history.json", "model-0.keras"]


def test_same_seed_same_model(tmp_path, arrays):
    weights = []
    for run in ("a", "b"):
        train(arrays["train"], arrays["validation"], tmp_path / run, tmp_path / run / "history.json",
              epochs=1, batch_size=64, seed=5, elastic_alpha=34)
        weights.append(load_models(tmp_path / run)[0].get_weights())
    for first, second in zip(*weights):
        np.testing.assert_allclose(first, second, atol=1e-6)


def test_an_ensemble_is_one_model_per_seed(tmp_path, arrays):
    history = train(arrays["train"], arrays["validation"], tmp_path / "ensemble", tmp_path / "h.json",
                    epochs=1, batch_size=64, seed=5, ensemble_size=2, curves_png=tmp_path / "curves.png")
    assert len(history["members"]) == 2
    members = load_models(tmp_path / "ensemble")
    train(arrays["train"], arrays["validation"], tmp_path / "seed6", tmp_path / "h6.json", epochs=1, batch_size=64, seed=6)
    for first, second in zip(members[1].get_weights(), load_models(tmp_path / "seed6")[0].get_weights()):
        np.testing.assert_allclose(first, second, atol=1e-6)  # member 1 is the model of seed 6
    assert not np.allclose(members[0].get_weights()[0], members[1].get_weights()[0])
    train(arrays["train"], arrays["validation"], tmp_path / "ensemble", tmp_path / "h.json", epochs=1, batch_size=64, seed=5)
    assert len(load_models(tmp_path / "ensemble")) == 1  # the earlier run's member 1 is gone


def test_pseudo_labels_add_confident_test_images_and_train_again(tmp_path, arrays, capsys):
    history = train(arrays["train"], arrays["validation"], tmp_path / "m", tmp_path / "h.json", epochs=2, batch_size=32,
                    pseudo_label_data=arrays["test"], pseudo_label_confidence=0.1)
    assert history["pseudo_labels"] == 60  # every probability vector has a maximum of at least 0.1
    assert "pseudo-labels: 60 of 60 test images at confidence >= 0.1; training again with them" in capsys.readouterr().out
    (train_images,) = load_arrays(arrays["train"], "images")
    # 270 + 60 images in batches of 32: 10 batches (the first round 8)
    assert history["members"][0]["images_per_second"][0] == pytest.approx(320 / history["members"][0]["seconds"][0])
    assert history["first_round_members"][0]["images_per_second"][0] == pytest.approx(
        256 / history["first_round_members"][0]["seconds"][0])
    assert json.loads((tmp_path / "h.json").read_text())["pseudo_labels"] == 60
    assert len(train_images) == 270
    history = train(arrays["train"], arrays["validation"], tmp_path / "n", tmp_path / "n.json", epochs=1, batch_size=32,
                    pseudo_label_data=arrays["test"], pseudo_label_confidence=1.0)
    assert history["pseudo_labels"] == 0
    assert "first_round_members" not in history  # one round: its histories are the members'
    assert "0 of 60 test images at confidence >= 1.0; keeping the first models" in capsys.readouterr().out


def test_training_on_validation_keeps_the_last_epoch(tmp_path, arrays):
    history = train(arrays["train"], arrays["validation"], tmp_path / "m", tmp_path / "h.json", epochs=3, batch_size=30,
                    patience=1, train_on_validation=True)
    assert len(history["members"][0]["loss"]) == 3  # no early stopping
    # 270 training + 30 validation images in batches of 30: 10 steps an epoch
    assert history["members"][0]["images_per_second"][0] == pytest.approx(300 / history["members"][0]["seconds"][0])


@pytest.mark.parametrize("network", ["compact", "deotte"])
def test_mixed_precision_on_the_cpu_trains_in_bfloat16_and_loads_back_in_float32(tmp_path, arrays, network):
    train(arrays["train"], arrays["validation"], tmp_path / "m", tmp_path / "h.json", network=network, epochs=1,
          batch_size=64, mixed_precision="on")
    import keras
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after training
    saved = keras.models.load_model(tmp_path / "m" / "model-0.keras", compile=False)
    assert saved.layers[2].dtype_policy.name == "mixed_bfloat16"
    assert saved.layers[-1].dtype_policy.name == "float32"  # probabilities stay float32
    (model,) = load_models(tmp_path / "m")
    assert model.name == network
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}


def test_precision_policy_follows_the_hardware():
    assert precision_policy("auto", []) == "float32"  # the CPU: bfloat16 only when asked for
    assert precision_policy("on", []) == "mixed_bfloat16"
    assert precision_policy("off", []) == "float32"
    with pytest.raises(ValueError, match="mixed_precision must be auto, on or off"):
        precision_policy("yes", [])


def test_weight_average_averages_every_weight_with_a_warm_up():
    import keras

    class RawWeights(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            initial.extend(weight.numpy().copy() for weight in self.model.weights)

        def on_train_batch_end(self, batch, logs=None):
            raw.append([weight.numpy().copy() for weight in self.model.weights])

    initial, raw = [], []
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    images, targets = np.random.default_rng(0).normal(size=(64, 4)), np.random.default_rng(1).normal(size=(64, 2))
    model.fit(images, targets, batch_size=16, epochs=2, callbacks=[RawWeights(), WeightAverage(0.5)], verbose=0)
    expected = [0.1 * start + 0.9 * first for start, first in zip(initial, raw[0])]  # the warm-up's first momentum: 0.1
    for step, weights in enumerate(raw[1:], start=1):
        momentum = min(0.5, (1 + step) / (10 + step))
        expected = [momentum * average + (1 - momentum) * weight for average, weight in zip(expected, weights)]
    assert len(raw) == 8  # 4 steps an epoch
    assert len(model.weights) == 8  # 2 kernels, 2 biases, batch norm's gamma, beta, mean and variance
    for average, weight in zip(expected, model.weights):
        np.testing.assert_allclose(weight.numpy(), average, rtol=1e-5, atol=1e-6)


def test_training_with_a_weight_average_saves_the_averaged_best_epoch(tmp_path, arrays):
    history = train(arrays["train"], arrays["validation"], tmp_path / "m", tmp_path / "h.json", epochs=3, batch_size=32,
                    patience=3, ema_momentum=0.9, mixed_precision="off")
    (model,) = load_models(tmp_path / "m")
    images, labels = load_arrays(arrays["validation"], "images", "labels")
    saved_accuracy = (model.predict(images.astype(np.float32), verbose=0).argmax(axis=1) == labels).mean()
    assert saved_accuracy == pytest.approx(max(history["members"][0]["val_accuracy"]))


def test_train_rejects_a_momentum_of_one(tmp_path, arrays):
    with pytest.raises(ValueError, match=r"ema_momentum must be in \[0, 1\), got 1"):
        train(arrays["train"], arrays["validation"], tmp_path, tmp_path / "h.json", ema_momentum=1)


MIRRORED_ON_TWO_CPUS = """
import sys, tensorflow as tf
tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                           [tf.config.LogicalDeviceConfiguration()] * 2)
import components.train as train_module
train_module.training_devices = lambda: tf.config.list_logical_devices("CPU")  # stand-ins for two GPUs
strategy = train_module.distribution_strategy(train_module.training_devices())
print("replicas", strategy.num_replicas_in_sync, type(strategy).__name__)
history = train_module.train(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[3] + "/history.json", epochs=1, batch_size=64)
print("trained", len(history["members"][0]["loss"]))
"""


def test_several_devices_train_one_mirrored_model(tmp_path, arrays):
    result = subprocess.run([sys.executable, "-c", MIRRORED_ON_TWO_CPUS, str(arrays["train"]), str(arrays["validation"]),
                             str(tmp_path / "m")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 2 MirroredStrategy" in result.stdout
    assert "training on 2 GPU(s)" in result.stdout and "trained 1" in result.stdout
    assert load_models(tmp_path / "m")[0].output_shape == (None, 10)


@pytest.mark.parametrize("name", ["epochs", "batch_size", "patience", "ensemble_size"])
def test_train_rejects_non_positive_settings(tmp_path, arrays, name):
    with pytest.raises(ValueError, match=f"{name} must be at least 1"):
        train(arrays["train"], arrays["validation"], tmp_path, tmp_path / "h.json", **{name: 0})


def test_train_rejects_an_unknown_schedule(tmp_path, arrays):
    with pytest.raises(ValueError, match="learning_rate_schedule must be cosine or constant, got 'linear'"):
        train(arrays["train"], arrays["validation"], tmp_path, tmp_path / "h.json", learning_rate_schedule="linear")


def test_models_of_earlier_versions_and_foreign_models_load_or_are_refused_in_one_line(tmp_path):
    import keras
    compact = build_model()
    # The compact network as earlier versions saved it, before networks had names.
    keras.Model(compact.inputs, compact.outputs, name="digit_cnn").save(tmp_path / "model-0.keras")
    (model,) = load_models(tmp_path)
    assert model.name == "compact"
    inputs = keras.Input((28, 28, 1))
    keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)), name="mine").save(tmp_path / "model-0.keras")
    with pytest.raises(InputError, match=r"model-0.keras: a model named 'mine', not one of train's networks \(compact, deotte\)"):
        load_models(tmp_path)


def test_train_rejects_an_unknown_network(tmp_path, arrays):
    with pytest.raises(ValueError, match="network must be one of compact, deotte, got 'resnet'"):
        train(arrays["train"], arrays["validation"], tmp_path, tmp_path / "h.json", network="resnet")


def test_constant_schedule_keeps_the_learning_rate(tmp_path, arrays):
    history = train(arrays["train"], arrays["validation"], tmp_path / "m", tmp_path / "h.json", epochs=2, batch_size=64,
                    learning_rate=0.002, learning_rate_schedule="constant")
    assert history["members"][0]["learning_rate"] == pytest.approx([0.002, 0.002])


def test_cli_help_and_missing_input(tmp_path):
    help_text = run_module("-m", "components.train", "--help").stdout
    for option in ("--network", "--epochs", "--batch-size", "--learning-rate", "--learning-rate-schedule", "--weight-decay",
                   "--label-smoothing", "--no-augment", "--elastic-alpha", "--patience", "--seed", "--ensemble-size",
                   "--train-on-validation", "--ema-momentum", "--pseudo-label-data", "--pseudo-label-confidence",
                   "--mixed-precision", "--curves", "--history", "--checkpoint-dir"):
        assert option in help_text
    result = run_module("-m", "components.train", "--train-data", str(tmp_path / "none.npz"),
                        "--validation-data", str(tmp_path / "none.npz"), "--model-dir", str(tmp_path / "m"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'none.npz'}: file not found"


def test_a_resumed_dataset_gives_the_batches_of_an_uninterrupted_one():
    images = np.random.default_rng(0).integers(0, 256, (12, 28, 28, 1), dtype=np.uint8)
    labels = np.arange(12, dtype=np.uint8) % 10
    whole = [x.numpy() for x, _ in training_dataset(images, labels, 4, epochs=3, seed=3, augment=True, elastic_alpha=34)]
    resumed = [x.numpy() for x, _ in training_dataset(images, labels, 4, epochs=3, seed=3, augment=True, elastic_alpha=34,
                                                      first_step=5)]
    assert len(whole) == 9 and len(resumed) == 4
    for first, second in zip(whole[5:], resumed):
        np.testing.assert_array_equal(first, second)


@pytest.fixture(scope="module")
def larger_arrays(tmp_path_factory, arrays):
    """The fixture's training images four times over: epochs long enough to kill a run between two of them."""
    folder = tmp_path_factory.mktemp("larger")
    images, labels = load_arrays(arrays["train"], "images", "labels")
    save_arrays(folder / "train.npz", images=np.tile(images, (4, 1, 1, 1)), labels=np.tile(labels, 4))
    return {"train": folder / "train.npz", "validation": arrays["validation"]}


RESUMED_SETTINGS = dict(epochs=4, batch_size=32, seed=5, patience=4, elastic_alpha=34.0)


def train_command(arrays, model_dir, checkpoint_dir, **settings):
    options = [f"--{name.replace('_', '-')}={value}" for name, value in {**RESUMED_SETTINGS, **settings}.items()]
    return [sys.executable, "-m", "components.train", "--train-data", str(arrays["train"]),
            "--validation-data", str(arrays["validation"]), "--model-dir", str(model_dir),
            "--checkpoint-dir", str(checkpoint_dir), *options]


def kill_after_epoch(command, checkpoint, epochs_done):
    """Start training, SIGKILL it once `checkpoint` records `epochs_done` epochs; returns the state it left."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (checkpoint.is_file() and read_checkpoint(checkpoint)[0]["epochs_done"] >= epochs_done):
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    return read_checkpoint(checkpoint)[0]


@pytest.mark.parametrize("ensemble_size, killed_member, ema_momentum", [(1, 0, 0.0), (2, 1, 0.0), (1, 0, 0.9)])
def test_training_killed_after_an_epoch_resumes_to_the_uninterrupted_model(tmp_path, larger_arrays, ensemble_size,
                                                                           killed_member, ema_momentum):
    # With a weight average too: the raw weights it keeps between epochs, and its step, are in the checkpoint.
    command = train_command(larger_arrays, tmp_path / "resumed", tmp_path / "checkpoints", ensemble_size=ensemble_size,
                            ema_momentum=ema_momentum)
    state = kill_after_epoch(command, tmp_path / "checkpoints" / f"round-0-member-{killed_member}.npz", 2)
    assert not state.get("finished") and 2 <= state["epochs_done"] < RESUMED_SETTINGS["epochs"]  # killed mid-member
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {tmp_path / 'checkpoints'}/round-0-member-{killed_member}.npz after epoch" in result.stdout
    assert ("member finished before" in result.stdout) is (killed_member > 0)
    uninterrupted = train(larger_arrays["train"], larger_arrays["validation"], tmp_path / "whole", tmp_path / "whole.json",
                          ensemble_size=ensemble_size, ema_momentum=ema_momentum, **RESUMED_SETTINGS)
    resumed = json.loads((tmp_path / "resumed" / "history.json").read_text())
    for whole, again in zip(uninterrupted["members"], resumed["members"]):
        assert len(again["loss"]) == len(again["seconds"]) == RESUMED_SETTINGS["epochs"]  # each epoch once
        for metric in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
            assert again[metric] == whole[metric], metric
    # Bit for bit: the same weights, batches, augmentations and dropout masks as the run that was never stopped.
    for whole, again in zip(load_models(tmp_path / "whole"), load_models(tmp_path / "resumed"), strict=True):
        for first, second in zip(whole.get_weights(), again.get_weights(), strict=True):
            np.testing.assert_array_equal(first, second)


def test_a_finished_training_started_again_takes_its_members_from_the_checkpoints(tmp_path, arrays, capsys):
    # With pseudo-labels: both rounds of training, the second one's labels from the first one's restored models.
    settings = dict(epochs=2, batch_size=64, checkpoint_dir=tmp_path / "checkpoints", pseudo_label_data=arrays["test"],
                    pseudo_label_confidence=0.1)
    first = train(arrays["train"], arrays["validation"], tmp_path / "a", tmp_path / "a.json", **settings)
    assert first["pseudo_labels"] == 60
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "round-0-member-0.npz", "round-1-member-0.npz", "settings.json"]
    again = train(arrays["train"], arrays["validation"], tmp_path / "b", tmp_path / "b.json", **settings)
    assert again == first
    assert capsys.readouterr().out.count("member finished before") == 2
    assert (tmp_path / "a" / "model-0.keras").read_bytes() == (tmp_path / "b" / "model-0.keras").read_bytes()


def test_checkpoints_of_other_settings_are_refused_in_one_line(tmp_path, arrays):
    train(arrays["train"], arrays["validation"], tmp_path / "m", tmp_path / "h.json", epochs=1, batch_size=64,
          checkpoint_dir=tmp_path / "checkpoints")
    result = run_module("-m", "components.train", "--train-data", str(arrays["train"]), "--validation-data",
                        str(arrays["validation"]), "--model-dir", str(tmp_path / "m"), "--epochs", "2",
                        "--batch-size", "64", "--learning-rate", "0.01", "--checkpoint-dir", str(tmp_path / "checkpoints"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'checkpoints'}: holds checkpoints of other settings (epochs, learning_rate differ); "
        "start with the same settings and data, or with another (or an empty) checkpoint folder")
    with pytest.raises(InputError, match=r"\(data differ\)"):  # same settings, other images
        train(arrays["validation"], arrays["validation"], tmp_path / "m", tmp_path / "h.json", epochs=1, batch_size=64,
              checkpoint_dir=tmp_path / "checkpoints")
