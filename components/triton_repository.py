"""Triton's model repository of the exported model: what KServe's stock runtime for `modelFormat: onnx` serves.

    python -m components.triton_repository --onnx-model runs/latest/model.onnx --repository runs/latest/triton

KServe's Triton runtime starts `tritonserver --model-store=/mnt/models`, and Triton loads each folder there as a
model: `digit-recognizer/1/model.onnx` (version 1) and its `config.pbtxt`, which names the model's inputs and
outputs, their types and shapes (without the batch dimension) and turns on dynamic batching. The config is read
off the ONNX model itself; tests/components/test_triton_repository.py parses it with Triton's own protobuf.
"""

import shutil
from pathlib import Path

from common.errors import InputError
from common.onnx_model import load_session
from components.cli import command_line

MODEL_NAME = "digit-recognizer"  # the name in /v2/models/{name}, as our server's default
CONFIG_FILE = "config.pbtxt"
# onnxruntime's element types -> Triton's data types.
DATA_TYPES = {
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(int64)": "TYPE_INT64",
    "tensor(int32)": "TYPE_INT32",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(int8)": "TYPE_INT8",
    "tensor(bool)": "TYPE_BOOL",
}


def tensor_config(node):
    """One input or output of the config: Triton's dims leave out the batch dimension, and a tensor that is the
    batch dimension alone ([n]: the labels) is declared [1] and reshaped to [] as Triton's documentation asks."""
    if node.type not in DATA_TYPES:
        raise InputError(f"{node.name}: onnxruntime type {node.type} has no Triton data type here")
    batch, *dims = node.shape
    if isinstance(batch, int) or not all(isinstance(dim, int) for dim in dims):
        raise InputError(f"{node.name}: shape {node.shape} is not a dynamic batch of fixed-size items")
    lines = [f'    name: "{node.name}"', f"    data_type: {DATA_TYPES[node.type]}"]
    lines += (
        [f"    dims: [ {', '.join(map(str, dims))} ]"] if dims else ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    )
    return "  {\n" + "\n".join(lines) + "\n  }"


def model_config(onnx_model: str | Path, name: str = MODEL_NAME, max_batch_size: int = 1024) -> str:
    """config.pbtxt for `onnx_model`: onnxruntime backend, its inputs and outputs, dynamic batching."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
    session = load_session(onnx_model)
    inputs = ",\n".join(tensor_config(node) for node in session.get_inputs())
    outputs = ",\n".join(tensor_config(node) for node in session.get_outputs())
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n"
        # Concurrent requests share one model call, as in our server (its max wait is 0 too).
        "dynamic_batching { max_queue_delay_microseconds: 0 }\n"
    )


def write_repository(
    onnx_model: str | Path, repository: str | Path, name: str = MODEL_NAME, max_batch_size: int = 1024
) -> Path:
    """Write Triton's model repository of `onnx_model` into `repository`: NAME/1/model.onnx and NAME/config.pbtxt.

    Args:
        onnx_model: the exported model (model.onnx)
        repository: the repository's folder (KServe's storage URI names it; its content lands in /mnt/models)
        name: the model's name in the repository and in the V2 paths
        max_batch_size: the most images Triton batches into one call, and takes in one request
    """
    config = model_config(onnx_model, name, max_batch_size)
    model_folder = Path(repository) / name
    (model_folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_model, model_folder / "1" / "model.onnx")
    (model_folder / CONFIG_FILE).write_text(config)
    return model_folder


def main(argv=None):
    print(command_line(write_repository, argv))


if __name__ == "__main__":
    main()
