import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "digit-recognizer"
KSERVE_CRD = ROOT.parent / "shared" / "k8s" / "kserve-inferenceservice-crd.yaml"  # KServe v0.20's, beside the clone
TRAIN_IMAGE = "digit-recognizer-train:test"
SERVE_IMAGE = "digit-recognizer-serve:test"


def unavailable(reason):
    """Skip a test that needs what this machine lacks; in CI (CI=true), where .ci/run provides it, fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def fixture_data():
    """A few hundred real rows cut from Kaggle's train.csv and test.csv."""
    return FIXTURES


@pytest.fixture(scope="session")
def served_model():
    """A model exported by the real pipeline (seed 42, the compact network of the default before #19): serving
    needs one that reads digits well."""
    return ROOT / "tests" / "fixtures" / "model.onnx"


@pytest.fixture(scope="session")
def arrays(tmp_path_factory, fixture_data):
    """The fixture preprocessed once: paths of train, validation and test arrays."""
    from components.preprocess import preprocess

    folder = tmp_path_factory.mktemp("arrays")
    paths = {name: folder / f"{name}.npz" for name in ("train", "validation", "test")}
    preprocess(
        fixture_data / "train.csv", fixture_data / "test.csv", paths["train"], paths["validation"], paths["test"]
    )
    return paths


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, arrays):
    """A model trained for a few seconds on the fixture (good enough to be confident), and its history."""
    from components.train import train

    folder = tmp_path_factory.mktemp("model")
    history = train(
        arrays["train"],
        arrays["validation"],
        folder,
        folder / "history.json",
        epochs=8,
        batch_size=32,
        curves_png=folder / "curves.png",
    )
    return folder, history


@pytest.fixture(scope="session")
def exported(tmp_path_factory, trained_model, arrays):
    """The fixture model exported: paths of the fp32 and int8 ONNX models."""
    from components.export import export

    folder = tmp_path_factory.mktemp("onnx")
    export(trained_model[0], arrays["train"], arrays["validation"], folder / "model.onnx", folder / "model.int8.onnx")
    return folder / "model.onnx", folder / "model.int8.onnx"


@pytest.fixture(scope="session")
def onnx_model(exported):
    return exported[0]


def run_module(*arguments, cwd=ROOT):
    """Run `python -m ...` or a script as a user would; returns the CompletedProcess (text)."""
    return subprocess.run([sys.executable, *arguments], cwd=cwd, capture_output=True, text=True)


def docker(*arguments, check=True):
    """`docker ARGUMENTS` from the repository root; the CompletedProcess (text)."""
    return subprocess.run(["docker", *arguments], cwd=ROOT, capture_output=True, text=True, check=check)


def docker_build(*arguments):
    result = docker("build", *arguments, ".", check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="session")
def docker_engine():
    if not (shutil.which("docker") and docker("info", check=False).returncode == 0):
        unavailable("no Docker engine: .ci/run starts one with ../shared/tools/docker-up")


@pytest.fixture(scope="session")
def serve_image(docker_engine):
    """Dockerfile.serve built once per session (the Docker tests and the node's pods run it)."""
    docker_build("-f", "Dockerfile.serve", "-t", SERVE_IMAGE)
    return SERVE_IMAGE


@pytest.fixture(scope="session")
def train_image(docker_engine):
    """Dockerfile.train for the CPU built once per session: it installs TensorFlow (minutes the first time)."""
    docker_build("-f", "Dockerfile.train", "--build-arg", "TENSORFLOW=cpu", "-t", TRAIN_IMAGE)
    return TRAIN_IMAGE


@pytest.fixture(scope="session")
def kserve_crd():
    """KServe's InferenceService CustomResourceDefinition, parsed."""
    import yaml

    if not KSERVE_CRD.is_file():
        unavailable(f"{KSERVE_CRD} not found (KServe's CRD, config/crd/full/serving.kserve.io_inferenceservices.yaml)")
    with open(KSERVE_CRD) as file:
        return next(document for document in yaml.load_all(file, Loader=yaml.CSafeLoader) if document)


@pytest.fixture(scope="session")
def kube_api():
    """A client of the Kubernetes API server that KUBECONFIG names (.ci/run starts one, with a node: kube-node)."""
    from kubernetes import client, config

    if not os.environ.get("KUBECONFIG"):
        unavailable('no KUBECONFIG: start an API server with eval "$(../shared/tools/kube-up)"')
    try:
        api_client = config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
        client.VersionApi(api_client).get_code()
    except Exception as error:  # a missing file, a stopped server: either way there is no API server to test against
        unavailable(f"no Kubernetes API server at KUBECONFIG={os.environ['KUBECONFIG']}: {error}")
    return api_client


@pytest.fixture(scope="session")
def kserve_api(kube_api, kserve_crd):
    """`kube_api` with KServe's CRD installed and established."""
    import time

    from kubernetes import client

    extensions = client.ApiextensionsV1Api(kube_api)
    try:
        extensions.create_custom_resource_definition(kserve_crd)
    except client.ApiException as error:
        if error.status != 409:  # 409: installed by an earlier session on the same server
            raise
    deadline = time.monotonic() + 30
    while not any(
        condition.type == "Established" and condition.status == "True"
        for condition in extensions.read_custom_resource_definition(kserve_crd["metadata"]["name"]).status.conditions
        or []
    ):
        assert time.monotonic() < deadline, "KServe's CRD was not established within 30 s"
        time.sleep(0.1)
    return kube_api


@pytest.fixture(scope="session")
def kube_node(kube_api):
    """`kube_api` with a Ready node on which pods run (.ci/run starts one: eval "$(../shared/tools/kube-node)");
    the kubectl of the node's version, which kube-node keeps in kube-up's cache."""
    from kubernetes import client

    nodes = client.CoreV1Api(kube_api).list_node().items
    if not any(
        condition.type == "Ready" and condition.status == "True"
        for node in nodes
        for condition in node.status.conditions or []
    ):
        unavailable('no Ready Kubernetes node: start one with eval "$(../shared/tools/kube-node)"')
    kubectl = Path(os.environ.get("KUBE_UP_CACHE", "/var/cache/kube-up")) / "bin" / "kubectl"
    if not kubectl.is_file():
        unavailable(f"{kubectl} not found (kube-node installs it; set KUBE_UP_CACHE to its cache)")
    return kubectl


@pytest.fixture
def namespace(kube_api):
    """A fresh namespace (never deleted: without a controller-manager a deleted namespace stays Terminating)."""
    from kubernetes import client

    name = f"test-{uuid.uuid4().hex[:10]}"
    client.CoreV1Api(kube_api).create_namespace({"metadata": {"name": name}})
    return name


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on a free port of 127.0.0.1 (SQLite backend, artifacts served through it), as a
    team runs one: its URL. Stopped after the session."""
    import signal
    import time
    import urllib.request

    from tests.serving.conftest import free_port

    folder = tmp_path_factory.mktemp("mlflow-server")
    url = f"http://127.0.0.1:{free_port()}"
    with open(folder / "server.log", "wb") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlflow", "server", "--workers", "1"),
                *("--host", "127.0.0.1", "--port", url.rpartition(":")[2]),
                *("--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"),
                *("--artifacts-destination", str(folder / "artifacts")),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers are stopped with it
        )
    try:
        deadline = time.monotonic() + 300  # its first start creates the store's tables: a minute on a busy 2-core CPU
        while True:
            assert process.poll() is None, (folder / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the MLflow server did not answer within 300 s"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def failing_tracking_servers():
    """Two tracking URIs that fail: {"500": a server on 127.0.0.1 that answers every request with HTTP 500,
    "unreachable": a free port of 127.0.0.1 where nothing listens}."""
    import http.server
    import threading

    from tests.serving.conftest import free_port

    class Failing(http.server.BaseHTTPRequestHandler):
        def answer(self):
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = answer

        def log_message(self, *arguments):  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"500": f"http://127.0.0.1:{server.server_port}", "unreachable": f"http://127.0.0.1:{free_port()}"}
    server.shutdown()
    server.server_close()
