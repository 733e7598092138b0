"""The process that runs the pipeline with kfp.local for `pipeline.py run`: runner/local.py starts it in a session
of its own, reads what it prints, and ends it (and every step with it) at a refusal or on Ctrl-C.

    python -m runner.execute SETTINGS_JSON

SETTINGS_JSON holds `execute`'s arguments. This process is the run's alone, so it sets kfp.local's logging and
warnings up as the run needs them, and wraps kfp.local's task execution to track each task in MLflow as KFP's
backend does; nothing of that reaches the command that started it.
"""

import contextlib
import json
import logging
import sys
import warnings
from pathlib import Path

from kfp import dsl, local
from kfp.local import status, task_dispatcher

import pipeline
from components import tracking
from runner.docker import docker_runner


def execute(
    pipeline_root: str,
    arguments: dict,
    outputs_json: str,
    docker_image: str | None = None,
    gpus: str | None = None,
    label: str = "",
    mlflow_run: dict | None = None,
) -> None:
    """Run the pipeline with `arguments` through kfp.local, its root `pipeline_root`, caching finished steps there;
    write where its outputs are (name -> path) to `outputs_json`. Each step runs in a subprocess of this Python, or
    with `docker_image`, in a container of it (labelled `label`, with `gpus` GPUs). With `mlflow_run` (the pipeline
    run's MLflow run, from components.tracking.start_run), each task gets a nested run of its own."""
    runner = docker_runner(gpus, label) if docker_image else local.SubprocessRunner(use_venv=False)
    local.init(runner=runner, pipeline_root=pipeline_root, raise_on_error=True, enable_caching=True)
    with tracked_tasks(mlflow_run, steps_reach(mlflow_run, docker_image)) if mlflow_run else contextlib.nullcontext():
        run = pipeline.build_pipeline(docker_image or pipeline.DEFAULT_IMAGE)(**arguments)
    outputs = {name: run.outputs[name].path for name in pipeline.PipelineOutputs._fields}
    Path(outputs_json).write_text(json.dumps(outputs))


@contextlib.contextmanager
def tracked_tasks(pipeline_run: dict, hand_variables: bool = True):
    """Inside, each task kfp.local executes runs in a nested MLflow run of `pipeline_run`, as KFP 2.17's backend gives
    it one: the run is started first and (with `hand_variables`) named in the task's environment (MLFLOW_RUN_ID and
    the rest, tracking.task_variables), and ended after it, with the task's input parameters and scalar metrics, as
    KFP's launcher ends it. A cached task runs nothing, and gets no run (its first execution has one)."""
    execute_task = task_dispatcher.run_single_task_implementation

    def tracked(*, component_name, executor_spec, arguments, **settings):
        task_run = tracking.start_run(
            pipeline_run["tracking_uri"], task_name(component_name, arguments), parent=pipeline_run
        )
        if task_run and hand_variables:
            executor_spec = with_environment(executor_spec, tracking.task_variables(task_run))
        outputs, task_status = execute_task(
            component_name=component_name, executor_spec=executor_spec, arguments=arguments, **settings
        )
        if task_run:
            tracking.end_run(
                task_run,
                "FINISHED" if task_status == status.Status.SUCCESS else "FAILED",
                params={name: value for name, value in arguments.items() if not is_artifact(value)},
                metrics=scalar_metrics(outputs),
            )
        return outputs, task_status

    task_dispatcher.run_single_task_implementation = tracked  # kfp.local's executor calls it through the module
    try:
        yield
    finally:
        task_dispatcher.run_single_task_implementation = execute_task


def steps_reach(mlflow_run: dict, docker_image: str | None) -> bool:
    """Whether the steps can log into `mlflow_run`'s store: a container reaches a tracking server, not this
    machine's SQLite file (nor its 127.0.0.1)."""
    return not docker_image or mlflow_run["tracking_uri"].startswith(("http:", "https:"))


def task_name(component_name: str, arguments: dict) -> str:
    """A task's name in MLflow: its step's (`comp-train-component`: `train`), a score shard's with its rows."""
    step = component_name.removeprefix("comp-").removesuffix("-component").replace("-", "_")
    if step == "score":
        return f"score:{int(arguments['start_row'])}-{int(arguments['stop_row']) - 1}"  # as the console names it
    return step


def with_environment(executor_spec, variables: dict[str, str]):
    """A copy of a task's executor spec whose container also gets the environment `variables`."""
    spec = type(executor_spec)()
    spec.CopyFrom(executor_spec)
    for name, value in variables.items():
        spec.container.env.add(name=name, value=value)
    return spec


def is_artifact(value) -> bool:
    return isinstance(value, dsl.Artifact) or (isinstance(value, list) and any(map(is_artifact, value)))


def scalar_metrics(outputs: dict) -> dict[str, float]:
    """The scalars of a task's Metrics outputs, which KFP's launcher logs into the task's MLflow run."""
    return {
        name: value
        for output in outputs.values()
        if isinstance(output, dsl.Metrics)
        for name, value in output.metadata.items()
        if name != "display_name"
    }


def log_to_stdout() -> None:
    """kfp.local logs a cache hit and a retry outside its own logging set-up: to stdout too, with the rest."""
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s - %(levelname)s - %(message)s")


def main() -> None:
    log_to_stdout()
    # kfp.local warns that our image's name lacks "python" and that resources, retries and display names are
    # cluster-only: all moot here.
    warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
    warnings.filterwarnings("ignore", message=r".*settings \[.*\] have no effect", category=UserWarning)
    try:
        execute(**json.loads(sys.argv[1]))
    except RuntimeError as error:  # a step failed; the console has seen which, and how
        print(f"the pipeline failed: {error}")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
