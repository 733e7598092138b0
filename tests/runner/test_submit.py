import json

import pipeline
from runner.submit import submit
from tests.conftest import run_module


def test_submit_sends_the_compiled_pipeline_and_follows_the_run(kfp_api, capsys):
    api, host = kfp_api(run_states=["RUNNING", "RUNNING", "SUCCEEDED"])
    status = submit(
        host,
        "gs://bucket/train.csv",
        "gs://bucket/test.csv",
        experiment="mnist",
        run_name="nightly",
        params=["epochs=3"],
        wait=True,
        token="secret-token",
        poll_seconds=0.01,
    )
    assert status == 0
    posts = {path: body for method, path, _, body, _ in api.requests if method == "POST"}
    experiment = json.loads(posts["/apis/v2beta1/experiments"])
    assert experiment["display_name"] == "mnist"
    run = json.loads(posts["/apis/v2beta1/runs"])
    assert run["display_name"] == "nightly"
    assert run["experiment_id"] == next(iter(api.experiments))
    assert run["runtime_config"]["parameters"] == {
        "train_csv": "gs://bucket/train.csv",
        "test_csv": "gs://bucket/test.csv",
        "epochs": 3,
    }
    assert run["pipeline_spec"]["pipelineInfo"]["name"] == "digit-recognizer"
    assert set(run["pipeline_spec"]["root"]["dag"]["tasks"]) >= {
        "preprocess-component",
        "train-component",
        "condition-branches-1",
    }
    assert all(headers.get("authorization") == "Bearer secret-token" for _, _, _, _, headers in api.requests)
    output = capsys.readouterr().out
    run_id = next(iter(api.runs))
    assert f"run {run_id} started: {host}/#/runs/details/{run_id}" in output
    assert f"run {run_id} finished: SUCCEEDED" in output


def test_submit_exit_status_follows_a_failed_run(kfp_api):
    _, host = kfp_api(run_states=["RUNNING", "FAILED"])
    assert submit(host, "gs://b/train.csv", "gs://b/test.csv", wait=True, poll_seconds=0.01) == 1


def test_submit_reports_an_api_error_as_one_line(kfp_api):
    _, host = kfp_api(reject_runs_with="epochs")
    result = run_module(
        "pipeline.py",
        "submit",
        "--host",
        host,
        "--train-csv",
        "gs://b/train.csv",
        "--test-csv",
        "gs://b/test.csv",
        "--param",
        "epochs=2",
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: the Kubeflow Pipelines API at {host} answered 400: unknown parameter epochs"
    )
    assert "Traceback" not in result.stderr


def test_submit_to_nowhere_says_so():
    from tests.serving.conftest import free_port

    host = f"http://127.0.0.1:{free_port()}"
    result = run_module(
        "pipeline.py", "submit", "--host", host, "--train-csv", "gs://b/train.csv", "--test-csv", "gs://b/test.csv"
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: cannot reach Kubeflow Pipelines at {host}")


def test_submit_with_a_profile_and_the_kaggle_download(kfp_api):
    api, host = kfp_api()
    assert submit(host, kaggle_secret="kaggle-credentials", profile="best") == 0
    run = json.loads(
        next(body for method, path, _, body, _ in api.requests if method == "POST" and path == "/apis/v2beta1/runs")
    )
    assert run["runtime_config"]["parameters"] == pipeline.PROFILES["best"]
    # With Kubernetes settings kfp.Client sends {"pipeline_spec": ..., "platform_spec": ...} as the pipeline_spec.
    assert "download-component" in run["pipeline_spec"]["pipeline_spec"]["root"]["dag"]["tasks"]
    platform = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert platform["exec-download-component"]["secretAsEnv"][0]["secretName"] == "kaggle-credentials"


def test_submit_needs_data_or_a_secret():
    result = run_module("pipeline.py", "submit", "--host", "http://127.0.0.1:9")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "error: submit needs --train-csv and --test-csv, or --kaggle-secret to download the data"
    )


def test_submit_with_deploy_and_the_train_pods_node(kfp_api):
    api, host = kfp_api()
    toleration = pipeline.Toleration("nvidia.com/gpu", "NoSchedule")
    assert (
        submit(
            host,
            "gs://b/train.csv",
            "gs://b/test.csv",
            params=["canary_traffic_percent=10"],
            deploy_to=pipeline.DeployTarget("digits", "team"),
            gpus=2,
            tolerations=(toleration,),
        )
        == 0
    )
    run = json.loads(
        next(body for method, path, _, body, _ in api.requests if method == "POST" and path == "/apis/v2beta1/runs")
    )
    assert run["runtime_config"]["parameters"]["canary_traffic_percent"] == 10
    condition = run["pipeline_spec"]["pipeline_spec"]["components"]["comp-condition-3"]["dag"]["tasks"]
    assert condition["deploy-component"]["inputs"]["parameters"]["service_name"]["runtimeValue"]["constant"] == "digits"
    train = run["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"]["exec-train-component"]
    assert train["container"]["resources"]["accelerator"]["resourceCount"] == "2"
    platform = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert platform["exec-train-component"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
