import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

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
from pipeline import descendants
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
    for name in ("network", "epochs", "batch_size", "learning_rate", "learning_rate_schedule", "weight_decay", "label_smoothing",
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


# Small enough for CI, long enough (about 2 s an epoch) to interrupt training between two epochs.
SMALL_RUN = ["--profile", "quick", "--param", "accuracy_threshold=0", "--param", "score_shards=3",
             "--param", "epochs=6", "--param", "batch_size=32"]


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory, fixture_data):
    out = tmp_path_factory.mktemp("runs") / "uninterrupted"
    # The fixture's 270 training images give a poor model: the gate is opened for it.
    result = run_module("pipeline.py", "run", "--data", str(fixture_data), "--out", str(out), *SMALL_RUN)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


def test_run_end_to_end_through_kfp_local(uninterrupted_run, fixture_data):
    out, result = uninterrupted_run
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "model-0.keras", "run.json", "run.log", *(name for name in pipeline.RUN_FILES.values() if "*" not in name),
        *pipeline.GATED_RUN_FILES.values()])  # the pipeline root (arrays, cache, checkpoints) is gone
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


def test_default_output_is_steps_and_epochs_and_the_log_has_everything(uninterrupted_run):
    out, result = uninterrupted_run
    lines = result.stdout.splitlines()
    assert lines[0] == f"digit-recognizer: profile quick, run folder {out}"
    assert lines[1].startswith("training on the CPU")  # which device trains, first thing
    for step in ("preprocess", "train", "export", "evaluate", "shard_plan", "join", "report"):
        assert sum(re.fullmatch(rf"\d\d:\d\d:\d\d {step} \.\.\.", line) is not None for line in lines) == 1, step
        assert sum(re.match(rf"\d\d:\d\d:\d\d {step} done in \d+ s", line) is not None for line in lines) == 1, step
    assert sum(re.match(r"\d\d:\d\d:\d\d score done in \d+ s", line) is not None for line in lines) == 3
    assert any(re.match(r"\d\d:\d\d:\d\d preprocess done in \d+ s: 270 training, 30 validation and 60 test images", line)
               for line in lines)
    assert any(re.match(r"\d\d:\d\d:\d\d evaluate done in \d+ s: validation accuracy 0\.\d{4}", line) for line in lines)
    epochs = [line.strip() for line in lines if line.strip().startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == [f"epoch {n}/6" for n in range(1, 7)]
    assert all(re.search(r"loss \d\.\d{4} accuracy \d\.\d{4}, .* \d+ images/s, about .* left$", line) for line in epochs)
    assert f"  {out / 'submission.csv'}  Kaggle's submission" in result.stdout  # where every output went
    assert "executor_input" not in result.stdout and '"inputs"' not in result.stdout and "Executing task" not in result.stdout
    assert len(lines) < 50
    log = (out / "run.log").read_text()
    assert log.count("Executing task 'score-component'") == 3  # kfp.local's own log, colours removed
    assert "Got executor_input:" in log and "epoch 6/6" in log and "Pipeline 'digit-recognizer' finished with status SUCCESS" in log


def test_run_json_says_what_made_the_run(uninterrupted_run, fixture_data):
    out, _ = uninterrupted_run
    record = json.loads((out / "run.json").read_text())
    assert record["profile"] == "quick" and record["status"] == "succeeded"
    assert set(record["parameters"]) == set(pipeline.pipeline_parameters()) - {"train_csv", "test_csv"}
    assert record["parameters"]["epochs"] == 6 and record["parameters"]["learning_rate"] == signature_defaults(train)["learning_rate"]
    for name in ("train.csv", "test.csv"):
        assert record["data"]["sha256"][name] == hashlib.sha256((fixture_data / name).read_bytes()).hexdigest()
    assert record["packages"]["kfp"] == "2.17.3" and "keras" in record["packages"] and "onnxruntime" in record["packages"]
    assert re.fullmatch(r"[0-9a-f]{40}", record["code"]["commit"]) and isinstance(record["code"]["dirty"], bool)
    (attempt,) = record["runs"]
    assert attempt["started"] <= attempt["ended"] and attempt["status"] == "succeeded"
    steps = [step["step"] for step in attempt["steps"]]
    assert steps[:3] == ["preprocess", "train", "export"] and steps.count("score") == 3 and steps[-1] == "report"
    assert all(step["seconds"] > 0 and step["status"] == "success" for step in attempt["steps"])


def test_interrupted_run_stops_every_step_and_resumes_to_the_same_submission(uninterrupted_run, tmp_path, fixture_data):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "pipeline.py", "run", "--data", str(fixture_data), "--out", str(out), *SMALL_RUN],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:  # wait until training has finished two epochs
        lines.append(line)
        if line.strip().startswith("epoch 2/6"):
            break
    steps = descendants(process.pid)
    assert steps  # the train step's processes
    process.send_signal(signal.SIGINT)  # to the pipeline alone, not its process group: it must stop the steps itself
    interrupted = time.monotonic()
    output = "".join(lines) + process.stdout.read()
    assert process.wait() == 130
    assert time.monotonic() - interrupted < 15
    assert not [pid for pid in steps if pid_alive(pid)], output  # no orphan
    assert f"resume with: python pipeline.py run --resume {out}" in output
    assert f"training checkpoints: {out.resolve()}/pipeline-root/checkpoints (round-0-member-0: " in output
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert not (out / "submission.csv").exists()

    refused = run_module("pipeline.py", "run", "--resume", str(out), "--param", "epochs=7")
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: --resume {out}: the run was started with other settings (profile quick, epochs); "
        "resume with the same ones, or start a new run")
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "train.csv").write_bytes((fixture_data / "train.csv").read_bytes() + b"\n")
    (changed / "test.csv").write_bytes((fixture_data / "test.csv").read_bytes())
    refused = run_module("pipeline.py", "run", "--resume", str(out), "--data", str(changed))
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: --resume {out}: {changed / 'train.csv'} is not the file the run started with (its SHA-256 differs); "
        "start a new run")

    resumed = run_module("pipeline.py", "run", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert re.search(r"\d\d:\d\d:\d\d preprocess: reused", resumed.stdout)  # finished steps are not run again
    assert "resuming from" in resumed.stdout and "epoch 1/6" not in resumed.stdout and "epoch 6/6" in resumed.stdout
    history = json.loads((out / "history.json").read_text())["members"][0]
    assert len(history["loss"]) == 6  # each epoch once
    assert (out / "submission.csv").read_bytes() == (uninterrupted_run[0] / "submission.csv").read_bytes()
    assert (out / "model.onnx").read_bytes() == (uninterrupted_run[0] / "model.onnx").read_bytes()
    record = json.loads((out / "run.json").read_text())
    assert [attempt["status"] for attempt in record["runs"]] == ["interrupted", "succeeded"]
    assert record["status"] == "succeeded"


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not status.is_file() or "zombie" not in status.read_text()


def test_sigterm_stops_the_steps_too(tmp_path, fixture_data):
    process = subprocess.Popen([sys.executable, "pipeline.py", "run", "--data", str(fixture_data), "--out",
                                str(tmp_path / "run"), *SMALL_RUN], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if line.strip().startswith("training on the CPU (no GPU found)"):  # the train step runs
            break
    steps = descendants(process.pid)
    process.terminate()
    output = process.stdout.read()
    assert process.wait() == 128 + signal.SIGTERM
    assert "interrupted (SIGTERM); every step stopped." in output
    assert not [pid for pid in steps if pid_alive(pid)]


class StandInDocker:
    """docker.from_env()'s client as kfp.local's DockerRunner uses it: records how containers are run."""

    def __init__(self, runtimes):
        self.runtimes, self.run_arguments = runtimes, []
        self.images = SimpleNamespace(list=lambda: [SimpleNamespace(tags=["digit-recognizer-train:latest"], attrs={"RepoDigests": []})])
        self.containers = SimpleNamespace(run=self.run)

    def info(self):
        return {"Runtimes": self.runtimes}

    def run(self, **arguments):
        self.run_arguments.append(arguments)
        return SimpleNamespace(logs=lambda stream: [], wait=lambda: {"StatusCode": 0})

    def close(self):
        pass


def test_gpus_reach_the_containers_device_requests(monkeypatch, tmp_path):
    import docker
    from kfp.local.docker_task_handler import DockerTaskHandler

    client = StandInDocker({"runc": {}, "nvidia": {"path": "nvidia-container-runtime"}})
    monkeypatch.setattr(docker, "from_env", lambda: client)
    for gpus, count in (("all", -1), ("2", 2)):
        runner = pipeline.docker_runner(gpus, "digit-recognizer.run=test")
        DockerTaskHandler("digit-recognizer-train:latest", ["python", "-m", "x"], str(tmp_path), runner).run()
        (request,) = client.run_arguments[-1]["device_requests"]
        assert request["Count"] == count and request["Capabilities"] == [["gpu"]]
        assert client.run_arguments[-1]["labels"] == ["digit-recognizer.run=test"]
    assert "device_requests" not in pipeline.docker_runner(None, "l").container_run_args
    with pytest.raises(SystemExit, match=r"^error: --gpus 'two': expected all or a number of GPUs$"):
        pipeline.docker_runner("two", "l")


def test_gpus_without_an_nvidia_runtime_is_a_one_line_error(monkeypatch):
    import docker

    monkeypatch.setattr(docker, "from_env", lambda: StandInDocker({"runc": {}}))
    with pytest.raises(SystemExit, match=r"^error: --gpus all: Docker here has no NVIDIA runtime \(only runc\); "
                                         r"install the NVIDIA Container Toolkit: https://"):
        pipeline.docker_runner("all", "l")


def test_gpus_from_the_command_line_without_docker_or_its_runtime(tmp_path, fixture_data):
    result = run_module("pipeline.py", "run", "--data", str(fixture_data), "--out", str(tmp_path / "a"), "--gpus", "all")
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --gpus is for --docker; without it the steps use this machine's GPUs through TensorFlow")
    environment = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    result = subprocess.run([sys.executable, "pipeline.py", "run", "--data", str(fixture_data), "--out", str(tmp_path / "b"),
                             "--docker", "--gpus", "all"], cwd=ROOT, env=environment, capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --gpus: cannot reach Docker")
    assert not (tmp_path / "b").exists()


def test_checkpoint_volume_on_a_cluster(tmp_path):
    spec, platform = yaml.safe_load_all(pipeline.compile_pipeline(tmp_path / "p.yaml", checkpoint_pvc="training-checkpoints").read_text())
    train_inputs = spec["root"]["dag"]["tasks"]["train-component"]["inputs"]["parameters"]
    assert train_inputs["checkpoint_dir"]["runtimeValue"]["constant"] == "/checkpoints"
    assert train_inputs["checkpoint_subfolder"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"  # one folder a run
    (mount,) = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-component"]["pvcMount"]
    assert mount["mountPath"] == "/checkpoints" and mount["pvcNameParameter"]["runtimeValue"]["constant"] == "training-checkpoints"
    plain = yaml.safe_load(pipeline.compile_pipeline(tmp_path / "plain.yaml").read_text())
    assert plain["root"]["dag"]["tasks"]["train-component"]["inputs"]["parameters"]["checkpoint_dir"] == {
        "componentInputParameter": "checkpoint_dir"}  # off unless a local run sets it
    result = run_module("pipeline.py", "compile", "--output", str(tmp_path / "c.yaml"), "--checkpoint-pvc", "my-pvc")
    assert result.returncode == 0, result.stderr
    assert "my-pvc" in (tmp_path / "c.yaml").read_text()


def test_the_gate_stops_a_poor_model_before_scoring(tmp_path, fixture_data):
    result = run_module("pipeline.py", "run", "--data", str(fixture_data), "--out", str(tmp_path / "out"), "--profile", "quick")
    assert result.returncode != 0
    assert re.fullmatch(r"error: validation accuracy \d+\.\d{4}% is below accuracy_threshold 90\.0000%: "
                        r"the model is not scored or published", result.stderr.strip().splitlines()[-1])
    assert re.search(r"^\d\d:\d\d:\d\d reject \.\.\.$", result.stdout, re.MULTILINE)
    assert "score-component" not in (tmp_path / "out" / "run.log").read_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pipeline-root", "run.json", "run.log"]  # no outputs
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "failed"


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
    assert not (tmp_path / "out" / "submission.csv").exists()


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


KFP_LOCAL_LINES = """\
07:00:01.000 - INFO - Task preprocess-component cache hit (key=0123456789ab); skipping execution.
07:00:01.100 - INFO - Executing task \x1b[96m'train-component'\x1b[0m
07:00:01.100 - INFO - Streamed logs:

    [KFP Executor 2026-11-28 07:00:01,200 INFO]: Got executor_input:
    {
        "inputs": {"parameterValues": {"epochs": 2}}
    }
    training on the CPU (no GPU found)
    epoch 1/2: loss 2.1 accuracy 0.3, 100 images/s, about 5 s left
    member 0: best validation accuracy 0.5000 after 2 epochs
07:00:09.000 - INFO - Task \x1b[96m'train-component'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
07:00:09.000 - INFO - Task train-component failed (attempt 1/3). Retrying in 30.0s...
    error: something: went wrong
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_run_output_shows_steps_or_everything_and_logs_everything(tmp_path, verbose):
    terminal = io.StringIO()
    with open(tmp_path / "run.log", "w") as log:
        output = pipeline.RunOutput(terminal, log, verbose)
        for piece in KFP_LOCAL_LINES.splitlines(keepends=True):  # as kfp.local writes: a line in pieces
            output.write(piece[:5])
            output.write(piece[5:])
    shown = terminal.getvalue()
    ours = set(shown.splitlines()) if not verbose else set()
    logged = [line for line in (tmp_path / "run.log").read_text().splitlines() if line not in ours]
    assert logged == pipeline.ANSI_COLOUR.sub("", KFP_LOCAL_LINES).splitlines()  # everything, colours removed
    assert output.last_error == "error: something: went wrong"
    if verbose:
        assert shown == KFP_LOCAL_LINES
        return
    assert [line[9:] if line[:2].isdigit() else line for line in shown.splitlines()] == [
        "preprocess: reused, done in the interrupted run",
        "train ...",
        "         training on the CPU (no GPU found)",
        "         epoch 1/2: loss 2.1 accuracy 0.3, 100 images/s, about 5 s left",
        "train done in 0 s: member 0: best validation accuracy 0.5000 after 2 epochs",
        "train failed (try 1 of 3): trying again in 30 s",
    ]
    assert [step["step"] for step in output.steps] == ["preprocess", "train"]
    assert [step["status"] for step in output.steps] == ["reused", "success"]
