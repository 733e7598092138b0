"""Running the exported ONNX model with onnxruntime: shared by export, evaluate, score and serving.

The model takes raw 0-255 pixels as float32 `pixels` [n, 28, 28, 1] and returns
`probabilities` [n, 10] and `label` [n]. Export writes its identity into its metadata: the SHA-256 of the model
as it was before (DIGEST_KEY), which the model's registered version in MLflow records too.
"""

from pathlib import Path

import numpy as np
import onnxruntime

from common.errors import InputError

INPUT_NAME = "pixels"
OUTPUT_NAMES = ("probabilities", "label")
DIGEST_KEY = "digit_recognizer.sha256"  # the model's metadata_props entry that names it


def load_session(onnx_path, threads=0, spin=True):
    """An onnxruntime CPU session; `threads=0` lets onnxruntime use every core.

    `spin=False` stops idle worker threads from spinning for more work: a server whose event
    loop shares the cores with onnxruntime wants them back at once.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InputError(f"{onnx_path}: file not found")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own untyped errors for a bad file
        raise InputError(f"{onnx_path}: not an ONNX model onnxruntime can load ({error})") from None
    inputs = [node.name for node in session.get_inputs()]
    outputs = sorted(node.name for node in session.get_outputs())
    if inputs != [INPUT_NAME] or outputs != sorted(OUTPUT_NAMES):
        raise InputError(
            f"{onnx_path}: expected input {INPUT_NAME!r} and outputs {', '.join(OUTPUT_NAMES)}; "
            f"found inputs {inputs} and outputs {outputs}"
        )
    return session


def predict(session, images, batch_size=1024):
    """Probabilities [n, 10] and labels [n] for uint8 or float images [n, 28, 28, 1], in batches."""
    probabilities, labels = [], []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size], dtype=np.float32)
        batch_probabilities, batch_labels = session.run(OUTPUT_NAMES, {INPUT_NAME: batch})
        probabilities.append(batch_probabilities)
        labels.append(batch_labels)
    if not probabilities:
        return np.zeros((0, 10), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(probabilities), np.concatenate(labels)


def model_version(session):
    """The version a server reports for the model of `session`: the first 12 hex digits of its digest (as a short
    commit id names a commit; the registered version in MLflow records the whole digest), "1" without one."""
    return model_digest(session)[:12] or "1"


def model_digest(session):
    """The identity export wrote into the model of `session` (a `load_session`): its SHA-256, in hex; "" for a model
    written without one."""
    return session.get_modelmeta().custom_metadata_map.get(DIGEST_KEY, "")
