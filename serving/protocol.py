"""KServe's V2 Open Inference Protocol: request tensors in, response tensors out.

JSON tensors (`name`, `shape`, `datatype`, `data`) and the binary tensor extension
(Triton's `binary_data`: a JSON header of `Inference-Header-Content-Length` bytes, then
raw little-endian tensors in order). A batch of N images is shape [N, 28, 28, 1] or [N, 784].
"""

import math

import numpy as np
import orjson

from common.onnx_model import INPUT_NAME
from serving.errors import BadRequest

DATATYPES = {
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


def pixels_from_array(values, what: str) -> np.ndarray:
    """Check raw pixel values (finite, 0-255, 784 per image) and shape them [n, 28, 28, 1] float32."""
    values = np.asarray(values)
    if values.size == 0:
        raise BadRequest(f"{what}: the batch is empty")
    if values.size % 784:
        raise BadRequest(f"{what}: {values.size} values are not whole images of 784 pixels")
    values = values.astype(np.float32, copy=False)
    if not np.isfinite(values).all():
        raise BadRequest(f"{what}: NaN or infinity among the pixel values")
    if values.min() < 0 or values.max() > 255:
        raise BadRequest(f"{what}: pixel values must lie in 0-255, found {values.min():g} to {values.max():g}")
    return values.reshape(-1, 28, 28, 1)


def parse_infer_request(
    body: bytes, header_length: int | None = None
) -> tuple[str | None, np.ndarray, list[str], bool]:
    """A V2 request body as (request id, images [n, 28, 28, 1], requested output names, binary reply wanted)."""
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length {header_length} does not fit a body of {len(body)} bytes"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header, binary = body, memoryview(b"")
    try:
        request = orjson.loads(header)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"malformed JSON: {error}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise BadRequest("the request must be a JSON object with a non-empty list 'inputs'")
    if len(request["inputs"]) != 1:
        raise BadRequest(f"the model takes one input tensor, {INPUT_NAME!r}; got {len(request['inputs'])}")
    tensor = request["inputs"][0]
    if not isinstance(tensor, dict):
        raise BadRequest("inputs[0] must be an object with name, shape, datatype and data")
    name, binary_size = tensor.get("name"), (tensor.get("parameters") or {}).get("binary_data_size")
    if binary_size is not None and (not isinstance(binary_size, int) or len(binary) < binary_size):
        raise BadRequest(f"input {name!r}: binary_data_size {binary_size} does not fit the binary data")
    images = input_images(
        name,
        tensor.get("shape"),
        tensor.get("datatype"),
        data=tensor.get("data"),
        raw=None if binary_size is None else binary[:binary_size],
        raw_field="binary_data_size",
    )
    outputs = request.get("outputs") or []
    if not isinstance(outputs, list) or not all(isinstance(output, dict) and "name" in output for output in outputs):
        raise BadRequest("'outputs' must be a list of objects with a 'name'")
    parameters = request.get("parameters") or {}
    binary_reply = bool(parameters.get("binary_data_output")) if isinstance(parameters, dict) else False
    binary_reply = binary_reply or any((output.get("parameters") or {}).get("binary_data") for output in outputs)
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    return request_id, images, [output["name"] for output in outputs], binary_reply


def input_images(name, shape, datatype, data=None, raw=None, raw_field="raw data") -> np.ndarray:
    """The model's input tensor, as either transport gives it, checked and shaped [n, 28, 28, 1] float32.

    `data`: the values as numbers (JSON's 'data', gRPC's typed contents); `raw`: the flat little-endian bytes
    (the binary extension, gRPC's raw_input_contents), named `raw_field` in errors.
    """
    if name != INPUT_NAME:
        raise BadRequest(f"unknown input {name!r}: the model's input is {INPUT_NAME!r}")
    if datatype not in DATATYPES:
        raise BadRequest(f"input {name!r}: datatype {datatype!r} is not a numeric V2 datatype ({', '.join(DATATYPES)})")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f"input {name!r}: shape must be a list of non-negative integers")
    if shape[1:] not in ([28, 28, 1], [784], [28, 28]):
        raise BadRequest(f"input {name!r}: shape {shape} is not [N, 28, 28, 1] or [N, 784]")
    dtype = np.dtype(DATATYPES[datatype]).newbyteorder("<")
    expected = math.prod(shape)
    if raw is not None:
        if len(raw) != expected * dtype.itemsize:
            raise BadRequest(
                f"input {name!r}: {raw_field} {len(raw)} does not match shape {shape} of {datatype} "
                f"({expected * dtype.itemsize} bytes)"
            )
        values = np.frombuffer(raw, dtype=dtype)
    elif not isinstance(data, list | np.ndarray):
        raise BadRequest(f"input {name!r}: 'data' must be a list of numbers")
    else:
        try:
            values = np.array(data, dtype=np.float64)
        except (ValueError, TypeError, OverflowError):
            raise BadRequest(f"input {name!r}: 'data' must hold only numbers ({datatype})") from None
        if dtype.kind in "iu" and np.isfinite(values).all() and (values != np.round(values)).any():
            raise BadRequest(f"input {name!r}: datatype {datatype} holds whole numbers, 'data' has fractions")
        if values.size != expected:
            raise BadRequest(f"input {name!r}: shape {shape} needs {expected} values, 'data' has {values.size}")
    return pixels_from_array(values, f"input {name!r}")


def output_tensors(
    probabilities: np.ndarray, labels: np.ndarray, output_names: tuple[str, ...] | list[str] = ()
) -> list[tuple[str, np.ndarray, str]]:
    """(name, little-endian values, V2 datatype) of each requested output, in the order asked (none: all)."""
    tensors = {
        "probabilities": (probabilities.astype("<f4"), "FP32"),
        "label": (labels.astype("<i8"), "INT64"),
    }
    unknown = [name for name in output_names if name not in tensors]
    if unknown:
        raise BadRequest(f"unknown output {unknown[0]!r}: the model's outputs are probabilities and label")
    return [(name, *tensors[name]) for name in output_names or tensors]


def infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    probabilities: np.ndarray,
    labels: np.ndarray,
    output_names: tuple[str, ...] | list[str] = (),
    binary: bool = False,
) -> tuple[bytes, dict[str, str]]:
    """A V2 response (body bytes, extra headers): JSON, or JSON header plus raw tensors when `binary`."""
    outputs, chunks = [], []
    for name, values, datatype in output_tensors(probabilities, labels, output_names):
        output = {"name": name, "shape": list(values.shape), "datatype": datatype}
        if binary:
            chunk = values.tobytes()
            output["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            output["data"] = values.ravel()
        outputs.append(output)
    response = {"model_name": model_name, "model_version": model_version, "outputs": outputs}
    if request_id is not None:
        response["id"] = request_id
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary:
        return header, {}
    return header + b"".join(chunks), {"Inference-Header-Content-Length": str(len(header))}
