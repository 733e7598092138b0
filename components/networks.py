"""The networks that train fits: batch-normalized Keras CNNs from raw 0-255 pixels to ten digit probabilities."""

import keras
import tensorflow as tf
from keras import layers

from common.errors import InputError
from common.kaggle_format import IMAGE_SIZE

NETWORKS = ("deotte", "compact", "strided")
EARLIER_NAMES = {"digit_cnn": "compact"}  # what models saved before the choice of network were named


def check_network(network):
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {', '.join(NETWORKS)}, got {network!r}")


def build_model(network="deotte"):
    """Raw 0-255 pixels [n, 28, 28, 1] in, ten digit probabilities out; the model's name is its network.

    "deotte": Chris Deotte's Kaggle MNIST network (32C3-32C3-32C5S2, 64C3-64C3-64C5S2, 128C4, dropout 0.4
    after each stage): unpadded convolutions, strided ones instead of pooling, and a dense layer over the
    last feature map instead of an average. "compact": two blocks of two 3x3 convolutions (32, then 64
    filters), each block max-pooled, a block of 128, global average pooling, dropout 0.3. "strided": the
    same, but each block's second convolution has stride 2 in place of the pooling, so it computes at the
    lower resolution (half the multiply-adds). All batch-normalize every convolution. Under a mixed-precision
    policy the layers compute in float16 or bfloat16; the output layer stays float32.
    """
    check_network(network)
    inputs = keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, 1), name="pixels")
    x = layers.Rescaling(1 / 255)(inputs)
    if network in ("compact", "strided"):
        for filters in (32, 64):
            x = conv_block(x, filters)
            if network == "compact":
                x = conv_block(x, filters)
                x = layers.MaxPooling2D()(x)
            else:
                x = conv_block(x, filters, strides=2)
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
    x = FusedBatchNormalization(momentum=0.9)(x)
    return layers.ReLU()(x)


@keras.saving.register_keras_serializable(package="digit_recognizer")
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras' batch normalization of NHWC feature maps, trained with TensorFlow's fused kernel.

    Keras 3 normalizes a training batch in a chain of separate operations (mean, squared difference,
    scaling: a large share of the compact network's epoch on the CPU); FusedBatchNormV3 does it, and its
    gradient, in one kernel each (how much faster: docs/BENCHMARKS.md). It computes the same function:
    the batch's mean and biased variance, the moving statistics updated with `momentum`. Inference, and so
    export, is Keras' own.
    """

    def build(self, input_shape):
        if len(input_shape) != 4 or self.axis not in (-1, 3) or not (self.scale and self.center):
            raise ValueError(
                f"FusedBatchNormalization scales and shifts the channels (axis -1) of NHWC feature maps; got axis "
                f"{self.axis}, scale={self.scale}, center={self.center} for inputs of shape {input_shape}"
            )
        super().build(input_shape)

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None:
            return super().call(inputs, training=training, mask=mask)
        outputs, mean, unbiased_variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs,
            scale=tf.cast(self.gamma, tf.float32),
            offset=tf.cast(self.beta, tf.float32),
            mean=tf.constant([], tf.float32),
            variance=tf.constant([], tf.float32),
            epsilon=self.epsilon,
            data_format="NHWC",
            is_training=True,
        )
        # The kernel returns the unbiased variance for the moving statistics; Keras keeps the biased one.
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), tf.float32)
        variance = unbiased_variance * (count - 1) / count
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1 - self.momentum))
        return outputs


def load_model_file(path):
    """A trained model in float32, whatever precision it was trained in (so export and parity compare like with like).

    The network is rebuilt by the saved model's name and given its weights.
    """
    trained = keras.models.load_model(path, compile=False)
    network = EARLIER_NAMES.get(trained.name, trained.name)
    if network not in NETWORKS:
        raise InputError(f"{path}: a model named {trained.name!r}, not one of train's networks ({', '.join(NETWORKS)})")
    model = build_model(network)
    model.set_weights(trained.get_weights())
    return model
