import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from common.errors import InputError
from components.artifacts import load_arrays, save_arrays
from components.checkpoints import array_digest, read_checkpoint, write_checkpoint
from components.train import load_models, train
from tests.conftest import ROOT, run_module


def test_a_checkpoint_file_reads_back_as_written(tmp_path):
    assert read_checkpoint(tmp_path / "none.npz") is None  # nothing saved yet
    state, arrays = {"epochs_done": 2, "history": {"loss": [0.5, 0.25]}}, {"model_0": np.arange(6.0).reshape(2, 3)}
    write_checkpoint(tmp_path / "round-0-member-0.npz", state, arrays)
    read_state, read_arrays = read_checkpoint(tmp_path / "round-0-member-0.npz")
    assert read_state == state and list(read_arrays) == ["model_0"]
    np.testing.assert_array_equal(read_arrays["model_0"], arrays["model_0"])


def test_the_data_digest_is_of_the_contents_not_the_file(tmp_path):
    images = np.arange(10, dtype=np.uint8)
    assert array_digest(images) == array_digest(images.copy()) != array_digest(images[::-1])
    assert array_digest(images[::2]) == array_digest(np.ascontiguousarray(images[::2]))  # whatever the memory layout


@pytest.fixture(scope="module")
def larger_arrays(tmp_path_factory, arrays):
    """The fixture's training images twice over: epochs long enough (about 2 s) to kill a run between two of them."""
    folder = tmp_path_factory.mktemp("larger")
    images, labels = load_arrays(arrays["train"], "images", "labels")
    save_arrays(folder / "train.npz", images=np.tile(images, (2, 1, 1, 1)), labels=np.tile(labels, 2))
    return {"train": folder / "train.npz", "validation": arrays["validation"]}


RESUMED_SETTINGS = dict(epochs=3, batch_size=32, seed=5, patience=3, elastic_alpha=34.0)


def train_command(arrays, model_dir, checkpoint_dir, **settings):
    options = [
        f"--{'' if value else 'no-'}{name.replace('_', '-')}"  # a bool is a flag
        if isinstance(value, bool)
        else f"--{name.replace('_', '-')}={value}"
        for name, value in {**RESUMED_SETTINGS, **settings}.items()
    ]
    return [
        sys.executable,
        "-m",
        "components.train",
        "--train-data",
        str(arrays["train"]),
        "--validation-data",
        str(arrays["validation"]),
        "--model-dir",
        str(model_dir),
        "--checkpoint-dir",
        str(checkpoint_dir),
        *options,
    ]


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


@pytest.mark.parametrize(
    "ensemble_size, killed_member, ema_momentum, mixed_precision, keep_epoch, member_splits",
    [(1, 0, 0.0, "off", "best", False), (2, 1, 0.0, "off", "last", True), (1, 0, 0.9, "on", "best", False)],
)
def test_training_killed_after_an_epoch_resumes_to_the_uninterrupted_model(
    tmp_path, larger_arrays, ensemble_size, killed_member, ema_momentum, mixed_precision, keep_epoch, member_splits
):
    # With a weight average too: the raw weights it keeps between epochs, and its step, are in the checkpoint.
    # In mixed precision, killed in bfloat16: the resumed fit's last epoch is float32 as the uninterrupted one's.
    # An ensemble keeping its last epochs, its second member on a split of its own, killed in that member.
    settings = dict(
        ensemble_size=ensemble_size,
        ema_momentum=ema_momentum,
        mixed_precision=mixed_precision,
        float32_epochs=1,
        keep_epoch=keep_epoch,
        member_splits=member_splits,
    )
    command = train_command(larger_arrays, tmp_path / "resumed", tmp_path / "checkpoints", **settings)
    state = kill_after_epoch(command, tmp_path / "checkpoints" / f"round-0-member-{killed_member}.npz", 1)
    assert not state.get("finished") and 1 <= state["epochs_done"] < RESUMED_SETTINGS["epochs"]  # killed mid-member
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming from {tmp_path / 'checkpoints'}/round-0-member-{killed_member}.npz after epoch" in result.stdout
    assert ("member finished before" in result.stdout) is (killed_member > 0)
    assert ("mixed precision (bfloat16), float32 from epoch 3" in result.stdout) is (mixed_precision == "on")
    uninterrupted = train(
        larger_arrays["train"],
        larger_arrays["validation"],
        tmp_path / "whole",
        tmp_path / "whole.json",
        **settings,
        **RESUMED_SETTINGS,
    )
    resumed = json.loads((tmp_path / "resumed" / "history.json").read_text())
    for whole, again in zip(uninterrupted["members"], resumed["members"], strict=True):
        assert len(again["loss"]) == len(again["seconds"]) == RESUMED_SETTINGS["epochs"]  # each epoch once
        for metric in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"):
            assert again[metric] == whole[metric], metric
    # Bit for bit: the same weights, batches, augmentations and dropout masks as the run that was never stopped.
    for whole, again in zip(load_models(tmp_path / "whole"), load_models(tmp_path / "resumed"), strict=True):
        for first, second in zip(whole.get_weights(), again.get_weights(), strict=True):
            np.testing.assert_array_equal(first, second)


def test_a_finished_training_started_again_takes_its_members_from_the_checkpoints(tmp_path, arrays, capsys):
    # With pseudo-labels: both rounds of training, the second one's labels from the first one's restored models.
    settings = dict(
        epochs=2,
        batch_size=64,
        checkpoint_dir=tmp_path / "checkpoints",
        pseudo_label_data=arrays["test"],
        pseudo_label_confidence=0.1,
    )
    first = train(arrays["train"], arrays["validation"], tmp_path / "a", tmp_path / "a.json", **settings)
    assert first["pseudo_labels"] == 60
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "round-0-member-0.npz",
        "round-1-member-0.npz",
        "settings.json",
    ]
    again = train(arrays["train"], arrays["validation"], tmp_path / "b", tmp_path / "b.json", **settings)
    assert again == first
    assert capsys.readouterr().out.count("member finished before") == 2
    assert (tmp_path / "a" / "model-0.keras").read_bytes() == (tmp_path / "b" / "model-0.keras").read_bytes()


def test_checkpoints_of_other_settings_are_refused_in_one_line(tmp_path, arrays):
    train(
        arrays["train"],
        arrays["validation"],
        tmp_path / "m",
        tmp_path / "h.json",
        epochs=1,
        batch_size=64,
        checkpoint_dir=tmp_path / "checkpoints",
    )
    result = run_module(
        "-m",
        "components.train",
        "--train-data",
        str(arrays["train"]),
        "--validation-data",
        str(arrays["validation"]),
        "--model-dir",
        str(tmp_path / "m"),
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--learning-rate",
        "0.01",
        "--checkpoint-dir",
        str(tmp_path / "checkpoints"),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'checkpoints'}: holds checkpoints of other settings (epochs, learning_rate differ); "
        "start with the same settings and data, or with another (or an empty) checkpoint folder"
    )
    with pytest.raises(InputError, match=r"\(data differ\)"):  # same settings, other images
        train(
            arrays["validation"],
            arrays["validation"],
            tmp_path / "m",
            tmp_path / "h.json",
            epochs=1,
            batch_size=64,
            checkpoint_dir=tmp_path / "checkpoints",
        )
