import numpy as np
import orjson
import pytest

from serving.errors import BadRequest
from serving.protocol import infer_response, parse_infer_request


def request(data=None, shape=(1, 784), datatype="UINT8", **extra):
    tensor = {
        "name": "pixels",
        "shape": list(shape),
        "datatype": datatype,
        "data": [0] * int(np.prod(shape)) if data is None else data,
    }
    return orjson.dumps({"inputs": [tensor], **extra})


def test_json_tensor_of_either_shape():
    for shape in ((2, 784), (2, 28, 28, 1)):
        request_id, images, outputs, binary = parse_infer_request(request(shape=shape, id="x"))
        assert images.shape == (2, 28, 28, 1) and images.dtype == np.float32
        assert (request_id, outputs, binary) == ("x", [], False)


def test_binary_tensor_extension():
    pixels = np.arange(784, dtype=np.uint8)
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "pixels", "shape": [1, 784], "datatype": "UINT8", "parameters": {"binary_data_size": 784}}
            ],
            "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
        }
    )
    _, images, outputs, binary = parse_infer_request(header + pixels.tobytes(), header_length=len(header))
    np.testing.assert_array_equal(images.ravel(), pixels)
    assert outputs == ["label"] and binary


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "malformed JSON"),
        (b"[]", "non-empty list 'inputs'"),
        (orjson.dumps({"inputs": []}), "non-empty list 'inputs'"),
        (request(datatype="BYTES"), "datatype 'BYTES' is not a numeric V2 datatype"),
        (request(datatype="UINT8", data=[0.5] * 784), "holds whole numbers"),
        (request(shape=(1, 783), data=[0] * 783), "shape [1, 783] is not [N, 28, 28, 1] or [N, 784]"),
        (request(shape=(1, 784), data=[0] * 783), "needs 784 values, 'data' has 783"),
        (request(shape=(0, 784), data=[]), "the batch is empty"),
        (request(data=[float("nan")] + [0] * 783, datatype="FP32").replace(b"null", b"NaN"), "malformed JSON"),
        (request(data=[1e309] + [0] * 783, datatype="FP32"), "NaN or infinity"),
        (request(data=[256] + [0] * 783), "pixel values must lie in 0-255, found 0 to 256"),
        (request(data=[-1] + [0] * 783, datatype="INT32"), "pixel values must lie in 0-255, found -1 to 0"),
        (request(data=["a"] * 784), "'data' must hold only numbers"),
        (
            orjson.dumps({"inputs": [{"name": "image", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}]}),
            "unknown input 'image'",
        ),
    ],
)
def test_bad_requests_say_what_is_wrong(body, message):
    with pytest.raises(BadRequest) as error:
        parse_infer_request(body)
    assert message in str(error.value)
    assert error.value.status == 400


def test_binary_size_must_match_shape():
    header = orjson.dumps(
        {"inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "FP32", "parameters": {"binary_data_size": 784}}]}
    )
    with pytest.raises(BadRequest, match="binary_data_size 784 does not match shape"):
        parse_infer_request(header + bytes(784), header_length=len(header))
    with pytest.raises(BadRequest, match="does not fit a body"):
        parse_infer_request(header, header_length=len(header) + 5)


def test_response_json_and_binary():
    probabilities = np.eye(10, dtype=np.float32)[[3, 7]]
    labels = np.array([3, 7])
    body, headers = infer_response("m", "9f2c", "id-1", probabilities, labels)
    document = orjson.loads(body)
    assert headers == {} and document["id"] == "id-1" and document["model_name"] == "m"
    assert document["outputs"][1] == {"name": "label", "shape": [2], "datatype": "INT64", "data": [3, 7]}
    assert document["outputs"][0]["shape"] == [2, 10] and len(document["outputs"][0]["data"]) == 20
    body, headers = infer_response("m", "9f2c", None, probabilities, labels, ["label"], binary=True)
    length = int(headers["Inference-Header-Content-Length"])
    header = orjson.loads(body[:length])
    assert "id" not in header
    assert header["outputs"] == [
        {"name": "label", "shape": [2], "datatype": "INT64", "parameters": {"binary_data_size": 16}}
    ]
    np.testing.assert_array_equal(np.frombuffer(body[length:], "<i8"), labels)
    with pytest.raises(BadRequest, match="unknown output 'logits'"):
        infer_response("m", "9f2c", None, probabilities, labels, ["logits"])
