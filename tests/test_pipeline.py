"""The pipeline's DAG as KFP compiles it: the wiring, the gate, the fan-out, resources, the cluster's settings, and
every step's options against its function's signature. The commands and the local runner: tests/runner/."""

import inspect

import pytest
import yaml

import pipeline
from components.deploy import RBAC_VERBS, RESOURCE, SERVE_IMAGE, SERVE_IMAGE_NAME, deploy
from components.download import COMPETITION, download
from components.evaluate import evaluate, require_accuracy
from components.export import export
from components.kfp_components import FUNCTION_ARGUMENTS, FUNCTION_DEFAULTS_KEPT, STEPS
from components.preprocess import preprocess
from components.register import register
from components.report import report
from components.score import join_submissions, score, shard_plan
from components.train import train
from tests.conftest import ROOT, run_module

RUN_STEPS = ["preprocess", "train", "export", "evaluate", "reject", "shard_plan", "score", "join", "register", "report"]
STEP_FUNCTIONS = {  # the function each step's KFP component calls
    "download": download,
    "preprocess": preprocess,
    "train": train,
    "export": export,
    "evaluate": evaluate,
    "reject": require_accuracy,
    "shard_plan": shard_plan,
    "score": score,
    "join": join_submissions,
    "register": register,
    "report": report,
    "deploy": deploy,
}
OPTION_TYPES = (int, float, str, bool)


def all_tasks(spec):
    """Every task of the compiled pipeline, sub-DAGs (condition branches, loops) included: name -> (dag, task)."""
    dags = {
        "root": spec["root"]["dag"],
        **{name: component["dag"] for name, component in spec["components"].items() if "dag" in component},
    }
    return {task_name: (dag_name, task) for dag_name, dag in dags.items() for task_name, task in dag["tasks"].items()}


def compiled(tmp_path, **settings):
    """The compiled pipeline's documents: the pipeline, and its Kubernetes settings where it has any."""
    return list(yaml.safe_load_all(pipeline.compile_pipeline(tmp_path / "p.yaml", **settings).read_text()))


def test_compiled_yaml_wires_the_steps_in_our_image(tmp_path):
    (spec,) = compiled(tmp_path, image=pipeline.train_image("registry.example/team/", "v3"))
    executors = spec["deploymentSpec"]["executors"]
    containers = {name: executor["container"] for name, executor in executors.items() if "container" in executor}
    assert sorted(containers) == sorted(f"exec-{step.replace('_', '-')}-component" for step in RUN_STEPS)
    assert {container["image"] for container in containers.values()} == {
        "registry.example/team/digit-recognizer-train:v3"
    }
    assert sum("importer" in executor for executor in executors.values()) == 2
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["train-component"]["dependentTasks"] == ["preprocess-component"]
    assert sorted(tasks["evaluate-component"]["dependentTasks"]) == ["export-component", "preprocess-component"]


def test_the_gate_and_the_scoring_fan_out(tmp_path):
    (spec,) = compiled(tmp_path)
    tasks = all_tasks(spec)
    gate = spec["root"]["dag"]["tasks"]["condition-branches-1"]
    assert "evaluate-component" in gate["dependentTasks"]
    branches = spec["components"]["comp-condition-branches-1"]["dag"]["tasks"]
    conditions = {name: task["triggerPolicy"]["condition"] for name, task in branches.items()}
    accurate = (
        "inputs.parameter_values['pipelinechannel--evaluate-component-Output'] >= "
        "inputs.parameter_values['pipelinechannel--accuracy_threshold']"
    )
    assert conditions["condition-3"] == accurate
    assert conditions["condition-4"] == f"!({accurate})"
    # Scoring, joining, registering and the report happen only for an accurate model; the other branch refuses.
    assert (
        tasks["shard-plan-component"][0]
        == tasks["join-component"][0]
        == tasks["register-component"][0]
        == tasks["report-component"][0]
        == "comp-condition-3"
    )
    report_version = tasks["report-component"][1]["inputs"]["parameters"]["model_version"]["taskOutputParameter"]
    assert report_version == {"outputParameterKey": "Output", "producerTask": "register-component"}
    assert tasks["reject-component"][0] == "comp-condition-4"
    loop_dag, loop = tasks["for-loop-2"]
    assert loop_dag == "comp-condition-3"
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--shard-plan-component-Output"
    assert tasks["score-component"][0] == "comp-for-loop-2"
    score_inputs = tasks["score-component"][1]["inputs"]["parameters"]
    assert score_inputs["start_row"]["parameterExpressionSelector"] == 'parseJson(string_value)["start_row"]'
    assert score_inputs["stop_row"]["parameterExpressionSelector"] == 'parseJson(string_value)["stop_row"]'
    join_input = tasks["join-component"][1]["inputs"]["artifacts"]["shard_submissions"]["taskOutputArtifact"]
    assert join_input == {
        "outputArtifactKey": "pipelinechannel--score-component-submission",
        "producerTask": "for-loop-2",
    }
    report_outputs = spec["components"]["comp-report-component"]["outputDefinitions"]["artifacts"]
    assert report_outputs["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    evaluate_outputs = spec["components"]["comp-evaluate-component"]["outputDefinitions"]
    assert evaluate_outputs["parameters"]["Output"]["parameterType"] == "NUMBER_DOUBLE"
    assert (
        evaluate_outputs["artifacts"]["classification_metrics"]["artifactType"]["schemaTitle"]
        == "system.ClassificationMetrics"
    )


def test_kaggle_download_as_first_step_with_a_secret(tmp_path):
    # With platform settings the YAML holds two documents: the pipeline, then its Kubernetes settings.
    spec, platform = compiled(tmp_path, kaggle_secret="kaggle-credentials")
    tasks = spec["root"]["dag"]["tasks"]
    assert "importer" not in tasks and "download-component" in tasks
    assert tasks["preprocess-component"]["dependentTasks"] == ["download-component"]
    assert tasks["download-component"]["cachingOptions"] == {}  # a fresh download each run
    assert tasks["download-component"]["inputs"]["parameters"]["competition"]["runtimeValue"]["constant"] == COMPETITION
    kubernetes = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-download-component"]
    (secret,) = kubernetes["secretAsEnv"]
    assert secret["secretName"] == "kaggle-credentials"
    assert {pair["secretKey"]: pair["envVar"] for pair in secret["keyToEnv"]} == {
        "username": "KAGGLE_USERNAME",
        "key": "KAGGLE_KEY",
    }
    result = run_module("pipeline.py", "compile", "--output", str(tmp_path / "k.yaml"), "--kaggle-secret", "my-kaggle")
    assert result.returncode == 0, result.stderr
    assert "secretName: my-kaggle" in (tmp_path / "k.yaml").read_text()


def test_compile_command_names_the_image(tmp_path):
    result = run_module(
        "pipeline.py", "compile", "--output", str(tmp_path / "p.yaml"), "--image-prefix", "ghcr.io/me/", "--tag", "v1"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {tmp_path / 'p.yaml'} (steps run in ghcr.io/me/digit-recognizer-train:v1)\n"
    assert "image: ghcr.io/me/digit-recognizer-train:v1" in (tmp_path / "p.yaml").read_text()


def option_type(annotation):
    """int, float, str or bool for an option's annotation (`int | None` too); None for a path or anything else."""
    members = [member for member in getattr(annotation, "__args__", (annotation,)) if member is not type(None)]
    return members[0] if len(members) == 1 and members[0] in OPTION_TYPES else None


def test_every_option_of_a_step_function_reaches_it_from_the_pipeline(tmp_path):
    """An option is written three times: in its step function, its KFP component and the pipeline's signature.
    Each component parameter is its function's argument (or named in FUNCTION_ARGUMENTS), of the same type; each
    option of a function reaches it (or is in FUNCTION_DEFAULTS_KEPT); each pipeline parameter that feeds one has
    its type and default."""
    spec, _ = compiled(tmp_path, kaggle_secret="kaggle", deploy_to=pipeline.DeployTarget("digits"))
    tasks = {name: task for name, (_, task) in all_tasks(spec).items()}
    pipeline_parameters = inspect.signature(pipeline.build_pipeline().pipeline_func).parameters
    fed = set()
    assert set(STEP_FUNCTIONS) == set(STEPS)
    for step, function in STEP_FUNCTIONS.items():
        arguments = inspect.signature(function).parameters
        options = {name: option_type(p.annotation) for name, p in arguments.items() if option_type(p.annotation)}
        renamed = FUNCTION_ARGUMENTS.get(step, {})
        reached = set()
        for name, parameter in inspect.signature(STEPS[step]).parameters.items():
            if parameter.annotation not in OPTION_TYPES and name not in renamed:
                continue  # an artifact: a file the function reads or writes, or one the wrapper logs metrics to
            target = renamed.get(name, name)
            assert target in arguments, f"{step}: the component's {name} is not an argument of {function.__name__}"
            reached.add(target)
            if target in options and name not in renamed:
                assert parameter.annotation is options[target], f"{step}: {name}"
        kept = FUNCTION_DEFAULTS_KEPT.get(step, set())
        assert kept <= set(options) - reached, f"{step}: {sorted(kept)} are not options it leaves at their defaults"
        assert set(options) <= reached | kept, f"{step}: {sorted(set(options) - reached - kept)} reach no component"
        task_inputs = tasks[f"{step.replace('_', '-')}-component"]["inputs"].get("parameters", {})
        for name, source in task_inputs.items():
            parameter = source.get("componentInputParameter", "").removeprefix("pipelinechannel--")
            target = renamed.get(name, name)
            if parameter not in pipeline_parameters or target not in options:
                continue  # another step's output, a loop's item, a constant; or the kind differs on purpose
            fed.add(parameter)
            assert pipeline_parameters[parameter].annotation is options[target], f"{step}: {parameter}"
            default = arguments[target].default
            if default is not inspect.Parameter.empty:
                assert pipeline_parameters[parameter].default == default, f"{step}: {parameter}"
                assert type(pipeline_parameters[parameter].default) is type(default), f"{step}: {parameter}"
    # Every pipeline parameter sets a step's option, but the data's and those whose kind differs on purpose.
    assert set(pipeline_parameters) - fed == {
        "train_csv",
        "test_csv",
        "pseudo_labels",
        "checkpoint_dir",
        "score_with_int8",
    }
    assert pipeline_parameters["pseudo_labels"].default is False  # no pseudo-labels unless asked for
    assert pipeline_parameters["checkpoint_dir"].default == ""  # no checkpoints, unless a local run's folder
    assert pipeline_parameters["accuracy_threshold"].default == 0.99  # the gate's, which has no default
    assert pipeline_parameters["score_shards"].default == 4


def test_profiles_name_only_pipeline_parameters():
    parameters = inspect.signature(pipeline.build_pipeline().pipeline_func).parameters
    for profile, settings in pipeline.PROFILES.items():
        assert set(settings) <= set(parameters), profile
    assert pipeline.PROFILES["best"]["ensemble_size"] > 1


def test_cluster_settings_resources_gpu_retries_caching(tmp_path):
    (spec,) = compiled(tmp_path)
    executors = spec["deploymentSpec"]["executors"]
    tasks = {name: task for name, (_, task) in all_tasks(spec).items()}
    for step in RUN_STEPS:
        name = f"{step.replace('_', '-')}-component"
        resources = executors[f"exec-{name}"]["container"]["resources"]
        assert {"cpuRequest", "cpuLimit", "memoryRequest", "memoryLimit"} <= set(resources), step
        task = tasks[name]
        refuses_the_users_data = step in ("reject", "preprocess", "shard_plan")  # deterministic: never retried
        assert task.get("retryPolicy", {}).get("maxRetryCount") == (None if refuses_the_users_data else 2), step
        assert task["cachingOptions"].get("enableCache", False) is (step not in ("train", "register", "reject")), step
        assert task["taskInfo"]["name"] == step
    accelerator = executors["exec-train-component"]["container"]["resources"]["accelerator"]
    assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "1"
    assert all(
        "accelerator" not in executor["container"]["resources"]
        for name, executor in executors.items()
        if "container" in executor and name != "exec-train-component"
    )
    score_outputs = spec["components"]["comp-score-component"]["outputDefinitions"]["artifacts"]
    assert score_outputs["scoring_metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    (cpu_only,) = compiled(tmp_path, accelerator=None)
    assert (
        "accelerator" not in cpu_only["deploymentSpec"]["executors"]["exec-train-component"]["container"]["resources"]
    )


def test_compile_command_chooses_the_accelerator(tmp_path):
    for flags, expected in ((["--accelerator", "amd.com/gpu"], "resourceType: amd.com/gpu"), (["--no-gpu"], None)):
        result = run_module("pipeline.py", "compile", "--output", str(tmp_path / "p.yaml"), *flags)
        assert result.returncode == 0, result.stderr
        text = (tmp_path / "p.yaml").read_text()
        assert (expected in text) if expected else ("accelerator" not in text)


def test_train_pod_gpus_node_labels_and_tolerations(tmp_path):
    result = run_module(
        "pipeline.py",
        "compile",
        "--output",
        str(tmp_path / "p.yaml"),
        "--gpus",
        "4",
        "--node-selector",
        "cloud.google.com/gke-accelerator=nvidia-l4",
        "--node-selector",
        "pool=training",
        "--toleration",
        "nvidia.com/gpu:NoSchedule",
        "--toleration",
        "dedicated=ml:NoExecute",
    )
    assert result.returncode == 0, result.stderr
    spec, platform = yaml.safe_load_all((tmp_path / "p.yaml").read_text())
    accelerator = spec["deploymentSpec"]["executors"]["exec-train-component"]["container"]["resources"]["accelerator"]
    assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "4"  # 4 replicas
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert list(executors) == ["exec-train-component"]  # the other steps need no GPU node
    assert executors["exec-train-component"]["nodeSelector"] == {
        "labels": {"cloud.google.com/gke-accelerator": "nvidia-l4", "pool": "training"}
    }
    assert executors["exec-train-component"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"},
    ]
    for flag, value, message in (
        ("--gpus", "0", "argument --gpus: expected a number of GPUs, 1 or more, got '0'"),
        ("--node-selector", "pool", "argument --node-selector: expected KEY=VALUE, got 'pool'"),
        ("--toleration", "nvidia.com/gpu", "argument --toleration: expected KEY[=VALUE]:EFFECT, got 'nvidia.com/gpu'"),
        (
            "--toleration",
            "gpu:NoRun",
            "argument --toleration: toleration gpu: the effect is one of NoSchedule, "
            "PreferNoSchedule, NoExecute, not 'NoRun'",
        ),
    ):
        result = run_module("pipeline.py", "compile", "--output", str(tmp_path / "bad.yaml"), flag, value)
        assert (
            result.returncode == 2
            and result.stderr.strip().splitlines()[-1] == f"pipeline.py compile: error: {message}"
        )
    with pytest.raises(ValueError, match="gpus is at least 1"):
        pipeline.build_pipeline(gpus=0)


def test_checkpoint_volume_on_a_cluster(tmp_path):
    spec, platform = compiled(tmp_path, checkpoint_pvc="training-checkpoints")
    train_inputs = spec["root"]["dag"]["tasks"]["train-component"]["inputs"]["parameters"]
    assert train_inputs["checkpoint_dir"]["runtimeValue"]["constant"] == "/checkpoints"
    assert (
        train_inputs["checkpoint_subfolder"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    )  # one folder a run
    (mount,) = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-component"]["pvcMount"]
    assert (
        mount["mountPath"] == "/checkpoints"
        and mount["pvcNameParameter"]["runtimeValue"]["constant"] == "training-checkpoints"
    )
    (plain,) = compiled(tmp_path)
    assert plain["root"]["dag"]["tasks"]["train-component"]["inputs"]["parameters"]["checkpoint_dir"] == {
        "componentInputParameter": "checkpoint_dir"
    }  # off unless a local run sets it
    result = run_module("pipeline.py", "compile", "--output", str(tmp_path / "c.yaml"), "--checkpoint-pvc", "my-pvc")
    assert result.returncode == 0, result.stderr
    assert "my-pvc" in (tmp_path / "c.yaml").read_text()


def test_deploy_step_behind_the_gate_with_its_rbac_needs(tmp_path):
    result = run_module(
        "pipeline.py",
        "compile",
        "--output",
        str(tmp_path / "p.yaml"),
        "--deploy",
        "digits",
        "--deploy-namespace",
        "team",
        "--image-prefix",
        "ghcr.io/me/",
        "--tag",
        "v1",
    )
    assert result.returncode == 0, result.stderr
    spec, platform = yaml.safe_load_all((tmp_path / "p.yaml").read_text())
    tasks = all_tasks(spec)
    # Only a model that passes the gate is served, beside the scoring, and the report shows where.
    dag, deploy_task = tasks["deploy-component"]
    assert dag == tasks["report-component"][0] == "comp-condition-3"
    assert deploy_task["inputs"]["artifacts"] == {
        name: {"componentInputArtifact": f"pipelinechannel--export-component-{name}"}
        for name in ("onnx_model", "triton_repository")
    }
    constants = {
        name: value["runtimeValue"]["constant"]
        for name, value in deploy_task["inputs"]["parameters"].items()
        if "runtimeValue" in value
    }
    assert constants == {"service_name": "digits", "namespace": "team", "image": "ghcr.io/me/digit-recognizer-serve:v1"}
    assert deploy_task["inputs"]["parameters"]["canary_traffic_percent"] == {
        "componentInputParameter": "pipelinechannel--canary_traffic_percent"
    }
    assert deploy_task["cachingOptions"] == {}  # a deploy happens anew each run
    assert tasks["report-component"][1]["inputs"]["parameters"]["service_url"]["taskOutputParameter"] == {
        "outputParameterKey": "Output",
        "producerTask": "deploy-component",
    }
    assert spec["root"]["inputDefinitions"]["parameters"]["canary_traffic_percent"]["defaultValue"] == 100
    executor = spec["deploymentSpec"]["executors"]["exec-deploy-component"]["container"]
    assert executor["image"] == "ghcr.io/me/digit-recognizer-train:v1" and "accelerator" not in executor["resources"]
    # The verbs its pod's service account needs, as deploy/kserve/rbac.yaml grants them and the step uses them.
    annotation = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-deploy-component"][
        "podMetadata"
    ]["annotations"]
    role = next(yaml.safe_load_all((ROOT / "deploy/kserve/rbac.yaml").read_text()))
    (rule,) = role["rules"]
    assert annotation == {
        "digit-recognizer/rbac": f"{rule['resources'][0]}.{rule['apiGroups'][0]}: {','.join(rule['verbs'])}"
    }
    assert pipeline.DEPLOY_RBAC == f"{RESOURCE}: {','.join(RBAC_VERBS)}"
    assert (pipeline.SERVE_IMAGE_NAME, pipeline.DeployTarget("digits").image) == (SERVE_IMAGE_NAME, SERVE_IMAGE)


def test_deploy_with_kserves_stock_runtime_has_no_image(tmp_path):
    """--deploy-runtime kserve-tritonserver: the deploy step's image is empty, so it serves the Triton repository."""
    output = tmp_path / "p.yaml"
    command = ("pipeline.py", "compile", "--output", str(output), "--deploy", "digits", "--deploy-runtime")
    result = run_module(*command, "kserve-tritonserver")
    assert result.returncode == 0, result.stderr
    spec, _ = yaml.safe_load_all(output.read_text())
    _, deploy_task = all_tasks(spec)["deploy-component"]
    assert deploy_task["inputs"]["parameters"]["image"] == {"runtimeValue": {"constant": ""}}
    result = run_module(*command, "triton")
    assert result.returncode == 2 and "--deploy-runtime: invalid choice: 'triton'" in result.stderr


def test_deploy_is_optional_and_its_name_checked(tmp_path):
    (spec,) = compiled(tmp_path)
    assert "deploy-component" not in all_tasks(spec)
    assert "service_url" not in all_tasks(spec)["report-component"][1]["inputs"].get("parameters", {})
    result = run_module("pipeline.py", "compile", "--output", str(tmp_path / "p.yaml"), "--deploy", "Digits_1")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --deploy: InferenceService name 'Digits_1': use lower-case letters, digits and '-', "
        "starting with a letter (at most 63 characters)"
    )
