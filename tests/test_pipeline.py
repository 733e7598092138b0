import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml

import pipeline
from components.cli import signature_defaults
from components.onnx_model import load_session, predict
from components.preprocess import as_images
from components.kaggle_csv import read_csv
from components.train import load_model, train
from tests.conftest import run_module

STEPS = ["preprocess", "train", "export", "evaluate", "score"]


def test_compiled_yaml_wires_five_steps_in_our_image(tmp_path):
    spec = yaml.safe_load(pipeline.compile_pipeline(tmp_path / "p.yaml", pipeline.train_image("registry.example/team/", "v3")).read_text())
    executors = spec["deploymentSpec"]["executors"]
    containers = {name: executor["container"] for name, executor in executors.items() if "container" in executor}
    assert sorted(containers) == sorted(f"exec-{step}-component" for step in STEPS)
    assert {container["image"] for container in containers.values()} == {"registry.example/team/digit-recognizer-train:v3"}
    assert sum("importer" in executor for executor in executors.values()) == 2
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["train-component"]["dependentTasks"] == ["preprocess-component"]
    assert sorted(tasks["score-component"]["dependentTasks"]) == ["export-component", "importer-2"]


def test_compile_command_names_the_image(tmp_path):
    result = run_module("pipeline.py", "compile", "--output", str(tmp_path / "p.yaml"), "--image-prefix", "ghcr.io/me/", "--tag", "v1")
    assert result.returncode == 0, result.stderr
    assert "image: ghcr.io/me/digit-recognizer-train:v1" in (tmp_path / "p.yaml").read_text()


def test_pipeline_defaults_are_the_functions_defaults(tmp_path):
    spec = yaml.safe_load(pipeline.compile_pipeline(tmp_path / "p.yaml").read_text())
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    train_defaults = signature_defaults(train)
    for name in ("epochs", "batch_size", "learning_rate", "weight_decay", "label_smoothing", "augment", "patience"):
        assert parameters[name]["defaultValue"] == train_defaults[name], name
    assert parameters["seed"]["defaultValue"] == train_defaults["seed"]
    assert "defaultValue" not in parameters["train_csv"]  # the data is always named by the user


def test_param_parsing_types_and_errors():
    assert pipeline.parse_params(["epochs=3", "learning_rate=0.01", "augment=false"]) == {
        "epochs": 3, "learning_rate": 0.01, "augment": False}
    with pytest.raises(SystemExit, match="no such pipeline parameter"):
        pipeline.parse_params(["epoch=3"])
    with pytest.raises(SystemExit, match="expected int"):
        pipeline.parse_params(["epochs=three"])
    with pytest.raises(SystemExit, match="expected NAME=VALUE"):
        pipeline.parse_params(["epochs"])


def test_latest_link_points_at_the_newest_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("20260101-000000", "20260102-000000"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        pipeline.point_latest_at(tmp_path / "runs" / name)
        assert os.readlink(tmp_path / "runs" / "latest") == name
    pipeline.point_latest_at(tmp_path / "elsewhere")  # outside runs/: latest is left alone
    assert os.readlink(tmp_path / "runs" / "latest") == "20260102-000000"


def test_run_end_to_end_through_kfp_local(tmp_path, fixture_data):
    out = tmp_path / "run"
    result = run_module("pipeline.py", "run", "--data", str(fixture_data), "--out", str(out), "--profile", "quick")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(pipeline.RUN_FILES.values())
    submission = pd.read_csv(out / "submission.csv")
    assert (out / "submission.csv").read_text().startswith("ImageId,Label\n")
    assert submission["ImageId"].tolist() == list(range(1, 61))
    assert submission["Label"].between(0, 9).all()
    _, pixels = read_csv(fixture_data / "test.csv", labelled=False)
    images = as_images(pixels)
    keras_probabilities = load_model(out).predict(images.astype(np.float32), verbose=0)
    onnx_probabilities, labels = predict(load_session(out / "model.onnx"), images)
    assert np.abs(keras_probabilities - onnx_probabilities).max() < 1e-4
    np.testing.assert_array_equal(labels, submission["Label"])
    assert "Executing task" in result.stderr + result.stdout  # progress is shown step by step


@pytest.mark.parametrize("row, value, message", [
    (2, "256", "row 2 (line 3), column 'pixel9': pixel value 256 is outside 0-255"),
    (5, "abc", "row 5 (line 6), column 'pixel9': 'abc' is not an integer"),
])
def test_bad_input_reaches_the_user_as_one_line(tmp_path, fixture_data, row, value, message):
    data = tmp_path / "data"
    data.mkdir()
    lines = (fixture_data / "train.csv").read_text().splitlines()
    fields = lines[row].split(",")
    fields[10] = value
    lines[row] = ",".join(fields)
    (data / "train.csv").write_text("\n".join(lines) + "\n")
    (data / "test.csv").write_bytes((fixture_data / "test.csv").read_bytes())
    result = run_module("pipeline.py", "run", "--data", str(data), "--out", str(tmp_path / "out"), "--profile", "quick")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == f"error: {data / 'train.csv'}: {message}"
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_data_says_how_to_get_it(tmp_path):
    result = run_module("pipeline.py", "run", "--data", str(tmp_path), "--profile", "quick")
    assert result.returncode != 0
    assert "train.csv not found" in result.stderr
    assert "kaggle competitions download -c digit-recognizer" in result.stderr


def test_cluster_settings_resources_gpu_retries_caching(tmp_path):
    spec = yaml.safe_load(pipeline.compile_pipeline(tmp_path / "p.yaml").read_text())
    executors = spec["deploymentSpec"]["executors"]
    tasks = spec["root"]["dag"]["tasks"]
    for step in STEPS:
        resources = executors[f"exec-{step}-component"]["container"]["resources"]
        assert {"cpuRequest", "cpuLimit", "memoryRequest", "memoryLimit"} <= set(resources), step
        task = tasks[f"{step}-component"]
        assert task["retryPolicy"]["maxRetryCount"] == 2
        assert task["cachingOptions"].get("enableCache", False) is (step != "train"), step
        assert task["taskInfo"]["name"] == step
    accelerator = executors["exec-train-component"]["container"]["resources"]["accelerator"]
    assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "1"
    assert all("accelerator" not in executors[f"exec-{step}-component"]["container"]["resources"]
               for step in STEPS if step != "train")
    score_outputs = spec["components"]["comp-score-component"]["outputDefinitions"]["artifacts"]
    assert score_outputs["scoring_metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    cpu_only = yaml.safe_load(pipeline.compile_pipeline(tmp_path / "cpu.yaml", accelerator=None).read_text())
    assert "accelerator" not in cpu_only["deploymentSpec"]["executors"]["exec-train-component"]["container"]["resources"]


def test_compile_command_chooses_the_accelerator(tmp_path):
    for flags, expected in ((["--accelerator", "amd.com/gpu"], "resourceType: amd.com/gpu"), (["--no-gpu"], None)):
        result = run_module("pipeline.py", "compile", "--output", str(tmp_path / "p.yaml"), *flags)
        assert result.returncode == 0, result.stderr
        text = (tmp_path / "p.yaml").read_text()
        assert (expected in text) if expected else ("accelerator" not in text)


@pytest.fixture
def kfp_api():
    from tests.kfp_api_stand_in import StandInKfpApi
    from tests.serving.test_main import free_port

    def start(**settings):
        api = StandInKfpApi(**settings)
        port = free_port()
        stoppers.append(api.serve(port))
        return api, f"http://127.0.0.1:{port}"

    stoppers = []
    yield start
    for stop in stoppers:
        stop()


def test_submit_sends_the_compiled_pipeline_and_follows_the_run(kfp_api, capsys):
    api, host = kfp_api(run_states=["RUNNING", "RUNNING", "SUCCEEDED"])
    status = pipeline.submit(host, "gs://bucket/train.csv", "gs://bucket/test.csv", experiment="mnist",
                             run_name="nightly", params=["epochs=3"], wait=True, token="secret-token", poll_seconds=0.01)
    assert status == 0
    posts = {path: body for method, path, _, body, _ in api.requests if method == "POST"}
    experiment = json.loads(posts["/apis/v2beta1/experiments"])
    assert experiment["display_name"] == "mnist"
    run = json.loads(posts["/apis/v2beta1/runs"])
    assert run["display_name"] == "nightly"
    assert run["experiment_id"] == next(iter(api.experiments))
    assert run["runtime_config"]["parameters"] == {
        "train_csv": "gs://bucket/train.csv", "test_csv": "gs://bucket/test.csv", "epochs": 3}
    assert run["pipeline_spec"]["pipelineInfo"]["name"] == "digit-recognizer"
    assert {task for task in run["pipeline_spec"]["root"]["dag"]["tasks"]} >= {f"{step}-component" for step in STEPS}
    assert all(headers.get("authorization") == "Bearer secret-token" for _, _, _, _, headers in api.requests)
    output = capsys.readouterr().out
    run_id = next(iter(api.runs))
    assert f"run {run_id} started: {host}/#/runs/details/{run_id}" in output
    assert f"run {run_id} finished: SUCCEEDED" in output


def test_submit_exit_status_follows_a_failed_run(kfp_api):
    _, host = kfp_api(run_states=["RUNNING", "FAILED"])
    assert pipeline.submit(host, "gs://b/train.csv", "gs://b/test.csv", wait=True, poll_seconds=0.01) == 1


def test_submit_reports_an_api_error_as_one_line(kfp_api, tmp_path):
    _, host = kfp_api(reject_runs_with="epochs")
    result = run_module("pipeline.py", "submit", "--host", host, "--train-csv", "gs://b/train.csv",
                        "--test-csv", "gs://b/test.csv", "--param", "epochs=2")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: the Kubeflow Pipelines API at {host} answered 400: unknown parameter epochs")
    assert "Traceback" not in result.stderr


def test_submit_to_nowhere_says_so():
    from tests.serving.test_main import free_port

    host = f"http://127.0.0.1:{free_port()}"
    result = run_module("pipeline.py", "submit", "--host", host, "--train-csv", "gs://b/train.csv", "--test-csv", "gs://b/test.csv")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: cannot reach Kubeflow Pipelines at {host}")
