"""The images: Dockerfile.train runs the pipeline's steps, Dockerfile.serve the server (no TensorFlow).

They need a Docker engine (.ci/run starts one with shared/tools/docker-up); in CI they fail, not skip, without one.
"""
import json
import os
import shutil
import subprocess
import time

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.conftest import ROOT, run_module
from tests.serving.test_main import free_port

TRAIN_IMAGE = "digit-recognizer-train:test"
SERVE_IMAGE = "digit-recognizer-serve:test"


def docker(*arguments, check=True):
    return subprocess.run(["docker", *arguments], cwd=ROOT, capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def engine():
    available = shutil.which("docker") and docker("info", check=False).returncode == 0
    if not available:
        if os.environ.get("CI") == "true":
            pytest.fail("no Docker engine: .ci/run starts one with ../shared/tools/docker-up")
        pytest.skip("no Docker engine (start one to run these tests)")


@pytest.fixture(scope="module")
def images(engine):
    for arguments in (["-f", "Dockerfile.train", "--build-arg", "TENSORFLOW=cpu", "-t", TRAIN_IMAGE],
                      ["-f", "Dockerfile.serve", "-t", SERVE_IMAGE]):
        result = docker("build", *arguments, ".", check=False)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_pipeline_in_docker_gives_the_local_run_outputs(images, tmp_path, fixture_data):
    runs = {}
    for name, extra in (("docker", ["--docker", "--tag", "test"]), ("local", [])):
        out = tmp_path / name
        result = run_module("pipeline.py", "run", "--data", str(fixture_data), "--out", str(out), "--profile", "quick",
                            "--param", "accuracy_threshold=0", *extra)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        runs[name] = out
    docker_submission = pd.read_csv(runs["docker"] / "submission.csv")
    assert docker_submission["ImageId"].tolist() == list(range(1, 61))
    assert docker_submission.equals(pd.read_csv(runs["local"] / "submission.csv"))
    metrics = [json.loads((runs[name] / "metrics.json").read_text()) for name in ("docker", "local")]
    assert metrics[0]["confusion_matrix"] == metrics[1]["confusion_matrix"]


def test_serve_image_has_no_tensorflow_runs_as_non_root_and_is_small(images):
    assert docker("run", "--rm", SERVE_IMAGE, "python", "-c",
                  "import importlib.util; print(importlib.util.find_spec('tensorflow'))").stdout.strip() == "None"
    assert docker("run", "--rm", SERVE_IMAGE, "id", "-u").stdout.strip() == "10001"
    size = int(docker("image", "inspect", SERVE_IMAGE, "--format", "{{.Size}}").stdout)
    base = int(docker("image", "inspect", "python:3.11-slim", "--format", "{{.Size}}").stdout)
    print(f"serve image: {size / 1e6:.0f} MB, of which {(size - base) / 1e6:.0f} MB above python:3.11-slim")
    assert size - base < 200e6  # onnxruntime, numpy, Pillow and the web stack; the base is not ours to trim


@pytest.mark.parametrize("baked", [False, True])
def test_serve_container_becomes_healthy_and_answers(images, served_model, baked):
    image, volume = SERVE_IMAGE, ["-v", f"{served_model.parent}:/models:ro"]
    if baked:
        image = f"{SERVE_IMAGE}-baked"
        relative = served_model.relative_to(ROOT)
        docker("build", "-f", "Dockerfile.serve", "--build-arg", f"MODEL={relative}", "-t", image, ".")
        volume = []
    port = free_port()
    container = docker("run", "-d", "-p", f"127.0.0.1:{port}:8080", *volume, image).stdout.strip()
    try:
        deadline = time.monotonic() + 60
        while docker("inspect", container, "--format", "{{.State.Health.Status}}").stdout.strip() != "healthy":
            assert time.monotonic() < deadline, docker("logs", container).stderr
            time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/v2/models/digit-recognizer/infer"
        pixels = np.loadtxt(ROOT / "tests/fixtures/digit-recognizer/train.csv", delimiter=",", skiprows=1, dtype=int, max_rows=1)
        good = httpx.post(url, json={"inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "INT32",
                                                 "data": pixels[1:].tolist()}]})
        assert good.status_code == 200
        assert good.json()["outputs"][1]["data"] == [pixels[0]]
        bad = httpx.post(url, json={"inputs": [{"name": "pixels", "shape": [1, 783], "datatype": "INT32", "data": [0] * 783}]})
        assert bad.status_code == 400 and "783" in bad.json()["error"]
    finally:
        docker("rm", "-f", container, check=False)
