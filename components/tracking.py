"""MLflow tracking: every MLflow call of the steps and of the local runner, so that no other module imports mlflow.

Kubeflow Pipelines 2.17 with its MLflow plugin (and `pipeline.py run`, which plays its part) gives each pipeline run a
parent MLflow run and each task a nested one, and sets MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_ID and MLFLOW_RUN_ID
(the task's run; MLFLOW_WORKSPACE and credentials where the server wants them) in the task's environment. A step's
calls here log into that run. Without MLFLOW_RUN_ID and MLFLOW_TRACKING_URI they do nothing, and mlflow is not even
imported. A server that is down or refuses costs one warning line on stderr, never the step: requests are not retried
and time out soon, and after the first failure this process stops trying.

KFP's launcher logs each task's input parameters (JSON-encoded) and its Metrics artifacts' scalars into the task's run
when the task ends (docs/cluster.md#mlflow). What the steps log here is never one of those: MLflow refuses a parameter
logged again with another value.
"""

import functools
import json
import os
import sys
import time
from pathlib import Path

EXPERIMENT = "digit-recognizer"
REGISTERED_MODEL = "digit-recognizer"
STORE_FILE = "mlflow.db"  # the embedded store of local runs, in the folder that holds the run folders
ARTIFACTS_FOLDER = "mlartifacts"  # its artifacts, beside it
# A tracking server that does not answer must not hold a step up: one try, 10 s at most (MLflow's defaults are
# 7 retries with backoff and 120 s a request, minutes per call).
REQUEST_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}

_failed = False  # set by the first failure: this process then stops calling MLflow


def task_run() -> str | None:
    """The run this process logs into: MLFLOW_RUN_ID when MLFLOW_TRACKING_URI is set too, and MLflow answered so far."""
    if _failed or not os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return os.environ.get("MLFLOW_RUN_ID") or None


def _client(tracking_uri: str | None = None):
    for name, value in REQUEST_SETTINGS.items():
        os.environ.setdefault(name, value)
    import logging

    from mlflow import MlflowClient

    # MLflow's INFO lines (a new SQLite store's tables, say) have no place on the run's console; its warnings do.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri or os.environ["MLFLOW_TRACKING_URI"])


def _guarded(call):
    """`call` as MLflow allows it: a no-op (returning None) once MLflow failed; its own failure, one warning line."""

    @functools.wraps(call)
    def guarded(*arguments, **keywords):
        global _failed
        if _failed:
            return None
        try:
            return call(*arguments, **keywords)
        except Exception as error:  # whatever the client raises (connection, HTTP 500, store), tracking is optional
            _failed = True
            reason = " ".join(str(error).split())[:300]
            print(
                f"warning: MLflow tracking is off for this process: {call.__name__} failed: {reason}", file=sys.stderr
            )
            return None

    return guarded


# The steps' side: each logs into the task's run, or does nothing.


@_guarded
def log_params(params: dict) -> None:
    """Log `params` (name -> value) into the task's run: never an input's name, which KFP's launcher logs."""
    if run_id := task_run():
        from mlflow.entities import Param

        _client().log_batch(run_id, params=[Param(name, str(value)) for name, value in params.items()])


@_guarded
def log_metrics(metrics: dict, step: int = 0) -> None:
    """Log `metrics` (name -> number) at `step` (an epoch, say) into the task's run."""
    if run_id := task_run():
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        _client().log_batch(run_id, metrics=[Metric(name, float(value), now, step) for name, value in metrics.items()])


@_guarded
def log_files(files: dict) -> None:
    """Copy `files` (the name it gets -> a file: a step's outputs have names without their type) into the task run's
    artifacts."""
    if run_id := task_run():
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            for name, path in files.items():
                shutil.copyfile(path, Path(folder) / name)
            _client().log_artifacts(run_id, folder)


@_guarded
def log_onnx_model(onnx_path: str | Path, name: str, example_images) -> str | None:
    """Log the ONNX model at `onnx_path` as an MLflow model `name` (onnx flavour) of the task's run, with its signature
    and `example_images` (uint8 [n, 28, 28, 1]) as the input example; returns its URI (models:/...), None untracked."""
    if not (run_id := task_run()):
        return None
    import numpy as np
    import onnx
    import onnxruntime
    from mlflow.models import infer_signature
    from mlflow.onnx import log_model

    from common.onnx_model import load_session, predict

    _client()  # the request settings and quiet loggers, before MLflow's fluent calls
    pixels = np.asarray(example_images, np.float32)
    probabilities, labels = predict(load_session(onnx_path), pixels)
    info = log_model(
        onnx.load(str(onnx_path)),
        name=name,
        run_id=run_id,
        signature=infer_signature(pixels, {"probabilities": probabilities, "label": labels}),
        input_example=pixels,
        save_as_external_data=False,  # one small file, as the pipeline writes it
        onnx_execution_providers=["CPUExecutionProvider"],  # as scoring and serving run it
        pip_requirements=[f"onnxruntime=={onnxruntime.__version__}", f"onnx=={onnx.__version__}"],
    )
    return info.model_uri


@_guarded
def register_model(model_uri: str, tags: dict) -> str | None:
    """Register the logged model `model_uri` as a new version of REGISTERED_MODEL, tagged with `tags`; its version
    number, None untracked. A version that already bears every one of these tags (a retried step's: the same
    pipeline run, model and data) is answered instead of registering another."""
    if not task_run():
        return None
    client = _client()  # the request settings and quiet loggers too, before MLflow's fluent call
    from mlflow import register_model as register

    tags = {name: str(value) for name, value in tags.items()}
    if any("'" in value for value in tags.values()):
        raise ValueError(f"a registered model's tag holds a quote: {tags}")
    same_tags = "".join(f" and tags.{name} = '{value}'" for name, value in tags.items())
    registered = client.search_model_versions(f"name = '{REGISTERED_MODEL}'{same_tags}")
    if registered:
        return str(min(int(version.version) for version in registered))
    # The version is answered at once; a registry that copies models in finishes that on its own.
    return str(register(model_uri, REGISTERED_MODEL, await_registration_for=0, tags=tags).version)


def parent_run() -> str | None:
    """The pipeline run's MLflow run: the parent of the task's run."""
    return _parent_run(task_run()) if task_run() else None


@_guarded
def _parent_run(run_id: str) -> str | None:
    return _client().get_run(run_id).data.tags.get("mlflow.parentRunId")


# The backend's side: what KFP's API server, driver and launcher do, for the local runner (and runs of bench/).


def local_store(folder: str | Path) -> tuple[str, str]:
    """The tracking URI and artifact location of a local run in `folder` (runs/, say): MLFLOW_TRACKING_URI when set
    (a team's server, which keeps the artifacts), or the embedded SQLite store in `folder`."""
    folder = Path(folder).resolve()
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], ""
    return f"sqlite:///{folder / STORE_FILE}", (folder / ARTIFACTS_FOLDER).as_uri()


@_guarded
def start_run(
    tracking_uri: str,
    run_name: str,
    params: dict | None = None,
    tags: dict | None = None,
    parent: dict | None = None,
    artifact_location: str = "",
    experiment: str = EXPERIMENT,
) -> dict | None:
    """Start an MLflow run in `experiment` (made, its artifacts in `artifact_location`, if new), nested in the run
    `parent` (a result of this function) if given, with `params` and `tags`. Returns {"tracking_uri", "experiment_id",
    "run_id"}, the MLflow variables a task gets (`task_variables`); None if MLflow failed (one warning line)."""
    client = _client(tracking_uri)
    if parent:
        experiment_id = parent["experiment_id"]
    elif found := client.get_experiment_by_name(experiment):
        experiment_id = found.experiment_id
    else:
        experiment_id = client.create_experiment(experiment, artifact_location=artifact_location or None)
    tags = {**(tags or {}), **({"mlflow.parentRunId": parent["run_id"]} if parent else {})}
    run = client.create_run(experiment_id, run_name=run_name, tags={name: str(value) for name, value in tags.items()})
    if params:
        from mlflow.entities import Param

        client.log_batch(run.info.run_id, params=[Param(name, str(value)) for name, value in params.items()])
    return {"tracking_uri": tracking_uri, "experiment_id": experiment_id, "run_id": run.info.run_id}


@_guarded
def resume_run(run: dict) -> dict | None:
    """Mark the finished or interrupted `run` (a result of `start_run`) running again; `run`, None if MLflow failed."""
    _client(run["tracking_uri"]).update_run(run["run_id"], status="RUNNING")
    return run


@_guarded
def end_run(run: dict, status: str = "FINISHED", params: dict | None = None, metrics: dict | None = None) -> None:
    """End `run` (a result of `start_run`) with `status` (FINISHED, FAILED or KILLED), logging `params` JSON-encoded
    and `metrics` first, as KFP's launcher does with a task's input parameters and scalar metrics; its runs still
    open (a task stopped with the run) end with it, as KFP ends them."""
    from mlflow.entities import Metric, Param

    client = _client(run["tracking_uri"])
    if params or metrics:
        now = int(time.time() * 1000)
        client.log_batch(
            run["run_id"],
            params=[Param(name, json.dumps(value)) for name, value in (params or {}).items()],
            metrics=[Metric(name, float(value), now, 0) for name, value in (metrics or {}).items()],
        )
    client.set_terminated(run["run_id"], status=status)
    for child in client.search_runs(
        [run["experiment_id"]], f"tags.mlflow.parentRunId = '{run['run_id']}' and attributes.status = 'RUNNING'"
    ):
        client.set_terminated(child.info.run_id, status=status)


@_guarded
def registered_version(run: dict) -> str | None:
    """The version of REGISTERED_MODEL that the pipeline run `run` (a result of `start_run`) registered, if any."""
    versions = _client(run["tracking_uri"]).search_model_versions(
        f"name = '{REGISTERED_MODEL}' and tags.pipeline_run_id = '{run['run_id']}'"
    )
    return str(versions[0].version) if versions else None


def task_variables(run: dict) -> dict[str, str]:
    """The environment KFP's backend gives a task whose nested run is `run` (a result of `start_run`)."""
    variables = {
        "MLFLOW_TRACKING_URI": run["tracking_uri"],
        "MLFLOW_EXPERIMENT_ID": run["experiment_id"],
        "MLFLOW_RUN_ID": run["run_id"],
    }
    if os.environ.get("MLFLOW_WORKSPACE"):
        variables["MLFLOW_WORKSPACE"] = os.environ["MLFLOW_WORKSPACE"]
    return variables


def log_finished_run(
    experiment: str,
    run_name: str,
    params: dict,
    metrics: dict,
    tags: dict | None = None,
    tracking_uri: str | None = None,
) -> str | None:
    """Record a finished run (a benchmark's, say) in `experiment` at `tracking_uri` (default MLFLOW_TRACKING_URI):
    its `params`, `metrics` (name -> number) and `tags`. Returns its run id; None if MLflow failed."""
    run = start_run(tracking_uri or os.environ["MLFLOW_TRACKING_URI"], run_name, params, tags, experiment=experiment)
    if run is None:
        return None
    end_run(run, metrics=metrics)
    return None if _failed else run["run_id"]
