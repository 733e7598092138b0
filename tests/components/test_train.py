import json

import numpy as np
import pytest
import tensorflow as tf

from components.train import build_model, load_model, random_affine, train, training_dataset
from tests.conftest import run_module


def test_model_takes_raw_pixels_and_returns_probabilities():
    model = build_model()
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
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds", "images_per_second"):
        assert len(history[metric]) == len(history["loss"]) >= 1
    assert (folder / "curves.png").read_bytes()[:4] == b"\x89PNG"
    model = load_model(folder)
    assert model.output_shape == (None, 10)
    assert sorted(p.name for p in folder.iterdir()) == ["curves.png", "history.json", "model.keras"]


def test_same_seed_same_model(tmp_path, arrays):
    weights = []
    for run in ("a", "b"):
        train(arrays["train"], arrays["validation"], tmp_path / run, tmp_path / run / "history.json",
              epochs=1, batch_size=64, seed=5)
        weights.append(load_model(tmp_path / run).get_weights())
    for first, second in zip(*weights):
        np.testing.assert_allclose(first, second, atol=1e-6)


@pytest.mark.parametrize("name", ["epochs", "batch_size", "patience"])
def test_train_rejects_non_positive_settings(tmp_path, arrays, name):
    with pytest.raises(ValueError, match=f"{name} must be at least 1"):
        train(arrays["train"], arrays["validation"], tmp_path, tmp_path / "h.json", **{name: 0})


def test_cli_help_and_missing_input(tmp_path):
    help_text = run_module("-m", "components.train", "--help").stdout
    for option in ("--epochs", "--batch-size", "--learning-rate", "--weight-decay", "--label-smoothing",
                   "--no-augment", "--patience", "--seed", "--curves", "--history"):
        assert option in help_text
    result = run_module("-m", "components.train", "--train-data", str(tmp_path / "none.npz"),
                        "--validation-data", str(tmp_path / "none.npz"), "--model-dir", str(tmp_path / "m"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'none.npz'}: file not found"
