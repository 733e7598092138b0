import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from components.artifacts import load_arrays
from components.train import (
    cpu_computes_bfloat16,
    cpu_trains_faster_in_bfloat16,
    load_models,
    precision_policy,
    train,
)
from tests.conftest import ROOT, run_module


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
        train(
            arrays["train"],
            arrays["validation"],
            tmp_path / run,
            tmp_path / run / "history.json",
            epochs=1,
            batch_size=64,
            seed=5,
            elastic_alpha=34,
        )
        weights.append(load_models(tmp_path / run)[0].get_weights())
    for first, second in zip(*weights, strict=True):
        np.testing.assert_allclose(first, second, atol=1e-6)


def test_an_ensemble_is_one_model_per_seed(tmp_path, arrays):
    history = train(
        arrays["train"],
        arrays["validation"],
        tmp_path / "ensemble",
        tmp_path / "h.json",
        epochs=1,
        batch_size=64,
        seed=5,
        ensemble_size=2,
        curves_png=tmp_path / "curves.png",
    )
    assert len(history["members"]) == 2
    members = load_models(tmp_path / "ensemble")
    train(
        arrays["train"], arrays["validation"], tmp_path / "seed6", tmp_path / "h6.json", epochs=1, batch_size=64, seed=6
    )
    for first, second in zip(members[1].get_weights(), load_models(tmp_path / "seed6")[0].get_weights(), strict=True):
        np.testing.assert_allclose(first, second, atol=1e-6)  # member 1 is the model of seed 6
    assert not np.allclose(members[0].get_weights()[0], members[1].get_weights()[0])
    train(
        arrays["train"],
        arrays["validation"],
        tmp_path / "ensemble",
        tmp_path / "h.json",
        epochs=1,
        batch_size=64,
        seed=5,
    )
    assert len(load_models(tmp_path / "ensemble")) == 1  # the earlier run's member 1 is gone


def test_pseudo_labels_add_confident_test_images_and_train_again(tmp_path, arrays, capsys):
    history = train(
        arrays["train"],
        arrays["validation"],
        tmp_path / "m",
        tmp_path / "h.json",
        epochs=2,
        batch_size=32,
        pseudo_label_data=arrays["test"],
        pseudo_label_confidence=0.1,
    )
    assert history["pseudo_labels"] == 60  # every probability vector has a maximum of at least 0.1
    said = capsys.readouterr().out
    assert "pseudo-labels: 60 of 60 test images at confidence >= 0.1; training again with them" in said
    (train_images,) = load_arrays(arrays["train"], "images")
    # 270 + 60 images in batches of 32: 10 batches (the first round 8)
    assert history["members"][0]["images_per_second"][0] == pytest.approx(320 / history["members"][0]["seconds"][0])
    assert history["first_round_members"][0]["images_per_second"][0] == pytest.approx(
        256 / history["first_round_members"][0]["seconds"][0]
    )
    assert json.loads((tmp_path / "h.json").read_text())["pseudo_labels"] == 60
    assert len(train_images) == 270
    history = train(
        arrays["train"],
        arrays["validation"],
        tmp_path / "n",
        tmp_path / "n.json",
        epochs=1,
        batch_size=32,
        pseudo_label_data=arrays["test"],
        pseudo_label_confidence=1.0,
    )
    assert history["pseudo_labels"] == 0
    assert "first_round_members" not in history  # one round: its histories are the members'
    assert "0 of 60 test images at confidence >= 1.0; keeping the first models" in capsys.readouterr().out


def test_keep_epoch_last_runs_every_epoch_and_keeps_the_last_under_the_exponential_schedule(tmp_path, arrays):
    history = train(
        arrays["train"],
        arrays["validation"],
        tmp_path / "m",
        tmp_path / "h.json",
        epochs=3,
        batch_size=30,
        patience=1,
        learning_rate=0.001,
        learning_rate_schedule="exponential",
        keep_epoch="last",
        mixed_precision="off",
    )
    (member,) = history["members"]
    assert len(member["loss"]) == 3  # patience 1 stops nothing
    # Deotte's decay: x0.95 after each epoch (the rate logged at an epoch's end is the next epoch's).
    np.testing.assert_allclose(member["learning_rate"], [0.001 * 0.95, 0.001 * 0.95**2, 0.001 * 0.95**3], rtol=1e-6)
    (model,) = load_models(tmp_path / "m")
    validation_images, validation_labels = load_arrays(arrays["validation"], "images", "labels")
    predicted = model.predict(validation_images.astype(np.float32), verbose=0).argmax(axis=1)
    assert np.mean(predicted == validation_labels) == pytest.approx(member["val_accuracy"][-1])


def test_member_splits_give_each_later_member_its_own_split_of_every_labelled_image(tmp_path, arrays, monkeypatch):
    given = []

    def record_fit(model_path, images, labels, validation_images, validation_labels, **settings):
        given.append((images, labels, validation_images, validation_labels, settings["seed"]))
        return {"val_accuracy": [1.0], "loss": [0.0]}

    monkeypatch.setattr("components.train.fit", record_fit)
    train(arrays["train"], arrays["validation"], tmp_path / "m", ensemble_size=3, member_splits=True, seed=7)
    train_images, train_labels = load_arrays(arrays["train"], "images", "labels")
    validation_images, validation_labels = load_arrays(arrays["validation"], "images", "labels")
    first, *later = given
    np.testing.assert_array_equal(first[0], train_images)  # the first member: preprocess's split
    np.testing.assert_array_equal(first[2], validation_images)
    every_image = {image.tobytes() for image in np.concatenate([train_images, validation_images])}
    for images, _, member_validation_images, member_validation_labels, _ in later:
        assert len(images) == len(train_images) and len(member_validation_images) == len(validation_images)
        assert {image.tobytes() for image in np.concatenate([images, member_validation_images])} == every_image
        assert np.array_equal(np.bincount(member_validation_labels), np.bincount(validation_labels))  # stratified
        assert not np.array_equal(member_validation_images, validation_images)
    assert [seed for *_, seed in given] == [7, 8, 9]
    assert not np.array_equal(later[0][2], later[1][2])  # each its own
    with pytest.raises(ValueError, match="member_splits and train_on_validation"):
        train(arrays["train"], arrays["validation"], tmp_path / "n", member_splits=True, train_on_validation=True)


def test_train_rejects_an_unknown_kept_epoch(tmp_path, arrays):
    with pytest.raises(ValueError, match="keep_epoch must be best or last, got 'middle'"):
        train(arrays["train"], arrays["validation"], tmp_path, tmp_path / "h.json", keep_epoch="middle")


def test_training_on_validation_keeps_the_last_epoch(tmp_path, arrays):
    history = train(
        arrays["train"],
        arrays["validation"],
        tmp_path / "m",
        tmp_path / "h.json",
        epochs=3,
        batch_size=30,
        patience=1,
        train_on_validation=True,
    )
    assert len(history["members"][0]["loss"]) == 3  # no early stopping
    # 270 training + 30 validation images in batches of 30: 10 steps an epoch
    assert history["members"][0]["images_per_second"][0] == pytest.approx(300 / history["members"][0]["seconds"][0])


@pytest.mark.parametrize("network", ["deotte", "compact", "strided"])
def test_mixed_precision_on_the_cpu_trains_in_bfloat16_and_loads_back_in_float32(
    tmp_path, arrays, network, monkeypatch, capsys
):
    monkeypatch.setattr("components.train.cpu_computes_bfloat16", lambda: False)
    train(
        arrays["train"],
        arrays["validation"],
        tmp_path / "m",
        tmp_path / "h.json",
        network=network,
        epochs=1,
        batch_size=64,
        mixed_precision="on",
        float32_epochs=0,
    )
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after training
    assert "this CPU has no bfloat16 arithmetic (AVX-512 BF16 or AMX): it is emulated" in capsys.readouterr().out
    saved = keras.models.load_model(tmp_path / "m" / "model-0.keras", compile=False)
    assert saved.layers[2].dtype_policy.name == "mixed_bfloat16"
    assert saved.layers[-1].dtype_policy.name == "float32"  # probabilities stay float32
    (model,) = load_models(tmp_path / "m")
    assert model.name == network
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}


def test_mixed_precision_training_finishes_in_float32_and_is_off_when_every_epoch_is(tmp_path, arrays, capsys):
    settings = dict(network="compact", batch_size=64, mixed_precision="on", train_on_validation=True)
    train(arrays["train"], arrays["validation"], tmp_path / "m", epochs=2, float32_epochs=1, **settings)
    assert "mixed precision (bfloat16), float32 from epoch 2" in capsys.readouterr().out
    saved = keras.models.load_model(tmp_path / "m" / "model-0.keras", compile=False)  # the last epoch's
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}
    train(arrays["train"], arrays["validation"], tmp_path / "n", epochs=1, float32_epochs=1, **settings)
    assert "mixed precision" not in capsys.readouterr().out


def test_bfloat16_arithmetic_is_read_off_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    flags = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512vl"
    cpuinfo.write_text(flags + " avx512_vnni\n")  # AVX-512 without BF16: emulated
    assert not cpu_computes_bfloat16(cpuinfo)
    for native in ("avx512_bf16", "amx_bf16"):
        cpuinfo.write_text(f"{flags} {native} avx512_vnni\n")
        assert cpu_computes_bfloat16(cpuinfo)
    assert not cpu_computes_bfloat16(tmp_path / "absent")  # not Linux


def test_bfloat16_is_chosen_where_it_was_measured_faster(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    flags = "flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512vl avx512_vnni"
    for vendor, extra, faster in (
        ("AuthenticAMD", "avx512_bf16", True),  # Zen 4: 1.5x
        ("GenuineIntel", "avx512_bf16", False),  # a Xeon without AMX: 0.88x
        ("GenuineIntel", "avx512_bf16 amx_bf16 amx_tile", True),
        ("AuthenticAMD", "", False),  # emulated
    ):
        cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\n{flags} {extra}\n")
        assert cpu_trains_faster_in_bfloat16(cpuinfo) is faster, (vendor, extra)
    assert not cpu_trains_faster_in_bfloat16(tmp_path / "absent")


def test_precision_policy_follows_the_hardware(monkeypatch):
    for faster_in_bfloat16, automatic in ((True, "mixed_bfloat16"), (False, "float32")):  # the CPU
        monkeypatch.setattr("components.train.cpu_trains_faster_in_bfloat16", lambda faster=faster_in_bfloat16: faster)
        assert precision_policy("auto", []) == automatic
        assert precision_policy("on", []) == "mixed_bfloat16"  # emulated where the CPU has no bfloat16 arithmetic
        assert precision_policy("off", []) == "float32"
    with pytest.raises(ValueError, match="mixed_precision must be auto, on or off"):
        precision_policy("yes", [])


def test_training_with_a_weight_average_saves_the_averaged_best_epoch(tmp_path, arrays):
    history = train(
        arrays["train"],
        arrays["validation"],
        tmp_path / "m",
        tmp_path / "h.json",
        epochs=3,
        batch_size=32,
        patience=3,
        ema_momentum=0.9,
        mixed_precision="off",
        keep_epoch="best",
    )
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
history = train_module.train(sys.argv[1], sys.argv[2], sys.argv[3], epochs=1, batch_size=64)
print("trained", len(history["members"][0]["loss"]))
"""


def test_several_devices_train_one_mirrored_model(tmp_path, arrays):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            MIRRORED_ON_TWO_CPUS,
            str(arrays["train"]),
            str(arrays["validation"]),
            str(tmp_path / "m"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "replicas 2 MirroredStrategy" in result.stdout
    assert "training on 2 GPU(s)" in result.stdout and "trained 1" in result.stdout
    assert load_models(tmp_path / "m")[0].output_shape == (None, 10)
    assert (tmp_path / "m" / "history.json").is_file()  # history_path's default


@pytest.mark.parametrize("name", ["epochs", "batch_size", "patience", "ensemble_size"])
def test_train_rejects_non_positive_settings(tmp_path, arrays, name):
    with pytest.raises(ValueError, match=f"{name} must be at least 1"):
        train(arrays["train"], arrays["validation"], tmp_path, tmp_path / "h.json", **{name: 0})


def test_train_rejects_negative_float32_epochs(tmp_path, arrays):
    with pytest.raises(ValueError, match="float32_epochs must be at least 0, got -1"):
        train(arrays["train"], arrays["validation"], tmp_path, tmp_path / "h.json", float32_epochs=-1)


def test_train_rejects_an_unknown_schedule(tmp_path, arrays):
    with pytest.raises(ValueError, match="must be cosine, constant or exponential, got 'linear'"):
        train(arrays["train"], arrays["validation"], tmp_path, tmp_path / "h.json", learning_rate_schedule="linear")


def test_train_rejects_an_unknown_network(tmp_path, arrays):
    with pytest.raises(ValueError, match="network must be one of deotte, compact, strided, got 'resnet'"):
        train(arrays["train"], arrays["validation"], tmp_path, tmp_path / "h.json", network="resnet")


def test_constant_schedule_keeps_the_learning_rate(tmp_path, arrays):
    history = train(
        arrays["train"],
        arrays["validation"],
        tmp_path / "m",
        tmp_path / "h.json",
        epochs=2,
        batch_size=64,
        learning_rate=0.002,
        learning_rate_schedule="constant",
    )
    assert history["members"][0]["learning_rate"] == pytest.approx([0.002, 0.002])


def test_cli_help_and_missing_input(tmp_path):
    help_text = run_module("-m", "components.train", "--help").stdout
    assert help_text.startswith("usage: python -m components.train ")  # named so when run as __main__ too
    for option in (
        "--network",
        "--epochs",
        "--batch-size",
        "--learning-rate",
        "--learning-rate-schedule",
        "--weight-decay",
        "--label-smoothing",
        "--no-augment",
        "--elastic-alpha",
        "--patience",
        "--seed",
        "--ensemble-size",
        "--train-on-validation",
        "--ema-momentum",
        "--pseudo-label-data",
        "--pseudo-label-confidence",
        "--mixed-precision",
        "--curves",
        "--history",
        "--checkpoint-dir",
    ):
        assert option in help_text
    result = run_module(
        "-m",
        "components.train",
        "--train-data",
        str(tmp_path / "none.npz"),
        "--validation-data",
        str(tmp_path / "none.npz"),
        "--model-dir",
        str(tmp_path / "m"),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'none.npz'}: file not found"
