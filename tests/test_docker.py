"""The images: Dockerfile.train runs the pipeline's steps, Dockerfile.serve the server (no TensorFlow).

They need a Docker engine (.ci/run starts one with shared/tools/docker-up); in CI they fail, not skip, without one.
"""

import contextlib
import io
import json
import shutil
import time

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, SERVE_IMAGE, docker, docker_build, run_module, unavailable
from tests.serving.conftest import free_ports


def test_pipeline_in_docker_gives_the_local_run_outputs(train_image, serve_image, tmp_path, fixture_data):
    runs = {}
    for name, extra in (("docker", ["--docker", "--tag", "test"]), ("local", [])):
        out = tmp_path / name
        result = run_module(
            "pipeline.py",
            "run",
            "--data",
            str(fixture_data),
            "--out",
            str(out),
            "--profile",
            "quick",
            "--param",
            "accuracy_threshold=0",
            *extra,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        runs[name] = out
    docker_submission = pd.read_csv(runs["docker"] / "submission.csv")
    assert docker_submission["ImageId"].tolist() == list(range(1, 61))
    assert docker_submission.equals(pd.read_csv(runs["local"] / "submission.csv"))
    metrics = [json.loads((runs[name] / "metrics.json").read_text()) for name in ("docker", "local")]
    assert metrics[0]["confusion_matrix"] == metrics[1]["confusion_matrix"]


def test_serve_image_has_no_tensorflow_runs_as_non_root_and_is_small(serve_image):
    assert (
        docker(
            "run",
            "--rm",
            SERVE_IMAGE,
            "python",
            "-c",
            "import importlib.util; print(importlib.util.find_spec('tensorflow'))",
        ).stdout.strip()
        == "None"
    )
    assert docker("run", "--rm", SERVE_IMAGE, "id", "-u").stdout.strip() == "10001"
    size = int(docker("image", "inspect", SERVE_IMAGE, "--format", "{{.Size}}").stdout)
    base = int(docker("image", "inspect", "python:3.11-slim", "--format", "{{.Size}}").stdout)
    print(f"serve image: {size / 1e6:.0f} MB, of which {(size - base) / 1e6:.0f} MB above python:3.11-slim")
    # onnxruntime, numpy, Pillow, the web stack and gRPC (grpcio 19 MB, protobuf 2 MB: 207 MB in all with them);
    # the base is not ours to trim.
    assert size - base < 225e6


@pytest.mark.parametrize("baked", [False, True])
def test_serve_container_becomes_healthy_and_answers(serve_image, served_model, baked):
    image, volume = SERVE_IMAGE, ["-v", f"{served_model.parent}:/models:ro"]
    if baked:
        image = f"{SERVE_IMAGE}-baked"
        relative = served_model.relative_to(ROOT)
        docker_build("-f", "Dockerfile.serve", "--build-arg", f"MODEL={relative}", "-t", image)
        volume = []
    with running(*volume, image) as (url, _, _):
        assert_answers_v2(url)


@contextlib.contextmanager
def running(*arguments):
    """A serve container started with `docker run -d ARGUMENTS`, once healthy: yields its URL, id and gRPC address
    (both ports published on 127.0.0.1)."""
    port, grpc_port = free_ports(2)
    container = docker(
        "run", "-d", "-p", f"127.0.0.1:{port}:8080", "-p", f"127.0.0.1:{grpc_port}:8081", *arguments
    ).stdout.strip()
    try:
        deadline = time.monotonic() + 60
        while docker("inspect", container, "--format", "{{.State.Health.Status}}").stdout.strip() != "healthy":
            assert time.monotonic() < deadline, docker("logs", container).stderr
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", container, f"127.0.0.1:{grpc_port}"
    finally:
        docker("rm", "-f", container, check=False)


def assert_answers_v2(url):
    infer = f"{url}/v2/models/digit-recognizer/infer"
    pixels = np.loadtxt(
        ROOT / "tests/fixtures/digit-recognizer/train.csv", delimiter=",", skiprows=1, dtype=int, max_rows=1
    )
    good = httpx.post(
        infer,
        json={"inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "INT32", "data": pixels[1:].tolist()}]},
    )
    assert good.status_code == 200
    assert good.json()["outputs"][1]["data"] == [pixels[0]]
    bad = httpx.post(
        infer, json={"inputs": [{"name": "pixels", "shape": [1, 783], "datatype": "INT32", "data": [0] * 783}]}
    )
    assert bad.status_code == 400 and "783" in bad.json()["error"]


def test_serve_container_runs_as_the_deployment_runs_it(serve_image, served_model, tmp_path):
    """deploy/'s securityContext under Docker: another non-root user id, read-only root filesystem, no capabilities,
    no privilege escalation, /tmp the only writable place, the model read-only under KServe's artifact name."""
    (container,) = yaml.safe_load((ROOT / "deploy/deployment.yaml").read_text())["spec"]["template"]["spec"][
        "containers"
    ]
    models = tmp_path / "models"
    models.mkdir()
    shutil.copyfile(served_model, models / "onnx_model")  # as KServe's storage initializer leaves a KFP artifact
    models.chmod(0o755)  # readable by any user id, whatever the umask
    (models / "onnx_model").chmod(0o644)
    with running(
        "--user",
        "12345:0",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "-v",
        f"{models}:/mnt/models:ro",
        SERVE_IMAGE,
        *container["command"],
        *container["args"],
    ) as (url, running_container, _):
        assert_answers_v2(url)
        # An upload past the form parser's 1 MB in memory spills to /tmp, the one writable place.
        upload = httpx.post(f"{url}/predict", files={"file": ("digit.png", digit_png(), "image/png")})
        assert upload.status_code == 200 and upload.json()["label"] in range(10)
        inside = docker(
            "exec",
            running_container,
            "sh",
            "-c",
            "id -u; touch /app/x 2>&1; touch /mnt/models/x 2>&1; grep CapEff /proc/1/status",
            check=False,
        ).stdout
        assert inside.splitlines()[0] == "12345"
        assert inside.count("Read-only file system") == 2
        assert "CapEff:\t0000000000000000" in inside


def digit_png():
    """A 2 MB PNG of a drawn digit: big enough to be spooled to disk by the form parser."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (1800, 1800), 255)
    ImageDraw.Draw(image).line([(900, 200), (900, 1600)], fill=0, width=150)
    noise = np.random.default_rng(0).integers(230, 256, (1800, 1800), dtype=np.uint8)  # incompressible paper
    image = Image.fromarray(np.minimum(np.asarray(image), noise))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_serve_container_answers_tritons_and_kserves_clients_over_http_and_grpc(serve_image, served_model):
    """The image as it runs by default: HTTP on 8080, gRPC on 8081, the model mounted; clients we did not write."""
    import subprocess

    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    from tests.serving.test_clients import KSERVE_PYTHON

    rows = np.loadtxt(ROOT / "tests/fixtures/digit-recognizer/train.csv", delimiter=",", skiprows=1, max_rows=8)
    labels, pixels = rows[:, 0].astype(int), rows[:, 1:].astype(np.uint8)
    with running("-v", f"{served_model.parent}:/models:ro", SERVE_IMAGE) as (url, _, grpc_address):
        for module, address in ((triton_http, url.removeprefix("http://")), (triton_grpc, grpc_address)):
            client = module.InferenceServerClient(address)
            assert client.is_server_ready() and client.is_model_ready("digit-recognizer")
            tensor = module.InferInput("pixels", [8, 784], "UINT8")
            tensor.set_data_from_numpy(pixels)
            assert client.infer("digit-recognizer", [tensor]).as_numpy("label").tolist() == labels.tolist(), module
            client.close()
        if not KSERVE_PYTHON.is_file():
            unavailable(f"{KSERVE_PYTHON} not found: make bench-env installs kserve there")
        result = subprocess.run(
            [KSERVE_PYTHON, "tests/serving/kserve_clients.py", url, grpc_address, ",".join(map(str, pixels[0]))],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        answers = json.loads(result.stdout)
        assert answers["rest_label"] == [labels[0]] and answers["grpc_labels"] == [[labels[0]]] * 16
