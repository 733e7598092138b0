"""The Digit Recognizer pipeline for Kubeflow Pipelines (KFP v2), and its command line.

    python pipeline.py compile [--output FILE] [--image-prefix PREFIX] [--tag TAG] [--kaggle-secret SECRET]
                               [--deploy NAME [--deploy-namespace NS]]
    python pipeline.py run [--data DIR] [--out DIR] [--profile quick|default|best] [--param NAME=VALUE ...]
                           [--docker [--gpus all|N] [--image-prefix PREFIX] [--tag TAG]] [--verbose]
    python pipeline.py run --resume RUN_DIR
    python pipeline.py submit --host URL (--train-csv URI --test-csv URI | --kaggle-secret SECRET)
                              [--experiment NAME] [--run-name NAME] [--profile P] [--wait] [--param NAME=VALUE ...]
                              [--namespace NS] [--token TOKEN] [--deploy NAME [--deploy-namespace NS]]

`run` executes every step on this machine with kfp.local, in this Python environment
or (`--docker`) each step in its container, and copies what a user wants into `--out`
(default runs/<timestamp>/, with runs/latest pointing at the newest). The run folder also
holds run.json (what made the run), run.log (everything the steps printed) and, until the
run succeeds, kfp.local's pipeline root with training's checkpoints, from which `--resume`
goes on after an interruption. `--deploy NAME` adds a step behind the accuracy gate: KServe
serves the model as the InferenceService NAME (components/deploy.py).
"""
import argparse
import datetime
import hashlib
import importlib.metadata
import inspect
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import NamedTuple

from kfp import compiler, dsl, kubernetes, local
from kfp.dsl import Artifact, Dataset, Model

from components.artifacts import InputError, load_json, save_json
from components.cli import signature_defaults
from components.deploy import RBAC_VERBS, RESOURCE, SERVE_IMAGE, SERVE_IMAGE_NAME, DeployError, check_name, deploy
from components.download import COMPETITION
from components.export import export
from components.kfp_components import kfp_components
from components.preprocess import preprocess
from components.train import CHECKPOINT_FILE, MODEL_FILE, read_checkpoint, train

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
    "report": ("1", "1G", "1", "2G"),
    "deploy": ("0.1", "256M", "1", "512M"),
}
# Training on a GPU is not bit-for-bit repeatable, and a download or a refusal should happen anew each run.
CACHED_STEPS = {"preprocess", "export", "evaluate", "shard_plan", "score", "join", "report"}
RETRIED_STEPS = set(RESOURCES) - {"reject"}  # a refusal is an answer, not a transient failure
KAGGLE_SECRET_KEYS = {"username": "KAGGLE_USERNAME", "key": "KAGGLE_KEY"}  # the fields of kaggle.json


def build_pipeline(image=DEFAULT_IMAGE, accelerator=DEFAULT_ACCELERATOR, kaggle_secret=None, deploy_to=None,
                   checkpoint_pvc=None):
    """The KFP pipeline, its steps running in `image`; training asks for one `accelerator` (None: CPU only).

    With `kaggle_secret` (the name of a Kubernetes secret holding kaggle.json's `username` and `key`),
    the first step downloads the data with the Kaggle CLI and `train_csv`/`test_csv` are not read.
    With `deploy_to` (a DeployTarget), a model that passes the gate is served by KServe.
    With `checkpoint_pvc` (the name of a PersistentVolumeClaim), the train step keeps its checkpoints
    there, one folder per run, so a retried or rescheduled train pod goes on where the last one stopped;
    otherwise in the `checkpoint_dir` parameter's folder (a local run's), or nowhere.
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
        network: str = TRAIN["network"],
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
        checkpoint_dir: str = "",
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
            test_data=arrays.outputs["test_data"], network=network, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_schedule=learning_rate_schedule, weight_decay=weight_decay, label_smoothing=label_smoothing,
            augment=augment, elastic_alpha=elastic_alpha, patience=patience, seed=seed, ensemble_size=ensemble_size,
            train_on_validation=train_on_validation, ema_momentum=ema_momentum, pseudo_labels=pseudo_labels,
            pseudo_label_confidence=pseudo_label_confidence, mixed_precision=mixed_precision,
            checkpoint_dir=CHECKPOINT_MOUNT if checkpoint_pvc else checkpoint_dir,
            checkpoint_subfolder=dsl.PIPELINE_JOB_ID_PLACEHOLDER if checkpoint_pvc else "",
        )
        if checkpoint_pvc:
            kubernetes.mount_pvc(trained, pvc_name=checkpoint_pvc, mount_path=CHECKPOINT_MOUNT)
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
                     kaggle_secret=None, deploy_to=None, checkpoint_pvc=None):
    compiler.Compiler().compile(build_pipeline(image, accelerator, kaggle_secret, deploy_to, checkpoint_pvc),
                                package_path=str(output))
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


ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
# What kfp.local logs around each task, and the lines of a step's own output that the default view shows.
TASK_STARTED = re.compile(r"Executing task '([\w-]+)'")
TASK_ENDED = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
TASK_CACHED = re.compile(r"Task ([\w-]+) cache hit")
TASK_RETRIED = re.compile(r"Task ([\w-]+) failed \(attempt (\d+)/(\d+)\)\. Retrying in ([\d.]+)s")
STEP_PROGRESS = re.compile(r"(training on |epoch \d+/\d+|resuming from |member finished before|pseudo-labels: )")
# A step's last line like these is its key figure, shown in the line that says the step ended.
KEY_FIGURE = re.compile(r"(member \d+: best validation|validation accuracy \d|int8 model agrees|\d+ training, \d+ validation"
                        r"|scored \d+ rows|joined \d+ rows|error: )")


class RunOutput:
    """Stands in for stdout while kfp.local runs the steps: everything goes to the run's log file; the terminal
    gets either the same (`verbose`) or one line per step as it starts and ends, and the steps' progress lines.

    It also times each step and remembers the last one-line `error: ...` a step printed.
    """

    def __init__(self, stream, log_file, verbose):
        self.stream, self.log_file, self.verbose = stream, log_file, verbose
        self.partial, self.last_error, self.steps, self.running = "", None, [], {}
        self.lock = threading.Lock()  # kfp.local runs a loop's steps (the score shards) in threads

    def write(self, text):
        with self.lock:
            self.log_file.write(ANSI_COLOUR.sub("", text))
            self.log_file.flush()
            if self.verbose:
                self.stream.write(text)
            lines = (self.partial + text).split("\n")
            self.partial = lines.pop()
            for line in lines:
                self.read_line(ANSI_COLOUR.sub("", line).strip())
        return len(text)

    def say(self, line):
        """A line of our own, to the terminal and to the log."""
        self.stream.write(line + "\n")
        self.stream.flush()
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def read_line(self, line):
        if line.startswith("error: "):
            self.last_error = line
        if self.verbose:
            return
        if match := TASK_STARTED.search(line):
            name = step_name(match[1])
            if name:
                self.running.setdefault(name, []).append({"started": time.monotonic(), "key_figure": None})
                self.say(f"{clock()} {name} ...")
        elif match := TASK_ENDED.search(line):
            name = step_name(match[1])
            if self.running.get(name):
                step = self.running[name].pop(0)
                if not self.running[name]:
                    del self.running[name]
                seconds = time.monotonic() - step["started"]
                self.steps.append({"step": name, "seconds": round(seconds, 1), "status": match[2].lower()})
                figure = f": {step['key_figure']}" if step["key_figure"] else ""
                verb = "done" if match[2] == "SUCCESS" else "FAILED"
                self.say(f"{clock()} {name} {verb} in {seconds:.0f} s{figure}")
        elif match := TASK_CACHED.search(line):
            name = step_name(match[1])
            self.steps.append({"step": name, "seconds": 0.0, "status": "reused"})
            self.say(f"{clock()} {name}: reused, done in the interrupted run")
        elif match := TASK_RETRIED.search(line):
            self.say(f"{clock()} {step_name(match[1])} failed (try {match[2]} of {match[3]}): trying again in "
                     f"{float(match[4]):.0f} s")
        elif self.running:
            if STEP_PROGRESS.match(line):
                self.say(f"         {line}")
            if KEY_FIGURE.match(line):  # steps' lines are not marked with their step: the last one started takes it
                list(self.running.values())[-1][-1]["key_figure"] = line

    def __getattr__(self, name):
        return getattr(self.stream, name)


def step_name(task):
    """kfp.local's task name as the step's: `train-component` -> train, `shard-plan-component` -> shard_plan;
    None for the importers, which only name the CSVs."""
    if task.startswith("importer"):
        return None
    return task.removesuffix("-component").replace("-", "_")


def clock():
    return datetime.datetime.now().strftime("%H:%M:%S")


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM: like KeyboardInterrupt, never caught by `except Exception`."""

    def __init__(self, signal_number):
        super().__init__(signal_number)
        self.signal_number = signal_number


def interrupt_handler(docker_label):
    """A signal handler that stops the steps at once, from wherever the main thread waits, then raises Interrupted.

    At once, because kfp.local waits for a step's process to end (and would retry a failed one).
    """

    def handle(signal_number, frame):
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        stop_steps(docker_label)
        raise Interrupted(signal_number)

    return handle


def descendants(pid):
    """The ids of every process below `pid` (its children, theirs, ...), from /proc, or `ps` where there is none."""
    if Path("/proc").is_dir():
        parents = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # it ended meanwhile
                continue
            parents[int(stat.parent.name)] = int(fields[1])
    else:
        table = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.split()
        parents = {int(child): int(parent) for child, parent in zip(table[::2], table[1::2])}
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def stop_steps(docker_label=None, grace_seconds=5):
    """End every process this run started (kfp.local's step subprocesses and theirs): SIGTERM, then SIGKILL
    whatever still runs after `grace_seconds`; with `docker_label`, also kill the run's containers."""
    if docker_label:
        import docker

        try:
            client = docker.from_env()
            for container in client.containers.list(filters={"label": docker_label}):
                container.kill()
        except docker.errors.DockerException:
            pass  # no engine, no containers
    processes = descendants(os.getpid())
    for signal_number in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes:
            try:
                os.kill(pid, signal_number)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and (processes := [pid for pid in processes if is_running(pid)]):
            time.sleep(0.1)
        if not processes:
            return


def is_running(pid):
    """True while `pid` runs; a child of ours that ended is reaped here, so it does not linger as a zombie."""
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        return finished == 0
    except ChildProcessError:  # not our child: ask the kernel whether it exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return not Path(f"/proc/{pid}/status").is_file() or "zombie" not in Path(f"/proc/{pid}/status").read_text()


def docker_runner(gpus, label):
    """kfp.local's DockerRunner, its containers labelled (so an interrupted run can stop them) and, with `gpus`
    ("all" or a count), given that many of this machine's GPUs, as `docker run --gpus` does."""
    import docker

    arguments = {"labels": [label]}
    if gpus:
        if gpus != "all" and not (gpus.isdigit() and int(gpus) > 0):
            raise SystemExit(f"error: --gpus {gpus!r}: expected all or a number of GPUs")
        try:
            runtimes = docker.from_env().info().get("Runtimes", {})
        except docker.errors.DockerException as error:
            raise SystemExit(f"error: --gpus: cannot reach Docker ({error})") from None
        if "nvidia" not in runtimes:
            raise SystemExit(f"error: --gpus {gpus}: Docker here has no NVIDIA runtime (only {', '.join(sorted(runtimes))}); "
                             "install the NVIDIA Container Toolkit: "
                             "https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html")
        arguments["device_requests"] = [docker.types.DeviceRequest(count=-1 if gpus == "all" else int(gpus),
                                                                   capabilities=[["gpu"]])]
    return local.DockerRunner(**arguments)


def training_device(docker_image, gpus):
    """Which device the train step will use, as the run's first lines say it."""
    if docker_image:
        return f"training in {docker_image} on " + (f"GPUs ({gpus}, docker --gpus)" if gpus else "the CPU (no --gpus)")
    import tensorflow as tf

    gpus_found = tf.config.list_physical_devices("GPU")
    if gpus_found:
        return f"training on {len(gpus_found)} GPU(s) ({', '.join(gpu.name for gpu in gpus_found)})"
    if installed_version("tensorflow-cpu"):
        return "training on the CPU (tensorflow-cpu is installed: make install GPU=1 installs TensorFlow with CUDA)"
    return "training on the CPU (TensorFlow finds no GPU)"


def installed_version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


RECORDED_PACKAGES = ("tensorflow", "tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime", "kfp", "kfp-kubernetes",
                     "numpy", "pandas", "protobuf")


def file_digest(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def code_version():
    """The git commit of this code and whether the tree differs from it; None outside a git checkout."""
    root = Path(__file__).resolve().parent

    def git(*arguments):
        return subprocess.run(["git", "-C", str(root), *arguments], capture_output=True, text=True)

    try:
        commit = git("rev-parse", "HEAD")
    except FileNotFoundError:  # no git here
        return None
    if commit.returncode != 0:
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(git("status", "--porcelain").stdout.strip())}


def pipeline_arguments(profile, params):
    """Every pipeline parameter's value for this run: the pipeline's defaults, then the profile, then `params`."""
    signature = inspect.signature(build_pipeline().pipeline_func)
    defaults = {name: p.default for name, p in signature.parameters.items() if name not in ("train_csv", "test_csv")}
    return {**defaults, **PROFILES[profile], **parse_params(params)}


def resumed_settings(out, profile, params, data):
    """The profile, parameters and data folder of the interrupted run in `out`, after checking run.json:
    what the user gave again must match, and the data files must be the ones the run started with."""
    record_path = out / "run.json"
    if not record_path.is_file():
        raise SystemExit(f"error: --resume {out}: no run.json there (the folder `pipeline.py run` made for a run)")
    record = load_json(record_path, "the record of a run")
    if record.get("status") == "succeeded":
        raise SystemExit(f"error: --resume {out}: that run has finished; its outputs are there")
    profile = profile or record["profile"]
    arguments = {**record["parameters"], **parse_params(params)}
    differing = sorted(name for name in arguments if arguments[name] != record["parameters"][name])
    if profile != record["profile"] or differing:
        raise SystemExit(f"error: --resume {out}: the run was started with other settings "
                         f"(profile {record['profile']}{', ' if differing else ''}{', '.join(differing)}); "
                         "resume with the same ones, or start a new run")
    data = Path(data or record["data"]["folder"]).resolve()
    for name, recorded in record["data"]["sha256"].items():
        if not (data / name).is_file():
            raise SystemExit(f"error: {data / name} not found; {KAGGLE_HELP.format(data=data)}")
        if file_digest(data / name) != recorded:
            raise SystemExit(f"error: --resume {out}: {data / name} is not the file the run started with "
                             "(its SHA-256 differs); start a new run")
    return profile, arguments, data, record


def checkpoint_summary(checkpoint_dir):
    """Where training's checkpoints are and how far they got, in words."""
    states = []
    for path in sorted(Path(checkpoint_dir).glob(CHECKPOINT_FILE.format(round="*", member="*"))):
        state = read_checkpoint(path)[0]
        states.append(f"{path.stem}: " + ("finished" if state.get("finished") else f"{state['epochs_done']} epoch(s) done"))
    return f"{checkpoint_dir} ({'; '.join(states)})" if states else f"{checkpoint_dir} (no epoch finished yet)"


def run_locally(data=DEFAULT_DATA, out=None, profile=None, params=(), docker_image=None, gpus=None, resume=None,
                verbose=False):
    """Run the whole pipeline with kfp.local and copy its outputs into `out`; return `out`.

    Without `docker_image` each step runs in a subprocess of this environment (SubprocessRunner);
    with it, in a container of that image (DockerRunner, which mounts the pipeline root: the
    CSVs are copied in there so the containers can read them), with `gpus` ("all" or a count) GPUs.
    kfp.local's pipeline root, with its cache of finished steps and training's checkpoints, lies in the
    run folder, so `resume` (an interrupted run's folder) reuses the finished steps and goes on training
    from the last checkpoint. Ctrl-C or SIGTERM stops every step's process and says how to resume.
    """
    if gpus and not docker_image:
        raise SystemExit("error: --gpus is for --docker; without it the steps use this machine's GPUs through TensorFlow")
    if resume:
        out = Path(resume)
        profile, arguments, data, record = resumed_settings(out, profile, params, data)
    else:
        data = Path(data).resolve()
        for name in ("train.csv", "test.csv"):
            if not (data / name).is_file():
                raise SystemExit(f"error: {data / name} not found; {KAGGLE_HELP.format(data=data)}")
        profile = profile or "default"
        arguments = pipeline_arguments(profile, params)
        out = Path(out or Path("runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
        arguments["checkpoint_dir"] = str((out / "pipeline-root" / "checkpoints").resolve())
        record = {
            "profile": profile, "parameters": arguments, "command": sys.argv,
            "data": {"folder": str(data), "sha256": {name: file_digest(data / name) for name in ("train.csv", "test.csv")}},
            "packages": {name: version for name in RECORDED_PACKAGES if (version := installed_version(name))},
            "code": code_version(), "runs": [],
        }
    pipeline_root = Path(arguments["checkpoint_dir"]).parent
    label = f"digit-recognizer.run={pipeline_root}"
    runner = docker_runner(gpus, label) if docker_image else local.SubprocessRunner(use_venv=False)
    pipeline_root.mkdir(parents=True, exist_ok=True)
    attempt = {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "ended": None,
               "status": "running", "runner": {"docker_image": docker_image, "gpus": gpus} if docker_image else "subprocess",
               "steps": []}
    record["runs"].append(attempt)
    record["status"] = "running"
    save_json(out / "run.json", record)
    started = time.time()
    log_path = out / "run.log"
    with open(log_path, "a") as log_file:
        output = RunOutput(sys.stdout, log_file, verbose)
        output.say(f"digit-recognizer: profile {profile}, run folder {out}" + (" (resumed)" if resume else ""))
        output.say(training_device(docker_image, gpus))
        output.say(f"everything the steps print: {log_path}" + ("" if verbose else " (--verbose shows it here)"))
        if docker_image:
            mounted = pipeline_root / "data"
            mounted.mkdir(exist_ok=True)
            for name in ("train.csv", "test.csv"):
                if not (mounted / name).is_file():
                    shutil.copyfile(data / name, mounted / name)
            data = mounted
        local.init(runner=runner, pipeline_root=str(pipeline_root), raise_on_error=True, enable_caching=True)
        # kfp.local warns that our image's name lacks "python" and that resources, retries and display names are
        # cluster-only: all moot here.
        warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=r".*settings \[.*\] have no effect", category=UserWarning)
        pipeline = build_pipeline(docker_image or DEFAULT_IMAGE)
        handler = interrupt_handler(label if docker_image else None)
        previous_handlers = {number: signal.signal(number, handler) for number in (signal.SIGINT, signal.SIGTERM)}
        sys.stdout = output
        # kfp.local logs a cache hit (a step reused on --resume) outside its own logging set-up: catch that too.
        log_handler, root_logger = logging.StreamHandler(output), logging.getLogger()
        previous_level = root_logger.level
        root_logger.addHandler(log_handler)
        root_logger.setLevel(logging.INFO)

        def finish(status):
            attempt.update(status=status, steps=output.steps,
                           ended=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
            record["status"] = status
            save_json(out / "run.json", record)

        try:
            outputs = pipeline(train_csv=str(data / "train.csv"), test_csv=str(data / "test.csv"), **arguments)
        except Interrupted as interruption:
            sys.stdout = output.stream
            finish("interrupted")
            output.say(f"\ninterrupted ({signal.Signals(interruption.signal_number).name}); every step stopped.\n"
                       f"training checkpoints: {checkpoint_summary(arguments['checkpoint_dir'])}\n"
                       f"resume with: python pipeline.py run --resume {out}")
            # kfp.local's worker threads may be about to retry a step we stopped: end here, threads and all.
            stop_steps(label if docker_image else None)
            sys.stderr.flush()
            os._exit(128 + interruption.signal_number)
        except RuntimeError as error:
            finish("failed")
            raise SystemExit(output.last_error or f"error: the pipeline failed: {error} (details: {log_path})") from None
        finally:
            sys.stdout = output.stream
            root_logger.removeHandler(log_handler)
            root_logger.setLevel(previous_level)
            for number, previous in previous_handlers.items():
                signal.signal(number, previous)
        sources = {Path(outputs.outputs[name].path): file_name for name, file_name in RUN_FILES.items()}
        # kfp.local keeps each step's outputs in <pipeline root>/<run>/<step>/<output>: the newest run's are this one's.
        run_root = max(folder for folder in pipeline_root.iterdir() if folder.name.startswith(PIPELINE_NAME))
        sources.update({run_root / f"{step_name}-component" / output_name: file_name
                        for (step_name, output_name), file_name in GATED_RUN_FILES.items()})
        for source, file_name in sources.items():
            for path in sorted(source.glob(file_name)) if source.is_dir() else [source]:
                shutil.copyfile(path, out / (path.name if source.is_dir() else file_name))
        # Once every output is out, the intermediate arrays, the cache and the checkpoints have served their purpose.
        try:
            shutil.rmtree(pipeline_root)
        except PermissionError:  # containers run as root and may leave files this user cannot delete
            output.say(f"note: {pipeline_root} holds files written by the containers as root; delete it as root")
        finish("succeeded")
        point_latest_at(out)
        output.say(f"\ndone in {time.time() - started:.0f} s; outputs in {out}/:")
        for path in sorted(out.iterdir()):
            output.say(f"  {path}  {RUN_FILE_WHAT.get(path.name, RUN_FILE_WHAT['model-*.keras'] if path.suffix == '.keras' else '')}")
    return out


# What each file of a run folder is, as the end of a run lists them.
RUN_FILE_WHAT = {
    "submission.csv": "Kaggle's submission (make kaggle-submit sends it)",
    "model.onnx": "the exported model, for serving",
    "model.int8.onnx": "the same, quantized to int8",
    "model-*.keras": "a trained Keras model (one per member of the ensemble)",
    "history.json": "per-epoch loss, accuracy, learning rate, seconds, images/s",
    "metrics.json": "validation accuracy, loss, per-digit figures, confusion matrix",
    "report.html": "the run on one page",
    "training_curves.png": "loss and error per epoch",
    "confusion_matrix.png": "validation confusion matrix",
    "test_samples.png": "test digits with their predicted labels",
    "run.json": "what made the run: parameters, data hashes, package versions, commit, step times",
    "run.log": "everything the steps printed",
}


def submit(host, train_csv=None, test_csv=None, experiment="digit-recognizer", run_name=None, params=(), wait=False,
           namespace=None, token=None, image=DEFAULT_IMAGE, accelerator=DEFAULT_ACCELERATOR, poll_seconds=5,
           timeout=7 * 24 * 3600, kaggle_secret=None, profile="default", deploy_to=None, checkpoint_pvc=None):
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
        package = compile_pipeline(Path(folder) / "digit_recognizer_pipeline.yaml", image, accelerator, kaggle_secret,
                                   deploy_to, checkpoint_pvc)
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
    run_parser.add_argument("--data", help=f"folder with Kaggle's train.csv and test.csv (default: {DEFAULT_DATA}; with --resume, the run's)")
    run_parser.add_argument("--out", help="folder for the outputs (default: runs/<timestamp>, linked from runs/latest)")
    parameter_options(run_parser, profile_default=None)
    run_parser.add_argument("--docker", action="store_true", help="run each step in its container (kfp.local's DockerRunner; make images builds the image)")
    run_parser.add_argument("--gpus", metavar="all|N", help="with --docker: give the containers all or N of this machine's GPUs (needs the NVIDIA Container Toolkit)")
    run_parser.add_argument("--resume", metavar="RUN_DIR", help="go on with the interrupted run in RUN_DIR: its finished steps are reused, training goes on from its last checkpoint")
    run_parser.add_argument("--verbose", action="store_true", help="print everything kfp.local and the steps print (always in RUN_DIR/run.log)")
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
        print(f"wrote {compile_pipeline(args.output, image, args.accelerator, args.kaggle_secret, deploy_target(args), args.checkpoint_pvc)} "
              f"(steps run in {image})")
    elif args.command == "submit":
        raise SystemExit(submit(args.host, args.train_csv, args.test_csv, args.experiment, args.run_name, args.param,
                                args.wait, args.namespace, args.token, image, args.accelerator, args.poll_seconds,
                                args.timeout, args.kaggle_secret, args.profile, deploy_target(args), args.checkpoint_pvc))
    else:
        if args.resume and args.out:
            raise SystemExit("error: --resume continues in the run's own folder: give no --out")
        run_locally(args.data or (None if args.resume else DEFAULT_DATA), args.out, args.profile, args.param,
                    docker_image=image if args.docker else None, gpus=args.gpus, resume=args.resume, verbose=args.verbose)


def parameter_options(parser, profile_default="default"):
    parser.add_argument("--profile", choices=list(PROFILES), default=profile_default, help="quick: one epoch, for demos and tests; default: "
                        "one CNN, 15 epochs; best: an ensemble of 5 CNNs in one ONNX model (default: default; with --resume, the run's)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="set a pipeline parameter on top of the profile, e.g. --param epochs=20 (repeatable)")


def accelerator_options(parser):
    parser.add_argument("--accelerator", default=DEFAULT_ACCELERATOR, help="the accelerator the training step asks for (default: %(default)s)")
    parser.add_argument("--no-gpu", dest="accelerator", action="store_const", const=None, help="train on CPU nodes: ask for no accelerator")
    parser.add_argument("--checkpoint-pvc", metavar="PVC", help="a PersistentVolumeClaim for training's checkpoints, mounted at "
                        f"{CHECKPOINT_MOUNT}: a retried or rescheduled train pod goes on from the last epoch (default: none)")


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
