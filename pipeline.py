"""The Digit Recognizer pipeline for Kubeflow Pipelines (KFP v2), and its command line.

    python pipeline.py compile [--output FILE] [--image-prefix PREFIX] [--tag TAG] [--kaggle-secret SECRET]
                               [--deploy NAME [--deploy-namespace NS]]
    python pipeline.py run [--data DIR] [--out DIR] [--profile quick|default|best] [--param NAME=VALUE ...]
                           [--docker [--image-prefix PREFIX] [--tag TAG]]
    python pipeline.py submit --host URL (--train-csv URI --test-csv URI | --kaggle-secret SECRET)
                              [--experiment NAME] [--run-name NAME] [--profile P] [--wait] [--param NAME=VALUE ...]
                              [--namespace NS] [--token TOKEN] [--deploy NAME [--deploy-namespace NS]]

`run` executes every step on this machine with kfp.local, in this Python environment
or (`--docker`) each step in its container, and copies what a user wants into `--out`
(default runs/<timestamp>/, with runs/latest pointing at the newest).
`--deploy NAME` adds a step behind the accuracy gate: KServe serves the model as the
InferenceService NAME (components/deploy.py).
"""
import argparse
import datetime
import inspect
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import NamedTuple

from kfp import compiler, dsl, kubernetes, local
from kfp.dsl import Artifact, Dataset, Model

from components.cli import signature_defaults
from components.deploy import RBAC_VERBS, RESOURCE, SERVE_IMAGE, SERVE_IMAGE_NAME, DeployError, check_name, deploy
from components.download import COMPETITION
from components.export import export
from components.kfp_components import kfp_components
from components.preprocess import preprocess
from components.train import MODEL_FILE, train

PREPROCESS, TRAIN, EXPORT = signature_defaults(preprocess), signature_defaults(train), signature_defaults(export)
DEPLOY = signature_defaults(deploy)
PROFILES = {
    "quick": {"epochs": 1, "accuracy_threshold": 0.9},  # about a minute: demos and tests
    "default": {},  # the function defaults below: one CNN, 15 epochs
    "best": {"ensemble_size": 5},  # a GPU, or about an hour of CPU; why these settings: docs/MODEL.md
}
PIPELINE_NAME = "digit-recognizer"
DEFAULT_DATA = Path("data/digit-recognizer")
IMAGE_NAME = "digit-recognizer-train"  # built from Dockerfile.train (make images)
KAGGLE_HELP = (
    "get Kaggle's files with `python -m components.download --out {data}` (the Kaggle CLI needs "
    "~/.kaggle/kaggle.json: kaggle.com > Settings > API > Create New Token), "
    "or download them from https://www.kaggle.com/competitions/digit-recognizer/data"
)


class PipelineOutputs(NamedTuple):
    """What every run produces; the gated outputs (submission, report) are the join and report steps' own."""
    onnx_model: Model
    int8_model: Model
    keras_model: Model
    history: Artifact
    metrics: Artifact
    training_curves: Artifact
    confusion_matrix: Artifact


def train_image(image_prefix="", tag="latest"):
    """The training image's full name: `--image-prefix ghcr.io/me/ --tag v1` gives ghcr.io/me/digit-recognizer-train:v1."""
    return f"{image_prefix}{IMAGE_NAME}:{tag}"


DEFAULT_IMAGE = train_image()
DEFAULT_ACCELERATOR = "nvidia.com/gpu"
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
    "report": ("1", "1G", "1", "2G"),
    "deploy": ("0.1", "256M", "1", "512M"),
}
# Training on a GPU is not bit-for-bit repeatable, and a download or a refusal should happen anew each run.
CACHED_STEPS = {"preprocess", "export", "evaluate", "shard_plan", "score", "join", "report"}
RETRIED_STEPS = set(RESOURCES) - {"reject"}  # a refusal is an answer, not a transient failure
KAGGLE_SECRET_KEYS = {"username": "KAGGLE_USERNAME", "key": "KAGGLE_KEY"}  # the fields of kaggle.json


def build_pipeline(image=DEFAULT_IMAGE, accelerator=DEFAULT_ACCELERATOR, kaggle_secret=None, deploy_to=None):
    """The KFP pipeline, its steps running in `image`; training asks for one `accelerator` (None: CPU only).

    With `kaggle_secret` (the name of a Kubernetes secret holding kaggle.json's `username` and `key`),
    the first step downloads the data with the Kaggle CLI and `train_csv`/`test_csv` are not read.
    With `deploy_to` (a DeployTarget), a model that passes the gate is served by KServe.
    """
    components = kfp_components(image)

    def step(name, **arguments):
        """A task of step `name`, with its resources, retries for transient failures, and caching."""
        cpu_request, memory_request, cpu_limit, memory_limit = RESOURCES[name]
        task = components[name](**arguments).set_display_name(name)
        task.set_cpu_request(cpu_request).set_memory_request(memory_request)
        task.set_cpu_limit(cpu_limit).set_memory_limit(memory_limit)
        if name in RETRIED_STEPS:
            task.set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2)
        task.set_caching_options(name in CACHED_STEPS)
        if name == "train" and accelerator:
            task.set_accelerator_type(accelerator).set_accelerator_limit(1)
        return task

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Kaggle Digit Recognizer: validate CSVs, train Keras CNNs, export to ONNX, evaluate, "
                    "and if accurate enough score test.csv in shards into submission.csv",
    )
    def digit_recognizer_pipeline(
        train_csv: str = "",
        test_csv: str = "",
        validation_fraction: float = PREPROCESS["validation_fraction"],
        seed: int = PREPROCESS["seed"],
        epochs: int = TRAIN["epochs"],
        batch_size: int = TRAIN["batch_size"],
        learning_rate: float = TRAIN["learning_rate"],
        learning_rate_schedule: str = TRAIN["learning_rate_schedule"],
        weight_decay: float = TRAIN["weight_decay"],
        label_smoothing: float = TRAIN["label_smoothing"],
        augment: bool = TRAIN["augment"],
        elastic_alpha: float = TRAIN["elastic_alpha"],
        patience: int = TRAIN["patience"],
        ensemble_size: int = TRAIN["ensemble_size"],
        train_on_validation: bool = TRAIN["train_on_validation"],
        ema_momentum: float = TRAIN["ema_momentum"],
        pseudo_labels: bool = False,
        pseudo_label_confidence: float = TRAIN["pseudo_label_confidence"],
        mixed_precision: str = TRAIN["mixed_precision"],
        tta: bool = EXPORT["tta"],
        parity_tolerance: float = EXPORT["tolerance"],
        accuracy_threshold: float = 0.99,
        score_shards: int = 4,
        score_with_int8: bool = False,
        canary_traffic_percent: int = DEPLOY["canary_traffic_percent"],
    ) -> PipelineOutputs:
        if kaggle_secret:
            downloaded = step("download", competition=COMPETITION)
            kubernetes.use_secret_as_env(downloaded, secret_name=kaggle_secret, secret_key_to_env=KAGGLE_SECRET_KEYS)
            train_file, test_file = downloaded.outputs["train_csv"], downloaded.outputs["test_csv"]
        else:
            train_file = dsl.importer(artifact_uri=train_csv, artifact_class=Dataset, reimport=False).set_display_name("train.csv").output
            test_file = dsl.importer(artifact_uri=test_csv, artifact_class=Dataset, reimport=False).set_display_name("test.csv").output
        arrays = step(
            "preprocess",
            train_csv=train_file, test_csv=test_file, validation_fraction=validation_fraction, seed=seed,
        )
        trained = step(
            "train",
            train_data=arrays.outputs["train_data"], validation_data=arrays.outputs["validation_data"],
            test_data=arrays.outputs["test_data"], epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_schedule=learning_rate_schedule, weight_decay=weight_decay, label_smoothing=label_smoothing,
            augment=augment, elastic_alpha=elastic_alpha, patience=patience, seed=seed, ensemble_size=ensemble_size,
            train_on_validation=train_on_validation, ema_momentum=ema_momentum, pseudo_labels=pseudo_labels,
            pseudo_label_confidence=pseudo_label_confidence, mixed_precision=mixed_precision,
        )
        exported = step(
            "export",
            model=trained.outputs["model"], train_data=arrays.outputs["train_data"],
            validation_data=arrays.outputs["validation_data"], tta=tta, tolerance=parity_tolerance,
        )
        evaluated = step(
            "evaluate",
            onnx_model=exported.outputs["onnx_model"], int8_model=exported.outputs["int8_model"],
            validation_data=arrays.outputs["validation_data"],
        )
        accuracy = evaluated.outputs["Output"]
        with dsl.If(accuracy >= accuracy_threshold, name="accurate-enough"):
            plan = step("shard_plan", test_csv=test_file, shards=score_shards)
            with dsl.ParallelFor(plan.output, name="test-shards") as shard:
                scored = step(
                    "score",
                    onnx_model=exported.outputs["onnx_model"], int8_model=exported.outputs["int8_model"],
                    test_csv=test_file, score_with_int8=score_with_int8,
                    start_row=shard.start_row, stop_row=shard.stop_row,
                )
            joined = step("join", shard_submissions=dsl.Collected(scored.outputs["submission"]))
            served = {}
            if deploy_to:
                served["service_url"] = deploy_step(step, exported.outputs["onnx_model"], deploy_to, canary_traffic_percent)
            step(
                "report",
                history=trained.outputs["history"], metrics_json=evaluated.outputs["metrics_json"],
                submission=joined.outputs["submission"], test_csv=test_file, **served,
            )
        with dsl.Else(name="not-accurate-enough"):
            step("reject", accuracy=accuracy, accuracy_threshold=accuracy_threshold)
        return PipelineOutputs(
            onnx_model=exported.outputs["onnx_model"],
            int8_model=exported.outputs["int8_model"],
            keras_model=trained.outputs["model"],
            history=trained.outputs["history"],
            metrics=evaluated.outputs["metrics_json"],
            training_curves=trained.outputs["training_curves"],
            confusion_matrix=evaluated.outputs["confusion_matrix"],
        )

    return digit_recognizer_pipeline


# What `run` copies out of the pipeline's outputs, under the names a user looks for.
RUN_FILES = {
    "onnx_model": "model.onnx",
    "int8_model": "model.int8.onnx",
    "keras_model": MODEL_FILE.format(member="*"),
    "history": "history.json",
    "metrics": "metrics.json",
    "training_curves": "training_curves.png",
    "confusion_matrix": "confusion_matrix.png",
}
# ... and from the steps behind the gate, which a pipeline cannot return: (step, output) -> file name.
GATED_RUN_FILES = {
    ("join", "submission"): "submission.csv",
    ("report", "report"): "report.html",
    ("report", "test_samples"): "test_samples.png",
}


def compile_pipeline(output="digit_recognizer_pipeline.yaml", image=DEFAULT_IMAGE, accelerator=DEFAULT_ACCELERATOR,
                     kaggle_secret=None, deploy_to=None):
    compiler.Compiler().compile(build_pipeline(image, accelerator, kaggle_secret, deploy_to), package_path=str(output))
    return Path(output)


def pipeline_parameters():
    """Each pipeline parameter's name and Python type, from the pipeline's own signature."""
    signature = inspect.signature(build_pipeline().pipeline_func)
    return {name: _boolean if p.annotation is bool else p.annotation for name, p in signature.parameters.items()}


def _boolean(text):
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_params(assignments):
    """`["epochs=3", ...]` as typed pipeline arguments; a clear error for an unknown name or a bad value."""
    types = pipeline_parameters()
    arguments = {}
    for assignment in assignments:
        name, separator, text = assignment.partition("=")
        if not separator:
            raise SystemExit(f"error: --param {assignment!r}: expected NAME=VALUE")
        if name not in types or name in ("train_csv", "test_csv"):
            known = ", ".join(sorted(set(types) - {"train_csv", "test_csv"}))
            raise SystemExit(f"error: --param {name!r}: no such pipeline parameter (known: {known})")
        try:
            arguments[name] = types[name](text)
        except ValueError:
            raise SystemExit(f"error: --param {name}={text!r}: expected {types[name].__name__.strip('_')}") from None
    return arguments


class ErrorLineWatcher:
    """Passes a step's output through, remembering the last one-line `error: ...` a step printed."""

    def __init__(self, stream):
        self.stream, self.last_error = stream, None

    def write(self, text):
        for line in text.splitlines():
            if line.startswith("error: "):
                self.last_error = line
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def run_locally(data=DEFAULT_DATA, out=None, profile="default", params=(), docker_image=None):
    """Run the whole pipeline with kfp.local and copy its outputs into `out`; return `out`.

    Without `docker_image` each step runs in a subprocess of this environment (SubprocessRunner);
    with it, in a container of that image (DockerRunner, which mounts the pipeline root: the
    CSVs are copied in there so the containers can read them).
    """
    data = Path(data).resolve()
    for name in ("train.csv", "test.csv"):
        if not (data / name).is_file():
            raise SystemExit(f"error: {data / name} not found; {KAGGLE_HELP.format(data=data)}")
    arguments = {**PROFILES[profile], **parse_params(params)}
    out = Path(out or Path("runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    started = time.time()
    watcher = ErrorLineWatcher(sys.stdout)
    with tempfile.TemporaryDirectory(prefix="digit-recognizer-") as pipeline_root:
        if docker_image:
            runner = local.DockerRunner()
            mounted = Path(pipeline_root) / "data"
            mounted.mkdir()
            for name in ("train.csv", "test.csv"):
                shutil.copyfile(data / name, mounted / name)
            data = mounted
        else:
            runner = local.SubprocessRunner(use_venv=False)
        local.init(runner=runner, pipeline_root=pipeline_root, raise_on_error=True)
        # kfp.local warns that our image's name lacks "python" and that resources, retries and display names are
        # cluster-only: all moot here.
        warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=r".*settings \[.*\] have no effect", category=UserWarning)
        pipeline = build_pipeline(docker_image or DEFAULT_IMAGE)
        sys.stdout = watcher
        try:
            outputs = pipeline(train_csv=str(data / "train.csv"), test_csv=str(data / "test.csv"), **arguments)
        except RuntimeError as error:
            raise SystemExit(watcher.last_error or f"error: the pipeline failed: {error}") from None
        finally:
            sys.stdout = watcher.stream
        sources = {Path(outputs.outputs[name].path): file_name for name, file_name in RUN_FILES.items()}
        # kfp.local keeps each step's outputs in <pipeline root>/<run>/<step>/<output>.
        (run_root,) = [folder for folder in Path(pipeline_root).iterdir() if folder.name.startswith(PIPELINE_NAME)]
        sources.update({run_root / f"{step_name}-component" / output: file_name for (step_name, output), file_name in GATED_RUN_FILES.items()})
        out.mkdir(parents=True, exist_ok=True)
        for source, file_name in sources.items():
            for path in sorted(source.glob(file_name)) if source.is_dir() else [source]:
                shutil.copyfile(path, out / (path.name if source.is_dir() else file_name))
    point_latest_at(out)
    print(f"\ndone in {time.time() - started:.0f} s; outputs in {out}/: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return out


def submit(host, train_csv=None, test_csv=None, experiment="digit-recognizer", run_name=None, params=(), wait=False,
           namespace=None, token=None, image=DEFAULT_IMAGE, accelerator=DEFAULT_ACCELERATOR, poll_seconds=5,
           timeout=7 * 24 * 3600, kaggle_secret=None, profile="default", deploy_to=None):
    """Compile the pipeline and start a run of it on the Kubeflow Pipelines at `host`.

    The data is `train_csv` and `test_csv` (URIs the cluster reads), or with `kaggle_secret` what the
    Kaggle CLI downloads. Prints the run's id and link; with `wait`, follows the run and returns 0 if
    it succeeded, 1 if not.
    """
    if not kaggle_secret and not (train_csv and test_csv):
        raise SystemExit("error: submit needs --train-csv and --test-csv, or --kaggle-secret to download the data")
    import kfp  # the client side of kfp: only submit needs it
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    data = {} if kaggle_secret else {"train_csv": train_csv, "test_csv": test_csv}
    arguments = {**data, **PROFILES[profile], **parse_params(params)}
    with tempfile.TemporaryDirectory() as folder:
        package = compile_pipeline(Path(folder) / "digit_recognizer_pipeline.yaml", image, accelerator, kaggle_secret, deploy_to)
        try:
            warnings.filterwarnings("ignore", message="This client only works with Kubeflow Pipeline v2", category=FutureWarning)
            client = kfp.Client(host=host, existing_token=token, **({"namespace": namespace} if namespace else {}))
            run = client.create_run_from_pipeline_package(
                str(package), arguments=arguments, run_name=run_name, experiment_name=experiment, namespace=namespace)
            print(f"run {run.run_id} started: {host.rstrip('/')}/#/runs/details/{run.run_id}", flush=True)
            if not wait:
                return 0
            state = client.wait_for_run_completion(run.run_id, timeout=timeout, sleep_duration=poll_seconds).state
        except ApiException as error:
            try:
                message = json.loads(error.body).get("message") or error.body
            except (TypeError, ValueError):
                message = error.body or error.reason
            raise SystemExit(f"error: the Kubeflow Pipelines API at {host} answered {error.status}: {message}") from None
        except (HTTPError, ConnectionError) as error:
            raise SystemExit(f"error: cannot reach Kubeflow Pipelines at {host}: {error}") from None
        except TimeoutError:
            raise SystemExit(f"error: run {run.run_id} did not finish within {timeout} s") from None
    print(f"run {run.run_id} finished: {state}")
    return 0 if state == "SUCCEEDED" else 1


def point_latest_at(out):
    """Make runs/latest a relative link to `out` when `out` lies in runs/, replacing any old link at once."""
    out = out.resolve()
    runs = Path("runs").resolve()
    if out.parent != runs:
        return
    temporary = runs / f".latest-{out.name}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(out.name)
    temporary.replace(runs / "latest")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    compile_parser = commands.add_parser("compile", help="write the pipeline YAML that a Kubeflow cluster accepts")
    compile_parser.add_argument("--output", default="digit_recognizer_pipeline.yaml", help="YAML file to write (default: %(default)s)")
    image_options(compile_parser)
    accelerator_options(compile_parser)
    kaggle_options(compile_parser)
    deploy_options(compile_parser)
    run_parser = commands.add_parser("run", help="run the whole pipeline on this machine with kfp.local")
    run_parser.add_argument("--data", default=str(DEFAULT_DATA), help="folder with Kaggle's train.csv and test.csv (default: %(default)s)")
    run_parser.add_argument("--out", help="folder for the outputs (default: runs/<timestamp>, linked from runs/latest)")
    parameter_options(run_parser)
    run_parser.add_argument("--docker", action="store_true", help="run each step in its container (kfp.local's DockerRunner; make images builds the image)")
    image_options(run_parser)
    submit_parser = commands.add_parser("submit", help="start a run on a Kubeflow Pipelines cluster (kfp.Client)")
    submit_parser.add_argument("--host", required=True, help="the KFP API endpoint, e.g. http://localhost:8080 or https://kubeflow.example/pipeline")
    submit_parser.add_argument("--train-csv", help="train.csv as a URI the cluster reads (gs://, s3://, minio://)")
    submit_parser.add_argument("--test-csv", help="test.csv as a URI the cluster reads")
    submit_parser.add_argument("--experiment", default="digit-recognizer", help="experiment to file the run under (default: %(default)s)")
    submit_parser.add_argument("--run-name", help="the run's name in the UI (default: the package name and time)")
    submit_parser.add_argument("--wait", action="store_true", help="follow the run to its end; exit 0 only if it succeeded")
    submit_parser.add_argument("--poll-seconds", type=float, default=5, help="with --wait: seconds between status checks (default: %(default)s)")
    submit_parser.add_argument("--timeout", type=float, default=7 * 24 * 3600, help="with --wait: give up after this many seconds (default: a week)")
    submit_parser.add_argument("--namespace", help="Kubernetes namespace of a multi-user Kubeflow")
    submit_parser.add_argument("--token", help="a bearer token for the KFP API (kfp.Client's existing_token)")
    parameter_options(submit_parser)
    image_options(submit_parser)
    accelerator_options(submit_parser)
    kaggle_options(submit_parser)
    deploy_options(submit_parser)
    args = parser.parse_args(argv)
    image = train_image(args.image_prefix, args.tag)
    if args.command == "compile":
        print(f"wrote {compile_pipeline(args.output, image, args.accelerator, args.kaggle_secret, deploy_target(args))} "
              f"(steps run in {image})")
    elif args.command == "submit":
        raise SystemExit(submit(args.host, args.train_csv, args.test_csv, args.experiment, args.run_name, args.param,
                                args.wait, args.namespace, args.token, image, args.accelerator, args.poll_seconds,
                                args.timeout, args.kaggle_secret, args.profile, deploy_target(args)))
    else:
        run_locally(args.data, args.out, args.profile, args.param, docker_image=image if args.docker else None)


def parameter_options(parser):
    parser.add_argument("--profile", choices=list(PROFILES), default="default", help="quick: one epoch, for demos and tests; default: "
                        "one CNN, 15 epochs; best: an ensemble of 5 CNNs in one ONNX model (default: %(default)s)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="set a pipeline parameter on top of the profile, e.g. --param epochs=20 (repeatable)")


def accelerator_options(parser):
    parser.add_argument("--accelerator", default=DEFAULT_ACCELERATOR, help="the accelerator the training step asks for (default: %(default)s)")
    parser.add_argument("--no-gpu", dest="accelerator", action="store_const", const=None, help="train on CPU nodes: ask for no accelerator")


def kaggle_options(parser):
    parser.add_argument("--kaggle-secret", metavar="SECRET", help="download the data with the Kaggle CLI as the first step, "
                        "its credentials from this Kubernetes secret (keys username and key, as in kaggle.json)")


def image_options(parser):
    parser.add_argument("--image-prefix", default="", help=f"registry and path before {IMAGE_NAME}, e.g. ghcr.io/me/ (default: none)")
    parser.add_argument("--tag", default="latest", help="the training image's tag (default: %(default)s)")


# Serving the model from the pipeline: the deploy step behind the gate (compile or submit with --deploy NAME).
class DeployTarget(NamedTuple):
    """Where the deploy step serves the model: the InferenceService `name` in `namespace` ("": the run's), running `image`."""
    name: str
    namespace: str = ""
    image: str = SERVE_IMAGE


DEPLOY_RBAC_ANNOTATION = "digit-recognizer/rbac"  # what the step's service account must be allowed (deploy/kserve/rbac.yaml)


def deploy_step(step, onnx_model, deploy_to, canary_traffic_percent):
    """The deploy task; returns its output, the service's URL."""
    deployed = step("deploy", onnx_model=onnx_model, service_name=deploy_to.name, namespace=deploy_to.namespace,
                    image=deploy_to.image, canary_traffic_percent=canary_traffic_percent)
    kubernetes.add_pod_annotation(deployed, DEPLOY_RBAC_ANNOTATION, f"{RESOURCE}: {','.join(RBAC_VERBS)}")
    return deployed.outputs["Output"]


def deploy_target(args):
    """The DeployTarget of `--deploy` (None without it): the serve image named like the training image."""
    if not args.deploy:
        return None
    try:
        check_name(args.deploy)
    except DeployError as error:
        raise SystemExit(f"error: --deploy: {error}") from None
    return DeployTarget(args.deploy, args.deploy_namespace, f"{args.image_prefix}{SERVE_IMAGE_NAME}:{args.tag}")


def deploy_options(parser):
    parser.add_argument("--deploy", metavar="NAME", help="serve a model that passes the gate with KServe, as the InferenceService "
                        "NAME (created, or updated with the canary_traffic_percent parameter); its image is "
                        f"{SERVE_IMAGE_NAME} with --image-prefix and --tag")
    parser.add_argument("--deploy-namespace", default="", metavar="NS", help="the InferenceService's namespace (default: the run's)")


if __name__ == "__main__":
    main()
