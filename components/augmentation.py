"""Train's input pipeline: shuffled batches of digits, moved (affine) and bent (elastic) at random, by seed."""

import math

import tensorflow as tf

from common.kaggle_format import IMAGE_SIZE


def random_affine(images, seed, rotation_degrees=10, shift=0.1, shear_degrees=8, zoom=0.1):
    """Rotate, shift, shear and zoom each image of a batch at random, as one interpolation.

    `seed` is a stateless seed pair, so a run is repeatable.
    """
    count = tf.shape(images)[0]
    uniform = tf.random.stateless_uniform([count, 6], seed=seed, minval=-1.0, maxval=1.0)
    angle = uniform[:, 0] * math.radians(rotation_degrees)
    shear = tf.tan(uniform[:, 1] * math.radians(shear_degrees))
    zoom_x, zoom_y = 1 + uniform[:, 2] * zoom, 1 + uniform[:, 3] * zoom
    shift_x, shift_y = uniform[:, 4] * shift * IMAGE_SIZE, uniform[:, 5] * shift * IMAGE_SIZE
    # The matrix maps each output pixel to where it is read in the input: rotation, shear, zoom about the centre.
    cos, sin = tf.cos(angle), tf.sin(angle)
    a0, a1 = cos / zoom_x, (cos * shear - sin) / zoom_y
    b0, b1 = sin / zoom_x, (sin * shear + cos) / zoom_y
    centre = (IMAGE_SIZE - 1) / 2
    a2 = centre - a0 * centre - a1 * centre - shift_x
    b2 = centre - b0 * centre - b1 * centre - shift_y
    zeros = tf.zeros_like(angle)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=[IMAGE_SIZE, IMAGE_SIZE],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def elastic_distortion(images, seed, alpha=34.0, sigma=4.0):
    """Warp each image by a random smooth displacement field (Simard et al. 2003: alpha 34, sigma 4 for MNIST).

    Uniform random displacements are blurred with a Gaussian of `sigma` pixels and scaled by `alpha`;
    each output pixel is read bilinearly at its displaced position (zero outside the canvas).
    """
    count = tf.shape(images)[0]
    displacement = tf.random.stateless_uniform([count, IMAGE_SIZE, IMAGE_SIZE, 2], seed=seed, minval=-1.0, maxval=1.0)
    offsets = tf.range(-3 * sigma, 3 * sigma + 1)
    kernel = tf.exp(-(offsets**2) / (2 * sigma**2))
    kernel /= tf.reduce_sum(kernel)
    for shape in ([1, -1, 1, 1], [-1, 1, 1, 1]):  # a separable blur: along rows, then along columns
        displacement = tf.nn.depthwise_conv2d(
            displacement, tf.tile(tf.reshape(kernel, shape), [1, 1, 2, 1]), strides=[1, 1, 1, 1], padding="SAME"
        )
    rows, columns = tf.meshgrid(
        tf.range(IMAGE_SIZE, dtype=tf.float32), tf.range(IMAGE_SIZE, dtype=tf.float32), indexing="ij"
    )
    sample_rows = rows + alpha * displacement[..., 0]
    sample_columns = columns + alpha * displacement[..., 1]
    top, left = tf.floor(sample_rows), tf.floor(sample_columns)
    row_weight, column_weight = sample_rows - top, sample_columns - left
    flat = tf.reshape(images, [count, IMAGE_SIZE * IMAGE_SIZE])

    def pixels_at(row, column):
        inside = (row >= 0) & (row < IMAGE_SIZE) & (column >= 0) & (column < IMAGE_SIZE)
        index = tf.cast(
            tf.clip_by_value(row, 0, IMAGE_SIZE - 1) * IMAGE_SIZE + tf.clip_by_value(column, 0, IMAGE_SIZE - 1),
            tf.int32,
        )
        values = tf.gather(flat, tf.reshape(index, [count, -1]), batch_dims=1)
        return tf.where(inside, tf.reshape(values, tf.shape(index)), 0.0)

    warped = (
        (1 - row_weight) * (1 - column_weight) * pixels_at(top, left)
        + (1 - row_weight) * column_weight * pixels_at(top, left + 1)
        + row_weight * (1 - column_weight) * pixels_at(top + 1, left)
        + row_weight * column_weight * pixels_at(top + 1, left + 1)
    )
    return warped[..., tf.newaxis]


def training_dataset(images, labels, batch_size, epochs, seed, augment, elastic_alpha=0.0, first_step=0):
    """Shuffled, augmented batches for all epochs at once, so each epoch sees new augmentations.

    `first_step` skips that many batches (unaugmented, so cheaply): a resumed fit gets the very batches
    an uninterrupted one would have had.
    """
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).repeat(epochs)
    dataset = dataset.batch(batch_size, drop_remainder=True).enumerate().skip(first_step)

    def prepare(step, batch):
        batch_images, batch_labels = tf.cast(batch[0], tf.float32), tf.one_hot(batch[1], 10)
        batch_seed = tf.stack([tf.cast(seed, tf.int64), step])
        if elastic_alpha:
            # Its own seeds, apart from the affine ones and from other members' (seed + 1, ...).
            batch_images = elastic_distortion(batch_images, seed=batch_seed + [0, 1 << 32], alpha=elastic_alpha)
        if augment:
            batch_images = random_affine(batch_images, seed=batch_seed)
        return batch_images, batch_labels

    # tf.data's autotuning thread made a fit's end wait for it, up to 2.5 s a fit here, for no faster steps.
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE).with_options(options)
