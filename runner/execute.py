"""The process that runs the pipeline with kfp.local for `pipeline.py run`: runner/local.py starts it in a session
of its own, reads what it prints, and ends it (and every step with it) at a refusal or on Ctrl-C.

    python -m runner.execute SETTINGS_JSON

SETTINGS_JSON holds `execute`'s arguments. This process is the run's alone, so it sets kfp.local's logging and
warnings up as the run needs them, and nothing of that reaches the command that started it.
"""

import json
import logging
import sys
import warnings
from pathlib import Path

from kfp import local

import pipeline
from runner.docker import docker_runner


def execute(
    pipeline_root: str,
    arguments: dict,
    outputs_json: str,
    docker_image: str | None = None,
    gpus: str | None = None,
    label: str = "",
) -> None:
    """Run the pipeline with `arguments` through kfp.local, its root `pipeline_root`, caching finished steps there;
    write where its outputs are (name -> path) to `outputs_json`. Each step runs in a subprocess of this Python, or
    with `docker_image`, in a container of it (labelled `label`, with `gpus` GPUs)."""
    runner = docker_runner(gpus, label) if docker_image else local.SubprocessRunner(use_venv=False)
    local.init(runner=runner, pipeline_root=pipeline_root, raise_on_error=True, enable_caching=True)
    run = pipeline.build_pipeline(docker_image or pipeline.DEFAULT_IMAGE)(**arguments)
    outputs = {name: run.outputs[name].path for name in pipeline.PipelineOutputs._fields}
    Path(outputs_json).write_text(json.dumps(outputs))


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
