"""The server as a user starts it: `python -m serving`, a real socket, real signals."""

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from tests.conftest import ROOT


def test_the_server_never_imports_tensorflow():
    code = (
        "import sys, serving.__main__, serving.app, serving.grpc_server; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'tf2onnx', 'tf_keras'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_soak_of_mixed_requests_gets_no_5xx(server, fixture_data):
    url, _ = server
    pixels = np.loadtxt(fixture_data / "test.csv", delimiter=",", skiprows=1, dtype=np.uint8)[:16]
    good = [
        (
            "POST",
            "/v2/models/digit-recognizer/infer",
            {
                "json": {
                    "id": "s",
                    "inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "UINT8", "data": pixels[0].tolist()}],
                }
            },
        ),
        ("POST", "/predict", {"json": {"images": pixels[:4].tolist()}}),
        (
            "POST",
            "/predict",
            {
                "content": "\n".join(",".join(map(str, row)) for row in pixels[:3]),
                "headers": {"Content-Type": "text/csv"},
            },
        ),
        ("GET", "/v2/models/digit-recognizer", {}),
    ]
    bad = [
        (
            "POST",
            "/v2/models/digit-recognizer/infer",
            {"content": b"{", "headers": {"Content-Type": "application/json"}},
        ),
        (
            "POST",
            "/v2/models/digit-recognizer/infer",
            {"json": {"inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "FP32", "data": [1e9] * 784}]}},
        ),
        ("POST", "/predict", {"content": b"\x89PNG broken", "headers": {"Content-Type": "image/png"}}),
        ("POST", "/predict", {"content": b"x", "headers": {"Content-Type": "application/xml"}}),
        ("POST", "/v2/models/nope/infer", {"json": {}}),
        ("GET", "/nowhere", {}),
    ]
    requests = [(good + bad)[i % (len(good) + len(bad))] for i in range(3000)]

    async def soak():
        statuses = []
        async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=32)) as client:
            semaphore = asyncio.Semaphore(32)

            async def send(method, path, kwargs):
                async with semaphore:
                    response = await client.request(method, path, timeout=30, **kwargs)
                    statuses.append(response.status_code)

            await asyncio.gather(*(send(*request) for request in requests))
        return statuses

    statuses = asyncio.run(soak())
    assert len(statuses) == 3000
    assert not [status for status in statuses if status >= 500]
    assert statuses.count(200) == 3000 * len(good) // (len(good) + len(bad))
    assert httpx.get(f"{url}/v2/health/ready").json() == {"ready": True}


def test_sigterm_lets_the_request_in_flight_finish(server):
    url, process = server
    body = {"inputs": [{"name": "pixels", "shape": [2048, 784], "datatype": "UINT8", "data": [7] * (2048 * 784)}]}
    answers = []
    sender = threading.Thread(
        target=lambda: answers.append(httpx.post(f"{url}/v2/models/digit-recognizer/infer", json=body, timeout=60))
    )
    sender.start()
    time.sleep(0.3)  # the request is on its way (its JSON alone takes a while to parse)
    process.send_signal(signal.SIGTERM)
    sender.join(60)
    assert answers and answers[0].status_code == 200
    assert answers[0].json()["outputs"][1]["shape"] == [2048]
    assert process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained


@pytest.mark.parametrize("server", [["--drain-seconds", "2"]], indirect=True)
def test_sigterm_drains_reporting_not_ready_while_still_serving_then_exits(server, fixture_data):
    url, process = server
    pixels = np.loadtxt(fixture_data / "train.csv", delimiter=",", skiprows=1, dtype=int, max_rows=1)
    body = {"inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "UINT8", "data": pixels[1:].tolist()}]}
    with httpx.Client(base_url=url) as client:
        assert client.get("/v2/health/ready").status_code == 200
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        while client.get("/v2/health/ready").status_code == 200:  # the signal handler runs between two requests
            assert time.monotonic() - signalled < 1, "readiness did not turn false"
        assert client.get("/v2/health/ready").json() == {"ready": False}
        assert client.get("/v2/health/live").status_code == 200
        answers = [client.post("/v2/models/digit-recognizer/infer", json=body) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200] * 3
    assert answers[0].json()["outputs"][1]["data"] == [pixels[0]]
    assert all(answer.headers["connection"] == "close" for answer in answers)  # clients reconnect elsewhere
    assert process.wait(30) in (0, -signal.SIGTERM)
    assert time.monotonic() - signalled > 1.5
    assert '"event": "draining"' in process.log.read_text()


def test_access_log_is_one_json_object_per_request(server):
    url, process = server
    httpx.get(f"{url}/v2/health/live")
    process.send_signal(signal.SIGTERM)
    process.wait(30)
    records = [json.loads(line) for line in process.log.read_text().splitlines() if line.startswith("{")]
    requests = [record for record in records if record.get("path") == "/v2/health/live"]
    assert requests and requests[-1]["status"] == 200 and requests[-1]["method"] == "GET"
    assert {"time", "ms", "client"} <= set(requests[-1])
