"""The networks that train fits: batch-normalized Keras CNNs from raw 0-255 pixels to ten digit probabilities."""

import keras
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
    x = layers.BatchNormalization(momentum=0.9)(x)
    return layers.ReLU()(x)


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
