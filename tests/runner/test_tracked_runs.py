"""`pipeline.py run` tracked in MLflow as Kubeflow Pipelines 2.17's backend tracks a run: a parent run, a nested run
per step and per score shard, the steps' own figures and files, the registered model; in a team's server, in the
embedded store beside the run folder, and with a server that fails."""

import json
import os
import re

import numpy as np
import pandas as pd
import pytest

from common.onnx_model import load_session, model_digest
from components.kaggle_csv import read_csv
from components.preprocess import as_images
from tests.conftest import ROOT
from tests.runner.conftest import SMALL_RUN

EXPECTED_RUNS = {"preprocess", "train", "export", "evaluate", "shard_plan", "join", "register", "report"}
EXPECTED_SHARDS = {"score:0-19", "score:20-39", "score:40-59"}  # the fixture's 60 test rows in 3 shards


def pipeline_run(out, environment):
    """`pipeline.py run` of the small run on the fixture into `out`, MLflow's variables only those of `environment`."""
    import subprocess
    import sys

    env = {name: value for name, value in os.environ.items() if not name.startswith("MLFLOW_")}
    env.update(environment)
    data = ROOT / "tests" / "fixtures" / "digit-recognizer"
    return subprocess.run(
        [sys.executable, "pipeline.py", "run", "--data", str(data), "--out", str(out), *SMALL_RUN],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )


@pytest.fixture(scope="module")
def team_server_run(mlflow_server, tmp_path_factory):
    """The small run tracked in a real MLflow server, named by MLFLOW_TRACKING_URI as a user names a team's."""
    out = tmp_path_factory.mktemp("runs") / "tracked"
    result = pipeline_run(out, {"MLFLOW_TRACKING_URI": mlflow_server})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def check_tracked_run(tracking_uri, out):
    """What a tracked run holds in MLflow; returns the client and the registered version."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    record = json.loads((out / "run.json").read_text())
    assert record["mlflow"]["tracking_uri"] == tracking_uri
    (parent,) = client.search_runs([record["mlflow"]["experiment_id"]], f"attributes.run_name = '{out.name}'")
    assert parent.info.run_id == record["mlflow"]["run_id"] and parent.info.status == "FINISHED"
    assert client.get_experiment(parent.info.experiment_id).name == "digit-recognizer"
    assert parent.data.params == {name: str(value) for name, value in record["parameters"].items()}
    assert parent.data.tags["train_csv_sha256"] == record["data"]["sha256"]["train.csv"]
    assert parent.data.tags["mlflow.source.git.commit"] == record["code"]["commit"]
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    nested = {run.info.run_name: run for run in reversed(runs)}  # the newest of each name (newest first in `runs`)
    assert set(nested) == EXPECTED_RUNS | EXPECTED_SHARDS
    assert {run.info.status for run in nested.values()} == {"FINISHED"}
    # As KFP's launcher logs them: the task's input parameters, JSON-encoded, and its Metrics' scalars.
    train = nested["train"]
    assert train.data.params["epochs"] == "6" and train.data.params["network"] == '"deotte"'
    assert train.data.params["precision_policy"] in ("float32", "mixed_bfloat16")  # train's own
    assert sum(nested[shard].data.metrics["rows"] for shard in EXPECTED_SHARDS) == 60
    metrics = json.loads((out / "metrics.json").read_text())
    assert nested["evaluate"].data.metrics["accuracy"] == pytest.approx(metrics["accuracy"])
    assert nested["evaluate"].data.metrics["f1_3"] == pytest.approx(metrics["per_class"]["3"]["f1"])
    # Train's per-epoch figures, at step = epoch (each epoch once, over a resumed run's two train runs).
    history = json.loads((out / "history.json").read_text())["members"][0]
    trains = [run.info.run_id for run in runs if run.info.run_name == "train"]
    for name in ("loss", "val_accuracy", "learning_rate", "images_per_second"):
        points = sorted(
            (point.step, point.value) for run_id in trains for point in client.get_metric_history(run_id, name)
        )
        assert [step for step, _ in points] == list(range(len(history[name]))), name
        assert [value for _, value in points] == pytest.approx(history[name]), name

    def files(step):
        return {item.path for item in client.list_artifacts(nested[step].info.run_id)}

    assert "training_curves.png" in files("train")
    assert {"metrics.json", "confusion_matrix.png"} <= files("evaluate")
    assert "report.html" in files("report")
    models = client.search_logged_models([parent.info.experiment_id])  # the experiment's: other runs' too
    assert sorted(model.name for model in models if model.source_run_id == nested["export"].info.run_id) == [
        "model",
        "model-int8",
    ]
    # The accepted model's registered version: its run, accuracy, data and identity; run.json and the report name it.
    (version,) = client.search_model_versions(
        f"name = 'digit-recognizer' and tags.pipeline_run_id = '{parent.info.run_id}'"
    )
    assert version.tags["validation_accuracy"] == str(metrics["accuracy"])
    assert version.tags["test_csv_sha256"] == record["data"]["sha256"]["test.csv"]
    assert version.tags["onnx_sha256"] == model_digest(load_session(out / "model.onnx"))
    assert record["registered_model"] == {"name": "digit-recognizer", "version": str(version.version)}
    assert re.search(rf"digit-recognizer version {version.version}\b", (out / "report.html").read_text())
    return client, version


def test_a_team_server_receives_the_run_as_kfp_tracks_it(mlflow_server, team_server_run, fixture_data, monkeypatch):
    import mlflow

    _, version = check_tracked_run(mlflow_server, team_server_run)
    # The registered model, loaded back through MLflow (pyfunc, onnx flavour), labels test.csv as the submission.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # not mlflow.set_tracking_uri: later runs would inherit it
    model = mlflow.pyfunc.load_model(f"models:/digit-recognizer/{version.version}")
    _, pixels = read_csv(fixture_data / "test.csv", labelled=False)
    predicted = model.predict(as_images(pixels).astype(np.float32))
    assert predicted["label"].tolist() == pd.read_csv(team_server_run / "submission.csv")["Label"].tolist()


def test_a_run_with_no_mlflow_variable_tracks_beside_its_folder(uninterrupted_run):
    out, result = uninterrupted_run
    store = out.parent / "mlflow.db"
    assert store.is_file() and "MLflow" not in result.stdout + result.stderr  # nothing to say
    check_tracked_run(f"sqlite:///{store.resolve()}", out)


def test_a_failing_tracking_server_costs_the_run_one_warning_line(failing_tracking_servers, tmp_path):
    out = tmp_path / "untracked"
    result = pipeline_run(out, {"MLFLOW_TRACKING_URI": failing_tracking_servers["500"]})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: MLflow tracking is off"), warnings
    assert re.search(r"register done in \d+ s: not registered: no tracking", result.stdout)
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "succeeded" and record["mlflow"] is None and "registered_model" not in record
    assert (out / "submission.csv").is_file()


def test_a_resumed_run_goes_on_in_its_mlflow_run_and_compares_with_another(uninterrupted_run, monkeypatch):
    import signal
    import subprocess
    import sys

    import mlflow

    out = uninterrupted_run[0].parent / "resumed"  # the same store as the uninterrupted run's
    data = ROOT / "tests" / "fixtures" / "digit-recognizer"
    env = {name: value for name, value in os.environ.items() if not name.startswith("MLFLOW_")}
    process = subprocess.Popen(
        [sys.executable, "pipeline.py", "run", "--data", str(data), "--out", str(out), *SMALL_RUN],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in process.stdout:  # until training has finished two epochs (or the run ended)
        if line.strip().startswith("epoch 2/6"):
            break
    process.send_signal(signal.SIGINT)
    process.stdout.read()
    assert process.wait(timeout=60) == 130
    resumed = subprocess.run(
        [sys.executable, "pipeline.py", "run", "--resume", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    store = f"sqlite:///{(out.parent / 'mlflow.db').resolve()}"
    client, _ = check_tracked_run(store, out)
    record = json.loads((out / "run.json").read_text())
    trains = client.search_runs(
        [record["mlflow"]["experiment_id"]],
        f"tags.mlflow.parentRunId = '{record['mlflow']['run_id']}' and attributes.run_name = 'train'",
    )
    assert sorted(run.info.status for run in trains) == ["FINISHED", "KILLED"]  # the interrupted attempt's, and this
    # one's, which logged the epochs after the interrupted one's (check_tracked_run: each epoch once).
    # Two runs side by side, as a team compares them: the same settings, and the same model in the registry.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    runs = mlflow.search_runs(
        experiment_names=["digit-recognizer"],
        filter_string="tags.profile = 'quick'",  # the pipeline runs' own
    )
    assert sorted(runs["tags.mlflow.runName"]) == ["resumed", "uninterrupted"]
    assert set(runs["params.epochs"]) == {"6"} and set(runs["status"]) == {"FINISHED"}
    versions = client.search_model_versions("name = 'digit-recognizer'")
    assert len({version.tags["onnx_sha256"] for version in versions}) == 1  # the resumed run's model is bit-identical
