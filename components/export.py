"""Export: convert the Keras model to ONNX with tf2onnx, and refuse it unless onnxruntime agrees with Keras.

    python -m components.export --model-dir work/model \
        --validation-data work/validation.npz --onnx-model work/model.onnx
"""
import argparse

import numpy as np
import tensorflow as tf
import tf2onnx

from components.artifacts import InputError, atomic_path, load_arrays
from components.cli import run_cli, signature_defaults
from components.kaggle_csv import IMAGE_SIZE
from components.onnx_model import INPUT_NAME, load_session, predict
from components.train import load_model


def to_onnx(model, opset=17):
    """An ONNX model proto: raw pixels `pixels` [batch, 28, 28, 1] in, `probabilities` and `label` out."""
    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 1], tf.float32, name=INPUT_NAME)])
    def serve(pixels):
        probabilities = model(pixels, training=False)
        return {"probabilities": probabilities, "label": tf.argmax(probabilities, axis=1)}

    # tf2onnx.convert.from_keras does not handle Keras 3 models; a tf.function converts cleanly.
    model_proto, _ = tf2onnx.convert.from_function(serve, input_signature=serve.input_signature, opset=opset)
    return model_proto


def parity(model, session, images, batch_size=1024):
    """Largest absolute difference of probabilities, and the number of differing labels, Keras vs onnxruntime."""
    keras_probabilities = model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0)
    onnx_probabilities, onnx_labels = predict(session, images, batch_size)
    max_difference = float(np.abs(keras_probabilities - onnx_probabilities).max())
    label_mismatches = int((keras_probabilities.argmax(axis=1) != onnx_labels).sum())
    return max_difference, label_mismatches


def export(model_dir, validation_data, onnx_model, tolerance=0.0001, opset=17):
    """Write `onnx_model` only if it matches Keras on every validation image; return the parity figures."""
    model = load_model(model_dir)
    images, _ = load_arrays(validation_data, "images", "labels")
    with atomic_path(onnx_model) as temporary:
        temporary.write_bytes(to_onnx(model, opset).SerializeToString())
        max_difference, label_mismatches = parity(model, load_session(temporary), images)
        print(f"parity on {len(images)} validation images: max |p_keras - p_onnx| = {max_difference:.2e}, "
              f"{label_mismatches} differing labels", flush=True)
        if max_difference >= tolerance or label_mismatches:
            raise InputError(
                f"{model_dir}: the ONNX model disagrees with Keras (max probability difference "
                f"{max_difference:.2e}, tolerance {tolerance:.0e}; {label_mismatches} differing labels); not exported"
            )
    return {"max_probability_difference": max_difference, "label_mismatches": label_mismatches,
            "parity_images": len(images)}


def main(argv=None):
    defaults = signature_defaults(export)
    parser = argparse.ArgumentParser(prog="python -m components.export", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="the trained model's folder, from train")
    parser.add_argument("--validation-data", required=True, help="validation.npz from preprocess: the parity check's images")
    parser.add_argument("--onnx-model", required=True, help="where to write model.onnx")
    parser.add_argument("--tolerance", type=float, default=defaults["tolerance"], help="largest allowed probability difference (default: %(default)s)")
    parser.add_argument("--opset", type=int, default=defaults["opset"], help="ONNX opset (default: %(default)s)")
    print(run_cli(export, vars(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
