import contextlib
import socket
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from tests.conftest import ROOT


def wait_until_ready(client, seconds=10):
    deadline = time.monotonic() + seconds
    while client.get("/v2/health/ready").status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not become ready")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def client(served_model):
    with TestClient(create_app(served_model, max_images=64, max_body_bytes=1024 * 1024)) as client:
        wait_until_ready(client)
        yield client


def free_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def free_ports(count):
    """`count` distinct free ports (held open together while they are chosen, so none is picked twice)."""
    with contextlib.ExitStack() as stack:
        listeners = [stack.enter_context(socket.socket()) for _ in range(count)]
        for listener in listeners:
            listener.bind(("127.0.0.1", 0))
        return [listener.getsockname()[1] for listener in listeners]


@pytest.fixture
def server(served_model, tmp_path, request):
    """The server as `make serve` starts it, on free ports (HTTP, and gRPC at `process.grpc_address`), once ready;
    extra flags by indirect parametrization."""
    port, grpc_port = free_ports(2)
    log = open(tmp_path / "server.log", "w+")  # a file, not a pipe: a full pipe would stall the server
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serving",
            "--model",
            str(served_model),
            "--port",
            str(port),
            "--grpc-port",
            str(grpc_port),
            "--max-images",
            "2048",
            *getattr(request, "param", []),
        ],
        cwd=ROOT,
        stderr=log,
        text=True,
    )
    process.log, process.grpc_address = tmp_path / "server.log", f"127.0.0.1:{grpc_port}"
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError(f"server did not start: {process.log.read_text()}")
        time.sleep(0.05)
    yield url, process
    if process.poll() is None:
        process.kill()
        process.wait()
    log.close()
