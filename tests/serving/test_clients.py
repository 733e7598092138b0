"""Clients we did not write, on the server as `make serve` starts it: Triton's HTTP client (tritonclient.http:
JSON and binary tensors, async and concurrent calls, errors read back) and KServe's own Python clients
(InferenceRESTClient, InferenceGRPCClient), which run in the benchmark's kserve environment (make bench-env):
kserve pins its own web stack and Kubernetes client, 72 packages and 530 MB. (tritonclient.grpc: test_grpc.py.)
"""

import json
import subprocess

import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from tests.conftest import ROOT, unavailable

MODEL = "digit-recognizer"
KSERVE_PYTHON = ROOT / ".venv-kserve" / "bin" / "python"


@pytest.fixture(scope="module")
def labelled(fixture_data):
    rows = np.loadtxt(fixture_data / "train.csv", delimiter=",", skiprows=1, dtype=np.int64, max_rows=32)
    return rows[:, 0], rows[:, 1:].astype(np.uint8)


def pixels_input(pixels, binary, datatype="UINT8"):
    tensor = triton_http.InferInput("pixels", list(pixels.shape), datatype)
    tensor.set_data_from_numpy(pixels.astype(datatype.lower().replace("fp", "float")), binary_data=binary)
    return tensor


def host_port(url):
    return url.removeprefix("http://")


def test_tritons_http_client_metadata_json_and_binary_tensors(server, labelled):
    url, _ = server
    labels, pixels = labelled
    client = triton_http.InferenceServerClient(host_port(url))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert [tensor["name"] for tensor in client.get_model_metadata(MODEL)["outputs"]] == ["probabilities", "label"]
    for binary in (False, True):
        for datatype in ("UINT8", "FP32"):
            outputs = [
                triton_http.InferRequestedOutput(name, binary_data=binary) for name in ("probabilities", "label")
            ]
            result = client.infer(MODEL, [pixels_input(pixels, binary, datatype)], outputs=outputs, request_id="t-1")
            assert result.get_response()["id"] == "t-1"
            assert (result.as_numpy("label") == labels).mean() >= 0.95, (binary, datatype)
            np.testing.assert_allclose(result.as_numpy("probabilities").sum(axis=1), 1, atol=1e-4)
    client.close()


def test_tritons_http_client_async_and_concurrent_calls(server, labelled):
    url, _ = server
    labels, pixels = labelled
    client = triton_http.InferenceServerClient(host_port(url), concurrency=8)
    pending = [client.async_infer(MODEL, [pixels_input(image[None], binary=True)]) for image in pixels]
    answered = [int(request.get_result(timeout=30).as_numpy("label")[0]) for request in pending]
    assert answered == labels.tolist()
    client.close()


def test_tritons_http_client_reads_every_error_back(server):
    url, _ = server
    client = triton_http.InferenceServerClient(host_port(url))
    with pytest.raises(InferenceServerException, match=r"shape \[1, 783\] is not") as error:
        client.infer(MODEL, [pixels_input(np.zeros((1, 783), np.uint8), binary=False)])
    assert error.value.status() == "400"
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as error:
        client.infer("nope", [pixels_input(np.zeros((1, 784), np.uint8), binary=True)])
    assert error.value.status() == "404"
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")
    # A route the server does not have (the model config extension) answers V2's error, which the client reads.
    with pytest.raises(InferenceServerException, match="no route GET /v2/models/digit-recognizer/config"):
        client.get_model_config(MODEL)
    client.close()


def test_kserves_own_clients_over_http_and_grpc(server, labelled):
    url, process = server
    labels, pixels = labelled
    if not KSERVE_PYTHON.is_file():
        unavailable(f"{KSERVE_PYTHON} not found: make bench-env installs kserve there")
    result = subprocess.run(
        [KSERVE_PYTHON, "tests/serving/kserve_clients.py", url, process.grpc_address, ",".join(map(str, pixels[0]))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout)
    assert answers["rest_live"] and answers["rest_ready"] and answers["grpc_live"] and answers["grpc_ready"]
    assert answers["rest_label"] == [labels[0]] and answers["grpc_labels"] == [[labels[0]]] * 16
    assert answers["rest_id"] == answers["grpc_id"] == "kserve-1"
    assert "404" in answers["rest_unknown_model"] and "unknown model 'nope'" in answers["rest_unknown_model"]
    assert "NOT_FOUND" in answers["grpc_unknown_model"] and "unknown model 'nope'" in answers["grpc_unknown_model"]
