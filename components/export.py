"""Export: the Keras models as one ONNX model (tf2onnx), refused unless onnxruntime agrees with TensorFlow; int8 too.

    python -m components.export --model-dir work/model --train-data work/train.npz \
        --validation-data work/validation.npz --onnx-model work/model.onnx --int8-model work/model.int8.onnx
"""

import hashlib
import re
import tempfile
from pathlib import Path

import numpy as np
import onnx
import tensorflow as tf
import tf2onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from tf2onnx.graph import GraphUtil

from common.errors import InputError
from common.kaggle_format import IMAGE_SIZE
from common.onnx_model import DIGEST_KEY, INPUT_NAME, load_session, predict
from components import progress, tracking
from components.artifacts import atomic_path, load_arrays
from components.cli import command_line
from components.train import load_models
from components.triton_repository import write_repository

EXAMPLE_IMAGES = 5  # validation images kept as the input example of each model logged to MLflow


def shifted_views(pixels):
    """The images and four copies moved by one pixel up, down, left and right (test-time augmentation)."""
    padded = tf.pad(pixels, [[0, 0], [1, 1], [1, 1], [0, 0]])
    offsets = [(1, 1), (0, 1), (2, 1), (1, 0), (1, 2)]
    return [padded[:, row : row + IMAGE_SIZE, column : column + IMAGE_SIZE, :] for row, column in offsets]


def inference_function(models, tta=False):
    """One tf.function: raw pixels `pixels` [batch, 28, 28, 1] in; `probabilities` (averaged over the members,
    and over shifted views with `tta`) and `label` out."""

    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 1], tf.float32, name=INPUT_NAME)])
    def serve(pixels):
        views = shifted_views(pixels) if tta else [pixels]
        probabilities = tf.add_n([model(view, training=False) for model in models for view in views]) / (
            len(models) * len(views)
        )
        return {"probabilities": probabilities, "label": tf.argmax(probabilities, axis=1)}

    return serve


def to_onnx(function, opset=17):
    """The ONNX model proto of an `inference_function`."""
    # tf2onnx.convert.from_keras does not handle Keras 3 models; a tf.function converts cleanly.
    # tf2onnx names what it adds from a process-wide counter and its passes visit sets of those names: each
    # conversion counts from the start, as in a fresh process, so a second one in a process is the same graph.
    tf2onnx.utils.INTERNAL_NAME = 1
    model_proto, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature, opset=opset)
    # tf2onnx folds the Flatten's target shape into a constant only where TensorFlow's graph carried the static
    # shape, which it once did not (a CI run's export kept Shape, Slice and Concat: another file for the same
    # model). Optimizing again over ONNX's own shape inference folds it either way.
    model_proto = GraphUtil.optimize_model_proto(model_proto, catch_errors=False)
    renumber_made_names(model_proto.graph)
    return model_proto


def with_digest(model_proto):
    """`model_proto` carrying its identity: the SHA-256 of the model as it was, in its metadata (DIGEST_KEY), which
    common.onnx_model.model_digest reads back (a server, the register step). The same model gives the same digest."""
    del model_proto.metadata_props[:]  # the quantizer keeps the fp32 model's digest, which is not the int8 one's
    digest = hashlib.sha256(model_proto.SerializeToString(deterministic=True)).hexdigest()
    model_proto.metadata_props.add(key=DIGEST_KEY, value=digest)
    return model_proto


MADE_NAME = re.compile(r"(?P<made>(?P<stem>.+)__\d+)(?P<output>:\d+)?")  # a stem, tf2onnx's count, an output


def renumber_made_names(graph):
    """Number the names tf2onnx made in the order they appear in `graph`, in place, so one model gives one file.

    tf2onnx numbers them from a process-wide counter, and its passes visit sets, whose order follows Python's
    string hashing: the same model converted in two processes got `new_shape__70` in one and `new_shape__71`
    in the other.
    """
    numbers = {}

    def renamed(name):
        made = MADE_NAME.fullmatch(name)
        if not made:
            return name
        return f"{made['stem']}__{numbers.setdefault(made['made'], len(numbers))}{made['output'] or ''}"

    values = [*graph.input, *graph.output, *graph.value_info]
    for dimension in (dim for value in values for dim in value.type.tensor_type.shape.dim):
        if dimension.dim_param:
            dimension.dim_param = renamed(dimension.dim_param)
    for value in values:
        value.name = renamed(value.name)
    for initializer in graph.initializer:
        initializer.name = renamed(initializer.name)
    for node in graph.node:
        node.name = renamed(node.name)
        node.input[:] = [renamed(name) for name in node.input]
        node.output[:] = [renamed(name) for name in node.output]


def tensorflow_probabilities(function, images, batch_size=1024):
    """An `inference_function`'s probabilities for uint8 images, computed by TensorFlow in batches."""
    return np.concatenate(
        [
            function(tf.constant(images[start : start + batch_size], tf.float32))["probabilities"].numpy()
            for start in range(0, len(images), batch_size)
        ]
    )


def parity(function, session, images, batch_size=1024):
    """Largest absolute difference of probabilities, and the number of differing labels, TensorFlow vs onnxruntime."""
    expected = tensorflow_probabilities(function, images, batch_size)
    onnx_probabilities, onnx_labels = predict(session, images, batch_size)
    max_difference = float(np.abs(expected - onnx_probabilities).max())
    label_mismatches = int((expected.argmax(axis=1) != onnx_labels).sum())
    return max_difference, label_mismatches


class _Calibration(CalibrationDataReader):
    """Feeds onnxruntime's calibrator batches of training images."""

    def __init__(self, images, batch_size=256):
        self.batches = (
            images[start : start + batch_size].astype(np.float32) for start in range(0, len(images), batch_size)
        )

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize(onnx_model, calibration_images, int8_model, quant_format="QDQ"):
    """Statically quantize to int8: weights per channel, activations calibrated on `calibration_images`.

    QDQ (quantize/dequantize pairs that onnxruntime fuses into int8 kernels) and QOperator (int8
    operators) ran at the same speed here (bench/bench_inference.py); QDQ is the portable one.
    Signed int8 activations ran 17% faster than unsigned on this AVX-512 VNNI CPU, at the same accuracy.
    """
    with tempfile.TemporaryDirectory() as folder, atomic_path(int8_model) as temporary:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(onnx_model), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(temporary),
            _Calibration(calibration_images),
            quant_format=QuantFormat[quant_format],
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
        onnx.save(with_digest(onnx.load(temporary)), temporary)


def export(
    model_dir: str | Path,
    train_data: str | Path,
    validation_data: str | Path,
    onnx_model: str | Path,
    int8_model: str | Path,
    tta: bool = False,
    tolerance: float = 0.0001,
    calibration_images: int = 1024,
    opset: int = 17,
    triton_repository: str | Path = "",
) -> dict:
    """Write `onnx_model` only if it matches TensorFlow on every validation image, then its int8 twin.

    All the members in `model_dir` are averaged inside the one graph; `tta` also averages each image
    with its four one-pixel shifts. Either way scoring and serving make one model call.
    Each model carries its SHA-256 in its metadata (with_digest). With MLflow tracking (components/tracking.py) both
    are logged as MLflow models (onnx flavour) of the task's run.
    Returns the parity figures, how often the int8 model's labels agree with the fp32 model's, and the fp32 model's
    MLflow URI as `mlflow_model_uri` ("" untracked).

    Args:
        model_dir: the trained model's folder, from train
        train_data: train.npz from preprocess: int8 calibration images
        validation_data: validation.npz from preprocess: the parity check's images
        onnx_model: where to write model.onnx (fp32)
        int8_model: where to write the int8 model (model.int8.onnx)
        tta: average each image with its four one-pixel shifts, inside the graph
        tolerance: largest allowed probability difference
        calibration_images: training images that calibrate int8 activations
        opset: ONNX opset
        triton_repository: also write Triton's model repository of the fp32 model in this folder (KServe's stock
            ONNX runtime serves it: components/triton_repository.py); empty: none
    """
    models = load_models(model_dir)
    function = inference_function(models, tta)
    images, _ = load_arrays(validation_data, "images", "labels")
    with atomic_path(onnx_model) as temporary:
        temporary.write_bytes(with_digest(to_onnx(function, opset)).SerializeToString())
        max_difference, label_mismatches = parity(function, load_session(temporary), images)
        print(  # for the run's log; the console shows the step's key figure
            f"{len(models)} member(s){', test-time augmentation' if tta else ''}; "
            f"parity on {len(images)} validation images: max |p_tensorflow - p_onnx| = {max_difference:.2e}, "
            f"{label_mismatches} differing labels",
            flush=True,
        )
        if max_difference >= tolerance or label_mismatches:
            raise InputError(
                f"{model_dir}: the ONNX model disagrees with TensorFlow (max probability difference "
                f"{max_difference:.2e}, tolerance {tolerance:.0e}; {label_mismatches} differing labels); not exported"
            )
    if triton_repository:
        write_repository(onnx_model, triton_repository)
    train_images, _ = load_arrays(train_data, "images", "labels")
    quantize(onnx_model, train_images[:calibration_images], int8_model)
    _, fp32_labels = predict(load_session(onnx_model), images)
    _, int8_labels = predict(load_session(int8_model), images)
    agreement = float((fp32_labels == int8_labels).mean())
    progress.figure(f"int8 model agrees with fp32 on {agreement:.2%} of validation labels")
    examples = images[:EXAMPLE_IMAGES]
    model_uri = tracking.log_onnx_model(onnx_model, "model", examples)
    tracking.log_onnx_model(int8_model, "model-int8", examples)
    return {
        "mlflow_model_uri": model_uri or "",
        "max_probability_difference": max_difference,
        "label_mismatches": label_mismatches,
        "parity_images": len(images),
        "int8_label_agreement": agreement,
    }


def main(argv=None):
    print(command_line(export, argv))


if __name__ == "__main__":
    main()
