"""components/tracking.py: silent without MLflow's variables, one warning line with a failing server, and a finished
run (a benchmark's) recorded in a real server. The pipeline's runs in MLflow: tests/runner/test_tracked_runs.py."""

import os
import subprocess
import sys
import time

import pytest

from components import tracking
from tests.conftest import ROOT

UNTRACKED = """
from components import tracking
tracking.log_params({"a": 1})
tracking.log_metrics({"a": 1.0}, step=3)
tracking.log_files({"init.py": __import__("components").__file__})
assert tracking.log_onnx_model("no.onnx", "model", []) is None and tracking.register_model("models:/m", {}) is None
import sys
print("mlflow" in sys.modules)
"""


def without_mlflow_variables():
    return {name: value for name, value in os.environ.items() if not name.startswith("MLFLOW_")}


def test_without_the_variables_a_step_logs_nothing_and_needs_no_mlflow():
    result = subprocess.run(
        [sys.executable, "-c", UNTRACKED], cwd=ROOT, env=without_mlflow_variables(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["False"] and result.stderr == ""


@pytest.mark.parametrize("failure", ["500", "unreachable"])
def test_a_step_whose_tracking_server_fails_succeeds_with_one_warning_line(
    failure, failing_tracking_servers, served_model, arrays, tmp_path
):
    variables = {
        "MLFLOW_TRACKING_URI": failing_tracking_servers[failure],
        "MLFLOW_EXPERIMENT_ID": "1",
        "MLFLOW_RUN_ID": "0123456789abcdef0123456789abcdef",
    }
    started = time.monotonic()
    result = subprocess.run(
        [
            *(sys.executable, "-m", "components.evaluate", "--onnx-model", str(served_model)),
            *("--int8-model", str(served_model), "--validation-data", str(arrays["validation"])),
            *("--metrics", str(tmp_path / "metrics.json"), "--confusion-matrix", str(tmp_path / "matrix.png")),
        ],
        cwd=ROOT,
        env={**without_mlflow_variables(), **variables},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "metrics.json").is_file() and "validation accuracy" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if "MLflow" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: MLflow tracking is off"), result.stderr[-3000:]
    # MLflow's own defaults (7 retries with backoff, 120 s a request) would have held the step for minutes.
    assert time.monotonic() - started < 120


def test_a_finished_run_is_recorded_and_compared_in_a_team_server(mlflow_server, monkeypatch):
    import mlflow

    experiment = "digit-recognizer-recipes-test"
    for seed, accuracy in ((42, 0.9946), (43, 0.9950)):
        run_id = tracking.log_finished_run(
            experiment,
            f"deotte seed {seed}",
            params={"recipe": "deotte", "seed": seed},
            metrics={"leaderboard_accuracy": accuracy, "training_minutes": 6.5},
            tags={"source": "bench/recipes.py"},
            tracking_uri=mlflow_server,
        )
        assert run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # not mlflow.set_tracking_uri: later runs would inherit it
    runs = mlflow.search_runs(experiment_names=[experiment], order_by=["metrics.leaderboard_accuracy DESC"])
    assert runs["params.seed"].tolist() == ["43", "42"]
    assert runs["metrics.leaderboard_accuracy"].tolist() == [0.9950, 0.9946]
    assert set(runs["status"]) == {"FINISHED"} and set(runs["tags.source"]) == {"bench/recipes.py"}


def test_a_retried_register_step_answers_the_version_it_registered(mlflow_server, served_model, monkeypatch):
    """KFP retries a failed task: a register step that had registered before failing must not add a version."""
    import uuid

    import numpy as np
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    experiment_id = client.create_experiment(f"register-{uuid.uuid4().hex}")
    run_id = client.create_run(experiment_id).info.run_id
    for name, value in (("MLFLOW_TRACKING_URI", mlflow_server), ("MLFLOW_EXPERIMENT_ID", experiment_id)):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    monkeypatch.setattr(tracking, "_failed", False)
    model_uri = tracking.log_onnx_model(served_model, "model", np.zeros((2, 28, 28, 1), np.uint8))
    tags = {"pipeline_run_id": uuid.uuid4().hex, "validation_accuracy": 0.995, "onnx_sha256": "ab12"}
    first = tracking.register_model(model_uri, tags)
    assert first and tracking.register_model(model_uri, tags) == first  # the retry
    another_run = tracking.register_model(model_uri, {**tags, "pipeline_run_id": uuid.uuid4().hex})
    assert another_run == str(int(first) + 1)
    assert len(client.search_model_versions(f"tags.onnx_sha256 = 'ab12' and run_id = '{run_id}'")) == 2
    assert not tracking._failed
