import io
import shutil
import time

import numpy as np
import orjson
import pytest
from PIL import Image

from common.errors import InputError
from components.kaggle_csv import read_csv
from tests.serving.conftest import wait_until_ready

INFER = "/v2/models/digit-recognizer/infer"


@pytest.fixture(scope="module")
def digits(fixture_data):
    labels, pixels = read_csv(fixture_data / "train.csv", labelled=True)
    return labels[:32], pixels[:32]


def v2_request(pixels, datatype="UINT8", **extra):
    return {
        "inputs": [
            {
                "name": "pixels",
                "shape": [len(pixels), 784],
                "datatype": datatype,
                "data": np.asarray(pixels).ravel().tolist(),
            }
        ],
        **extra,
    }


def test_health_and_metadata(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/digit-recognizer/ready").json() == {"name": "digit-recognizer", "ready": True}
    metadata = client.get("/v2/models/digit-recognizer").json()
    assert metadata["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 28, 28, 1]}]
    assert [output["name"] for output in metadata["outputs"]] == ["probabilities", "label"]
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]


def test_v2_infer_json(client, digits):
    labels, pixels = digits
    response = client.post(INFER, json=v2_request(pixels, id="request-7"))
    assert response.status_code == 200
    answer = response.json()
    assert answer["id"] == "request-7" and answer["model_name"] == "digit-recognizer"
    outputs = {output["name"]: output for output in answer["outputs"]}
    assert outputs["probabilities"]["shape"] == [32, 10] and outputs["probabilities"]["datatype"] == "FP32"
    assert outputs["label"] == {"name": "label", "shape": [32], "datatype": "INT64", "data": outputs["label"]["data"]}
    assert (np.array(outputs["label"]["data"]) == labels).mean() >= 0.95
    np.testing.assert_allclose(np.array(outputs["probabilities"]["data"]).reshape(32, 10).sum(axis=1), 1, atol=1e-4)


# The V2 protocol's documented JSON objects: every field the spec allows, and which are required.
SPEC_DATATYPES = {
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
}


def check_spec_tensors(tensors, allowed, required):
    for tensor in tensors:
        assert required <= set(tensor) <= allowed
        assert tensor["datatype"] in SPEC_DATATYPES
        assert all(isinstance(dimension, int) for dimension in tensor["shape"])
        if "data" in tensor:
            assert len(tensor["data"]) == np.prod([max(d, 1) for d in tensor["shape"]]) or -1 in tensor["shape"]


def test_v2_objects_match_the_documented_json(client, digits):
    server = client.get("/v2").json()
    assert set(server) == {"name", "version", "extensions"} and isinstance(server["extensions"], list)
    metadata = client.get("/v2/models/digit-recognizer").json()
    assert (
        {"name", "platform", "inputs", "outputs"}
        <= set(metadata)
        <= {"name", "versions", "platform", "inputs", "outputs"}
    )
    check_spec_tensors(
        metadata["inputs"] + metadata["outputs"], {"name", "datatype", "shape"}, {"name", "datatype", "shape"}
    )
    _, pixels = digits
    answer = client.post(INFER, json=v2_request(pixels[:3], id="abc")).json()
    assert {"model_name", "outputs"} <= set(answer) <= {"model_name", "model_version", "id", "parameters", "outputs"}
    check_spec_tensors(
        answer["outputs"], {"name", "shape", "datatype", "parameters", "data"}, {"name", "shape", "datatype", "data"}
    )
    asked = client.post(INFER, json=v2_request(pixels[:3], outputs=[{"name": "label"}])).json()
    assert [output["name"] for output in asked["outputs"]] == ["label"] and "id" not in asked


def test_v2_infer_binary(client, digits):
    labels, pixels = digits
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [32, 28, 28, 1],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": pixels.size},
                }
            ],
            "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
        }
    )
    response = client.post(
        INFER,
        content=header + pixels.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200
    length = int(response.headers["inference-header-content-length"])
    predicted = np.frombuffer(response.content[length:], "<i8")
    assert (predicted == labels).mean() >= 0.95


def test_predict_json_csv_and_images(client, digits):
    labels, pixels = digits
    one = client.post("/predict", json={"pixels": pixels[0].tolist()}).json()
    assert set(one) == {"label", "probabilities"} and len(one["probabilities"]) == 10
    many = client.post("/predict", json={"images": pixels[:5].tolist()}).json()
    assert [p["label"] for p in many["predictions"]] == [one["label"], *[p["label"] for p in many["predictions"][1:]]]
    header = "label," + ",".join(f"pixel{i}" for i in range(784))
    rows = "\n".join(",".join(map(str, [label, *row])) for label, row in zip(labels[:5], pixels[:5]))
    for body in (header + "\n" + rows, rows, "\n".join(",".join(map(str, row)) for row in pixels[:5])):
        answer = client.post("/predict", content=body, headers={"Content-Type": "text/csv"}).json()
        assert [p["label"] for p in answer["predictions"]] == [p["label"] for p in many["predictions"]]
    png = io.BytesIO()
    Image.fromarray(255 - pixels[0].reshape(28, 28)).resize((140, 140)).save(png, format="PNG")
    raw = client.post("/predict", content=png.getvalue(), headers={"Content-Type": "image/png"}).json()
    form = client.post("/predict", files={"file": ("digit.png", png.getvalue(), "image/png")}).json()
    assert raw["label"] == form["label"] == labels[0]


@pytest.mark.parametrize(
    "path, kwargs, status, message",
    [
        (INFER, {"content": b"{oops", "headers": {"Content-Type": "application/json"}}, 400, "malformed JSON"),
        (
            INFER,
            {"json": {"inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "BOOL", "data": [0] * 784}]}},
            400,
            "datatype 'BOOL'",
        ),
        (
            INFER,
            {"json": {"inputs": [{"name": "pixels", "shape": [1, 783], "datatype": "UINT8", "data": [0] * 783}]}},
            400,
            "is not [N, 28, 28, 1] or [N, 784]",
        ),
        (
            INFER,
            {"json": {"inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 783}]}},
            400,
            "'data' has 783",
        ),
        (
            INFER,
            {"json": {"inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "FP32", "data": [300] * 784}]}},
            400,
            "0-255",
        ),
        (
            INFER,
            {"json": {"inputs": [{"name": "pixels", "shape": [0, 784], "datatype": "FP32", "data": []}]}},
            400,
            "the batch is empty",
        ),
        (
            INFER,
            {"json": {"inputs": [{"name": "pixels", "shape": [65, 784], "datatype": "UINT8", "data": [0] * 65 * 784}]}},
            413,
            "over the limit of 64",
        ),
        (
            INFER,
            {"content": b"x" * (1024 * 1024 + 1), "headers": {"Content-Type": "application/json"}},
            413,
            "over the limit",
        ),
        ("/predict", {"files": {"file": ("big.png", b"x" * (1024 * 1024 + 1), "image/png")}}, 413, "over the limit"),
        ("/v2/models/other/infer", {"json": {"inputs": []}}, 404, "unknown model 'other'"),
        ("/v2/models/other", {}, 404, "unknown model 'other'"),
        ("/predict", {"content": b"GIF89a nonsense", "headers": {"Content-Type": "image/gif"}}, 400, "not an image"),
        (
            "/predict",
            {"content": b"hello", "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported content type 'text/plain'",
        ),
        ("/predict", {"json": {"pixels": [0] * 783}}, 400, "784 pixel values"),
        ("/predict", {"json": {"pixels": ["a"] * 784}}, 400, "only numbers"),
        ("/predict", {"json": {"images": [[0] * 784, [0] * 10]}}, 400, "'images'[1]"),
        ("/predict", {"json": {"digits": []}}, 400, "needs 'pixels'"),
        (
            "/predict",
            {"content": b"1,2,3\n", "headers": {"Content-Type": "text/csv"}},
            400,
            "CSV row 1 has 3 values, expected 784",
        ),
        (
            "/predict",
            {"content": ("0," * 783 + "256").encode(), "headers": {"Content-Type": "text/csv"}},
            400,
            "CSV row 1, column 'pixel783': pixel value 256 is outside 0-255",
        ),
        (
            "/predict",
            {"content": ("0," * 783 + "1.5").encode(), "headers": {"Content-Type": "text/csv"}},
            400,
            "CSV row 1, column 'pixel783': '1.5' is not an integer",
        ),
        (
            "/predict",
            {"content": ("0," * 783 + "4294967301").encode(), "headers": {"Content-Type": "text/csv"}},
            400,
            "pixel value 4294967301 is outside 0-255",
        ),
        (
            "/predict",
            {"content": ("0," * 783 + "0\n" + "0," * 782 + ",0").encode(), "headers": {"Content-Type": "text/csv"}},
            400,
            "CSV row 2, column 'pixel782': missing value",
        ),
        ("/predict", {"files": {"upload": ("a.png", b"x", "image/png")}}, 400, "field named 'file'"),
    ],
)
def test_bad_input_gets_a_4xx_that_says_what_is_wrong(client, path, kwargs, status, message):
    method = client.get if path == "/v2/models/other" else client.post
    response = method(path, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert client.get("/v2/health/ready").status_code == 200  # still serving


def test_nan_in_binary_tensor(client):
    values = np.zeros(784, "<f4")
    values[3] = np.nan
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [1, 784],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": values.nbytes},
                }
            ]
        }
    )
    response = client.post(
        INFER, content=header + values.tobytes(), headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert response.status_code == 400 and "NaN or infinity" in response.json()["error"]


def test_page_and_openapi_docs(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    assert "http" not in page.text.split("<script>")[1]  # no CDN: everything it needs is on the page
    assert "/v2/models/{name}/infer" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def test_metrics_count_requests_and_batches(client):
    client.get("/v2/health/live")
    client.post(INFER, json=v2_request(np.zeros((1, 784), np.uint8)))
    text = client.get("/metrics").text
    assert 'requests_total{route="/v2/health/live",status="200"}' in text
    assert 'requests_total{route="/v2/models/{name}/infer",status="200"}' in text
    assert "request_seconds_bucket" in text and "batch_images_count" in text


def test_not_ready_until_the_model_is_loaded(tmp_path):
    from fastapi.testclient import TestClient

    from serving.app import create_app

    with TestClient(create_app(tmp_path / "missing.onnx")) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").json() == {"ready": False}
        assert client.get("/v2/health/ready").status_code == 400  # the V2 protocol's "false"
        response = client.post(INFER, json=v2_request(np.zeros((1, 784), np.uint8)))
        assert response.status_code == 503 and "not ready" in response.json()["error"]


def test_a_model_folder_serves_its_model_onnx_or_its_only_file(tmp_path, served_model, caplog):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.model_server import model_file

    named, single, crowded = (tmp_path / name for name in ("named", "single", "crowded"))
    for folder, files in (
        (named, ["model.onnx", "model.int8.onnx"]),
        (single, ["onnx_model"]),
        (crowded, ["a.onnx", "b.onnx"]),
    ):
        folder.mkdir()
        for name in files:
            shutil.copyfile(served_model, folder / name)
    assert model_file(named) == named / "model.onnx"
    assert model_file(single) == single / "onnx_model"  # as KServe's storage initializer leaves a KFP artifact
    assert model_file(served_model) == served_model
    with pytest.raises(
        InputError,
        match=r"crowded: a model folder needs model.onnx, one model's NAME/VERSION/model.onnx, or exactly one file "
        r"\(found a.onnx, b.onnx\)",
    ):
        model_file(crowded)
    with TestClient(create_app(single)) as client:
        wait_until_ready(client)
        assert client.post(INFER, json=v2_request(np.zeros((1, 784), np.uint8))).status_code == 200
    with TestClient(create_app(crowded)) as client:
        deadline = time.monotonic() + 10
        while "model_load_failed" not in caplog.text:
            assert time.monotonic() < deadline, "no model_load_failed event logged"
            time.sleep(0.01)
        assert "a model folder needs model.onnx" in caplog.text
        assert client.get("/v2/health/ready").json() == {"ready": False}


def test_every_route_and_method_the_server_lacks_answers_a_v2_error(client):
    """V2 clients read `{"error": ...}` (tritonclient could not read FastAPI's own {"detail": "Not Found"})."""
    for method, path, status, message in (
        ("GET", "/nowhere", 404, "no route GET /nowhere"),
        ("GET", "/v2/models/digit-recognizer/config", 404, "no route GET /v2/models/digit-recognizer/config"),
        ("POST", "/v2/health/ready", 405, "/v2/health/ready does not take POST (it takes GET"),
        ("DELETE", "/v2/models/digit-recognizer/infer", 405, "does not take DELETE (it takes POST)"),
        ("GET", "/v2/models/nope", 404, "unknown model 'nope'"),
        ("GET", "/v2/models/nope/ready", 404, "unknown model 'nope'"),
    ):
        response = client.request(method, path)
        assert response.status_code == status and list(response.json()) == ["error"], path
        assert message in response.json()["error"], response.json()


def test_a_triton_model_repository_serves_its_models_highest_version(tmp_path, served_model):
    """KServe copies a run's triton/ into /mnt/models: our runtime serves it as Triton does."""
    from components.triton_repository import write_repository
    from serving.model_server import model_file

    folder = write_repository(served_model, tmp_path)
    (folder / "2").mkdir()
    shutil.copyfile(served_model, folder / "2" / "model.onnx")
    assert model_file(tmp_path) == folder / "2" / "model.onnx"


def test_the_server_reports_the_version_the_model_carries(tmp_path, served_model, digits):
    import onnx
    from fastapi.testclient import TestClient

    from common.onnx_model import DIGEST_KEY
    from serving.app import create_app

    digest = "9f2c" * 16  # what export writes: the model's SHA-256 (components.export.with_digest)
    model = onnx.load(served_model)
    model.metadata_props.add(key=DIGEST_KEY, value=digest)
    onnx.save(model, tmp_path / "model.onnx")
    version = digest[:12]
    with TestClient(create_app(tmp_path / "model.onnx")) as client:
        wait_until_ready(client)
        assert client.get("/v2/models/digit-recognizer").json()["versions"] == [version]
        assert client.get(f"/v2/models/digit-recognizer/versions/{version}").json()["versions"] == [version]
        assert client.get(f"/v2/models/digit-recognizer/versions/{version}/ready").json()["ready"] is True
        _, pixels = digits
        for path in (INFER, f"/v2/models/digit-recognizer/versions/{version}/infer"):
            answer = client.post(path, json=v2_request(pixels[:2]))
            assert answer.status_code == 200 and answer.json()["model_version"] == version, path
        for answer in (
            client.get("/v2/models/digit-recognizer/versions/1"),
            client.get("/v2/models/digit-recognizer/versions/1/ready"),
            client.post("/v2/models/digit-recognizer/versions/1/infer", json=v2_request(pixels[:1])),
        ):
            assert answer.status_code == 404
            assert answer.json() == {
                "error": f"unknown version '1' of 'digit-recognizer': this server serves version '{version}'"
            }
        metrics = client.get("/metrics").text
        assert 'route="/v2/models/{name}/versions/{version}/infer",status="200"} 1.0' in metrics


def test_a_failing_model_call_answers_a_v2_error_and_is_logged(client, monkeypatch, caplog):
    def fail(images):
        raise RuntimeError("onnxruntime: out of memory")

    monkeypatch.setattr(client.app.state.server, "predict", fail)
    monkeypatch.setattr(client.app.state.server.batcher, "predict", fail)
    response = client.post(INFER, json=v2_request(np.zeros((1, 784), np.uint8)))
    assert response.status_code == 500
    assert response.json() == {"error": "inference failed: onnxruntime: out of memory"}
    assert "inference_failed" in caplog.text
    assert 'requests_total{route="/v2/models/{name}/infer",status="500"}' in client.get("/metrics").text
