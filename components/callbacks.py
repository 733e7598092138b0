"""What train's fits do between steps and epochs: time them, tell the console and MLflow, keep an average of the
weights."""

import time

import keras
import numpy as np
import tensorflow as tf

from components import progress, tracking


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
        which = f"epoch {epoch + 1}/{self.epochs}"
        if self.members > 1:
            which += f" (member {self.member + 1}/{self.members})"
        validation = ""
        if "val_loss" in logs:
            validation = f", validation loss {logs['val_loss']:.4f} accuracy {logs['val_accuracy']:.4f}"
        left = duration(epochs_left * np.mean(self.seconds))
        progress.say(
            f"{which}: loss {logs['loss']:.4f} accuracy {logs['accuracy']:.4f}{validation}, "
            f"{logs['images_per_second']:.0f} images/s, about {left} left"
        )


class EpochTracking(keras.callbacks.Callback):
    """Logs each epoch's figures (loss, accuracy, validation loss and accuracy, and EpochTimer's learning rate,
    images/s and seconds) into the task's MLflow run, at step = epoch, their names after `prefix` (a member of an
    ensemble, say)."""

    def __init__(self, prefix=""):
        super().__init__()
        self.prefix = prefix

    def on_epoch_end(self, epoch, logs=None):
        tracking.log_metrics({f"{self.prefix}{name}": value for name, value in logs.items()}, step=epoch)


def duration(seconds):
    """`42 s`, `7 min`, `1 h 05 min`: how long, as a person reads it."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds // 3600:.0f} h {seconds % 3600 / 60:02.0f} min"


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
        for average, weight in zip(self.average, self.model.weights, strict=True):
            average.assign(momentum * average + (1 - momentum) * tf.cast(weight.value, average.dtype))
        self.step.assign_add(1)

    def swap(self, average_in_model):
        if self.holds_average != average_in_model:
            for average, weight in zip(self.average, self.model.weights, strict=True):
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


class Float32Finish(keras.callbacks.Callback):
    """From epoch `first_epoch` on, every layer computes in float32: a mixed-precision fit's last epochs.

    The variables are float32 under mixed precision too, so the same variables and optimizer go on; only the
    train and test functions are traced again, with float32 compute.
    """

    def __init__(self, first_epoch):
        super().__init__()
        self.first_epoch = first_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch < self.first_epoch or self.model.compute_dtype == "float32":
            return
        for layer in [self.model, *self.model.layers]:
            layer.dtype_policy = "float32"
        self.model.make_train_function(force=True)
        self.model.make_test_function(force=True)
