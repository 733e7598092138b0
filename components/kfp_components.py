"""The KFP v2 components: thin wrappers that run in the training image and call each step's function.

They live apart from the steps because KFP's executor loads a slimmed `kfp.dsl`
(no `dsl.component`) inside the running container: a step module that used the
decorator could not be imported there. The image is a setting, so `kfp_components(image)`
makes the components for a given image.
"""
from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

def preprocess_component(
    train_csv: Input[Dataset],
    test_csv: Input[Dataset],
    validation_fraction: float,
    seed: int,
    train_data: Output[Dataset],
    validation_data: Output[Dataset],
    test_data: Output[Dataset],
):
    """Validate Kaggle's CSVs and write uint8 arrays: train, stratified validation, test."""
    from components.cli import run_cli
    from components.preprocess import preprocess

    summary = run_cli(preprocess, dict(
        train_csv=train_csv.path, test_csv=test_csv.path, train_data=train_data.path,
        validation_data=validation_data.path, test_data=test_data.path,
        validation_fraction=validation_fraction, seed=seed,
    ))
    for artifact, rows in ((train_data, "train_rows"), (validation_data, "validation_rows"), (test_data, "test_rows")):
        artifact.metadata["rows"] = summary[rows]


def train_component(
    train_data: Input[Dataset],
    validation_data: Input[Dataset],
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    label_smoothing: float,
    augment: bool,
    patience: int,
    seed: int,
    model: Output[Model],
    history: Output[Artifact],
    training_curves: Output[Artifact],
):
    """Fit the CNN with augmentation, keep the best validation epoch's weights, write the per-epoch history."""
    from components.cli import run_cli
    from components.train import MODEL_FILE, train

    result = run_cli(train, dict(
        train_data=train_data.path, validation_data=validation_data.path, model_dir=model.path,
        history_path=history.path, curves_png=training_curves.path, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, weight_decay=weight_decay, label_smoothing=label_smoothing,
        augment=augment, patience=patience, seed=seed,
    ))
    model.metadata.update(framework="keras", file=MODEL_FILE, epochs_run=len(result["val_accuracy"]),
                          best_validation_accuracy=max(result["val_accuracy"]))


def export_component(
    model: Input[Model],
    train_data: Input[Dataset],
    validation_data: Input[Dataset],
    tolerance: float,
    onnx_model: Output[Model],
    int8_model: Output[Model],
    parity_metrics: Output[Metrics],
):
    """Convert to ONNX with tf2onnx; fail unless onnxruntime matches Keras on the validation set; quantize to int8."""
    from components.cli import run_cli
    from components.export import export

    parity = run_cli(export, dict(model_dir=model.path, train_data=train_data.path, validation_data=validation_data.path,
                                  onnx_model=onnx_model.path, int8_model=int8_model.path, tolerance=tolerance))
    for artifact, precision in ((onnx_model, "fp32"), (int8_model, "int8")):
        artifact.metadata.update(framework="onnx", precision=precision, input="pixels", outputs="probabilities,label")
    for name, value in parity.items():
        parity_metrics.log_metric(name, value)


def evaluate_component(
    onnx_model: Input[Model],
    int8_model: Input[Model],
    validation_data: Input[Dataset],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    metrics_json: Output[Artifact],
    confusion_matrix: Output[Artifact],
):
    """Validation accuracy, loss, per-digit precision/recall and the confusion matrix of the ONNX model."""
    from components.cli import run_cli
    from components.evaluate import evaluate

    result = run_cli(evaluate, dict(onnx_model=onnx_model.path, int8_model=int8_model.path, validation_data=validation_data.path,
                                    metrics_json=metrics_json.path, confusion_matrix_png=confusion_matrix.path))
    for name in ("accuracy", "loss", "errors", "images"):
        metrics.log_metric(name, result[name])
    metrics.log_metric("int8_accuracy", result["int8"]["accuracy"])
    metrics.log_metric("int8_agreement_with_fp32", result["int8"]["agreement_with_fp32"])
    for digit, scores in result["per_class"].items():
        metrics.log_metric(f"precision_{digit}", scores["precision"])
        metrics.log_metric(f"recall_{digit}", scores["recall"])
    classification_metrics.log_confusion_matrix([str(digit) for digit in range(10)], result["confusion_matrix"])


def score_component(
    onnx_model: Input[Model],
    int8_model: Input[Model],
    test_csv: Input[Dataset],
    score_with_int8: bool,
    submission: Output[Dataset],
    test_samples: Output[Artifact],
    scoring_metrics: Output[Metrics],
):
    """Kaggle's submission.csv from test.csv, scored in batches with onnxruntime (fp32 or int8 model)."""
    from components.cli import run_cli
    from components.score import score

    model = int8_model if score_with_int8 else onnx_model
    result = run_cli(score, dict(onnx_model=model.path, test_csv=test_csv.path,
                                 submission=submission.path, samples_png=test_samples.path))
    submission.metadata.update(result, model="int8" if score_with_int8 else "fp32")
    for name in ("rows", "seconds", "images_per_second"):
        scoring_metrics.log_metric(name, result[name])


STEPS = {
    "preprocess": preprocess_component,
    "train": train_component,
    "export": export_component,
    "evaluate": evaluate_component,
    "score": score_component,
}


def kfp_components(image):
    """Each step as a KFP component whose container runs `image` (which has this package and kfp installed)."""
    return {name: dsl.component(function, base_image=image, install_kfp_package=False) for name, function in STEPS.items()}
