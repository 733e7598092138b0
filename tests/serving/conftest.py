import time

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app


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
