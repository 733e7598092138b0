"""The KFP v2 components: thin wrappers that run in the training image and call each step's function.

They live apart from the steps because KFP's executor loads a slimmed `kfp.dsl`
(no `dsl.component`) inside the running container: a step module that used the
decorator could not be imported there. The image is a setting, so `kfp_components(image)`
makes the components for a given image. Each wrapper announces its step with `components.progress` first
(a score shard by its rows, `score:0-6999`), then its key figure and its end: the local runner's console
reads those lines.
"""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output


def download_component(competition: str, train_csv: Output[Dataset], test_csv: Output[Dataset]):
    """Fetch the competition's CSVs with the Kaggle CLI (credentials in KAGGLE_USERNAME/KAGGLE_KEY, from a secret)."""
    given = dict(locals())  # the parameters as KFP passed them, before any other name is bound
    from components import progress

    progress.start("download")
    from components.cli import run_step
    from components.download import download

    run_step(download, given, train_csv=train_csv.path, test_csv=test_csv.path)
    progress.done()


def preprocess_component(
    train_csv: Input[Dataset],
    test_csv: Input[Dataset],
    validation_fraction: float,
    seed: int,
    train_csv_rows: int,
    train_data: Output[Dataset],
    validation_data: Output[Dataset],
    test_data: Output[Dataset],
):
    """Validate Kaggle's CSVs and write uint8 arrays: train, stratified validation, test."""
    given = dict(locals())  # the parameters as KFP passed them, before any other name is bound
    from components import progress

    progress.start("preprocess")
    from components.cli import run_step
    from components.preprocess import preprocess

    summary = run_step(
        preprocess,
        given,
        train_csv=train_csv.path,
        test_csv=test_csv.path,
        train_data=train_data.path,
        validation_data=validation_data.path,
        test_data=test_data.path,
    )
    for artifact, rows in ((train_data, "train_rows"), (validation_data, "validation_rows"), (test_data, "test_rows")):
        artifact.metadata["rows"] = summary[rows]
    progress.figure(
        f"{summary['train_rows']} training, {summary['validation_rows']} validation and "
        f"{summary['test_rows']} test images"
    )
    progress.done()


def train_component(
    train_data: Input[Dataset],
    validation_data: Input[Dataset],
    test_data: Input[Dataset],
    network: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    learning_rate_schedule: str,
    weight_decay: float,
    label_smoothing: float,
    augment: bool,
    elastic_alpha: float,
    patience: int,
    seed: int,
    ensemble_size: int,
    member_splits: bool,
    train_on_validation: bool,
    ema_momentum: float,
    pseudo_labels: bool,
    pseudo_label_confidence: float,
    mixed_precision: str,
    float32_epochs: int,
    keep_epoch: str,
    checkpoint_dir: str,
    checkpoint_subfolder: str,
    model: Output[Model],
    history: Output[Artifact],
    training_curves: Output[Artifact],
):
    """Fit the CNNs with augmentation on every GPU given, keep each one's best or last epoch, write the history.

    With `checkpoint_dir` (a local run's folder, or the volume a cluster mounts there, where each run has its
    `checkpoint_subfolder`), every epoch is saved, and a retried step goes on from the last one.
    """
    given = dict(locals())  # the parameters as KFP passed them, before any other name is bound
    from components import progress

    progress.start("train")
    import os

    from components.cli import run_step
    from components.train import train

    result = run_step(
        train,
        given,
        train_data=train_data.path,
        validation_data=validation_data.path,
        model_dir=model.path,
        history_path=history.path,
        curves_png=training_curves.path,
        pseudo_label_data=test_data.path if pseudo_labels else None,
        checkpoint_dir=os.path.join(checkpoint_dir, checkpoint_subfolder) if checkpoint_dir else None,
    )
    members = result["members"]
    model.metadata.update(
        framework="keras",
        members=len(members),
        pseudo_labels=result["pseudo_labels"],
        epochs_run=[len(member["val_accuracy"]) for member in members],
        best_validation_accuracy=[max(member["val_accuracy"]) for member in members],
    )
    progress.done()


def export_component(
    model: Input[Model],
    train_data: Input[Dataset],
    validation_data: Input[Dataset],
    tta: bool,
    tolerance: float,
    onnx_model: Output[Model],
    int8_model: Output[Model],
    triton_repository: Output[Model],
    parity_metrics: Output[Metrics],
):
    """Convert the members to one ONNX model with tf2onnx; fail unless onnxruntime matches TensorFlow on the
    validation set; quantize to int8; lay the model out as Triton's model repository (KServe's stock runtime)."""
    given = dict(locals())  # the parameters as KFP passed them, before any other name is bound
    from components import progress

    progress.start("export")
    from components.cli import run_step
    from components.export import export

    parity = run_step(
        export,
        given,
        model_dir=model.path,
        train_data=train_data.path,
        validation_data=validation_data.path,
        onnx_model=onnx_model.path,
        int8_model=int8_model.path,
        triton_repository=triton_repository.path,
    )
    for artifact, precision in ((onnx_model, "fp32"), (int8_model, "int8"), (triton_repository, "fp32")):
        artifact.metadata.update(framework="onnx", precision=precision, input="pixels", outputs="probabilities,label")
    triton_repository.metadata["layout"] = "triton model repository"
    onnx_model.metadata["mlflow_model_uri"] = parity.pop("mlflow_model_uri")  # what the register step registers
    for name, value in parity.items():
        parity_metrics.log_metric(name, value)
    progress.done()


def evaluate_component(
    onnx_model: Input[Model],
    int8_model: Input[Model],
    validation_data: Input[Dataset],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    metrics_json: Output[Artifact],
    confusion_matrix: Output[Artifact],
) -> float:
    """Validation accuracy, loss, per-digit precision/recall and the confusion matrix of the ONNX model; returns
    the accuracy for the gate."""
    given = dict(locals())  # the parameters as KFP passed them, before any other name is bound
    from components import progress

    progress.start("evaluate")
    from components.cli import run_step
    from components.evaluate import evaluate

    result = run_step(
        evaluate,
        given,
        onnx_model=onnx_model.path,
        int8_model=int8_model.path,
        validation_data=validation_data.path,
        metrics_json=metrics_json.path,
        confusion_matrix_png=confusion_matrix.path,
    )
    for name in ("accuracy", "loss", "errors", "images"):
        metrics.log_metric(name, result[name])
    metrics.log_metric("int8_accuracy", result["int8"]["accuracy"])
    metrics.log_metric("int8_agreement_with_fp32", result["int8"]["agreement_with_fp32"])
    for digit, scores in result["per_class"].items():
        metrics.log_metric(f"precision_{digit}", scores["precision"])
        metrics.log_metric(f"recall_{digit}", scores["recall"])
    classification_metrics.log_confusion_matrix([str(digit) for digit in range(10)], result["confusion_matrix"])
    progress.figure(
        f"validation accuracy {result['accuracy']:.4f} ({result['errors']} errors in {result['images']}), "
        f"int8 model {result['int8']['accuracy']:.4f}"
    )
    progress.done()
    return result["accuracy"]


def reject_component(accuracy: float, accuracy_threshold: float):
    """The gate's other branch: fail the run, saying why the model is not scored or published."""
    given = dict(locals())  # the parameters as KFP passed them, before any other name is bound
    from components import progress

    progress.start("reject")
    from components.cli import run_step
    from components.evaluate import require_accuracy

    run_step(require_accuracy, given)
    progress.done()


def shard_plan_component(test_csv: Input[Dataset], shards: int) -> List[dict]:
    """Check test.csv and split its rows into contiguous ranges, one per scoring shard."""
    given = dict(locals())  # the parameters as KFP passed them, before any other name is bound
    from components import progress

    progress.start("shard_plan")
    from components.cli import run_step
    from components.score import shard_plan

    plan = run_step(shard_plan, given, test_csv=test_csv.path)
    progress.done()
    return plan


def score_component(
    onnx_model: Input[Model],
    int8_model: Input[Model],
    test_csv: Input[Dataset],
    score_with_int8: bool,
    start_row: int,
    stop_row: int,
    submission: Output[Dataset],
    scoring_metrics: Output[Metrics],
):
    """Rows start_row up to stop_row of test.csv scored in batches with onnxruntime (fp32 or int8 model): a shard
    of submission.csv."""
    given = dict(locals())  # the parameters as KFP passed them, before any other name is bound
    from components import progress

    progress.start(f"score:{start_row}-{stop_row - 1}")
    from components.cli import run_step
    from components.score import score

    model = int8_model if score_with_int8 else onnx_model
    result = run_step(score, given, onnx_model=model.path, test_csv=test_csv.path, submission=submission.path)
    submission.metadata.update(
        result, model="int8" if score_with_int8 else "fp32", start_row=start_row, stop_row=stop_row
    )
    for name in ("rows", "seconds", "images_per_second"):
        scoring_metrics.log_metric(name, result[name])
    progress.figure(f"scored {result['rows']} rows ({result['images_per_second']:.0f} images/s)")
    progress.done()


def join_component(shard_submissions: Input[List[Dataset]], submission: Output[Dataset]):
    """Join the shards, in order, into Kaggle's submission.csv."""
    given = dict(locals())  # the parameters as KFP passed them, before any other name is bound
    from components import progress

    progress.start("join")
    from components.cli import run_step
    from components.score import join_submissions

    submission.metadata["rows"] = run_step(
        join_submissions,
        given,
        shard_submissions=[shard.path for shard in shard_submissions],
        submission=submission.path,
    )
    progress.figure(f"joined {submission.metadata['rows']} rows into submission.csv")
    progress.done()


def register_component(
    onnx_model: Input[Model],
    train_csv: Input[Dataset],
    test_csv: Input[Dataset],
    accuracy: float,
) -> str:
    """Register the model that passed the gate in MLflow's model registry, tagged with its run, accuracy and data;
    returns its version ("" without MLflow tracking)."""
    given = dict(locals())  # the parameters as KFP passed them, before any other name is bound
    from components import progress

    progress.start("register")
    from components.cli import run_step
    from components.register import register

    version = run_step(
        register,
        given,
        onnx_model=onnx_model.path,
        train_csv=train_csv.path,
        test_csv=test_csv.path,
        model_uri=onnx_model.metadata.get("mlflow_model_uri", ""),
    )
    progress.done()
    return version


def report_component(
    history: Input[Artifact],
    metrics_json: Input[Artifact],
    submission: Input[Dataset],
    test_csv: Input[Dataset],
    report: Output[HTML],
    test_samples: Output[Artifact],
    service_url: str = "",
    model_version: str = "",
):
    """An HTML page for the KFP UI: the run's figures, training curves, confusion matrix and sample test digits
    with predictions."""
    given = dict(locals())  # the parameters as KFP passed them, before any other name is bound
    from components import progress

    progress.start("report")
    from components.cli import run_step
    from components.report import report as write_report

    run_step(
        write_report,
        given,
        history=history.path,
        metrics_json=metrics_json.path,
        submission=submission.path,
        test_csv=test_csv.path,
        report_html=report.path,
        test_samples_png=test_samples.path,
    )
    progress.done()


def deploy_component(
    onnx_model: Input[Model],
    triton_repository: Input[Model],
    service_name: str,
    namespace: str,
    image: str,
    canary_traffic_percent: int,
    deployment: Output[Artifact],
) -> str:
    """Serve the model with KServe: create or update the InferenceService `service_name`, wait until Ready; returns
    its URL. Our serve `image` reads the model from its URI; without an image KServe's stock ONNX runtime (Triton)
    reads the model repository's."""
    given = dict(locals())  # the parameters as KFP passed them, before any other name is bound
    from components import progress

    progress.start("deploy")
    from components.cli import run_step
    from components.deploy import deploy

    storage_uri = onnx_model.uri if image else triton_repository.uri
    result = run_step(deploy, given, name=service_name, storage_uri=storage_uri, result_json=deployment.path)
    deployment.metadata.update(result)
    progress.done()
    return result["url"]


STEPS = {
    "download": download_component,
    "preprocess": preprocess_component,
    "train": train_component,
    "export": export_component,
    "evaluate": evaluate_component,
    "reject": reject_component,
    "shard_plan": shard_plan_component,
    "score": score_component,
    "join": join_component,
    "register": register_component,
    "report": report_component,
    "deploy": deploy_component,
}


def kfp_components(image):
    """Each step as a KFP component whose container runs `image` (which has this package and kfp installed)."""
    return {
        name: dsl.component(function, base_image=image, install_kfp_package=False) for name, function in STEPS.items()
    }


# Where a component's input sets its step function's argument of another name or kind, on purpose: the input ->
# that argument. Every other parameter of a component is its function's argument of the same name and type.
FUNCTION_ARGUMENTS = {
    "train": {
        "pseudo_labels": "pseudo_label_data",  # a yes or no here; the function takes the test images, or None
        "checkpoint_subfolder": "checkpoint_dir",  # joined to checkpoint_dir: one folder a run on a cluster's volume
    },
    "score": {"score_with_int8": "onnx_model"},  # which of the two models the function scores with
    "register": {"onnx_model": "model_uri"},  # its MLflow URI, which export put in the model's metadata
    # KServe copies the model from its URI: our image's, or the Triton repository's for KServe's stock runtime.
    "deploy": {"service_name": "name", "onnx_model": "storage_uri", "triton_repository": "storage_uri"},
}
# The step functions' options that a pipeline leaves at their defaults.
FUNCTION_DEFAULTS_KEPT = {
    "export": {"calibration_images", "opset"},
    "score": {"batch_size"},
    "report": {"sample_count"},
    "deploy": {"min_replicas", "max_replicas", "service_account", "cpu", "memory", "timeout", "poll_seconds"},
}
