"""bench/serving_floor.py as bench/bench_serving.py starts and calls it: both transports answer the benchmark's
requests, with the model's labels (one model call a request) or the constant ones."""

import importlib.util

import httpx
import numpy as np
import pytest

from common.onnx_model import load_session, predict
from components.kaggle_csv import read_csv
from tests.conftest import FIXTURES, ROOT


@pytest.fixture(scope="module")
def bench_serving():
    spec = importlib.util.spec_from_file_location("bench_serving", ROOT / "bench" / "bench_serving.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["floor constant", "floor model"])
def test_the_floor_answers_the_benchmarks_requests_on_both_transports(bench_serving, served_model, kind):
    _, pixels = read_csv(FIXTURES / "test.csv", labelled=False)
    one, _, _, grpc_one = bench_serving.bodies(pixels)
    if kind == "floor model":
        expected = predict(load_session(served_model), pixels[:1].reshape(-1, 28, 28, 1))[1].tolist()
    else:
        expected = [0]
    process, url, grpc_address, _ = bench_serving.start(kind, served_model)
    try:
        response = httpx.post(f"{url}/v2/models/digit-recognizer/infer", content=one, timeout=10)
        grpc_labels = bench_serving.grpc_infer_once(grpc_address, grpc_one)
    finally:
        process.terminate()
        process.wait(30)
    outputs = {output["name"]: output for output in response.json()["outputs"]}
    assert response.status_code == 200 and outputs["label"]["data"] == expected and grpc_labels == expected
    assert np.isclose(sum(outputs["probabilities"]["data"]), 1, atol=1e-3)
