"""deploy/: every manifest, and every object the deploy step builds, checked strictly.

Offline against Kubernetes 1.30 and the newest schemas kubernetes-validate ships (unknown fields
are errors), the InferenceService against KServe's CRD schema made as strict; then, on the real
API server (1.20, which drops unknown fields silently), a server-side dry run of each object
whose API version it serves.
"""

import copy
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from components.deploy import inference_service, stock_runtime_inference_service, update_patch
from serving.app import create_app
from tests.conftest import KSERVE_CRD, ROOT, unavailable

DEPLOY = ROOT / "deploy"
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
NOT_SERVED_BY_1_20 = {("autoscaling/v2", "HorizontalPodAutoscaler"), ("policy/v1", "PodDisruptionBudget")}
SHARED_K8S = KSERVE_CRD.parent  # KServe v0.20's CRDs and its stock Triton runtime (../shared/k8s/README.md)
RUNTIME_CRDS = ("kserve-servingruntimes-crd.yaml", "kserve-clusterservingruntimes-crd.yaml")


def manifests():
    """(file, object) for every object in deploy/ (kustomization files are kustomize's, not the API's)."""
    return [
        (path, document)
        for path in sorted(DEPLOY.rglob("*.yaml"))
        if path.name != "kustomization.yaml"
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def objects_by_kind():
    """deploy/'s plain manifests by kind (the KServe folders hold alternatives to each other: by path)."""
    return {document["kind"]: document for path, document in manifests() if path.parent == DEPLOY}


def manifest(relative_path):
    return yaml.safe_load((DEPLOY / relative_path).read_text())


def shared_k8s(name):
    path = SHARED_K8S / name
    if not path.is_file():
        unavailable(f"{path} not found (KServe's files: ../shared/k8s/README.md)")
    with open(path) as file:
        return next(document for document in yaml.load_all(file, Loader=yaml.CSafeLoader) if document)


def strict(schema):
    """A CRD's structural schema with unknown fields refused, as `kubectl --validate=strict` refuses them.

    Kubernetes prunes unknown fields of a custom resource silently; here every object schema that
    lists its properties (and does not preserve unknown fields) gets additionalProperties: false.
    """
    schema = copy.deepcopy(schema)

    def visit(node):
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node.setdefault("additionalProperties", False)
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


def crd_validator(crd):
    """A strict validator of the custom resource of `crd`, at its API version."""
    (version,) = [version for version in crd["spec"]["versions"] if version.get("storage")]
    return jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))


@pytest.fixture(scope="module")
def inference_service_schema(kserve_crd):
    """KServe's kinds by name, each with the strict validator of its CRD's schema."""
    validators = {"InferenceService": crd_validator(kserve_crd)}
    for name in RUNTIME_CRDS:
        crd = shared_k8s(name)
        validators[crd["spec"]["names"]["kind"]] = crd_validator(crd)
    return validators


def problems(document, inference_service_schema):
    """Every schema violation of `document`, one line each (empty: valid)."""
    if document["kind"] in inference_service_schema:
        return [
            f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
            for error in inference_service_schema[document["kind"]].iter_errors(document)
        ]
    found = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            found.append(f"{version} {'.'.join(map(str, error.absolute_path))}: {error.message}")
    return found


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch, as the API server applies the step's update."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def step_objects():
    """What the deploy step sends: the created service (with and without options) and the service after an update."""
    created = inference_service(
        "digits", "s3://bucket/run-1/onnx_model", "registry.example/digit-recognizer-serve:v1", "team"
    )
    options = inference_service(
        "digits",
        "gs://bucket/run-1/onnx_model",
        namespace="team",
        min_replicas=0,
        max_replicas=8,
        service_account="model-reader",
        cpu="2",
        memory="2Gi",
    )
    existing = {**created, "metadata": {**created["metadata"], "resourceVersion": "7"}}
    patched = merge_patch(
        existing,
        update_patch(existing, "s3://bucket/run-2/onnx_model", "registry.example/digit-recognizer-serve:v2", 10),
    )
    stock = stock_runtime_inference_service("digits", "s3://bucket/run-1/triton", "team")
    existing = {**stock, "metadata": {**stock["metadata"], "resourceVersion": "7"}}
    stock_updated = merge_patch(existing, update_patch(existing, "s3://bucket/run-2/triton", "", 10))
    return {
        "created": created,
        "with options": options,
        "updated": patched,
        "stock runtime": stock,
        "stock runtime updated": stock_updated,
    }


@pytest.mark.parametrize(
    "path, document", manifests(), ids=lambda value: value.name if isinstance(value, Path) else value.get("kind")
)
def test_every_manifest_is_valid_strictly(path, document, inference_service_schema):
    assert problems(document, inference_service_schema) == [], path


@pytest.mark.parametrize("name", ["created", "with options", "updated", "stock runtime", "stock runtime updated"])
def test_every_object_the_step_sends_is_valid_strictly(name, inference_service_schema):
    document = step_objects()[name]
    assert problems(document, inference_service_schema) == []
    if name.endswith("updated"):
        assert document["spec"]["predictor"]["canaryTrafficPercent"] == 10


def test_kserves_own_triton_runtime_is_valid_strictly(inference_service_schema):
    """The validators accept what KServe itself ships."""
    assert problems(shared_k8s("kserve-tritonserver-runtime.yaml"), inference_service_schema) == []


def test_the_strict_checks_catch_an_unknown_field(inference_service_schema):
    deployment = copy.deepcopy(objects_by_kind()["Deployment"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesystem"] = (
        True  # belongs in securityContext
    )
    assert any("readOnlyRootFilesystem" in problem for problem in problems(deployment, inference_service_schema))
    service = step_objects()["created"]
    service["spec"]["predictor"]["canaryTrafficPercents"] = 10
    assert problems(service, inference_service_schema) == [
        "spec.predictor: Additional properties are not allowed ('canaryTrafficPercents' was unexpected)"
    ]


def test_the_kustomizations_list_every_manifest():
    for folder in (path.parent for path in DEPLOY.rglob("kustomization.yaml")):
        listed = yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]
        assert sorted(listed) == sorted(
            path.name for path in folder.glob("*.yaml") if path.name != "kustomization.yaml"
        ), folder


def test_the_kserve_manifests_are_what_the_step_creates():
    ours = manifest("kserve/inferenceservice.yaml")
    container = ours["spec"]["predictor"]["containers"][0]
    expected = inference_service(ours["metadata"]["name"], container["env"][0]["value"], container["image"])
    del expected["metadata"]["namespace"]
    assert ours == expected
    stock = manifest("kserve-triton/inferenceservice.yaml")
    expected = stock_runtime_inference_service(
        stock["metadata"]["name"], stock["spec"]["predictor"]["model"]["storageUri"]
    )
    del expected["metadata"]["namespace"]
    assert stock == expected


def selected_runtimes(service, runtimes):
    """The runtimes KServe would pick for `service`: the one it names, else those that auto-select its model format
    and serve its protocol (KServe's rule; its controller does not run here)."""
    model = service["spec"]["predictor"]["model"]
    return [
        runtime["metadata"]["name"]
        for runtime in runtimes
        if model.get("runtime", runtime["metadata"]["name"]) == runtime["metadata"]["name"]
        and model["protocolVersion"] in runtime["spec"]["protocolVersions"]
        and any(
            supported["name"] == model["modelFormat"]["name"] and (supported.get("autoSelect") or "runtime" in model)
            for supported in runtime["spec"]["supportedModelFormats"]
        )
    ]


def test_each_kserve_service_gets_the_runtime_it_is_meant_for(served_model):
    ours, triton = manifest("kserve-runtime/clusterservingruntime.yaml"), shared_k8s("kserve-tritonserver-runtime.yaml")
    runtimes = [ours, triton]
    assert selected_runtimes(manifest("kserve-triton/inferenceservice.yaml"), runtimes) == ["kserve-tritonserver"]
    assert selected_runtimes(manifest("kserve-runtime/inferenceservice.yaml"), runtimes) == ["digit-recognizer-serve"]
    assert triton["spec"]["containers"][0]["args"][:2] == ["tritonserver", "--model-store=/mnt/models"]
    # Ours: both protocols, on the ports its arguments give, probed on routes it has, Prometheus on its /metrics.
    assert ours["spec"]["protocolVersions"] == ["v2", "grpc-v2"]
    (container,) = ours["spec"]["containers"]
    arguments = dict(zip(container["args"][::2], container["args"][1::2]))
    assert arguments["--model"] == "/mnt/models" and arguments["--grpc-port"] == "8081"
    assert [port["containerPort"] for port in container["ports"]] == [int(arguments["--port"])]
    routes = {route.path for route in create_app(served_model).routes}
    assert {container[probe]["httpGet"]["path"] for probe in ("readinessProbe", "livenessProbe")} <= routes
    assert ours["spec"]["annotations"]["prometheus.kserve.io/path"] in routes


def test_the_deployment_runs_the_server_hardened_with_probes_on_what_it_serves(served_model):
    kinds = objects_by_kind()
    deployment = kinds["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 2
    routes = {route.path for route in create_app(served_model).routes}
    probes = {name: container[name]["httpGet"]["path"] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes == {
        "startupProbe": "/v2/health/ready",
        "readinessProbe": "/v2/health/ready",
        "livenessProbe": "/v2/health/live",
    }
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert set(probes.values()) | {annotations["prometheus.io/path"]} <= routes
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8080"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and {"cpu", "memory"} <= set(
        container["resources"]["limits"]
    )
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"
    }
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert mounts["/mnt/models"]["readOnly"] is True and container["args"][:2] == ["--model", "/mnt/models"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert (
        volumes[mounts["/mnt/models"]["name"]]["persistentVolumeClaim"]["claimName"]
        == kinds["PersistentVolumeClaim"]["metadata"]["name"]
    )
    # The Service, autoscaler and disruption budget all point at this Deployment's pods.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert kinds["Service"]["spec"]["selector"].items() <= labels.items()
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert kinds["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == deployment["spec"]["replicas"]


def test_the_deployment_stops_a_pod_only_once_traffic_has_left_it():
    """What a rollout that drops no request rests on (tests/test_kube_node.py rolls one out under traffic)."""
    deployment = objects_by_kind()["Deployment"]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sleep, seconds = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == "sleep" and "--drain-seconds" not in container["args"]  # the server's default drain: 5 s
    assert pod["terminationGracePeriodSeconds"] >= int(seconds) + 5 + 30  # then up to 30 s for requests in flight


@pytest.fixture(scope="module")
def kserve_runtimes_api(kserve_api):
    """`kserve_api` with KServe's ServingRuntime and ClusterServingRuntime CRDs too, established."""
    import time

    from kubernetes import client

    extensions = client.ApiextensionsV1Api(kserve_api)
    for name in RUNTIME_CRDS:
        crd = shared_k8s(name)
        try:
            extensions.create_custom_resource_definition(crd)
        except client.ApiException as error:
            if error.status != 409:  # 409: installed by an earlier session on the same server
                raise
        deadline = time.monotonic() + 30
        while not any(
            condition.type == "Established" and condition.status == "True"
            for condition in extensions.read_custom_resource_definition(crd["metadata"]["name"]).status.conditions or []
        ):
            assert time.monotonic() < deadline, f"{name} was not established within 30 s"
            time.sleep(0.1)
    return kserve_api


def test_the_api_server_accepts_every_manifest_in_a_dry_run(kserve_runtimes_api, namespace):
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import ResourceNotFoundError, UnprocessibleEntityError

    dynamic = DynamicClient(kserve_runtimes_api)
    skipped = set()
    step_sends = [(None, step_objects()[name]) for name in ("created", "stock runtime")]
    kserves_own = [(None, shared_k8s("kserve-tritonserver-runtime.yaml"))]
    for path, document in manifests() + step_sends + kserves_own:
        try:
            resource = dynamic.resources.get(api_version=document["apiVersion"], kind=document["kind"])
        except ResourceNotFoundError:
            skipped.add((document["apiVersion"], document["kind"]))  # strictly checked offline above
            continue
        where = {"namespace": namespace} if resource.namespaced else {}
        body = {**document, "metadata": {**document["metadata"], **where}}
        created = resource.create(body=body, dry_run="All", **where)
        assert created.metadata.name == document["metadata"]["name"], path
    assert skipped == NOT_SERVED_BY_1_20
    # The dry run validates for real: a bad value is refused (1.20 drops an unknown field; the offline check refuses).
    deployment = copy.deepcopy(objects_by_kind()["Deployment"])
    deployment["metadata"]["namespace"] = namespace
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = "not_a_port_name"
    with pytest.raises(UnprocessibleEntityError, match="livenessProbe.httpGet.port"):
        dynamic.resources.get(api_version="apps/v1", kind="Deployment").create(
            body=deployment, namespace=namespace, dry_run="All"
        )
