"""deploy/ on a real one-node Kubernetes, applied as a user applies it; a pipeline step as a Job.

The node (../shared/tools/kube-node: Kubernetes 1.20, pods on the local Docker engine, kube-proxy)
gets `kubectl apply -k` of an overlay of deploy/ that changes only what this node needs: the image
tag, a hostPath PersistentVolume for the model's claim, a NodePort Service (the tests' traffic goes
to 127.0.0.1 only) and the API versions 1.20 serves (policy/v1beta1, autoscaling/v2beta2). The
model goes onto the volume as the docs tell a user. The tests fail, not skip, in CI (CI=true).
"""

import contextlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FIXTURES, ROOT, SERVE_IMAGE, docker

DEPLOY = ROOT / "deploy"
NAME = "digit-recognizer-serve"  # the Deployment's, Service's, budget's and autoscaler's name
TRAIN_NAMESPACE = "digit-recognizer-train"
# What the overlay changes, and nothing else: (apiVersion, kind) -> JSON patch.
NODE_PATCHES = {
    ("policy/v1", "PodDisruptionBudget"): [{"op": "replace", "path": "/apiVersion", "value": "policy/v1beta1"}],
    ("autoscaling/v2", "HorizontalPodAutoscaler"): [
        {"op": "replace", "path": "/apiVersion", "value": "autoscaling/v2beta2"}
    ],
    ("v1", "Service"): [{"op": "replace", "path": "/spec/type", "value": "NodePort"}],
}


def node_overlay(folder, namespace, volume):
    """A kustomization of deploy/ for this node in `folder`; its PersistentVolume is the host folder `volume`."""
    patches = []
    for (api_version, kind), patch in NODE_PATCHES.items():
        group, _, version = api_version.rpartition("/")
        (folder / f"{kind.lower()}.json").write_text(json.dumps(patch))
        patches.append(
            {"target": {"group": group, "version": version, "kind": kind, "name": NAME}, "path": f"{kind.lower()}.json"}
        )
    volume_claim = yaml.safe_load((DEPLOY / "model-pvc.yaml").read_text())
    persistent_volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"digit-recognizer-model-{namespace}"},
        "spec": {
            "capacity": volume_claim["spec"]["resources"]["requests"],
            "accessModes": ["ReadWriteOnce"],
            "hostPath": {"path": str(volume), "type": "Directory"},
            "claimRef": {"namespace": namespace, "name": volume_claim["metadata"]["name"]},
        },
    }
    (folder / "model-pv.yaml").write_text(yaml.safe_dump(persistent_volume))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "bases": [os.path.relpath(DEPLOY, folder)],  # kubectl 1.20's kustomize (v2.0) takes a folder only as a base
        "resources": ["model-pv.yaml"],
        "images": [{"name": NAME, "newTag": SERVE_IMAGE.split(":")[1]}],
        "patchesJson6902": patches,
    }
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return folder


class Cluster:
    """kubectl of the node (its own version), in one namespace."""

    def __init__(self, kubectl, namespace):
        self.kubectl_path, self.namespace = str(kubectl), namespace

    def kubectl(self, *arguments, check=True, timeout=240):
        result = subprocess.run(
            [self.kubectl_path, "-n", self.namespace, *arguments], capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(arguments)}: {result.stdout[-2000:]}{result.stderr[-2000:]}")
        return result

    def get(self, *arguments):
        return json.loads(self.kubectl("get", *arguments, "-o", "json").stdout)

    def pods(self):
        return self.get("pods", "-l", f"app.kubernetes.io/name={NAME}")["items"]

    def settled(self, seconds=180):
        """Wait until the Deployment runs exactly its replicas, all ready and of its newest template, and the server
        of every pod being deleted has exited (the kubelet removes the pod itself some seconds later); those pods."""
        deadline = time.monotonic() + seconds
        while True:
            deployment = self.get("deployment", NAME)
            pods = self.pods()
            live = [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]
            hashes = {pod["metadata"]["labels"].get("pod-template-hash") for pod in live}
            if (
                deployment["status"].get("observedGeneration") == deployment["metadata"]["generation"]
                and deployment["status"].get("updatedReplicas") == deployment["spec"]["replicas"]
                and len(live) == deployment["spec"]["replicas"]
                and len(hashes) == 1
                and all(map(is_ready, live))
                and not any(map(is_running, [pod for pod in pods if pod not in live]))
            ):
                return live
            assert time.monotonic() < deadline, f"not settled in {seconds} s: {[pod_summary(pod) for pod in pods]}"
            time.sleep(0.5)

    def container_of(self, pod):
        """The Docker container of the pod's server (kubelet's dockershim labels it)."""
        found = docker(
            "ps",
            "-q",
            "--filter",
            f"label=io.kubernetes.pod.name={pod['metadata']['name']}",
            "--filter",
            f"label=io.kubernetes.pod.namespace={self.namespace}",
            "--filter",
            "label=io.kubernetes.container.name=server",
        ).stdout.split()
        assert len(found) == 1, found
        return found[0]

    def patch_deadline(self, seconds):
        """How long a rollout may go without progress before the Deployment reports it failed."""
        patch = [{"op": "replace", "path": "/spec/progressDeadlineSeconds", "value": seconds}]
        self.kubectl("patch", "deployment", NAME, "--type", "json", "-p", json.dumps(patch))

    def patch_model(self, model):
        """Point the Deployment's server at `model` (a path in the volume): a new revision, rolled out."""
        patch = [{"op": "replace", "path": "/spec/template/spec/containers/0/args/1", "value": model}]
        self.kubectl("patch", "deployment", NAME, "--type", "json", "-p", json.dumps(patch))


def is_ready(pod):
    return any(
        condition["type"] == "Ready" and condition["status"] == "True"
        for condition in pod["status"].get("conditions", [])
    )


def is_running(pod):
    return any("running" in status["state"] for status in pod["status"].get("containerStatuses", []))


def pod_summary(pod):
    statuses = pod["status"].get("containerStatuses", [{}])
    return (
        pod["metadata"]["name"],
        pod["status"].get("phase"),
        is_ready(pod),
        statuses[0].get("restartCount"),
        bool(pod["metadata"].get("deletionTimestamp")),
    )


def restarts(pod):
    return pod["status"]["containerStatuses"][0]["restartCount"]


def model_args(cluster):
    return cluster.get("deployment", NAME)["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.fixture(scope="module")
def digit():
    """A V2 request body of one fixture digit, and its label."""
    row = np.loadtxt(FIXTURES / "train.csv", delimiter=",", skiprows=1, dtype=int, max_rows=1)
    return {"inputs": [{"name": "pixels", "shape": [1, 784], "datatype": "UINT8", "data": row[1:].tolist()}]}, int(
        row[0]
    )


class Traffic:
    """`workers` threads sending V2 requests through the Service every `pause` seconds, until stopped; at most
    `seconds` and `most` requests each. Half keep their connection alive (as a pooling client does), half open a
    new one for every request (as `curl` in a loop does): kube-proxy picks a pod for each new connection.

    Every answer that is not a 200 with the right label is a failure, kept with its time and cause.
    """

    def __init__(self, url, digit, workers=4, pause=0.02, seconds=400, most=20000):
        self.url, (self.body, self.label) = url, digit
        self.workers, self.pause, self.seconds, self.most = workers, pause, seconds, most
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.sent, self.answered, self.failures = 0, [], []

    def run(self, keep_alive):
        started = time.monotonic()
        headers = {} if keep_alive else {"Connection": "close"}
        with httpx.Client(base_url=self.url, timeout=5, headers=headers) as client:
            for _ in range(self.most):
                if self.stopped.is_set() or time.monotonic() - started > self.seconds:
                    return
                sent = time.monotonic()
                try:
                    response = client.post("/v2/models/digit-recognizer/infer", json=self.body)
                    answer = response.json()["outputs"][1]["data"] if response.status_code == 200 else None
                    problem = None if answer == [self.label] else f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as error:
                    problem = f"{type(error).__name__}: {error}"
                with self.lock:
                    self.sent += 1
                    if problem:
                        self.failures.append((round(sent - self.started, 2), problem))
                    else:
                        self.answered.append(sent - self.started)
                self.stopped.wait(self.pause)

    def __enter__(self):
        self.started = time.monotonic()
        self.threads = [
            threading.Thread(target=self.run, args=(worker % 2 == 0,), daemon=True) for worker in range(self.workers)
        ]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exception):
        self.stopped.set()
        for thread in self.threads:
            thread.join(10)

    def longest_silence(self):
        """The longest time, in seconds, without a good answer."""
        times = sorted([0.0, *self.answered, time.monotonic() - self.started])
        return max(later - earlier for earlier, later in zip(times, times[1:]))

    def report(self, what):
        print(
            f"\n{what}: {self.sent} requests ({self.workers} at a time), {len(self.failures)} failed, "
            f"longest time without an answer {self.longest_silence():.2f} s; first failures: {self.failures[:5]}"
        )


@contextlib.contextmanager
def port_forward(cluster, pod, port):
    """`kubectl port-forward` to `port` of `pod`, on a free port of 127.0.0.1: yields its URL."""
    process = subprocess.Popen(
        [cluster.kubectl_path, "-n", cluster.namespace, "port-forward", f"pod/{pod}", f":{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()  # "Forwarding from 127.0.0.1:PORT -> 8080"
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match, line + process.stderr.read()
        yield f"http://127.0.0.1:{match.group(1)}"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def served(kube_node, serve_image, served_model, tmp_path_factory):
    """deploy/ applied in a fresh namespace, the model loaded as the docs say: the Cluster, the Service's URL, the
    volume's folder."""
    started = time.monotonic()
    cluster = Cluster(kube_node, f"serve-{uuid.uuid4().hex[:8]}")
    volume = tmp_path_factory.mktemp("model-volume")
    volume.chmod(0o777)  # a fresh volume the loader (the serve image's user 10001 here, not busybox's root) can write
    overlay = node_overlay(tmp_path_factory.mktemp("overlay"), cluster.namespace, volume)
    cluster.kubectl("create", "namespace", cluster.namespace)
    cluster.kubectl("apply", "-k", str(overlay))
    try:
        # With no model on the volume yet, the pods start but their readiness says no.
        deadline = time.monotonic() + 60
        while not any(
            pod["status"].get("containerStatuses", [{}])[0].get("state", {}).get("running") for pod in cluster.pods()
        ):
            assert time.monotonic() < deadline, [pod_summary(pod) for pod in cluster.pods()]
            time.sleep(0.5)
        time.sleep(3)
        assert not any(is_ready(pod) for pod in cluster.pods())
        # As the docs tell a user (there with busybox, which this node does not have: the serve image has tar too).
        loader = {
            "spec": {
                "containers": [
                    {
                        "name": "model-loader",
                        "image": serve_image,
                        "command": ["sleep", "300"],
                        "volumeMounts": [{"name": "model", "mountPath": "/mnt/models"}],
                    }
                ],
                "volumes": [{"name": "model", "persistentVolumeClaim": {"claimName": "digit-recognizer-model"}}],
            }
        }
        cluster.kubectl(
            "run", "model-loader", f"--image={serve_image}", "--restart=Never", f"--overrides={json.dumps(loader)}"
        )
        cluster.kubectl("wait", "--for=condition=Ready", "pod/model-loader", "--timeout=120s")
        cluster.kubectl("cp", str(served_model), f"{cluster.namespace}/model-loader:/mnt/models/model.onnx")
        cluster.kubectl("delete", "pod", "model-loader", "--wait=false")
        cluster.kubectl("rollout", "restart", f"deployment/{NAME}")
        cluster.kubectl("rollout", "status", f"deployment/{NAME}", "--timeout=180s")
        cluster.kubectl("wait", "--for=condition=Available", f"deployment/{NAME}", "--timeout=60s")
        cluster.settled()
        node_port = cluster.get("service", NAME)["spec"]["ports"][0]["nodePort"]
        print(f"\ndeploy/ applied, model loaded, Available in {time.monotonic() - started:.1f} s")
        yield cluster, f"http://127.0.0.1:{node_port}", volume
    finally:
        cluster.kubectl("delete", "namespace", cluster.namespace, "--wait=false", check=False)
        cluster.kubectl(
            "delete", "persistentvolume", f"digit-recognizer-model-{cluster.namespace}", "--wait=false", check=False
        )


def test_the_overlay_changes_only_what_the_node_needs(kube_node, tmp_path):
    overlay = node_overlay(tmp_path, "any", tmp_path)
    rendered = subprocess.run([str(kube_node), "kustomize", str(overlay)], capture_output=True, text=True, check=True)
    by_kind = {document["kind"]: document for document in yaml.safe_load_all(rendered.stdout)}
    base = {
        document["kind"]: document
        for path in DEPLOY.glob("*.yaml")
        if path.name != "kustomization.yaml"
        for document in yaml.safe_load_all(path.read_text())
    }
    assert set(by_kind) == set(base) | {"PersistentVolume"}
    for kind, document in base.items():
        expected = json.loads(json.dumps(document))
        if kind == "Deployment":
            expected["spec"]["template"]["spec"]["containers"][0]["image"] = SERVE_IMAGE
        for operation in NODE_PATCHES.get((document["apiVersion"], kind), []):
            keys = operation["path"].strip("/").split("/")
            parent = expected
            for key in keys[:-1]:
                parent = parent[key]
            parent[keys[-1]] = operation["value"]
        assert by_kind[kind] == expected, kind


def test_the_deployment_serves_v2_and_predict_through_the_service_and_metrics_at_the_annotated_port(served, digit):
    cluster, url, _ = served
    body, label = digit
    pods = cluster.settled()
    for pod in pods:
        (status,) = pod["status"]["containerStatuses"]
        assert status["started"] and status["ready"] and restarts(pod) == 0
    with httpx.Client(base_url=url, timeout=10) as client:
        assert client.get("/v2/health/ready").json() == {"ready": True}
        answers = [client.post("/v2/models/digit-recognizer/infer", json=body) for _ in range(20)]
        assert [answer.json()["outputs"][1]["data"] for answer in answers] == [[label]] * 20
        predicted = client.post("/predict", json={"pixels": body["inputs"][0]["data"]})
        assert predicted.status_code == 200 and predicted.json()["label"] == label
    infers = 0
    for pod in pods:
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        with port_forward(cluster, pod["metadata"]["name"], annotations["prometheus.io/port"]) as pod_url:
            scraped = httpx.get(pod_url + annotations["prometheus.io/path"], timeout=10)
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
        samples = [sample for family in text_string_to_metric_families(scraped.text) for sample in family.samples]
        infers += sum(
            sample.value
            for sample in samples
            if sample.name == "requests_total"
            and sample.labels == {"route": "/v2/models/{name}/infer", "status": "200"}
        )
    assert infers == 20  # every answer above came from one of the two pods, through the Service


def test_rollouts_to_a_new_model_then_a_new_image_drop_no_request(served, digit):
    cluster, url, volume = served
    (volume / "v2").mkdir(exist_ok=True)
    shutil.copyfile(ROOT / "tests" / "fixtures" / "model.onnx", volume / "v2" / "model.onnx")
    next_image = f"{SERVE_IMAGE}-next"
    docker("tag", SERVE_IMAGE, next_image)
    before = {pod["metadata"]["name"] for pod in cluster.settled()}
    with Traffic(url, digit) as traffic:
        time.sleep(2)
        cluster.patch_model("/mnt/models/v2")
        cluster.kubectl("rollout", "status", f"deployment/{NAME}", "--timeout=180s")
        on_new_model = cluster.settled()
        cluster.kubectl("set", "image", f"deployment/{NAME}", f"server={next_image}")
        cluster.kubectl("rollout", "status", f"deployment/{NAME}", "--timeout=180s")
        on_new_image = cluster.settled()
        time.sleep(2)
    traffic.report("two rollouts under traffic")
    assert not {pod["metadata"]["name"] for pod in on_new_model} & before
    for pod in on_new_image:
        (container,) = pod["spec"]["containers"]
        assert container["image"] == next_image and container["args"][1] == "/mnt/models/v2"
        assert '"model": "/mnt/models/v2/model.onnx"' in cluster.kubectl("logs", pod["metadata"]["name"]).stdout
    assert traffic.sent > 1000 and traffic.failures == []


@pytest.mark.parametrize("broken", ["missing", "corrupt"])
def test_a_rollout_to_a_broken_model_never_becomes_ready_and_undo_restores_the_working_one(served, digit, broken):
    cluster, url, volume = served
    if broken == "corrupt":
        (volume / broken).mkdir(exist_ok=True)
        (volume / broken / "model.onnx").write_bytes(b"\x08\x07 not an ONNX model " * 100)
    working = model_args(cluster)
    serving_before = {pod["metadata"]["name"] for pod in cluster.settled()}
    with Traffic(url, digit) as traffic:
        cluster.patch_deadline(30)
        cluster.patch_model(f"/mnt/models/{broken}/model.onnx")
        try:
            status = cluster.kubectl("rollout", "status", f"deployment/{NAME}", "--timeout=120s", check=False)
            pods = [pod for pod in cluster.pods() if not pod["metadata"].get("deletionTimestamp")]
            (new,) = [pod for pod in pods if pod["metadata"]["name"] not in serving_before]
            events = cluster.get("events", "--field-selector", f"involvedObject.name={new['metadata']['name']}")
            probe_failures = {event["message"] for event in events["items"] if event["reason"] == "Unhealthy"}
            log = cluster.kubectl("logs", new["metadata"]["name"]).stdout
        finally:  # the next tests need the working model back, whatever failed here
            cluster.kubectl("rollout", "undo", f"deployment/{NAME}")
            cluster.kubectl("rollout", "status", f"deployment/{NAME}", "--timeout=120s")
            restored = cluster.settled()
            cluster.patch_deadline(600)  # Kubernetes' default again
    traffic.report(f"a rollout to a {broken} model, and its undo, under traffic")
    print(f"rollout status said: {status.stderr.strip()}; the new pod's probe: {sorted(probe_failures)}")
    assert status.returncode != 0 and "exceeded its progress deadline" in status.stderr, status
    assert not is_ready(new) and {pod["metadata"]["name"] for pod in pods if is_ready(pod)} == serving_before
    assert "Startup probe failed: HTTP probe failed with statuscode: 400" in probe_failures, probe_failures
    assert '"event": "model_load_failed"' in log
    assert ("file not found" if broken == "missing" else "not an ONNX model onnxruntime can load") in log
    assert model_args(cluster) == working
    assert {pod["metadata"]["name"] for pod in restored} == serving_before  # the old pods served throughout
    assert traffic.sent > 500 and traffic.failures == []


def test_the_disruption_budget_refuses_an_eviction_that_would_leave_no_ready_replica(served, digit):
    from kubernetes import client, config

    cluster, url, _ = served
    core = client.CoreV1Api(config.new_client_from_config(config_file=os.environ["KUBECONFIG"]))
    pods = cluster.settled()
    deadline = time.monotonic() + 60
    while cluster.get("poddisruptionbudget", NAME)["status"].get("disruptionsAllowed") != 1:
        assert time.monotonic() < deadline, cluster.get("poddisruptionbudget", NAME)["status"]
        time.sleep(0.5)

    def evict(pod):
        name = pod["metadata"]["name"]
        eviction = {
            "apiVersion": "policy/v1beta1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": cluster.namespace},
        }
        try:
            core.create_namespaced_pod_eviction(name, cluster.namespace, eviction)
            return 201, ""
        except client.ApiException as error:
            return error.status, json.loads(error.body)["message"]

    with Traffic(url, digit) as traffic:
        assert evict(pods[0]) == (201, "")
        refused = evict(pods[1])  # the first is stopping, its replacement not ready: this one is the last
        replaced = cluster.settled()
    traffic.report("an eviction under traffic")
    assert refused == (429, "Cannot evict pod as it would violate the pod's disruption budget.")
    assert pods[1]["metadata"]["name"] in {pod["metadata"]["name"] for pod in replaced}
    assert pods[0]["metadata"]["name"] not in {pod["metadata"]["name"] for pod in replaced}
    assert traffic.failures == []


def wait_restarted(cluster, pod, seconds):
    """Wait until `pod`'s server has been restarted once more and is ready again; the pod."""
    deadline, before = time.monotonic() + seconds, restarts(pod)
    while not (restarts(pod := cluster.get("pod", pod["metadata"]["name"])) == before + 1 and is_ready(pod)):
        assert restarts(pod) <= before + 1 and time.monotonic() < deadline, pod_summary(pod)
        time.sleep(0.5)
    return pod


def test_a_killed_server_is_replaced_while_the_service_keeps_answering(served, digit):
    cluster, url, _ = served
    victim, other = cluster.settled()
    with Traffic(url, digit) as traffic:
        time.sleep(2)
        docker("kill", cluster.container_of(victim))
        killed = time.monotonic() - traffic.started
        wait_restarted(cluster, victim, 120)
        ready_again = time.monotonic() - traffic.started - killed
        time.sleep(2)
    traffic.report("a docker kill of one server under traffic")
    print(f"the killed server was restarted and ready again after {ready_again:.1f} s")
    assert restarts(cluster.get("pod", other["metadata"]["name"])) == restarts(other)
    # Requests in flight on the killed server fail with it, and new connections for a moment after, until the
    # kubelet has seen it die; the Service answers from the other one meanwhile.
    assert traffic.longest_silence() < 3
    assert all(moment < killed + 5 for moment, _ in traffic.failures), traffic.failures
    assert traffic.sent > 300


def test_a_server_that_stops_answering_its_liveness_probe_is_restarted(served, digit):
    cluster, url, _ = served
    hung, other = cluster.settled()
    name = hung["metadata"]["name"]
    with Traffic(url, digit) as traffic:
        time.sleep(2)
        docker("kill", "--signal", "STOP", cluster.container_of(hung))  # frozen: the port accepts, nothing answers
        stopped = time.monotonic()
        while is_ready(cluster.get("pod", name)):  # readiness fails first: the Service stops sending it requests
            assert time.monotonic() < stopped + 60
            time.sleep(0.2)
        unready = time.monotonic() - traffic.started
        addresses = cluster.get("endpoints", NAME)["subsets"][0]["addresses"]
        assert [address["targetRef"]["name"] for address in addresses] == [other["metadata"]["name"]]
        wait_restarted(cluster, hung, 180)
        restarted = time.monotonic() - stopped
    traffic.report("a frozen server under traffic")
    print(
        f"the frozen server was not ready after {unready - (stopped - traffic.started):.1f} s, "
        f"restarted by its liveness probe and ready again after {restarted:.1f} s"
    )
    events = cluster.get("events", "--field-selector", f"involvedObject.name={name}")["items"]
    liveness = [event["message"] for event in events if event["message"].startswith("Liveness probe failed")]
    print(f"its probe: {liveness}")
    # A frozen server's probe times out; the pod's events may also hold an earlier test's kill (connection refused).
    assert any("context deadline exceeded" in message for message in liveness), [event["message"] for event in events]
    assert restarts(cluster.get("pod", other["metadata"]["name"])) == restarts(other)
    # Requests sent to the frozen server time out; none sent once readiness had taken it out of the Service.
    assert all(moment < unready + 1 for moment, _ in traffic.failures), traffic.failures
    assert traffic.sent > 300


def test_the_preprocess_step_runs_as_a_job_in_the_train_image_and_gives_the_local_arrays(
    kube_node, train_image, arrays, tmp_path
):
    cluster = Cluster(kube_node, TRAIN_NAMESPACE)
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TRAIN_NAMESPACE}}
    subprocess.run(
        [str(kube_node), "apply", "-f", "-"], input=json.dumps(namespace), text=True, check=True, capture_output=True
    )
    shutil.copytree(FIXTURES, tmp_path / "data")
    (tmp_path / "out").mkdir()
    name = f"preprocess-{uuid.uuid4().hex[:8]}"
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 300,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "preprocess",
                            "image": train_image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": [
                                "python",
                                "-m",
                                "components.preprocess",
                                "--train-csv",
                                "/work/data/train.csv",
                                "--test-csv",
                                "/work/data/test.csv",
                                "--out-dir",
                                "/work/out",
                            ],
                            "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                        }
                    ],
                    "volumes": [{"name": "work", "hostPath": {"path": str(tmp_path), "type": "Directory"}}],
                }
            },
        },
    }
    started = time.monotonic()
    subprocess.run(
        [cluster.kubectl_path, "-n", TRAIN_NAMESPACE, "apply", "-f", "-"],
        input=json.dumps(job),
        text=True,
        check=True,
        capture_output=True,
    )
    try:
        done = cluster.kubectl("wait", "--for=condition=complete", f"job/{name}", "--timeout=300s", check=False)
        assert done.returncode == 0, cluster.kubectl("logs", f"job/{name}", check=False).stdout + done.stderr
        print(f"\nthe preprocess Job completed in {time.monotonic() - started:.1f} s")
    finally:
        cluster.kubectl("delete", "job", name, "--wait=false", check=False)
    for part, local in arrays.items():
        with np.load(tmp_path / "out" / f"{part}.npz") as in_job, np.load(local) as on_host:
            assert sorted(in_job.files) == sorted(on_host.files)
            for key in on_host.files:
                np.testing.assert_array_equal(in_job[key], on_host[key])
