"""The deploy step against a real Kubernetes API server (kube-apiserver, KServe's CRD installed).

Nothing reconciles on that server (no nodes, no controllers): where KServe's controller would
report an InferenceService's state, `KServeController` below writes it to the status subresource,
as KServe does. These tests fail, not skip, in CI (CI=true), where .ci/run starts the server.
"""

import shutil
import threading
import time

import pytest
import yaml

from components.deploy import (
    CONTAINER,
    GROUP,
    PLURAL,
    RBAC_VERBS,
    STORAGE_URI_ENV,
    VERSION,
    DeployError,
    deploy,
    inference_service,
    kserve_storage_uri,
    latest_revision,
)
from tests.conftest import ROOT, run_module

MODEL_V1, MODEL_V2 = "s3://models/digit-recognizer/run-1/onnx_model", "s3://models/digit-recognizer/run-2/onnx_model"


class KServeController(threading.Thread):
    """Plays KServe's controller for one InferenceService: reconciles each new generation into its status.

    A changed pod (the predictor's containers) becomes a new revision, as Knative makes one; the
    Ready condition is `ready`. Like KServe, status.observedGeneration is the revision's
    (Knative Service's) generation, not the InferenceService's.
    """

    def __init__(self, api_client, namespace, name, ready="True", reason=None, message=None):
        super().__init__(daemon=True)
        from kubernetes.client import CustomObjectsApi

        self.api, self.name, self.ready, self.reason, self.message = (
            CustomObjectsApi(api_client),
            name,
            ready,
            reason,
            message,
        )
        self.where = dict(group=GROUP, version=VERSION, namespace=namespace, plural=PLURAL)
        self.stopped = threading.Event()

    def run(self):
        from kubernetes.client.exceptions import ApiException

        reconciled, pod = None, None
        while not self.stopped.wait(0.05):
            try:
                service = self.api.get_namespaced_custom_object(name=self.name, **self.where)
            except ApiException:
                continue  # not created yet
            if service["metadata"]["generation"] == reconciled:
                continue
            revision = int((latest_revision(service) or "0").rsplit("-", 1)[-1])
            predictor = service["spec"]["predictor"]
            served = predictor.get("containers", predictor.get("model"))  # ours, or KServe's stock runtime's model
            if served != pod:
                revision, pod = revision + 1, served
            self.api.patch_namespaced_custom_object_status(
                name=self.name, body={"status": self.status(revision)}, **self.where
            )
            reconciled = service["metadata"]["generation"]

    def status(self, revision):
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        namespace, name = self.where["namespace"], f"{self.name}-predictor-{revision:05d}"
        ready = {"type": "Ready", "status": self.ready, "lastTransitionTime": now}
        ready.update({key: value for key, value in (("reason", self.reason), ("message", self.message)) if value})
        predictor = {"latestCreatedRevision": name, **({"latestReadyRevision": name} if self.ready == "True" else {})}
        return {
            "observedGeneration": revision,
            "url": f"http://{self.name}.{namespace}.example.com",
            "address": {"url": f"http://{self.name}-predictor.{namespace}.svc.cluster.local"},
            "components": {"predictor": predictor},
            "conditions": [{"type": "PredictorReady", "status": self.ready, "lastTransitionTime": now}, ready],
        }

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exception):
        self.stopped.set()
        self.join()


def until(check, seconds=10):
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def read(api_client, namespace, name):
    from kubernetes.client import CustomObjectsApi

    return CustomObjectsApi(api_client).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def our_container(service):
    return next(container for container in service["spec"]["predictor"]["containers"] if container["name"] == CONTAINER)


def test_first_deploy_creates_a_later_one_updates_keeping_the_first_settings(kserve_api, namespace):
    from kubernetes.client import CustomObjectsApi

    with KServeController(kserve_api, namespace, "digits"):
        first = deploy(
            "digits",
            MODEL_V1,
            namespace,
            image="registry.example/digit-recognizer-serve:v1",
            min_replicas=2,
            service_account="model-reader",
            memory="2Gi",
            timeout=20,
            poll_seconds=0.05,
            api_client=kserve_api,
        )
        assert first == {
            "name": "digits",
            "namespace": namespace,
            "url": f"http://digits.{namespace}.example.com",
            "storage_uri": MODEL_V1,
            "image": "registry.example/digit-recognizer-serve:v1",
            "action": "created",
            "generation": 1,
        }
        created = read(kserve_api, namespace, "digits")
        assert created["spec"]["predictor"]["minReplicas"] == 2
        assert our_container(created)["env"] == [{"name": STORAGE_URI_ENV, "value": MODEL_V1}]
        assert "canaryTrafficPercent" not in created["spec"]["predictor"]
        # Someone tunes the service by hand between runs: a label, an environment variable.
        created["metadata"]["labels"]["team"] = "digits"
        our_container(created)["env"].append({"name": "OMP_NUM_THREADS", "value": "1"})
        CustomObjectsApi(kserve_api).patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            "digits",
            {
                "metadata": {"labels": created["metadata"]["labels"]},
                "spec": {"predictor": {"containers": created["spec"]["predictor"]["containers"]}},
            },
        )
        until(
            lambda: latest_revision(read(kserve_api, namespace, "digits")) == "digits-predictor-00002"
        )  # the hand edit's

        second = deploy(
            "digits",
            MODEL_V2,
            namespace,
            image="registry.example/digit-recognizer-serve:v2",
            canary_traffic_percent=10,
            timeout=20,
            poll_seconds=0.05,
            api_client=kserve_api,
        )
        assert second["action"] == "updated" and second["storage_uri"] == MODEL_V2 and second["generation"] == 3
        updated = read(kserve_api, namespace, "digits")
        predictor, container = updated["spec"]["predictor"], our_container(updated)
        assert predictor["canaryTrafficPercent"] == 10
        assert container["image"] == "registry.example/digit-recognizer-serve:v2"
        assert container["env"] == [
            {"name": STORAGE_URI_ENV, "value": MODEL_V2},
            {"name": "OMP_NUM_THREADS", "value": "1"},
        ]
        # What the first deploy and the hand tuning set is all still there.
        assert predictor["minReplicas"] == 2 and predictor["serviceAccountName"] == "model-reader"
        assert container["resources"]["limits"]["memory"] == "2Gi"
        assert (
            container["args"] == our_container(created)["args"]
            and container["securityContext"] == our_container(created)["securityContext"]
        )
        assert updated["metadata"]["labels"]["team"] == "digits"
        assert updated["metadata"]["annotations"] == created["metadata"]["annotations"]
        assert latest_revision(updated) == "digits-predictor-00003"

        # 100%: no canary any more, the new model takes all traffic.
        deploy(
            "digits",
            MODEL_V2,
            namespace,
            image="registry.example/digit-recognizer-serve:v2",
            timeout=20,
            poll_seconds=0.05,
            api_client=kserve_api,
        )
        assert "canaryTrafficPercent" not in read(kserve_api, namespace, "digits")["spec"]["predictor"]


def test_without_an_image_kserves_stock_onnx_runtime_serves_a_triton_repository(kserve_api, namespace):
    repository_v1, repository_v2 = "s3://models/run-1/triton", "s3://models/run-2/triton"
    with KServeController(kserve_api, namespace, "digits"):
        first = deploy(
            "digits", repository_v1, namespace, image="", timeout=20, poll_seconds=0.05, api_client=kserve_api
        )
        assert first["action"] == "created"
        predictor = read(kserve_api, namespace, "digits")["spec"]["predictor"]
        assert "containers" not in predictor
        assert predictor["model"]["modelFormat"] == {"name": "onnx"} and predictor["model"]["protocolVersion"] == "v2"
        assert predictor["model"]["storageUri"] == repository_v1
        second = deploy(
            "digits",
            repository_v2,
            namespace,
            image="",
            canary_traffic_percent=20,
            timeout=20,
            poll_seconds=0.05,
            api_client=kserve_api,
        )
        updated = read(kserve_api, namespace, "digits")
        assert second["action"] == "updated" and updated["spec"]["predictor"]["model"]["storageUri"] == repository_v2
        assert updated["spec"]["predictor"]["canaryTrafficPercent"] == 20
        assert updated["spec"]["predictor"]["model"]["resources"] == predictor["model"]["resources"]
        assert latest_revision(updated) == "digits-predictor-00002"  # the new model's, waited for
        with pytest.raises(DeployError, match="is served by KServe's stock runtime; deploy it without an image"):
            deploy("digits", repository_v2, namespace, image="ours:v1", timeout=1, api_client=kserve_api)


@pytest.mark.parametrize(
    ("image", "served_uri"),
    [("ours:v1", "s3://models/run-1/export-component/onnx_model"), ("", "s3://models/run-1/export-component/triton")],
)
def test_the_kfp_component_serves_model_onnx_with_our_image_and_the_triton_repository_without(
    kserve_api, namespace, tmp_path, image, served_uri
):
    """The pipeline's deploy component, as KFP calls it (artifacts with their URIs; credentials from KUBECONFIG):
    our image reads model.onnx, KServe's stock ONNX runtime the Triton repository export wrote beside it."""
    from kfp.dsl import Artifact, Model

    from components.kfp_components import deploy_component

    onnx_model = Model(uri="s3://models/run-1/export-component/onnx_model")
    triton_repository = Model(uri="s3://models/run-1/export-component/triton")
    deployment = Artifact(uri=str(tmp_path / "deployment"))
    with KServeController(kserve_api, namespace, "digits"):
        url = deploy_component(onnx_model, triton_repository, "digits", namespace, image, 100, deployment)
    predictor = read(kserve_api, namespace, "digits")["spec"]["predictor"]
    if image:
        assert predictor["containers"][0]["env"][0] == {"name": STORAGE_URI_ENV, "value": served_uri}
    else:
        assert predictor["model"]["storageUri"] == served_uri
    assert url == deployment.metadata["url"] and deployment.metadata["action"] == "created"


def test_an_update_that_raced_another_write_reads_again_and_loses_nothing(kserve_api, namespace, monkeypatch):
    from kubernetes.client import CustomObjectsApi

    import components.deploy

    with KServeController(kserve_api, namespace, "digits"):
        deploy("digits", MODEL_V1, namespace, timeout=20, poll_seconds=0.05, api_client=kserve_api)
        stale = read(kserve_api, namespace, "digits")
        CustomObjectsApi(kserve_api).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "digits", {"metadata": {"labels": {"team": "digits"}}}
        )
        reads = []
        real_get_or_none = components.deploy.get_or_none

        def first_read_is_stale(*arguments):
            """The first read is from before the label was written: its patch gets a 409 Conflict."""
            reads.append(arguments)
            return stale if len(reads) == 1 else real_get_or_none(*arguments)

        monkeypatch.setattr(components.deploy, "get_or_none", first_read_is_stale)
        assert (
            deploy("digits", MODEL_V2, namespace, timeout=20, poll_seconds=0.05, api_client=kserve_api)["action"]
            == "updated"
        )
    assert len(reads) == 2
    updated = read(kserve_api, namespace, "digits")
    assert updated["metadata"]["labels"]["team"] == "digits"
    assert our_container(updated)["env"] == [{"name": STORAGE_URI_ENV, "value": MODEL_V2}]


@pytest.mark.parametrize(
    "ready, reason, message",
    [
        (
            "Unknown",
            "RevisionMissing",
            "Revision digits-predictor-00001 is waiting for load balancer to be ready",
        ),  # Serverless
        (
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        ),  # RawDeployment, starting
    ],
)
def test_waiting_times_out_with_the_ready_condition_message(kserve_api, namespace, ready, reason, message):
    with KServeController(kserve_api, namespace, "digits", ready=ready, reason=reason, message=message):
        started = time.monotonic()
        with pytest.raises(DeployError) as caught:
            deploy("digits", MODEL_V1, namespace, timeout=1, poll_seconds=0.05, api_client=kserve_api)
    assert time.monotonic() - started < 5
    assert str(caught.value) == (
        f"InferenceService {namespace}/digits not Ready within 1 s; last Ready condition: {reason}: {message}"
    )


def test_a_stale_ready_of_the_previous_generation_is_not_taken_for_this_one(kserve_api, namespace):
    with KServeController(kserve_api, namespace, "digits"):
        deploy("digits", MODEL_V1, namespace, timeout=20, poll_seconds=0.05, api_client=kserve_api)
    # The controller is gone: the status still says Ready, but of the first model's revision.
    assert read(kserve_api, namespace, "digits")["status"]["conditions"][-1]["status"] == "True"
    with pytest.raises(
        DeployError,
        match=rf"^InferenceService {namespace}/digits not Ready within 0.5 s; "
        r"KServe has not rolled out a revision after digits-predictor-00001$",
    ):
        deploy(
            "digits",
            MODEL_V2,
            namespace,
            canary_traffic_percent=20,
            timeout=0.5,
            poll_seconds=0.05,
            api_client=kserve_api,
        )


def test_a_false_ready_condition_fails_at_once(kserve_api, namespace):
    message = (
        'Revision "digits-predictor-00001" failed with message: Back-off pulling image "digit-recognizer-serve:latest".'
    )
    with KServeController(kserve_api, namespace, "digits", ready="False", reason="RevisionFailed", message=message):
        started = time.monotonic()
        with pytest.raises(DeployError) as caught:
            deploy("digits", MODEL_V1, namespace, timeout=30, poll_seconds=0.05, api_client=kserve_api)
    assert time.monotonic() - started < 10  # not the timeout
    assert str(caught.value) == f"InferenceService {namespace}/digits is not Ready: RevisionFailed: {message}"


def test_an_invalid_spec_is_refused_by_the_crd_schema_in_one_line(kserve_api, namespace):
    with pytest.raises(DeployError) as caught:
        deploy("digits", MODEL_V1, namespace, memory="lots", timeout=1, api_client=kserve_api)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"the Kubernetes API refused inferenceservices.serving.kserve.io {namespace}/digits: ")
    assert "spec.predictor.containers.resources.limits.memory" in message and '"lots"' in message


def impersonating(api_client, user):
    """A client that acts as `user` (the admin's token may impersonate, as `kubectl --as` does)."""
    from kubernetes.client import ApiClient

    return ApiClient(api_client.configuration, header_name="Impersonate-User", header_value=user)


def grant(api_client, namespace, service_account):
    """deploy/kserve/rbac.yaml's Role and RoleBinding in `namespace`, for `service_account`."""
    from kubernetes.client import RbacAuthorizationV1Api

    rbac = RbacAuthorizationV1Api(api_client)
    role, binding = yaml.safe_load_all((ROOT / "deploy" / "kserve" / "rbac.yaml").read_text())
    binding["subjects"][0].update(name=service_account, namespace=namespace)
    rbac.create_namespaced_role(namespace, role)
    rbac.create_namespaced_role_binding(namespace, binding)
    return role


def test_the_rbac_manifest_allows_exactly_what_the_step_does(kserve_api, namespace):
    from kubernetes.client import CustomObjectsApi, RbacAuthorizationV1Api

    runner = impersonating(kserve_api, f"system:serviceaccount:{namespace}:pipeline-runner")
    with pytest.raises(DeployError) as caught:
        deploy("digits", MODEL_V1, namespace, timeout=1, api_client=runner)
    assert str(caught.value).startswith(
        f"forbidden: cannot get inferenceservices.serving.kserve.io in namespace {namespace} "
        "(deploy/kserve/rbac.yaml grants it): "
        'inferenceservices.serving.kserve.io "digits" is forbidden: '
        f'User "system:serviceaccount:{namespace}:pipeline-runner" '
        f'cannot get resource "inferenceservices" in API group "serving.kserve.io"'
    )
    assert "\n" not in str(caught.value)

    role = grant(kserve_api, namespace, "pipeline-runner")
    assert role["rules"] == [{"apiGroups": [GROUP], "resources": [PLURAL], "verbs": list(RBAC_VERBS)}]
    with KServeController(kserve_api, namespace, "digits"):
        assert (
            deploy("digits", MODEL_V1, namespace, timeout=20, poll_seconds=0.05, api_client=runner)["action"]
            == "created"
        )
        assert (
            deploy(
                "digits",
                MODEL_V2,
                namespace,
                canary_traffic_percent=50,
                timeout=20,
                poll_seconds=0.05,
                api_client=runner,
            )["action"]
            == "updated"
        )
    # Each verb is needed: without it the step stops, naming it.
    rbac = RbacAuthorizationV1Api(kserve_api)
    for missing, name in (("get", "digits"), ("create", "fresh"), ("patch", "digits")):
        role["rules"][0]["verbs"] = [verb for verb in RBAC_VERBS if verb != missing]
        rbac.replace_namespaced_role(role["metadata"]["name"], namespace, role)
        with pytest.raises(
            DeployError,
            match=rf"^forbidden: cannot {missing} inferenceservices.serving.kserve.io in namespace {namespace} ",
        ):
            deploy(name, MODEL_V2, namespace, timeout=1, poll_seconds=0.05, api_client=runner)
    # ... and nothing more: the runner may not delete or list.
    for attempt in (
        lambda api: api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "digits"),
        lambda api: api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL),
    ):
        with pytest.raises(Exception, match="403"):
            attempt(CustomObjectsApi(runner))


def test_an_update_leaves_a_service_it_did_not_make_alone(kserve_api, namespace):
    from kubernetes.client import CustomObjectsApi

    foreign = inference_service("digits", MODEL_V1, namespace=namespace)
    foreign["spec"]["predictor"]["containers"][0]["name"] = "someone-elses"
    CustomObjectsApi(kserve_api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, foreign)
    with pytest.raises(DeployError, match=f"has no container named {CONTAINER}: it was not made by this step"):
        deploy("digits", MODEL_V2, namespace, timeout=1, api_client=kserve_api)
    untouched = read(kserve_api, namespace, "digits")["spec"]["predictor"]["containers"][0]
    assert untouched["name"] == "someone-elses" and untouched["env"] == [{"name": STORAGE_URI_ENV, "value": MODEL_V1}]


def test_the_command_line_deploys_with_the_kubeconfig_and_writes_the_result(kserve_api, namespace, tmp_path):
    import json

    with KServeController(kserve_api, namespace, "cli-digits"):
        result = run_module(
            "-m",
            "components.deploy",
            "--name",
            "cli-digits",
            "--storage-uri",
            "minio://mlpipeline/v2/artifacts/run/onnx_model",
            "--namespace",
            namespace,
            "--poll-seconds",
            "0.05",
            "--timeout",
            "20",
            "--result",
            str(tmp_path / "result.json"),
        )
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip()
        == f"created InferenceService {namespace}/cli-digits: Ready at http://cli-digits.{namespace}.example.com"
    )
    written = json.loads((tmp_path / "result.json").read_text())
    assert written["storage_uri"] == "s3://mlpipeline/v2/artifacts/run/onnx_model"  # KFP's MinIO, as KServe reads it


def test_the_command_line_reports_a_refusal_in_one_line(kserve_api, namespace):
    result = run_module(
        "-m",
        "components.deploy",
        "--name",
        "digits",
        "--storage-uri",
        MODEL_V1,
        "--namespace",
        namespace,
        "--cpu",
        "a lot",
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(
        f"error: the Kubernetes API refused inferenceservices.serving.kserve.io {namespace}/digits: "
    )
    assert "spec.predictor.containers.resources.limits.cpu" in result.stderr


def test_in_a_pod_it_uses_the_service_account_and_the_pod_namespace(kserve_api, namespace, tmp_path, monkeypatch):
    """What a pod has: KUBERNETES_SERVICE_HOST/PORT, and the service account's token, CA and namespace files."""
    from urllib.parse import urlsplit

    from kubernetes.client import Configuration
    from kubernetes.config import incluster_config

    import components.deploy

    server = urlsplit(kserve_api.configuration.host)
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(kserve_api.configuration.api_key["authorization"].removeprefix("Bearer "))
    shutil.copyfile(kserve_api.configuration.ssl_ca_cert, account / "ca.crt")
    (account / "namespace").write_text(namespace)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", server.hostname)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(account / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(account / "ca.crt"))
    monkeypatch.setattr(components.deploy, "SERVICE_ACCOUNT_NAMESPACE", account / "namespace")
    default = Configuration.get_default_copy()
    try:
        with KServeController(kserve_api, namespace, "digits"):
            result = deploy("digits", MODEL_V1, timeout=20, poll_seconds=0.05)
    finally:
        Configuration.set_default(default)  # the in-cluster loader set the process-wide default
    assert result["namespace"] == namespace and result["action"] == "created"


def test_no_credentials_and_no_server_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    result = run_module("-m", "components.deploy", "--name", "digits", "--storage-uri", MODEL_V1)
    assert result.returncode == 2
    assert result.stderr.startswith("error: no Kubernetes credentials: not in a pod, and no usable kubeconfig")
    from kubernetes.client import ApiClient, Configuration

    configuration = Configuration()
    configuration.host, configuration.retries = "http://127.0.0.1:9", 0
    with pytest.raises(DeployError, match=r"^cannot reach the Kubernetes API at http://127.0.0.1:9: "):
        deploy("digits", MODEL_V1, "default", api_client=ApiClient(configuration))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(canary_traffic_percent=101), "canary_traffic_percent must be between 0 and 100, not 101"),
        (dict(storage_uri=""), "storage_uri is empty"),
        (
            dict(name="Digits_1"),
            "InferenceService name 'Digits_1': use lower-case letters, digits and '-', starting with a letter",
        ),
    ],
)
def test_bad_arguments_are_refused_before_any_request(arguments, message):
    with pytest.raises(DeployError, match=message):
        deploy(**{"name": "digits", "storage_uri": MODEL_V1, **arguments})


def test_kfp_artifact_uris_as_kserve_reads_them():
    assert (
        kserve_storage_uri("minio://mlpipeline/v2/artifacts/a/onnx_model")
        == "s3://mlpipeline/v2/artifacts/a/onnx_model"
    )
    for uri in ("gs://bucket/onnx_model", "s3://bucket/onnx_model", "pvc://models/model.onnx"):
        assert kserve_storage_uri(uri) == uri
