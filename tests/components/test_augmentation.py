import numpy as np
import tensorflow as tf

from components.artifacts import load_arrays
from components.augmentation import elastic_distortion, random_affine, training_dataset


def test_random_affine_without_change_is_the_identity():
    images = tf.random.uniform([4, 28, 28, 1], 0, 255, seed=0)
    same = random_affine(images, seed=[1, 2], rotation_degrees=0, shift=0, shear_degrees=0, zoom=0)
    np.testing.assert_allclose(same.numpy(), images.numpy(), atol=1e-3)


def test_random_affine_shift_moves_ink_and_keeps_it_on_the_canvas():
    image = np.zeros([1, 28, 28, 1], np.float32)
    image[0, 10:18, 10:18, 0] = 255
    moved = random_affine(
        tf.constant(np.repeat(image, 64, axis=0)), seed=[0, 5], rotation_degrees=0, shift=0.1, shear_degrees=0, zoom=0
    ).numpy()
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


def test_a_resumed_dataset_gives_the_batches_of_an_uninterrupted_one():
    images = np.random.default_rng(0).integers(0, 256, (12, 28, 28, 1), dtype=np.uint8)
    labels = np.arange(12, dtype=np.uint8) % 10
    settings = dict(epochs=3, seed=3, augment=True, elastic_alpha=34)
    whole = [x.numpy() for x, _ in training_dataset(images, labels, 4, **settings)]
    resumed = [x.numpy() for x, _ in training_dataset(images, labels, 4, **settings, first_step=5)]
    assert len(whole) == 9 and len(resumed) == 4
    for first, second in zip(whole[5:], resumed, strict=True):
        np.testing.assert_array_equal(first, second)
