"""Train: batch-normalized Keras CNNs on augmented digits, on every GPU present (or the CPU).

    python -m components.train --train-data work/train.npz \
        --validation-data work/validation.npz --model-dir work/model
"""
import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from components.artifacts import InputError, atomic_path, load_arrays, load_json, save_arrays, save_json
from components.cli import run_cli, signature_defaults
from components.kaggle_format import IMAGE_SIZE
from components.plots import training_curves

MODEL_FILE = "model-{member}.keras"  # one file per member of the ensemble
# In `checkpoint_dir`: the settings the checkpoints belong to, and one file per member and round of training
# (round 1 is the second fit, with pseudo-labels).
CHECKPOINT_SETTINGS_FILE = "settings.json"
CHECKPOINT_FILE = "round-{round}-member-{member}.npz"


NETWORKS = ("compact", "deotte")
EARLIER_NAMES = {"digit_cnn": "compact"}  # what models saved before the choice of network were named


def check_network(network):
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {', '.join(NETWORKS)}, got {network!r}")


def build_model(network="compact"):
    """Raw 0-255 pixels [n, 28, 28, 1] in, ten digit probabilities out; the model's name is its network.

    "compact": two blocks of two 3x3 convolutions (32, then 64 filters), each block max-pooled, a block of
    128, global average pooling, dropout 0.3. "deotte": Chris Deotte's Kaggle MNIST network (32C3-32C3-32C5S2,
    64C3-64C3-64C5S2, 128C4, dropout 0.4 after each stage): unpadded convolutions, strided ones instead of
    pooling, and a dense layer over the last feature map instead of an average. Both batch-normalize every
    convolution. Under a mixed-precision policy the layers compute in float16 or bfloat16; the output layer
    stays float32.
    """
    check_network(network)
    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), name="pixels")
    x = layers.Rescaling(1 / 255)(inputs)
    if network == "compact":
        for filters in (32, 64):
            x = conv_block(x, filters)
            x = conv_block(x, filters)
            x = layers.MaxPooling2D()(x)
        x = conv_block(x, 128)
        x = layers.GlobalAveragePooling2D()(x)
        x = layers.Dropout(0.3)(x)
    else:
        for filters in (32, 64):
            x = conv_block(x, filters, padding="valid")
            x = conv_block(x, filters, padding="valid")
            x = conv_block(x, filters, size=5, strides=2)
            x = layers.Dropout(0.4)(x)
        x = conv_block(x, 128, size=4, padding="valid")
        x = layers.Flatten()(x)
        x = layers.Dropout(0.4)(x)
    outputs = layers.Dense(10, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=network)


def conv_block(x, filters, size=3, strides=1, padding="same"):
    x = layers.Conv2D(filters, size, strides=strides, padding=padding, use_bias=False)(x)
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


def elastic_distortion(images, seed, alpha=34.0, sigma=4.0):
    """Warp each image by a random smooth displacement field (Simard et al. 2003: alpha 34, sigma 4 for MNIST).

    Uniform random displacements are blurred with a Gaussian of `sigma` pixels and scaled by `alpha`;
    each output pixel is read bilinearly at its displaced position (zero outside the canvas).
    """
    count = tf.shape(images)[0]
    displacement = tf.random.stateless_uniform([count, IMAGE_SIZE, IMAGE_SIZE, 2], seed=seed, minval=-1.0, maxval=1.0)
    offsets = tf.range(-3 * sigma, 3 * sigma + 1)
    kernel = tf.exp(-offsets**2 / (2 * sigma**2))
    kernel /= tf.reduce_sum(kernel)
    for shape in ([1, -1, 1, 1], [-1, 1, 1, 1]):  # a separable blur: along rows, then along columns
        displacement = tf.nn.depthwise_conv2d(
            displacement, tf.tile(tf.reshape(kernel, shape), [1, 1, 2, 1]), strides=[1, 1, 1, 1], padding="SAME")
    rows, columns = tf.meshgrid(tf.range(IMAGE_SIZE, dtype=tf.float32), tf.range(IMAGE_SIZE, dtype=tf.float32), indexing="ij")
    sample_rows = rows + alpha * displacement[..., 0]
    sample_columns = columns + alpha * displacement[..., 1]
    top, left = tf.floor(sample_rows), tf.floor(sample_columns)
    row_weight, column_weight = sample_rows - top, sample_columns - left
    flat = tf.reshape(images, [count, IMAGE_SIZE * IMAGE_SIZE])

    def pixels_at(row, column):
        inside = (row >= 0) & (row < IMAGE_SIZE) & (column >= 0) & (column < IMAGE_SIZE)
        index = tf.cast(tf.clip_by_value(row, 0, IMAGE_SIZE - 1) * IMAGE_SIZE + tf.clip_by_value(column, 0, IMAGE_SIZE - 1), tf.int32)
        values = tf.gather(flat, tf.reshape(index, [count, -1]), batch_dims=1)
        return tf.where(inside, tf.reshape(values, tf.shape(index)), 0.0)

    warped = ((1 - row_weight) * (1 - column_weight) * pixels_at(top, left)
              + (1 - row_weight) * column_weight * pixels_at(top, left + 1)
              + row_weight * (1 - column_weight) * pixels_at(top + 1, left)
              + row_weight * column_weight * pixels_at(top + 1, left + 1))
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

    return dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


class EpochTimer(keras.callbacks.Callback):
    """Adds each epoch's wall time, images/s and learning rate to the logs, hence to the history."""

    def __init__(self, images_per_epoch):
        super().__init__()
        self.images_per_epoch = images_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs["seconds"] = time.perf_counter() - self.started
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs["images_per_second"] = self.images_per_epoch / logs["seconds"]


class EpochProgress(keras.callbacks.Callback):
    """One line per epoch: `epoch 3/15 (member 1/5): loss ..., 2100 images/s, about 4 min left`.

    The time left assumes every member runs all its epochs: early stopping can only shorten it.
    """

    def __init__(self, member, members, epochs):
        super().__init__()
        self.member, self.members, self.epochs, self.seconds = member, members, epochs, []

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(logs["seconds"])
        epochs_left = self.epochs - epoch - 1 + (self.members - self.member - 1) * self.epochs
        which = f"epoch {epoch + 1}/{self.epochs}" + (f" (member {self.member + 1}/{self.members})" if self.members > 1 else "")
        validation = f", validation loss {logs['val_loss']:.4f} accuracy {logs['val_accuracy']:.4f}" if "val_loss" in logs else ""
        print(f"{which}: loss {logs['loss']:.4f} accuracy {logs['accuracy']:.4f}{validation}, "
              f"{logs['images_per_second']:.0f} images/s, about {duration(epochs_left * np.mean(self.seconds))} left",
              flush=True)


def duration(seconds):
    """`42 s`, `7 min`, `1 h 05 min`: how long, as a person reads it."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds // 3600:.0f} h {seconds % 3600 / 60:02.0f} min"


class TrainingCheckpoint(keras.callbacks.Callback):
    """After every epoch, everything a member's fit needs to go on from there, in one file written atomically.

    That is the model's variables (the dropout's seed state among them), the optimizer's (its step count drives
    the learning rate schedule), a weight average's raw weights and step, the history, the state of the best-epoch and early-stopping callbacks
    (`watched`) and the best model file so far. The batches need no state: `training_dataset` skips to them.
    Put it after the watched callbacks, so it restores their state after they reset it at the start of fit.
    """

    WATCHED_STATE = ("best", "wait", "best_epoch", "stopped_epoch")

    def __init__(self, path, best_model_path, watched, weight_average=None):
        super().__init__()
        self.path, self.best_model_path, self.watched = Path(path), Path(best_model_path), watched
        self.weight_average = weight_average
        saved = read_checkpoint(self.path)
        self.state, self.arrays = saved or ({"epochs_done": 0, "stopped": False, "history": {}, "watched": []}, {})

    def restore(self, model):
        """Give a freshly compiled model the saved weights and optimizer state; put the best model file back.

        Returns the number of epochs done: fit goes on from there.
        """
        if self.state["epochs_done"]:
            model.optimizer.build(model.trainable_variables)
            for name, variables in (("model", model.variables), ("optimizer", model.optimizer.variables)):
                for index, variable in enumerate(variables):
                    variable.assign(self.arrays[f"{name}_{index}"])
            if "best_model" in self.arrays:
                self.best_model_path.write_bytes(self.arrays["best_model"].tobytes())
            if self.weight_average:
                raw = [self.arrays[f"raw_{index}"] for index in range(len(model.weights))]
                self.weight_average.resume(raw, self.state["average_step"])
            print(f"resuming from {self.path} after epoch {self.state['epochs_done']}", flush=True)
        return self.state["epochs_done"]

    def on_train_begin(self, logs=None):
        for callback, state in zip(self.watched, self.state["watched"]):
            for name, value in state.items():
                setattr(callback, name, value)

    def on_epoch_end(self, epoch, logs=None):
        for name, value in logs.items():
            self.state["history"].setdefault(name, []).append(float(value))
        self.state.update(epochs_done=epoch + 1, stopped=bool(self.model.stop_training), watched=[
            {name: jsonable(getattr(callback, name)) for name in self.WATCHED_STATE if hasattr(callback, name)}
            for callback in self.watched])
        arrays = {f"model_{index}": keras.ops.convert_to_numpy(variable) for index, variable in enumerate(self.model.variables)}
        arrays.update({f"optimizer_{index}": keras.ops.convert_to_numpy(variable)
                       for index, variable in enumerate(self.model.optimizer.variables)})
        if self.weight_average:  # between epochs the model holds the average, the callback the raw weights
            raw, self.state["average_step"] = self.weight_average.state()
            arrays.update({f"raw_{index}": weight for index, weight in enumerate(raw)})
        if self.best_model_path.is_file() and self.best_model_path.stat().st_size:
            arrays["best_model"] = np.frombuffer(self.best_model_path.read_bytes(), np.uint8)
        write_checkpoint(self.path, self.state, arrays)

    def finish(self, model_path):
        """The member is done: keep only its history and final model, which a later start takes as they are."""
        self.state.update(finished=True, watched=[])
        write_checkpoint(self.path, self.state, {"model": np.frombuffer(Path(model_path).read_bytes(), np.uint8)})


def jsonable(value):
    return None if value is None else value if isinstance(value, (int, str)) else float(value)


def read_checkpoint(path):
    """A member's checkpoint as (state, arrays), or None where there is none yet."""
    if not Path(path).is_file():
        return None
    (state,) = load_arrays(path, "state")
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files if name != "state"}
    return json.loads(state.item()), arrays


def write_checkpoint(path, state, arrays):
    save_arrays(path, state=np.array(json.dumps(state)), **arrays)


def finished_member(checkpoint_path, model_path):
    """A member that an earlier start finished: write its model to `model_path`, return its history; else None."""
    saved = checkpoint_path and read_checkpoint(checkpoint_path)
    if not saved or not saved[0].get("finished"):
        return None
    state, arrays = saved
    with atomic_path(model_path) as temporary:
        temporary.write_bytes(arrays["model"].tobytes())
    print(f"member finished before: taken from {checkpoint_path}", flush=True)
    return state["history"]


def check_checkpoint_settings(checkpoint_dir, settings):
    """Refuse a checkpoint folder that holds checkpoints of other settings or data; claim an empty one."""
    path = Path(checkpoint_dir) / CHECKPOINT_SETTINGS_FILE
    if path.is_file():
        saved = load_json(path, "the settings of the checkpoints there")
        differing = sorted(name for name in set(saved) | set(settings) if saved.get(name) != settings.get(name))
        if differing:
            raise InputError(f"{checkpoint_dir}: holds checkpoints of other settings ({', '.join(differing)} differ); "
                             f"start with the same settings and data, or with another (or an empty) checkpoint folder")
    else:
        save_json(path, settings)


def array_digest(*arrays):
    """SHA-256 of arrays' contents (not of their files, whose zip headers hold the time they were written)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class WeightAverage(keras.callbacks.Callback):
    """An exponential moving average of every weight, batch-norm statistics included, used for validation and saving.

    Keras' own (the optimizers' `use_ema`) averages only the trainable weights: the batch-norm statistics of the
    raw weights then do not fit the averaged ones, and validation accuracy sat at 10% for epochs. The momentum
    warms up as min(momentum, (1 + step) / (10 + step)), as in tf.train.ExponentialMovingAverage, so the
    random first weights are soon forgotten. Between epochs the model holds the average (so checkpoints save
    it), during them the raw weights it trains; training ends with the average in the model.
    """

    def __init__(self, momentum):
        super().__init__()
        self.momentum = momentum
        self.resumed = None

    def resume(self, raw, step):
        """Go on from a checkpoint taken between epochs: the model was given the average; `raw` are its raw weights."""
        self.resumed = raw, step

    def state(self):
        """What a checkpoint taken between epochs needs besides the model: the raw weights, and the step."""
        return [keras.ops.convert_to_numpy(weight) for weight in self.average], float(self.step.numpy())

    def on_train_begin(self, logs=None):
        raw, step = self.resumed or (self.model.weights, 0.0)
        self.average = [tf.Variable(weight, trainable=False) for weight in raw]
        self.step = tf.Variable(step, trainable=False)
        self.holds_average = self.resumed is not None

    @tf.function
    def update(self):
        momentum = tf.minimum(self.momentum, (1 + self.step) / (10 + self.step))
        for average, weight in zip(self.average, self.model.weights):
            average.assign(momentum * average + (1 - momentum) * tf.cast(weight.value, average.dtype))
        self.step.assign_add(1)

    def swap(self, average_in_model):
        if self.holds_average != average_in_model:
            for average, weight in zip(self.average, self.model.weights):
                current = tf.identity(weight.value)
                weight.assign(average)
                average.assign(current)
            self.holds_average = average_in_model

    def on_train_batch_end(self, batch, logs=None):
        self.update()

    def on_test_begin(self, logs=None):
        self.swap(True)

    def on_test_end(self, logs=None):
        self.swap(False)

    def on_epoch_begin(self, epoch, logs=None):
        self.swap(False)

    def on_epoch_end(self, epoch, logs=None):
        self.swap(True)


def training_devices():
    """The GPUs TensorFlow sees; an empty list means the CPU."""
    return tf.config.list_logical_devices("GPU")


def distribution_strategy(devices):
    """Mirror the model over several devices (one replica each, gradients summed); one device needs no strategy."""
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    return tf.distribute.get_strategy()


def precision_policy(mixed_precision, gpus):
    """The Keras dtype policy: "on", "off", or "auto" (mixed precision where it is known to pay).

    Mixed precision is float16 on GPUs (auto: when every GPU has tensor cores, compute capability 7.0 or
    newer) and bfloat16 on the CPU (auto leaves the CPU in float32: on AVX-512 BF16 it trained about 1.2x
    faster, and its effect on test accuracy is not measured yet).
    """
    if mixed_precision not in ("auto", "on", "off"):
        raise ValueError(f"mixed_precision must be auto, on or off, got {mixed_precision!r}")
    mixed = "mixed_float16" if gpus else "mixed_bfloat16"
    if mixed_precision != "auto":
        return mixed if mixed_precision == "on" else "float32"
    capabilities = [tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0)) for gpu in gpus]
    return mixed if capabilities and min(capabilities) >= (7, 0) else "float32"


def fit(model_path, train_images, train_labels, validation_images, validation_labels, strategy, network, epochs,
        batch_size, learning_rate, learning_rate_schedule, weight_decay, label_smoothing, augment, elastic_alpha,
        patience, seed, train_on_validation, ema_momentum, checkpoint_path=None, progress=None):
    """Fit one CNN and write it to `model_path`; returns its history (one list per metric, one value per epoch).

    With `checkpoint_path`, the fit is saved there after every epoch and goes on from there when started again.
    """
    finished = finished_member(checkpoint_path, model_path)
    if finished is not None:
        return finished
    keras.utils.set_random_seed(seed)
    batch_size = min(batch_size, len(train_images))
    steps_per_epoch = len(train_images) // batch_size
    if learning_rate_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=learning_rate / 10,
            warmup_target=learning_rate,
            warmup_steps=steps_per_epoch,
            decay_steps=max(1, (epochs - 1) * steps_per_epoch),
        )
    with strategy.scope():
        model = build_model(network)
        model.compile(
            optimizer=keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
            metrics=["accuracy"],
        )
    with atomic_path(model_path) as temporary_path:
        # Validation images inside the training set make validation accuracy meaningless for choosing an epoch:
        # then the last epoch is kept and nothing stops early.
        best_epoch_callbacks = [] if train_on_validation else [
            keras.callbacks.ModelCheckpoint(temporary_path, monitor="val_accuracy", mode="max", save_best_only=True),
            keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=patience),
        ]
        # With an average of the weights, validation, the best-epoch model and the saved model all use it.
        weight_average = WeightAverage(ema_momentum) if ema_momentum else None
        callbacks = [EpochTimer(steps_per_epoch * batch_size), *([progress] if progress else []),
                     *([weight_average] if weight_average else []), *best_epoch_callbacks]
        checkpoint = checkpoint_path and TrainingCheckpoint(checkpoint_path, temporary_path, best_epoch_callbacks, weight_average)
        initial_epoch = 0
        if checkpoint:
            callbacks.append(checkpoint)
            with strategy.scope():
                initial_epoch = checkpoint.restore(model)
        history = model.fit(
            training_dataset(train_images, train_labels, batch_size, epochs, seed, augment, elastic_alpha,
                             first_step=initial_epoch * steps_per_epoch),
            steps_per_epoch=steps_per_epoch,
            initial_epoch=initial_epoch,
            epochs=initial_epoch if checkpoint and checkpoint.state["stopped"] else epochs,
            validation_data=(validation_images.astype(np.float32), keras.utils.to_categorical(validation_labels, 10)),
            validation_batch_size=512,
            shuffle=False,  # the dataset shuffles, reproducibly
            callbacks=callbacks,
            verbose=0,  # EpochProgress prints one line per epoch
        )
        if train_on_validation:
            model.save(temporary_path)
    if checkpoint:
        checkpoint.finish(model_path)
        return checkpoint.state["history"]
    return {name: [float(value) for value in values] for name, values in history.history.items()}


def train(
    train_data,
    validation_data,
    model_dir,
    history_path,
    network="compact",
    epochs=15,
    batch_size=128,
    learning_rate=0.003,
    learning_rate_schedule="cosine",
    weight_decay=0.0001,
    label_smoothing=0.1,
    augment=True,
    elastic_alpha=0.0,
    patience=5,
    seed=42,
    ensemble_size=1,
    train_on_validation=False,
    ema_momentum=0.0,
    pseudo_label_data=None,
    pseudo_label_confidence=0.85,
    mixed_precision="auto",
    curves_png=None,
    checkpoint_dir=None,
):
    """Fit `ensemble_size` CNNs (seeds `seed`, `seed + 1`, ...), keep each one's best validation epoch, write them and their histories.

    The learning rate warms up for one epoch, then follows a cosine down to zero ("cosine"), or stays
    at `learning_rate` ("constant"). Early stopping ends a member whose validation accuracy stalls for
    `patience` epochs. `augment` rotates, shifts, shears and zooms; `elastic_alpha` > 0 adds elastic distortion of that strength.
    `ema_momentum` > 0 keeps an exponential moving average of the weights and batch-norm statistics
    (Polyak averaging, updated every step with that momentum, warmed up): validation, the best-epoch
    choice and the saved model use the average.
    `train_on_validation` adds the validation images to the training set (for a final fit once the
    settings are chosen) and keeps each member's last epoch. With `pseudo_label_data` (test.npz), the
    ensemble first labels the test images, then is trained afresh with the test images it labelled with
    at least `pseudo_label_confidence` added to the training set (label smoothing 0.1 caps a sure
    prediction near 0.91; at 0.85 a model took 89% of the test images, and was right on every validation
    image it was that sure of). Several GPUs are used as one (MirroredStrategy); `mixed_precision` is
    "auto" (float16 compute on GPUs with tensor cores), "on" (float16 on GPUs, bfloat16 on the CPU) or
    "off". With `curves_png`, loss and error per epoch are plotted there. With `checkpoint_dir`, each member's
    fit is saved there after every epoch; started again with the same settings and data, training goes on
    after the last finished epoch and keeps the members already finished (a folder holding checkpoints of
    other settings is refused).
    Returns {"members": [one history per member], "pseudo_labels": images added (0 without)}, and after a second
    round with pseudo-labels its first round's histories as "first_round_members".
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience), ("ensemble_size", ensemble_size)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    check_network(network)
    if learning_rate_schedule not in ("cosine", "constant"):
        raise ValueError(f"learning_rate_schedule must be cosine or constant, got {learning_rate_schedule!r}")
    if not 0 <= ema_momentum < 1:
        raise ValueError(f"ema_momentum must be in [0, 1), got {ema_momentum}")
    if not 0 < pseudo_label_confidence <= 1:
        raise ValueError(f"pseudo_label_confidence must be in (0, 1], got {pseudo_label_confidence}")
    devices = training_devices()
    gpus = tf.config.list_physical_devices("GPU")
    policy = precision_policy(mixed_precision, gpus)
    where = f"training on {len(devices)} GPU(s)" if devices else "training on the CPU (no GPU found)"
    print(where + ("" if policy == "float32" else f", mixed precision ({policy.removeprefix('mixed_')})"), flush=True)
    train_images, train_labels = load_arrays(train_data, "images", "labels")
    validation_images, validation_labels = load_arrays(validation_data, "images", "labels")
    if train_on_validation:
        train_images = np.concatenate([train_images, validation_images])
        train_labels = np.concatenate([train_labels, validation_labels])
    recipe = dict(network=network, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                  learning_rate_schedule=learning_rate_schedule, weight_decay=weight_decay,
                  label_smoothing=label_smoothing, augment=augment, elastic_alpha=elastic_alpha, patience=patience,
                  train_on_validation=train_on_validation, ema_momentum=ema_momentum)
    if checkpoint_dir:
        check_checkpoint_settings(checkpoint_dir, dict(
            recipe, seed=seed, ensemble_size=ensemble_size, pseudo_labels=pseudo_label_data is not None,
            pseudo_label_confidence=pseudo_label_confidence, mixed_precision=policy,
            data=array_digest(train_images, train_labels, validation_images, validation_labels),
            pseudo_label_data=pseudo_label_data and array_digest(*load_arrays(pseudo_label_data, "images")),
        ))
    settings = dict(recipe, validation_images=validation_images, validation_labels=validation_labels,
                    strategy=distribution_strategy(devices))
    model_paths = [Path(model_dir) / MODEL_FILE.format(member=member) for member in range(ensemble_size)]

    def fit_members(images, labels, round_of_training):
        return [fit(path, images, labels, seed=seed + member, progress=EpochProgress(member, ensemble_size, epochs),
                    checkpoint_path=checkpoint_dir and Path(checkpoint_dir) / CHECKPOINT_FILE.format(round=round_of_training, member=member),
                    **settings)
                for member, path in enumerate(model_paths)]

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        histories = fit_members(train_images, train_labels, 0)
        first_round, pseudo_labels = histories, 0
        if pseudo_label_data is not None:
            (test_images,) = load_arrays(pseudo_label_data, "images")
            probabilities = np.mean([load_model_file(path).predict(test_images.astype(np.float32), batch_size=512, verbose=0)
                                     for path in model_paths], axis=0)
            confident = probabilities.max(axis=1) >= pseudo_label_confidence
            pseudo_labels = int(confident.sum())
            print(f"pseudo-labels: {pseudo_labels} of {len(test_images)} test images at confidence >= "
                  f"{pseudo_label_confidence}" + ("; training again with them" if pseudo_labels else
                                                   "; keeping the first models"), flush=True)
            if pseudo_labels:
                train_images = np.concatenate([train_images, test_images[confident]])
                train_labels = np.concatenate([train_labels, probabilities[confident].argmax(axis=1).astype(train_labels.dtype)])
                histories = fit_members(train_images, train_labels, 1)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    # Members of an earlier, larger ensemble in the same folder would be averaged in by export.
    for stale in set(Path(model_dir).glob(MODEL_FILE.format(member="*"))) - set(model_paths):
        stale.unlink()
    history = {"members": histories, "pseudo_labels": pseudo_labels}
    if histories is not first_round:
        history["first_round_members"] = first_round
    save_json(history_path, history)
    if curves_png:
        training_curves(histories, curves_png)
    for member, member_history in enumerate(histories):
        print(f"member {member}: best validation accuracy {max(member_history['val_accuracy']):.4f} "
              f"after {len(member_history['val_accuracy'])} epochs", flush=True)
    return history


def load_model_file(path):
    """A trained model in float32, whatever precision it was trained in (so export and parity compare like with like)."""
    trained = keras.models.load_model(path, compile=False)
    network = EARLIER_NAMES.get(trained.name, trained.name)
    if network not in NETWORKS:
        raise InputError(f"{path}: a model named {trained.name!r}, not one of train's networks ({', '.join(NETWORKS)})")
    model = build_model(network)
    model.set_weights(trained.get_weights())
    return model


def load_models(model_dir):
    """The members that train wrote to `model_dir`, in order."""
    paths = sorted(Path(model_dir).glob(MODEL_FILE.format(member="*")),
                   key=lambda path: int(path.stem.rsplit("-", 1)[1]))
    if not paths:
        raise InputError(f"{Path(model_dir) / MODEL_FILE.format(member=0)}: file not found (the model folder that train writes)")
    return [load_model_file(path) for path in paths]


def main(argv=None):
    defaults = signature_defaults(train)
    parser = argparse.ArgumentParser(prog="python -m components.train", description=__doc__.splitlines()[0])
    parser.add_argument("--train-data", required=True, help="train.npz from preprocess")
    parser.add_argument("--validation-data", required=True, help="validation.npz from preprocess")
    parser.add_argument("--model-dir", required=True, help=f"folder for the trained models ({MODEL_FILE.format(member='N')})")
    parser.add_argument("--history", help="per-epoch history as JSON (default: MODEL_DIR/history.json)")
    parser.add_argument("--curves", dest="curves_png", help="where to plot the training curves (PNG, optional)")
    parser.add_argument("--network", choices=NETWORKS, default=defaults["network"], help="compact (global average pooling) or deotte (strided convolutions, dense head) (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=defaults["epochs"], help="passes over the training set (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"], help="images per step (default: %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=defaults["learning_rate"], help="peak learning rate (default: %(default)s)")
    parser.add_argument("--learning-rate-schedule", choices=("cosine", "constant"), default=defaults["learning_rate_schedule"], help="one epoch of warm-up then a cosine to zero, or constant (default: %(default)s)")
    parser.add_argument("--weight-decay", type=float, default=defaults["weight_decay"], help="AdamW weight decay (default: %(default)s)")
    parser.add_argument("--label-smoothing", type=float, default=defaults["label_smoothing"], help="label smoothing of the loss (default: %(default)s)")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="train on the images as they are (default: random rotation, shift, shear and zoom)")
    parser.add_argument("--elastic-alpha", type=float, default=defaults["elastic_alpha"], help="strength of elastic distortion in pixels, 0 for none (Simard et al. used 34) (default: %(default)s)")
    parser.add_argument("--patience", type=int, default=defaults["patience"], help="epochs without a better validation accuracy before stopping (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults["seed"], help="seed of weights, shuffling and augmentation (default: %(default)s)")
    parser.add_argument("--ensemble-size", type=int, default=defaults["ensemble_size"], help="CNNs to train, with seeds SEED, SEED+1, ... (default: %(default)s)")
    parser.add_argument("--ema-momentum", type=float, default=defaults["ema_momentum"], help="keep an exponential moving average of the weights with this momentum, and use it; 0 for none (default: %(default)s)")
    parser.add_argument("--train-on-validation", action="store_true", help="add the validation images to the training set and keep the last epoch")
    parser.add_argument("--pseudo-label-data", help="test.npz from preprocess: train again with the test images the first models label confidently")
    parser.add_argument("--pseudo-label-confidence", type=float, default=defaults["pseudo_label_confidence"], help="least probability for a pseudo-label (default: %(default)s)")
    parser.add_argument("--checkpoint-dir", help="save each epoch there; started again with the same settings, training goes on from the last one (default: no checkpoints)")
    parser.add_argument("--mixed-precision", choices=("auto", "on", "off"), default=defaults["mixed_precision"], help="mixed precision: float16 on GPUs, bfloat16 on the CPU; auto turns it on for GPUs with tensor cores (default: %(default)s)")
    args = vars(parser.parse_args(argv))
    args["history_path"] = args.pop("history") or f"{args['model_dir']}/history.json"
    run_cli(train, args)


if __name__ == "__main__":
    main()
