"""runner/cli.py: light commands stay light. (Each command's own behaviour: tests/test_pipeline.py for compile,
test_submit.py and test_local.py here.)"""

import json
import subprocess
import sys

import yaml

from tests.conftest import ROOT

# `python pipeline.py ...` where none of the steps' heavy packages, nor the step modules, can be imported, as on a
# machine with only kfp and kfp-kubernetes installed.
WITHOUT_THE_STEPS_PACKAGES = """
import importlib.abc
import runpy
import sys

HEAVY = {"tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "pandas", "numpy"}
# The deploy step's name check (`--deploy`) and what it reads; its Kubernetes client comes with kfp.
LIGHT_COMPONENTS = {"components", "components.kfp_components", "components.deploy", "components.artifacts",
                    "components.cli", "components.progress"}


class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HEAVY or (name.startswith("components.") and name not in LIGHT_COMPONENTS):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: compile and submit need only kfp)")
        return None


sys.meta_path.insert(0, NotInstalled())
sys.argv = ["pipeline.py", *sys.argv[1:]]
runpy.run_path("pipeline.py", run_name="__main__")
"""


def light(*arguments):
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_THE_STEPS_PACKAGES, *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_blocker_blocks(tmp_path, fixture_data):
    result = light(
        "run", "--data", str(fixture_data), "--out", str(tmp_path / "run")
    )  # `run` needs the steps' packages
    assert result.returncode != 0 and "(blocked: compile and submit need only kfp)" in result.stderr
    assert not (tmp_path / "run").exists()


def test_compile_and_submit_need_only_kfp(tmp_path, kfp_api):
    cluster = [
        "--kaggle-secret",
        "kaggle",
        "--checkpoint-pvc",
        "checkpoints",
        "--gpus",
        "2",
        "--node-selector",
        "pool=gpu",
        "--toleration",
        "nvidia.com/gpu:NoSchedule",
        "--deploy",
        "digits",
    ]
    result = light("compile", "--output", str(tmp_path / "p.yaml"), *cluster)
    assert result.returncode == 0, result.stderr
    spec, platform = yaml.safe_load_all((tmp_path / "p.yaml").read_text())
    assert "train-component" in spec["root"]["dag"]["tasks"]
    assert "exec-deploy-component" in spec["deploymentSpec"]["executors"]
    assert platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-component"]["nodeSelector"]
    api, host = kfp_api(run_states=["RUNNING", "SUCCEEDED"])
    result = light(
        "submit",
        "--host",
        host,
        "--train-csv",
        "gs://b/train.csv",
        "--test-csv",
        "gs://b/test.csv",
        "--param",
        "epochs=3",
        "--wait",
        "--poll-seconds",
        "0.01",
    )
    assert result.returncode == 0, result.stderr
    run = json.loads(
        next(body for method, path, _, body, _ in api.requests if method == "POST" and path == "/apis/v2beta1/runs")
    )
    assert run["runtime_config"]["parameters"]["epochs"] == 3
    assert result.stdout.strip().splitlines()[-1] == f"run {next(iter(api.runs))} finished: SUCCEEDED"


def test_resume_goes_on_in_the_runs_own_folder(tmp_path):
    result = light("run", "--resume", str(tmp_path), "--out", str(tmp_path / "elsewhere"))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == "error: --resume continues in the run's own folder: give no --out"
