"""`pipeline.py run`: the whole pipeline on this machine with kfp.local, its outputs in a run folder.

The pipeline runs in a process of its own (runner/execute.py), in a session of its own. This process checks
the input first, keeps run.json, shows the run on the console (runner/console.py) and the log, and ends that
session's processes at once when a step refuses its input or on Ctrl-C or SIGTERM, and with `--docker` the
run's containers: nothing else, and it leaves the caller's state (output, logging, warnings, signal handlers)
as it found it.
"""

import contextlib
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from common.errors import InputError
from components import tracking
from runner import record
from runner.console import Console
from runner.docker import docker_runner, run_label, stop_containers
from runner.outputs import copy_outputs, listing, point_latest_at
from runner.params import pipeline_arguments
from runner.processes import start_session, stop_session

DEFAULT_DATA = Path("data/digit-recognizer")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
MLFLOW_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}  # run.json's -> MLflow's


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM: like KeyboardInterrupt, never caught by `except Exception`."""

    def __init__(self, signal_number):
        super().__init__(signal_number)
        self.signal_number = signal_number


def run_locally(
    data: str | Path | None = DEFAULT_DATA,
    out: str | Path | None = None,
    profile: str | None = None,
    params: list[str] | tuple[str, ...] = (),
    docker_image: str | None = None,
    gpus: str | None = None,
    resume: str | Path | None = None,
    verbose: bool = False,
) -> Path:
    """Run the whole pipeline with kfp.local and copy its outputs into `out`; return `out`.

    Without `docker_image` each step runs in a subprocess of this environment (SubprocessRunner);
    with it, in a container of that image (DockerRunner, which mounts the pipeline root: the
    CSVs are copied in there so the containers can read them), with `gpus` ("all" or a count) GPUs.
    kfp.local's pipeline root, with its cache of finished steps and training's checkpoints, lies in the
    run folder, so `resume` (an interrupted run's folder) reuses the finished steps and goes on training
    from the last checkpoint. The run is tracked in MLflow as KFP's backend tracks it (mlflow_run): in
    MLFLOW_TRACKING_URI if set, or else in the SQLite store beside the run folder (runs/mlflow.db). Bad input, a
    step's refusal or an interruption ends it with SystemExit: a one-line error, or status 130 (SIGINT) or 143
    (SIGTERM) after stopping every step and saying how to resume.
    """
    if gpus and not docker_image:
        raise SystemExit(
            "error: --gpus is for --docker; without it the steps use this machine's GPUs through TensorFlow"
        )
    if resume:
        out = Path(resume)
        profile, arguments, data, run_record = record.resumed_settings(out, profile, params, data)
        check_csv_headers(data)
    else:
        data = Path(data or DEFAULT_DATA).resolve()
        record.check_data_files(data)
        check_csv_headers(data)  # before the CSVs are hashed for run.json: a refusal comes at once
        profile = profile or "default"
        arguments = pipeline_arguments(profile, params)
        out = Path(out or Path("runs") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
        arguments["checkpoint_dir"] = str((out / "pipeline-root" / "checkpoints").resolve())
        run_record = record.new_record(profile, arguments, data)
    pipeline_root = Path(arguments["checkpoint_dir"]).parent
    label = run_label(str(pipeline_root))
    if docker_image:
        docker_runner(gpus, label)  # its one-line errors come before anything is written
    pipeline_root.mkdir(parents=True, exist_ok=True)
    runner = {"docker_image": docker_image, "gpus": gpus} if docker_image else "subprocess"
    run_record["mlflow"] = mlflow_run(out, run_record)
    record.start_attempt(out, run_record, runner)
    started = time.time()
    log_path = out / "run.log"
    with open(log_path, "a") as log_file:
        console = Console(sys.stdout, log_file, verbose)
        console.say(f"digit-recognizer: profile {profile}, run folder {out}" + (" (resumed)" if resume else ""))
        console.say(training_device(docker_image, gpus))
        console.say(f"everything the steps print: {log_path}" + ("" if verbose else " (--verbose shows it here)"))
        if docker_image:
            data = csvs_in(pipeline_root, data)
        settings = {
            "pipeline_root": str(pipeline_root),
            "arguments": {"train_csv": str(data / "train.csv"), "test_csv": str(data / "test.csv"), **arguments},
            "outputs_json": str(pipeline_root / "outputs.json"),
            "docker_image": docker_image,
            "gpus": gpus,
            "label": label,
            "mlflow_run": run_record["mlflow"],
        }

        def finish(status):
            if run_record["mlflow"]:
                tracking.end_run(run_record["mlflow"], MLFLOW_STATUS[status])
            record.finish_attempt(out, run_record, status, console.steps)

        try:
            status = supervise(settings, console, label if docker_image else None)
        except Interrupted as interruption:
            finish("interrupted")
            console.say(
                f"\ninterrupted ({signal.Signals(interruption.signal_number).name}); every step stopped.\n"
                f"training checkpoints: {checkpoint_summary(arguments['checkpoint_dir'])}\n"
                f"resume with: python pipeline.py run --resume {out}"
            )
            raise SystemExit(128 + interruption.signal_number) from None
        if console.refusal or status != 0:
            finish("failed")
            if console.refusal:
                raise refused(console.refusal)
            unexplained = f"the {console.unexplained} step failed without saying why" if console.unexplained else ""
            raise SystemExit(f"error: {unexplained or 'the pipeline failed'} (details: {log_path})")
        copy_outputs(json.loads(Path(settings["outputs_json"]).read_text()), pipeline_root, out)
        # Once every output is out, the intermediate arrays, the cache and the checkpoints have served their purpose.
        try:
            shutil.rmtree(pipeline_root)
        except PermissionError:  # containers run as root and may leave files this user cannot delete
            console.say(f"note: {pipeline_root} holds files written by the containers as root; delete it as root")
        if run_record["mlflow"]:
            run_record["registered_model"] = registered_model(run_record["mlflow"])
        finish("succeeded")
        point_latest_at(out)
        console.say(f"\ndone in {time.time() - started:.0f} s; outputs in {out}/:")
        for line in listing(out):
            console.say(line)
    return out


def mlflow_run(out: Path, run_record: dict) -> dict | None:
    """The run's parent run in MLflow, as KFP's API server starts one for a pipeline run: in experiment
    digit-recognizer, with the run's parameters, data hashes and commit. A resumed run goes on in its own (run.json
    keeps it). None when MLflow fails (one warning line): the run goes on untracked."""
    if run_record.get("mlflow"):
        return tracking.resume_run(run_record["mlflow"])
    tracking_uri, artifact_location = tracking.local_store(out.parent)
    code = run_record["code"] or {}
    tags = {
        "profile": run_record["profile"],
        "run_folder": str(out.resolve()),
        **{f"{name.replace('.', '_')}_sha256": digest for name, digest in run_record["data"]["sha256"].items()},
        **({"mlflow.source.git.commit": code["commit"], "git_dirty": code["dirty"]} if code else {}),
    }
    return tracking.start_run(
        tracking_uri, out.name, run_record["parameters"], tags, artifact_location=artifact_location
    )


def registered_model(pipeline_run: dict) -> dict | None:
    """The model version the run registered in MLflow, as run.json names it."""
    version = tracking.registered_version(pipeline_run)
    return {"name": tracking.REGISTERED_MODEL, "version": version} if version else None


def supervise(settings: dict, console: Console, docker_label: str | None) -> int:
    """Run runner.execute with `settings` in a session of its own until it ends or a step refuses its input,
    its output read by `console`; returns its exit status. On SIGINT or SIGTERM, raises Interrupted once its
    processes (and the containers labelled `docker_label`) are stopped."""
    previous_handlers = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    process, pending = None, []

    def interrupt(signal_number, frame):
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        if process is None:  # the run is not started yet: it is stopped as soon as it is
            pending.append(signal_number)
            return
        raise Interrupted(signal_number)

    try:
        for number in STOP_SIGNALS:
            signal.signal(number, interrupt)
        command = [sys.executable, "-m", "runner.execute", json.dumps(settings)]
        process = start_session(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if pending:
            raise Interrupted(pending[0])
        for line in process.stdout:
            console.read(line)
            if console.refusal:  # not retried: the same input gets the same answer
                stop_run(process, console, docker_label)
                break
        return process.wait()
    except BaseException:  # Interrupted, or a fault of ours: either way, nothing of the run goes on
        if process:
            stop_run(process, console, docker_label)
        raise
    finally:
        if process:
            process.stdout.close()
        for number, handler in previous_handlers.items():
            signal.signal(number, handler)


def stop_run(process: subprocess.Popen, console: Console, docker_label: str | None) -> None:
    """End the run's processes and containers; what they printed last goes to the log alone."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)  # nothing cuts the clean-up short
    stop_session(process)
    if docker_label:
        stop_containers(docker_label)
    for line in process.stdout:
        console.log(line)


def check_csv_headers(data: Path) -> None:
    """Refuse CSVs whose header is not Kaggle's before the pipeline starts, as its preprocess step would."""
    from components.kaggle_csv import check_header

    try:
        check_header(data / "train.csv", labelled=True)
        check_header(data / "test.csv", labelled=False)
    except InputError as error:
        raise refused(f"error: {error}") from None


def refused(message: str) -> SystemExit:
    """The exit of a run whose input a step refused: its one line on stderr, and status 2, as the step's own CLI."""
    print(message, file=sys.stderr, flush=True)
    return SystemExit(2)


def csvs_in(pipeline_root: Path, data: Path) -> Path:
    """The CSVs copied into the pipeline root, which the DockerRunner mounts into the containers."""
    mounted = pipeline_root / "data"
    mounted.mkdir(exist_ok=True)
    for name in record.DATA_FILES:
        if not (mounted / name).is_file():
            shutil.copyfile(data / name, mounted / name)
    return mounted


@contextlib.contextmanager
def stderr_silenced():
    """Standard error (file descriptor 2, which C++ libraries write to) goes nowhere inside the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def training_device(docker_image: str | None, gpus: str | None) -> str:
    """Which device the train step will use, as the run's first lines say it."""
    if docker_image:
        return f"training in {docker_image} on " + (f"GPUs ({gpus}, docker --gpus)" if gpus else "the CPU (no --gpus)")
    # TensorFlow's C++ start-up lines (oneDNN's note, absl's warning) would open the console; the steps' own are
    # in run.log.
    with stderr_silenced():
        import tensorflow as tf

        gpus_found = tf.config.list_physical_devices("GPU")
    if gpus_found:
        return f"training on {len(gpus_found)} GPU(s) ({', '.join(gpu.name for gpu in gpus_found)})"
    if record.installed_version("tensorflow-cpu"):
        return "training on the CPU (tensorflow-cpu is installed: make install GPU=1 installs TensorFlow with CUDA)"
    return "training on the CPU (TensorFlow finds no GPU)"


def checkpoint_summary(checkpoint_dir: str) -> str:
    """Where training's checkpoints are and how far they got, in words."""
    from components.checkpoints import CHECKPOINT_FILE, read_checkpoint

    states = []
    for path in sorted(Path(checkpoint_dir).glob(CHECKPOINT_FILE.format(round="*", member="*"))):
        state = read_checkpoint(path)[0]
        done = "finished" if state.get("finished") else f"{state['epochs_done']} epoch(s) done"
        states.append(f"{path.stem}: {done}")
    return f"{checkpoint_dir} ({'; '.join(states)})" if states else f"{checkpoint_dir} (no epoch finished yet)"
