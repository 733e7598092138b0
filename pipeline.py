"""The Digit Recognizer pipeline for Kubeflow Pipelines (KFP v2): its steps' wiring, profiles and resources.

    python pipeline.py compile [--output FILE] [--image-prefix PREFIX] [--tag TAG] [--kaggle-secret SECRET]
                               [--accelerator TYPE | --no-gpu] [--gpus N] [--node-selector KEY=VALUE ...]
                               [--toleration KEY[=VALUE]:EFFECT ...] [--checkpoint-pvc PVC]
                               [--deploy NAME [--deploy-namespace NS]]
    python pipeline.py run [--data DIR] [--out DIR] [--profile quick|default|best] [--param NAME=VALUE ...]
                           [--docker [--gpus all|N] [--image-prefix PREFIX] [--tag TAG]] [--verbose]
    python pipeline.py run --resume RUN_DIR
    python pipeline.py submit --host URL (--train-csv URI --test-csv URI | --kaggle-secret SECRET)
                              [--experiment NAME] [--run-name NAME] [--profile P] [--wait] [--param NAME=VALUE ...]
                              [--namespace NS] [--token TOKEN] [the cluster options of compile]

`compile` writes the YAML a Kubeflow cluster accepts, `submit` starts a run of it on one (runner/submit.py).
`run` executes every step on this machine with kfp.local, in this Python environment or (`--docker`) each
step in its container, and copies what a user wants into `--out` (default runs/<timestamp>/, with
runs/latest pointing at the newest): runner/local.py. The run folder also holds run.json (what made the run),
run.log (everything the steps printed) and, until the run succeeds, kfp.local's pipeline root with
training's checkpoints, from which `--resume` goes on after an interruption. `--deploy NAME` adds a step
behind the accuracy gate: KServe serves the model as the InferenceService NAME (components/deploy.py). The
`register` step behind the gate makes the model a version in MLflow's model registry when the run is tracked in
MLflow (components/tracking.py: as KFP's MLflow plugin tracks it on a cluster, and `run` on this machine).

This module imports kfp and kfp-kubernetes only: compiling and submitting need no TensorFlow, pandas or numpy.
"""

from pathlib import Path
from typing import NamedTuple

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Artifact, Dataset, Model
from kfp.dsl.pipeline_channel import PipelineParameterChannel
from kfp.dsl.types import type_utils

from components.kfp_components import kfp_components

PROFILES = {
    # About a minute and a half: demos and tests. One epoch of the first 8,400 rows, in steps of 64 at a
    # constant rate (all of quick's 118 steps would be warm-up under the cosine), then one scoring step.
    "quick": {
        "train_csv_rows": 8400,
        "epochs": 1,
        "batch_size": 64,
        "learning_rate_schedule": "constant",
        "accuracy_threshold": 0.9,
        "score_shards": 1,
    },
    "default": {},  # the pipeline's defaults below: one CNN, 45 epochs, the last kept
    # Five CNNs, each on its own split of train.csv (Deotte's ensembles): a GPU, or about an hour of a CPU that trains
    # in bfloat16; why these settings: docs/MODEL.md
    "best": {"ensemble_size": 5, "member_splits": True},
}
PIPELINE_NAME = "digit-recognizer"
IMAGE_NAME = "digit-recognizer-train"  # built from Dockerfile.train (make images)
SERVE_IMAGE_NAME = "digit-recognizer-serve"  # built from Dockerfile.serve; components.deploy serves it
KAGGLE_COMPETITION = "digit-recognizer"  # components.download's default competition
KAGGLE_SECRET_KEYS = {"username": "KAGGLE_USERNAME", "key": "KAGGLE_KEY"}  # the fields of kaggle.json


class PipelineOutputs(NamedTuple):
    """What every run produces; the gated outputs (submission, report) are the join and report steps' own."""

    onnx_model: Model
    int8_model: Model
    triton_repository: Model
    keras_model: Model
    history: Artifact
    metrics: Artifact
    training_curves: Artifact
    confusion_matrix: Artifact


def train_image(image_prefix: str = "", tag: str = "latest") -> str:
    """The training image's name: `--image-prefix ghcr.io/me/ --tag v1` gives ghcr.io/me/digit-recognizer-train:v1."""
    return f"{image_prefix}{IMAGE_NAME}:{tag}"


DEFAULT_IMAGE = train_image()
DEFAULT_ACCELERATOR = "nvidia.com/gpu"
CHECKPOINT_MOUNT = "/checkpoints"  # where the train step sees the checkpoint volume on a cluster
# What each step asks of a cluster node: CPU and memory requests and limits.
RESOURCES = {
    "download": ("1", "1G", "1", "2G"),
    "preprocess": ("1", "2G", "2", "4G"),
    "train": ("4", "8G", "8", "16G"),
    "export": ("2", "4G", "2", "8G"),
    "evaluate": ("1", "2G", "2", "4G"),
    "reject": ("0.1", "256M", "1", "1G"),
    "shard_plan": ("1", "1G", "1", "2G"),
    "score": ("2", "2G", "2", "4G"),
    "join": ("0.5", "512M", "1", "1G"),
    "register": ("0.5", "512M", "1", "1G"),
    "report": ("1", "1G", "1", "2G"),
    "deploy": ("0.1", "256M", "1", "512M"),
}
# Training on a GPU is not bit-for-bit repeatable, and a download, a registration or a refusal should happen anew
# each run.
CACHED_STEPS = {"preprocess", "export", "evaluate", "shard_plan", "score", "join", "report"}
# A refusal is an answer, not a transient failure, and KFP 2.17's retry policy cannot tell one (exit status 2) from a
# fault that can pass. So the steps that check the user's CSVs (preprocess, shard_plan), and the gate's refusal, are
# never retried: their only failure worth a word is a refusal, and they take seconds to run again. The others read
# what earlier steps wrote and retry (a preempted node); a local run stops at any step's first refusal.
RETRIED_STEPS = set(RESOURCES) - {"reject", "preprocess", "shard_plan"}


class Toleration(NamedTuple):
    """A Kubernetes toleration of the train pod: `key=value:effect`, or `key:effect` for any value."""

    key: str
    effect: str
    value: str = ""


TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def check_toleration(toleration: Toleration) -> None:
    if not toleration.key:
        raise ValueError("a toleration names the taint's key")
    if toleration.effect not in TOLERATION_EFFECTS:
        raise ValueError(
            f"toleration {toleration.key}: the effect is one of {', '.join(TOLERATION_EFFECTS)}, "
            f"not {toleration.effect!r}"
        )


class DeployTarget(NamedTuple):
    """Where the deploy step serves the model: the InferenceService `name` in `namespace` ("": the run's),
    running `image`."""

    name: str
    namespace: str = ""
    image: str = f"{SERVE_IMAGE_NAME}:latest"


DEPLOY_RBAC_ANNOTATION = "digit-recognizer/rbac"  # what the step's service account must be allowed
DEPLOY_RBAC = "inferenceservices.serving.kserve.io: get,create,patch"  # deploy/kserve/rbac.yaml grants it


def build_pipeline(
    image: str = DEFAULT_IMAGE,
    accelerator: str | None = DEFAULT_ACCELERATOR,
    gpus: int = 1,
    node_selector: dict[str, str] | None = None,
    tolerations: tuple[Toleration, ...] = (),
    kaggle_secret: str | None = None,
    deploy_to: DeployTarget | None = None,
    checkpoint_pvc: str | None = None,
):
    """The KFP pipeline, its steps running in `image`.

    Training asks for `gpus` of `accelerator` (None: CPU only; MirroredStrategy trains on every GPU it gets),
    on a node with the labels `node_selector`, tolerating `tolerations`.
    With `kaggle_secret` (the name of a Kubernetes secret holding kaggle.json's `username` and `key`),
    the first step downloads the data with the Kaggle CLI and `train_csv`/`test_csv` are not read.
    With `deploy_to` (a DeployTarget), a model that passes the gate is served by KServe.
    With `checkpoint_pvc` (the name of a PersistentVolumeClaim), the train step keeps its checkpoints
    there, one folder per run, so a retried or rescheduled train pod goes on where the last one stopped;
    otherwise in the `checkpoint_dir` parameter's folder (a local run's), or nowhere.
    """
    if gpus < 1:
        raise ValueError(f"gpus is at least 1 (no accelerator at all: accelerator=None), got {gpus}")
    components = kfp_components(image)

    def step(name, parameters, **arguments):
        """A task of step `name`, with its resources, retries for transient failures, and caching.

        Each of the component's options takes the pipeline parameter of its name from `parameters` (the pipeline
        function's arguments), unless `arguments` sets it: a new option needs no line here.
        """
        cpu_request, memory_request, cpu_limit, memory_limit = RESOURCES[name]
        component = components[name]
        options = {
            option: parameters[option]
            for option, spec in component.component_spec.inputs.items()
            if type_utils.is_parameter_type(spec.type) and option in parameters and option not in arguments
        }
        task = component(**options, **arguments).set_display_name(name)
        task.set_cpu_request(cpu_request).set_memory_request(memory_request)
        task.set_cpu_limit(cpu_limit).set_memory_limit(memory_limit)
        if name in RETRIED_STEPS:
            task.set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2)
        task.set_caching_options(name in CACHED_STEPS)
        return task

    # The defaults are the step functions' own, spelled out because KFP needs them so (tests/test_pipeline.py
    # checks each against its function's signature).
    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Kaggle Digit Recognizer: validate CSVs, train Keras CNNs, export to ONNX, evaluate, "
        "and if accurate enough score test.csv in shards into submission.csv",
    )
    def digit_recognizer_pipeline(
        train_csv: str = "",
        test_csv: str = "",
        validation_fraction: float = 0.1,
        seed: int = 42,
        train_csv_rows: int = 0,
        network: str = "deotte",
        epochs: int = 45,
        batch_size: int = 128,
        learning_rate: float = 0.003,
        learning_rate_schedule: str = "cosine",
        weight_decay: float = 0.0001,
        label_smoothing: float = 0.1,
        augment: bool = True,
        elastic_alpha: float = 0.0,
        patience: int = 5,
        ensemble_size: int = 1,
        member_splits: bool = False,
        train_on_validation: bool = False,
        ema_momentum: float = 0.0,
        pseudo_labels: bool = False,
        pseudo_label_confidence: float = 0.85,
        mixed_precision: str = "auto",
        float32_epochs: int = 3,
        keep_epoch: str = "last",
        checkpoint_dir: str = "",
        tta: bool = False,
        parity_tolerance: float = 0.0001,
        accuracy_threshold: float = 0.99,
        score_shards: int = 4,
        score_with_int8: bool = False,
        canary_traffic_percent: int = 100,
    ) -> PipelineOutputs:
        # First, before any other name is bound here: the pipeline's parameters (KFP's channels; locals() also
        # holds build_pipeline's settings this function reads), each passed on to the step options of its name.
        parameters = {name: value for name, value in locals().items() if isinstance(value, PipelineParameterChannel)}
        if kaggle_secret:
            downloaded = step("download", parameters, competition=KAGGLE_COMPETITION)
            kubernetes.use_secret_as_env(downloaded, secret_name=kaggle_secret, secret_key_to_env=KAGGLE_SECRET_KEYS)
            train_file, test_file = downloaded.outputs["train_csv"], downloaded.outputs["test_csv"]
        else:
            train_file = imported(train_csv, "train.csv")
            test_file = imported(test_csv, "test.csv")
        arrays = step(
            "preprocess",
            parameters,
            train_csv=train_file,
            test_csv=test_file,
        )
        trained = step(
            "train",
            parameters,
            train_data=arrays.outputs["train_data"],
            validation_data=arrays.outputs["validation_data"],
            test_data=arrays.outputs["test_data"],
            checkpoint_dir=CHECKPOINT_MOUNT if checkpoint_pvc else checkpoint_dir,
            checkpoint_subfolder=dsl.PIPELINE_JOB_ID_PLACEHOLDER if checkpoint_pvc else "",
        )
        place_training(trained, accelerator, gpus, node_selector or {}, tolerations, checkpoint_pvc)
        exported = step(
            "export",
            parameters,
            model=trained.outputs["model"],
            train_data=arrays.outputs["train_data"],
            validation_data=arrays.outputs["validation_data"],
            tolerance=parity_tolerance,
        )
        evaluated = step(
            "evaluate",
            parameters,
            onnx_model=exported.outputs["onnx_model"],
            int8_model=exported.outputs["int8_model"],
            validation_data=arrays.outputs["validation_data"],
        )
        accuracy = evaluated.outputs["Output"]
        with dsl.If(accuracy >= accuracy_threshold, name="accurate-enough"):
            plan = step("shard_plan", parameters, test_csv=test_file, shards=score_shards)
            with dsl.ParallelFor(plan.output, name="test-shards") as shard:
                scored = step(
                    "score",
                    parameters,
                    onnx_model=exported.outputs["onnx_model"],
                    int8_model=exported.outputs["int8_model"],
                    test_csv=test_file,
                    start_row=shard.start_row,
                    stop_row=shard.stop_row,
                )
            joined = step("join", parameters, shard_submissions=dsl.Collected(scored.outputs["submission"]))
            registered = step(
                "register",
                parameters,
                onnx_model=exported.outputs["onnx_model"],
                train_csv=train_file,
                test_csv=test_file,
                accuracy=accuracy,
            )
            served = {}
            if deploy_to:
                deployed = step(
                    "deploy",
                    parameters,
                    onnx_model=exported.outputs["onnx_model"],
                    triton_repository=exported.outputs["triton_repository"],
                    service_name=deploy_to.name,
                    namespace=deploy_to.namespace,
                    image=deploy_to.image,
                )
                kubernetes.add_pod_annotation(deployed, DEPLOY_RBAC_ANNOTATION, DEPLOY_RBAC)
                served["service_url"] = deployed.outputs["Output"]
            step(
                "report",
                parameters,
                history=trained.outputs["history"],
                metrics_json=evaluated.outputs["metrics_json"],
                submission=joined.outputs["submission"],
                test_csv=test_file,
                model_version=registered.output,
                **served,
            )
        with dsl.Else(name="not-accurate-enough"):
            step("reject", parameters, accuracy=accuracy)
        return PipelineOutputs(
            onnx_model=exported.outputs["onnx_model"],
            int8_model=exported.outputs["int8_model"],
            triton_repository=exported.outputs["triton_repository"],
            keras_model=trained.outputs["model"],
            history=trained.outputs["history"],
            metrics=evaluated.outputs["metrics_json"],
            training_curves=trained.outputs["training_curves"],
            confusion_matrix=evaluated.outputs["confusion_matrix"],
        )

    return digit_recognizer_pipeline


def imported(uri, name):
    """A CSV the run reads from `uri`, as a pipeline input."""
    return dsl.importer(artifact_uri=uri, artifact_class=Dataset, reimport=False).set_display_name(name).output


def place_training(task, accelerator, gpus, node_selector, tolerations, checkpoint_pvc):
    """The train task's node: its accelerators, node labels, tolerations and the checkpoint volume."""
    if accelerator:
        task.set_accelerator_type(accelerator).set_accelerator_limit(gpus)
    for key, value in node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in tolerations:
        check_toleration(toleration)
        kubernetes.add_toleration(
            task,
            key=toleration.key,
            operator="Equal" if toleration.value else "Exists",
            value=toleration.value or None,
            effect=toleration.effect,
        )
    if checkpoint_pvc:
        kubernetes.mount_pvc(task, pvc_name=checkpoint_pvc, mount_path=CHECKPOINT_MOUNT)


def compile_pipeline(output: str | Path = "digit_recognizer_pipeline.yaml", **settings) -> Path:
    """Write the pipeline YAML to `output`; `settings` are build_pipeline's."""
    compiler.Compiler().compile(build_pipeline(**settings), package_path=str(output))
    return Path(output)


if __name__ == "__main__":
    from runner.cli import main

    main()
