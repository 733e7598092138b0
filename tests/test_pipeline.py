import json
import os
import re

import numpy as np
import pandas as pd
import pytest
import yaml

import pipeline
from components.cli import signature_defaults
from components.kaggle_csv import read_csv
from components.onnx_model import load_session, predict
from components.preprocess import as_images
from components.train import load_models, train
from tests.conftest import ROOT, run_module

STEPS = ["preprocess", "train", "export", "evaluate", "reject", "shard_plan", "score", "join", "report"]


def all_tasks(spec):
    """Every task of the compiled pipeline, sub-DAGs (condition branches, loops) included: name -> (dag, task)."""
    dags = {"root": spec["root"]["dag"], **{name: component["dag"] for name, component in spec["components"].items()
                                            if "dag" in component}}
    return {task_name: (dag_name, task) for dag_name, dag in dags.items() for task_name, task in dag["tasks"].items()}


def test_compiled_yaml_wires_the_steps_in_our_image(tmp_path):
    spec = yaml.safe_load(pipeline.compile_pipeline(tmp_path / "p.yaml", pipeline.train_image("registry.example/team/", "v3")).read_text())
    executors = spec["deploymentSpec"]["executors"]
    containers = {name: executor["container"] for name, executor in executors.items() if "container" in executor}
    assert sorted(containers) == sorted(f"exec-{step.replace('_', '-')}-component" for step in STEPS)
    assert {container["image"] for container in containers.values()} == {"registry.example/team/digit-recognizer-train:v3"}
    assert sum("importer" in executor for executor in executors.values()) == 2
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["train-component"]["dependentTasks"] == ["preprocess-component"]
    assert sorted(tasks["evaluate-component"]["dependentTasks"]) == ["export-component", "preprocess-component"]


def test_the_gate_and_the_scoring_fan_out(tmp_path):
    spec = yaml.safe_load(pipeline.compile_pipeline(tmp_path / "p.yaml").read_text())
    tasks = all_tasks(spec)
    gate = spec["root"]["dag"]["tasks"]["condition-branches-1"]
    assert "evaluate-component" in gate["dependentTasks"]
    branches = spec["components"]["comp-condition-branches-1"]["dag"]["tasks"]
    conditions = {name: task["triggerPolicy"]["condition"] for name, task in branches.items()}
    accurate = "inputs.parameter_values['pipelinechannel--evaluate-component-Output'] >= " \
               "inputs.parameter_values['pipelinechannel--accuracy_threshold']"
    assert conditions["condition-3"] == accurate
    assert conditions["condition-4"] == f"!({accurate})"
    # Scoring, joining and the report happen only for an accurate model; the other branch refuses.
    assert tasks["shard-plan-component"][0] == tasks["join-component"][0] == tasks["report-component"][0] == "comp-condition-3"
    assert tasks["reject-component"][0] == "comp-condition-4"
    loop_dag, loop = tasks["for-loop-2"]
    assert loop_dag == "comp-condition-3"
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--shard-plan-component-Output"
    assert tasks["score-component"][0] == "comp-for-loop-2"
    score_inputs = tasks["score-component"][1]["inputs"]["parameters"]
    assert score_inputs["start_row"]["parameterExpressionSelector"] == 'parseJson(string_value)["start_row"]'
    assert score_inputs["stop_row"]["parameterExpressionSelector"] == 'parseJson(string_value)["stop_row"]'
    join_input = tasks["join-component"][1]["inputs"]["artifacts"]["shard_submissions"]["taskOutputArtifact"]
    assert join_input == {"outputArtifactKey": "pipelinechannel--score-component-submission", "producerTask": "for-loop-2"}
    report_outputs = spec["components"]["comp-report-component"]["outputDefinitions"]["artifacts"]
    assert report_outputs["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    evaluate_outputs = spec["components"]["comp-evaluate-component"]["outputDefinitions"]
    assert evaluate_outputs["parameters"]["Output"]["parameterType"] == "NUMBER_DOUBLE"
    assert evaluate_outputs["artifacts"]["classification_metrics"]["artifactType"]["schemaTitle"] == "system.ClassificationMetrics"


def test_kaggle_download_as_first_step_with_a_secret(tmp_path):
    # With platform settings the YAML holds two documents: the pipeline, then its Kubernetes settings.
    spec, platform = yaml.safe_load_all(pipeline.compile_pipeline(tmp_path / "p.yaml", kaggle_secret="kaggle-credentials").read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert "importer" not in tasks and "download-component" in tasks
    assert tasks["preprocess-component"]["dependentTasks"] == ["download-component"]
    assert tasks["download-component"]["cachingOptions"] == {}  # a fresh download each run
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-download-component"]
    (secret,) = kubernetes["secretAsEnv"]
    assert secret["secretName"] == "kaggle-credentials"
    assert {pair["secretKey"]: pair["envVar"] for pair in secret["keyToEnv"]} == {"username": "KAGGLE_USERNAME", "key": "KAGGLE_KEY"}
    result = run_module("pipeline.py", "compile", "--output", str(tmp_path / "k.yaml"), "--kaggle-secret", "my-kaggle")
    assert result.returncode == 0, result.stderr
    assert "secretName: my-kaggle" in (tmp_path / "k.yaml").read_text()


def test_compile_command_names_the_image(tmp_path):
    result = run_module("pipeline.py", "compile", "--output", str(tmp_path / "p.yaml"), "--image-prefix", "ghcr.io/me/", "--tag", "v1")
    assert result.returncode == 0, result.stderr
    assert "image: ghcr.io/me/digit-recognizer-train:v1" in (tmp_path / "p.yaml").read_text()


def test_pipeline_defaults_are_the_functions_defaults(tmp_path):
    spec = yaml.safe_load(pipeline.compile_pipeline(tmp_path / "p.yaml").read_text())
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    train_defaults = signature_defaults(train)
    for name in ("epochs", "batch_size", "learning_rate", "learning_rate_schedule", "weight_decay", "label_smoothing",
                 "augment", "elastic_alpha", "patience", "seed", "ensemble_size", "train_on_validation",
                 "ema_momentum", "pseudo_label_confidence", "mixed_precision"):
        assert parameters[name]["defaultValue"] == train_defaults[name], name
    assert parameters["tta"]["defaultValue"] is signature_defaults(pipeline.export)["tta"] is False
    assert parameters["pseudo_labels"]["defaultValue"] is False
    assert parameters["accuracy_threshold"]["defaultValue"] == 0.99
    assert parameters["score_shards"]["defaultValue"] == 4


def test_profiles_name_only_pipeline_parameters():
    parameters = pipeline.pipeline_parameters()
    for profile, settings in pipeline.PROFILES.items():
        assert set(settings) <= set(parameters), profile
    assert pipeline.PROFILES["best"]["ensemble_size"] > 1


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
    # The fixture's 270 training images give a poor model: the gate is opened for it.
    result = run_module("pipeline.py", "run", "--data", str(fixture_data), "--out", str(out), "--profile", "quick",
                        "--param", "accuracy_threshold=0", "--param", "score_shards=3")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "model-0.keras", *(name for name in pipeline.RUN_FILES.values() if "*" not in name),
        *pipeline.GATED_RUN_FILES.values()])
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 3
    assert (out / "test_samples.png").read_bytes()[:4] == b"\x89PNG"
    submission = pd.read_csv(out / "submission.csv")
    assert (out / "submission.csv").read_text().startswith("ImageId,Label\n")
    assert submission["ImageId"].tolist() == list(range(1, 61))
    assert submission["Label"].between(0, 9).all()
    _, pixels = read_csv(fixture_data / "test.csv", labelled=False)
    images = as_images(pixels)
    keras_probabilities = load_models(out)[0].predict(images.astype(np.float32), verbose=0)
    onnx_probabilities, labels = predict(load_session(out / "model.onnx"), images)
    assert np.abs(keras_probabilities - onnx_probabilities).max() < 1e-4
    np.testing.assert_array_equal(labels, submission["Label"])
    assert "Executing task" in result.stderr + result.stdout  # progress is shown step by step
    assert (result.stderr + result.stdout).count("Executing task \x1b[96m'score-component'") == 3


def test_the_gate_stops_a_poor_model_before_scoring(tmp_path, fixture_data):
    result = run_module("pipeline.py", "run", "--data", str(fixture_data), "--out", str(tmp_path / "out"), "--profile", "quick")
    assert result.returncode != 0
    assert re.fullmatch(r"error: validation accuracy \d+\.\d{4}% is below accuracy_threshold 90\.0000%: "
                        r"the model is not scored or published", result.stderr.strip().splitlines()[-1])
    assert "score-component" not in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


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
    assert "python -m components.download --out" in result.stderr


def test_cluster_settings_resources_gpu_retries_caching(tmp_path):
    spec = yaml.safe_load(pipeline.compile_pipeline(tmp_path / "p.yaml").read_text())
    executors = spec["deploymentSpec"]["executors"]
    tasks = spec["root"]["dag"]["tasks"]
    tasks = {name: task for name, (_, task) in all_tasks(spec).items()}
    for step in STEPS:
        name = f"{step.replace('_', '-')}-component"
        resources = executors[f"exec-{name}"]["container"]["resources"]
        assert {"cpuRequest", "cpuLimit", "memoryRequest", "memoryLimit"} <= set(resources), step
        task = tasks[name]
        assert task.get("retryPolicy", {}).get("maxRetryCount") == (None if step == "reject" else 2), step
        assert task["cachingOptions"].get("enableCache", False) is (step not in ("train", "reject")), step
        assert task["taskInfo"]["name"] == step
    accelerator = executors["exec-train-component"]["container"]["resources"]["accelerator"]
    assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "1"
    assert all("accelerator" not in executor["container"]["resources"]
               for name, executor in executors.items() if "container" in executor and name != "exec-train-component")
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
    assert set(run["pipeline_spec"]["root"]["dag"]["tasks"]) >= {"preprocess-component", "train-component", "condition-branches-1"}
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


def test_submit_with_a_profile_and_the_kaggle_download(kfp_api):
    api, host = kfp_api()
    assert pipeline.submit(host, kaggle_secret="kaggle-credentials", profile="best") == 0
    run = json.loads(next(body for method, path, _, body, _ in api.requests if method == "POST" and path == "/apis/v2beta1/runs"))
    assert run["runtime_config"]["parameters"] == {"ensemble_size": 5}
    # With Kubernetes settings, kfp.Client sends {"pipeline_spec": ..., "platform_spec": ...} as the run's pipeline_spec.
    assert "download-component" in run["pipeline_spec"]["pipeline_spec"]["root"]["dag"]["tasks"]
    secret = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-download-component"]["secretAsEnv"]
    assert secret[0]["secretName"] == "kaggle-credentials"


def test_submit_needs_data_or_a_secret():
    result = run_module("pipeline.py", "submit", "--host", "http://127.0.0.1:9")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == "error: submit needs --train-csv and --test-csv, or --kaggle-secret to download the data"


def test_deploy_step_behind_the_gate_with_its_rbac_needs(tmp_path):
    result = run_module("pipeline.py", "compile", "--output", str(tmp_path / "p.yaml"), "--deploy", "digits",
                        "--deploy-namespace", "team", "--image-prefix", "ghcr.io/me/", "--tag", "v1")
    assert result.returncode == 0, result.stderr
    spec, platform = yaml.safe_load_all((tmp_path / "p.yaml").read_text())
    tasks = all_tasks(spec)
    # Only a model that passes the gate is served, beside the scoring, and the report shows where.
    dag, deploy_task = tasks["deploy-component"]
    assert dag == tasks["report-component"][0] == "comp-condition-3"
    assert deploy_task["inputs"]["artifacts"]["onnx_model"] == {"componentInputArtifact": "pipelinechannel--export-component-onnx_model"}
    constants = {name: value["runtimeValue"]["constant"] for name, value in deploy_task["inputs"]["parameters"].items() if "runtimeValue" in value}
    assert constants == {"service_name": "digits", "namespace": "team", "image": "ghcr.io/me/digit-recognizer-serve:v1"}
    assert deploy_task["inputs"]["parameters"]["canary_traffic_percent"] == {"componentInputParameter": "pipelinechannel--canary_traffic_percent"}
    assert deploy_task["cachingOptions"] == {}  # a deploy happens anew each run
    assert tasks["report-component"][1]["inputs"]["parameters"]["service_url"]["taskOutputParameter"] == {
        "outputParameterKey": "Output", "producerTask": "deploy-component"}
    assert spec["root"]["inputDefinitions"]["parameters"]["canary_traffic_percent"]["defaultValue"] == 100
    executor = spec["deploymentSpec"]["executors"]["exec-deploy-component"]["container"]
    assert executor["image"] == "ghcr.io/me/digit-recognizer-train:v1" and "accelerator" not in executor["resources"]
    # The verbs its pod's service account needs, as deploy/kserve/rbac.yaml grants them.
    annotation = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-deploy-component"]["podMetadata"]["annotations"]
    role = next(yaml.safe_load_all((ROOT / "deploy/kserve/rbac.yaml").read_text()))
    (rule,) = role["rules"]
    assert annotation == {"digit-recognizer/rbac": f"{rule['resources'][0]}.{rule['apiGroups'][0]}: {','.join(rule['verbs'])}"}


def test_deploy_is_optional_and_its_name_checked(tmp_path):
    spec = yaml.safe_load(pipeline.compile_pipeline(tmp_path / "p.yaml").read_text())
    assert "deploy-component" not in all_tasks(spec)
    assert "service_url" not in all_tasks(spec)["report-component"][1]["inputs"].get("parameters", {})
    result = run_module("pipeline.py", "compile", "--output", str(tmp_path / "p.yaml"), "--deploy", "Digits_1")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --deploy: InferenceService name 'Digits_1': use lower-case letters, digits and '-', starting with a letter "
        "(at most 63 characters)")


def test_submit_with_deploy(kfp_api):
    api, host = kfp_api()
    assert pipeline.submit(host, "gs://b/train.csv", "gs://b/test.csv", params=["canary_traffic_percent=10"],
                           deploy_to=pipeline.DeployTarget("digits", "team")) == 0
    run = json.loads(next(body for method, path, _, body, _ in api.requests if method == "POST" and path == "/apis/v2beta1/runs"))
    assert run["runtime_config"]["parameters"]["canary_traffic_percent"] == 10
    condition = run["pipeline_spec"]["pipeline_spec"]["components"]["comp-condition-3"]["dag"]["tasks"]
    assert condition["deploy-component"]["inputs"]["parameters"]["service_name"]["runtimeValue"]["constant"] == "digits"
