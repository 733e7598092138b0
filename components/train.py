"""Train: a batch-normalized Keras CNN on augmented digits, on a GPU when one is present.

    python -m components.train --train-data work/train.npz \
        --validation-data work/validation.npz --model-dir work/model
"""
import argparse
import math
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from components.artifacts import InputError, atomic_path, load_arrays, save_json
from components.cli import run_cli, signature_defaults
from components.kaggle_format import IMAGE_SIZE
from components.plots import training_curves

MODEL_FILE = "model.keras"


def build_model(dropout=0.3):
    """Raw 0-255 pixels [n, 28, 28, 1] in, ten digit probabilities out."""
    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), name="pixels")
    x = layers.Rescaling(1 / 255)(inputs)
    for filters in (32, 64):
        x = conv_block(x, filters)
        x = conv_block(x, filters)
        x = layers.MaxPooling2D()(x)
    x = conv_block(x, 128)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="digit_cnn")


def conv_block(x, filters):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    # momentum 0.9, not Keras' 0.99: the running statistics catch up within an epoch, so validation
    # (which uses them) is meaningful from the first epoch on, even on small data.
    x = layers.BatchNormalization(momentum=0.9)(x)
    return layers.ReLU()(x)


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
        images=images, transforms=transforms, output_shape=[IMAGE_SIZE, IMAGE_SIZE],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT",
    )


def training_dataset(images, labels, batch_size, epochs, seed, augment):
    """Shuffled, augmented batches for all epochs at once, so each epoch sees new augmentations."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).repeat(epochs)
    dataset = dataset.batch(batch_size, drop_remainder=True).enumerate()

    def prepare(step, batch):
        batch_images, batch_labels = tf.cast(batch[0], tf.float32), tf.one_hot(batch[1], 10)
        if augment:
            batch_images = random_affine(batch_images, seed=tf.stack([tf.cast(seed, tf.int64), step]))
        return batch_images, batch_labels

    return dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


class EpochTimer(keras.callbacks.Callback):
    """Adds each epoch's wall time and learning rate to the logs, hence to the history."""

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs["seconds"] = time.perf_counter() - self.started
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def train(
    train_data,
    validation_data,
    model_dir,
    history_path,
    epochs=15,
    batch_size=128,
    learning_rate=0.003,
    weight_decay=0.0001,
    label_smoothing=0.1,
    augment=True,
    patience=5,
    seed=42,
    curves_png=None,
):
    """Fit the CNN, keep the weights of the best validation epoch, write the model and the per-epoch history.

    The learning rate warms up for one epoch, then follows a cosine down to zero.
    Early stopping ends a run whose validation accuracy stalls for `patience` epochs.
    With `curves_png`, loss and accuracy per epoch are plotted there.
    Returns the history: one list per metric, one value per epoch.
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    keras.utils.set_random_seed(seed)
    gpus = tf.config.list_physical_devices("GPU")
    print(f"training on {len(gpus)} GPU(s)" if gpus else "training on the CPU (no GPU found)", flush=True)
    train_images, train_labels = load_arrays(train_data, "images", "labels")
    validation_images, validation_labels = load_arrays(validation_data, "images", "labels")
    batch_size = min(batch_size, len(train_images))
    steps_per_epoch = len(train_images) // batch_size
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate / 10,
        warmup_target=learning_rate,
        warmup_steps=steps_per_epoch,
        decay_steps=max(1, (epochs - 1) * steps_per_epoch),
    )
    model = build_model()
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=["accuracy"],
    )
    with atomic_path(f"{model_dir}/{MODEL_FILE}") as best_model_path:
        history = model.fit(
            training_dataset(train_images, train_labels, batch_size, epochs, seed, augment),
            steps_per_epoch=steps_per_epoch,
            epochs=epochs,
            validation_data=(validation_images.astype(np.float32), keras.utils.to_categorical(validation_labels, 10)),
            validation_batch_size=512,
            shuffle=False,  # the dataset shuffles, reproducibly
            callbacks=[
                EpochTimer(),
                keras.callbacks.ModelCheckpoint(best_model_path, monitor="val_accuracy", mode="max", save_best_only=True),
                keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=patience),
            ],
            verbose=2,
        )
    history = {name: [float(value) for value in values] for name, values in history.history.items()}
    history["images_per_second"] = [steps_per_epoch * batch_size / seconds for seconds in history["seconds"]]
    save_json(history_path, history)
    if curves_png:
        training_curves(history, curves_png)
    return history


def load_model(model_dir):
    path = Path(model_dir) / MODEL_FILE
    if not path.is_file():
        raise InputError(f"{path}: file not found (the model folder that train writes)")
    return keras.models.load_model(path)


def main(argv=None):
    defaults = signature_defaults(train)
    parser = argparse.ArgumentParser(prog="python -m components.train", description=__doc__.splitlines()[0])
    parser.add_argument("--train-data", required=True, help="train.npz from preprocess")
    parser.add_argument("--validation-data", required=True, help="validation.npz from preprocess")
    parser.add_argument("--model-dir", required=True, help=f"folder for the best model ({MODEL_FILE})")
    parser.add_argument("--history", help="per-epoch history as JSON (default: MODEL_DIR/history.json)")
    parser.add_argument("--curves", dest="curves_png", help="where to plot the training curves (PNG, optional)")
    parser.add_argument("--epochs", type=int, default=defaults["epochs"], help="passes over the training set (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"], help="images per step (default: %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=defaults["learning_rate"], help="peak learning rate of the warm-up then cosine schedule (default: %(default)s)")
    parser.add_argument("--weight-decay", type=float, default=defaults["weight_decay"], help="AdamW weight decay (default: %(default)s)")
    parser.add_argument("--label-smoothing", type=float, default=defaults["label_smoothing"], help="label smoothing of the loss (default: %(default)s)")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="train on the images as they are (default: random rotation, shift, shear and zoom)")
    parser.add_argument("--patience", type=int, default=defaults["patience"], help="epochs without a better validation accuracy before stopping (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults["seed"], help="seed of weights, shuffling and augmentation (default: %(default)s)")
    args = vars(parser.parse_args(argv))
    args["history_path"] = args.pop("history") or f"{args['model_dir']}/history.json"
    history = run_cli(train, args)
    print(f"best validation accuracy {max(history['val_accuracy']):.4f} after {len(history['val_accuracy'])} epochs")


if __name__ == "__main__":
    main()
