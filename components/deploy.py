"""Deploy: serve the exported model with KServe, creating or updating an InferenceService, and wait until it is Ready.

    python -m components.deploy --name digits --storage-uri s3://bucket/path/onnx_model \
        --image ghcr.io/me/digit-recognizer-serve:v1 [--namespace NS] [--canary-traffic-percent 10]
    python -m components.deploy --name digits --storage-uri s3://bucket/runs/7/triton --image ''

The predictor is our serve image speaking the V2 protocol on port 8080 (HTTP) and 8081 (gRPC). KServe's
storage initializer copies the storage URI into /mnt/models, which the server reads (a folder: its
model.onnx, a Triton repository's model, or its only file). With an empty image the predictor is KServe's
stock runtime for ONNX instead (`modelFormat: onnx`, `protocolVersion: v2`: Triton), and the storage URI
names a Triton model repository (export's `triton_repository`, a run folder's `triton/`).

The first deploy creates the service with all its settings (`inference_service`, or
`stock_runtime_inference_service`); a later one changes only what a new model changes (image, storage URI,
canary traffic) with a JSON merge patch, so the first deploy's settings and any made since
(replicas, resources, labels, environment) survive. Kubernetes access: the pod's service account
in a cluster, the kubeconfig outside (KUBECONFIG, ~/.kube/config). The account needs get, create
and patch on inferenceservices (deploy/kserve/rbac.yaml).
"""

import contextlib
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from common.errors import InputError
from components.artifacts import save_json
from components.cli import command_line

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

GROUP, VERSION, PLURAL, KIND = "serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService"
RESOURCE = f"{PLURAL}.{GROUP}"
CONTAINER = "kserve-container"  # the name KServe looks for: its STORAGE_URI gets the storage initializer
STORAGE_URI_ENV = "STORAGE_URI"
MODEL_DIR = "/mnt/models"
PORT = 8080
SERVE_IMAGE_NAME = "digit-recognizer-serve"  # built from Dockerfile.serve (make images)
SERVE_IMAGE = f"{SERVE_IMAGE_NAME}:latest"
RBAC_VERBS = ("get", "create", "patch")  # all this step does to inferenceservices: deploy/kserve/rbac.yaml grants them
NAME_PATTERN = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")  # KServe's: a DNS-1035 label, as the service's host name
FIELD_MANAGER = "digit-recognizer-deploy"
CONFLICT_TRIES = 5
# Ready=False reasons that mean "not yet" rather than "failed": in RawDeployment mode KServe copies the
# Deployment's Available condition, False while the first replicas start.
STARTING_REASONS = {"MinimumReplicasUnavailable"}
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class DeployError(InputError):
    """A refusal or failure of the deployment, said in one line."""


def check_name(name):
    if not NAME_PATTERN.fullmatch(name or ""):
        raise DeployError(
            f"InferenceService name {name!r}: use lower-case letters, digits and '-', starting with a letter "
            "(at most 63 characters)"
        )


def inference_service(
    name,
    storage_uri,
    image=SERVE_IMAGE,
    namespace="default",
    min_replicas=1,
    max_replicas=3,
    service_account=None,
    cpu="1",
    memory="1Gi",
):
    """The InferenceService the first deploy creates: our server as a custom predictor, hardened as deploy/ runs it.

    Requests equal limits (`cpu`, `memory`): a latency-bound server wants its core guaranteed.
    """
    security = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    container = {
        "name": CONTAINER,
        "image": image,
        "command": ["python", "-m", "serving"],
        "args": ["--model", MODEL_DIR, "--host", "0.0.0.0", "--port", str(PORT)],
        "env": [{"name": STORAGE_URI_ENV, "value": storage_uri}],
        "ports": [{"containerPort": PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": PORT}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": PORT},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "securityContext": security,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # large uploads spill there; the rest is read-only
    }
    predictor = {
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
    }
    if service_account:  # one whose secrets let the storage initializer read the storage URI
        predictor["serviceAccountName"] = service_account
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "digit-recognizer", "app.kubernetes.io/component": "server"},
            "annotations": {"serving.kserve.io/enable-prometheus-scraping": "true"},
        },
        "spec": {"predictor": predictor},
    }


def stock_runtime_inference_service(
    name, storage_uri, namespace="default", min_replicas=1, max_replicas=3, service_account=None, cpu="1", memory="2Gi"
):
    """The InferenceService served by KServe's stock runtime for ONNX models (Triton, kserve-tritonserver), none
    of our image: `storage_uri` names a Triton model repository (components/triton_repository.py), which Triton
    serves under the model's folder name (digit-recognizer) on the V2 protocol, HTTP 8080 and gRPC 9000.

    KServe's runtime asks 2Gi (Triton itself is larger than our server).
    """
    predictor = {
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        "model": {
            "modelFormat": {"name": "onnx"},
            "protocolVersion": "v2",
            "storageUri": storage_uri,
            "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}},
        },
    }
    if service_account:
        predictor["serviceAccountName"] = service_account
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "digit-recognizer", "app.kubernetes.io/component": "server"},
        },
        "spec": {"predictor": predictor},
    }


def update_patch(existing, storage_uri, image, canary_traffic_percent):
    """The merge patch of an update: what a new model changes, everything else as it stands.

    A merge patch replaces lists whole, so the containers go back as they are, changed only in
    our container's image and STORAGE_URI (or, served by KServe's stock runtime, the model's storage URI).
    The resourceVersion makes the server refuse the patch if someone changed the service in between.
    """
    # 100% is no canary: the new model takes all traffic (and an earlier canary is promoted).
    canary = canary_traffic_percent if canary_traffic_percent < 100 else None
    model = existing["spec"]["predictor"].get("model")
    if bool(model) != (not image):
        served_by = "KServe's stock runtime" if model else "a container"
        raise DeployError(
            f"{KIND} {existing['metadata']['namespace']}/{existing['metadata']['name']} is served by {served_by}; "
            f"deploy it {'without' if model else 'with'} an image, or under another name"
        )
    if model:
        return {
            "metadata": {"resourceVersion": existing["metadata"]["resourceVersion"]},
            "spec": {"predictor": {"model": {"storageUri": storage_uri}, "canaryTrafficPercent": canary}},
        }
    containers = json.loads(json.dumps(existing["spec"]["predictor"].get("containers", [])))
    ours = next((container for container in containers if container.get("name") == CONTAINER), None)
    if ours is None:
        raise DeployError(
            f"{KIND} {existing['metadata']['namespace']}/{existing['metadata']['name']} has no "
            f"container named {CONTAINER}: it was not made by this step, so it is left alone"
        )
    ours["image"] = image
    env = [variable for variable in ours.get("env", []) if variable.get("name") != STORAGE_URI_ENV]
    ours["env"] = [{"name": STORAGE_URI_ENV, "value": storage_uri}, *env]
    return {
        "metadata": {"resourceVersion": existing["metadata"]["resourceVersion"]},
        "spec": {"predictor": {"containers": containers, "canaryTrafficPercent": canary}},
    }


def kserve_storage_uri(uri):
    """A KFP artifact URI as KServe's storage initializer reads it: KFP's minio:// is S3 to KServe."""
    if uri.startswith("minio://"):
        return "s3://" + uri[len("minio://") :]
    return uri


def kubernetes_client():
    """An API client from the pod's service account in a cluster, from the kubeconfig outside."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as error:
            raise DeployError(f"no Kubernetes credentials: not in a pod, and no usable kubeconfig ({error})") from None
    return client.ApiClient()


def default_namespace():
    """The pod's own namespace in a cluster, the kubeconfig context's outside, else `default`."""
    if SERVICE_ACCOUNT_NAMESPACE.is_file():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    from kubernetes import config

    try:
        return config.list_kube_config_contexts()[1]["context"].get("namespace", "default")
    except (config.ConfigException, OSError, KeyError, TypeError):
        return "default"


def deploy(
    name: str,
    storage_uri: str,
    namespace: str = "",
    image: str = SERVE_IMAGE,
    canary_traffic_percent: int = 100,
    min_replicas: int = 1,
    max_replicas: int = 3,
    service_account: str = "",
    cpu: str = "1",
    memory: str = "1Gi",
    timeout: float = 600.0,
    poll_seconds: float = 2.0,
    result_json: str | Path | None = None,
    api_client: "ApiClient | None" = None,
) -> dict:
    """Create the InferenceService `name` serving `storage_uri`, or update it; wait until Ready; return its URL and
    more.

    `canary_traffic_percent` below 100 sends that share of traffic to the new model on an update
    (KServe keeps the rest on the previous one). Replicas, the service account, CPU and memory
    are set on creation only. Raises DeployError, one line, when the server refuses or the service is not
    Ready within `timeout` seconds.

    Args:
        name: the InferenceService's name
        storage_uri: where the model is (s3://, gs://, pvc://, https://; KFP's minio:// is read as s3://)
        namespace: namespace (default: the pod's own in a cluster, else the kubeconfig context's)
        image: the serve image; empty: KServe's stock ONNX runtime (Triton), storage_uri naming a Triton repository
        canary_traffic_percent: on an update, the new model's share of traffic (100: no canary)
        min_replicas: on creation: the fewest replicas
        max_replicas: on creation: the most replicas
        service_account: on creation: the predictor's service account, whose secrets read the storage URI
        cpu: on creation: CPU request and limit
        memory: on creation: memory request and limit
        timeout: seconds to wait for Ready
        poll_seconds: seconds between status checks
        result_json: write the result (URL, action, generation) as JSON here
        api_client: the Kubernetes client to use (default: the pod's service account, else the kubeconfig)
    """
    check_name(name)
    if not 0 <= canary_traffic_percent <= 100:
        raise DeployError(f"canary_traffic_percent must be between 0 and 100, not {canary_traffic_percent}")
    if not storage_uri:
        raise DeployError("storage_uri is empty: it names the model KServe copies to /mnt/models")
    from kubernetes.client import ApiException, CustomObjectsApi

    api_client = api_client or kubernetes_client()
    namespace = namespace or default_namespace()
    api = CustomObjectsApi(api_client)
    where = dict(group=GROUP, version=VERSION, namespace=namespace, plural=PLURAL)
    storage_uri = kserve_storage_uri(storage_uri)
    with api_errors(api_client, namespace, name) as attempt:
        for tries_left in reversed(range(CONFLICT_TRIES)):
            attempt.verb = "get"
            existing = get_or_none(api, where, name)
            try:
                if existing is None:
                    attempt.verb = "create"
                    settings = (min_replicas, max_replicas, service_account or None, cpu, memory)
                    if image:
                        body = inference_service(name, storage_uri, image, namespace, *settings)
                    else:
                        body = stock_runtime_inference_service(name, storage_uri, namespace, *settings)
                    applied = api.create_namespaced_custom_object(body=body, field_manager=FIELD_MANAGER, **where)
                else:
                    attempt.verb = "patch"
                    patch = update_patch(existing, storage_uri, image, canary_traffic_percent)
                    applied = api.patch_namespaced_custom_object(
                        name=name, body=patch, field_manager=FIELD_MANAGER, **where
                    )
                break
            except ApiException as error:
                # 409: KServe's controller wrote the status (or someone else the spec) since we read it: read again.
                if error.status != 409 or not tries_left:
                    raise
        attempt.verb = "get"
        # A changed pod means a new predictor revision: until KServe reports one, its Ready is the old model's.
        predictor = existing["spec"]["predictor"] if existing else {}
        changed_pod = existing is not None and (
            patch["spec"]["predictor"].get("containers", predictor.get("containers")) != predictor.get("containers")
            or patch["spec"]["predictor"].get("model", {}).get("storageUri")
            not in (None, predictor.get("model", {}).get("storageUri"))
        )
        status = wait_until_ready(
            api, where, name, latest_revision(existing) if changed_pod else None, timeout, poll_seconds
        )
    result = {
        "name": name,
        "namespace": namespace,
        "url": status.get("url", ""),
        "storage_uri": storage_uri,
        "image": image,
        "action": "created" if existing is None else "updated",
        "generation": applied["metadata"]["generation"],
    }
    if result_json:
        save_json(result_json, result)
    return result


def get_or_none(api, where, name):
    """The InferenceService, or None if there is none of that name (a missing CRD is an error, not None)."""
    from kubernetes.client.exceptions import ApiException

    try:
        return api.get_namespaced_custom_object(name=name, **where)
    except ApiException as error:
        if error.status == 404 and status_body(error).get("details", {}).get("name") == name:
            return None
        raise


def ready_condition(status):
    return next((condition for condition in status.get("conditions", []) if condition.get("type") == "Ready"), None)


def latest_revision(service):
    """The predictor revision KServe created last (Knative's revision, or the Deployment's), if it reported one."""
    return ((service or {}).get("status", {}).get("components", {}).get("predictor", {})).get("latestCreatedRevision")


def wait_until_ready(api, where, name, previous_revision, timeout, poll_seconds):
    """The service's status once KServe reports it Ready; with `previous_revision`, only for a newer revision than that.

    (KServe's status.observedGeneration is its Knative Service's or Deployment's, not the
    InferenceService's, so the revision is what tells the new model's state from the old one's.)
    """
    deadline = time.monotonic() + timeout
    label = f"{KIND} {where['namespace']}/{name}"
    while True:
        service = api.get_namespaced_custom_object(name=name, **where)
        condition = ready_condition(service.get("status", {}))
        current = previous_revision is None or latest_revision(service) not in (None, previous_revision)
        if current and condition and condition.get("status") == "True":
            return service["status"]
        if (
            current
            and condition
            and condition.get("status") == "False"
            and condition.get("reason") not in STARTING_REASONS
        ):
            raise DeployError(f"{label} is not Ready: {describe(condition)}")
        if time.monotonic() >= deadline:
            if not current:
                seen = f"KServe has not rolled out a revision after {previous_revision}"
            else:
                seen = f"last Ready condition: {describe(condition) if condition else 'none reported'}"
            raise DeployError(f"{label} not Ready within {timeout:g} s; {seen}")
        time.sleep(min(poll_seconds, max(deadline - time.monotonic(), 0)))


def describe(condition):
    reason = condition.get("reason") or condition.get("status", "Unknown")
    message = " ".join((condition.get("message") or "no message").split())
    return f"{reason}: {message}"


def status_body(error):
    """The Kubernetes Status object an ApiException carries ({} if its body is not one)."""
    try:
        body = json.loads(error.body)
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def error_message(error):
    """The Status message of an ApiException, on one line."""
    return " ".join(str(status_body(error).get("message") or error.reason or error.status).split())


@contextlib.contextmanager
def api_errors(api_client, namespace, name):
    """Turn the API's refusals into one-line DeployErrors naming what was attempted (the yielded `attempt.verb`)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    attempt, host, target = SimpleNamespace(verb="get"), api_client.configuration.host, f"{RESOURCE} {namespace}/{name}"
    try:
        yield attempt
    except ApiException as error:
        message = error_message(error)
        if error.status == 403:
            raise DeployError(
                f"forbidden: cannot {attempt.verb} {RESOURCE} in namespace {namespace} "
                f"(deploy/kserve/rbac.yaml grants it): {message}"
            ) from None
        if error.status == 401:
            raise DeployError(f"the Kubernetes API at {host} refused the credentials: {message}") from None
        if error.status == 404:
            raise DeployError(
                f"the Kubernetes API at {host} has no {RESOURCE}: is KServe installed? ({message})"
            ) from None
        if error.status == 422:
            raise DeployError(f"the Kubernetes API refused {target}: {message}") from None
        if error.status == 409:
            raise DeployError(
                f"{target} kept changing while this deploy updated it; run it again ({message})"
            ) from None
        raise DeployError(f"cannot {attempt.verb} {target}: the API answered {error.status}: {message}") from None
    except HTTPError as error:
        raise DeployError(f"cannot reach the Kubernetes API at {host}: {' '.join(str(error).split())}") from None


def main(argv=None):
    result = command_line(deploy, argv, aliases={"result_json": "--result"}, exclude=("api_client",))
    print(f"{result['action']} {KIND} {result['namespace']}/{result['name']}: Ready at {result['url']}")


if __name__ == "__main__":
    main()
