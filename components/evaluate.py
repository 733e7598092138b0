"""Evaluate: the ONNX model's accuracy, loss, per-digit precision and recall and confusion matrix on validation.

    python -m components.evaluate --onnx-model work/model.onnx --int8-model work/model.int8.onnx \
        --validation-data work/validation.npz --metrics work/metrics.json
"""

from pathlib import Path

import numpy as np

from common.errors import InputError
from common.onnx_model import load_session, predict
from components import tracking
from components.artifacts import load_arrays, save_json
from components.cli import command_line
from components.plots import confusion_matrix


def classification_metrics(labels, probabilities):
    """Accuracy, log loss, confusion matrix and per-digit precision/recall/F1 from true labels and probabilities."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = probabilities.argmax(axis=1)
    matrix = np.zeros((10, 10), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    true_positives = np.diag(matrix)
    predicted_counts, true_counts = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(true_positives, predicted_counts, out=np.zeros(10), where=predicted_counts > 0)
    recall = np.divide(true_positives, true_counts, out=np.zeros(10), where=true_counts > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(10), where=precision + recall > 0)
    chosen = probabilities[np.arange(len(labels)), labels]
    return {
        "images": int(len(labels)),
        "accuracy": float((predicted == labels).mean()),
        "loss": float(-np.log(np.clip(chosen, 1e-7, 1.0)).mean()),
        "errors": int((predicted != labels).sum()),
        "per_class": {
            str(digit): {
                "precision": float(precision[digit]),
                "recall": float(recall[digit]),
                "f1": float(f1[digit]),
                "support": int(true_counts[digit]),
            }
            for digit in range(10)
        },
        "confusion_matrix": matrix.tolist(),
    }


def evaluate(
    onnx_model: str | Path,
    int8_model: str | Path,
    validation_data: str | Path,
    metrics_json: str | Path,
    confusion_matrix_png: str | Path | None = None,
) -> dict:
    """Score the validation set with the exported fp32 and int8 models; write the metrics (JSON) and optionally the
    confusion matrix plot.

    The top-level figures are the fp32 model's; `int8` holds the int8 model's accuracy and loss, and
    how often its labels agree with fp32's. With MLflow tracking (components/tracking.py) the task's run gets what
    its Metrics outputs (which KFP's launcher logs there) leave out: per-digit F1 and support, the int8 model's loss,
    the metrics file and the confusion matrix.

    Args:
        onnx_model: model.onnx from export
        int8_model: model.int8.onnx from export
        validation_data: validation.npz from preprocess
        metrics_json: where to write metrics.json
        confusion_matrix_png: where to write the confusion matrix as PNG (optional)
    """
    images, labels = load_arrays(validation_data, "images", "labels")
    probabilities, _ = predict(load_session(onnx_model), images)
    int8_probabilities, _ = predict(load_session(int8_model), images)
    metrics = classification_metrics(labels, probabilities)
    int8_metrics = classification_metrics(labels, int8_probabilities)
    metrics["int8"] = {
        "accuracy": int8_metrics["accuracy"],
        "loss": int8_metrics["loss"],
        "agreement_with_fp32": float((int8_probabilities.argmax(axis=1) == probabilities.argmax(axis=1)).mean()),
    }
    save_json(metrics_json, metrics)
    if confusion_matrix_png:
        confusion_matrix(metrics["confusion_matrix"], confusion_matrix_png)
    per_digit = {
        f"{figure}_{digit}": scores[figure]
        for digit, scores in metrics["per_class"].items()
        for figure in ("f1", "support")
    }
    tracking.log_metrics({**per_digit, "int8_loss": metrics["int8"]["loss"]})
    tracking.log_files(
        {
            "metrics.json": metrics_json,
            **({"confusion_matrix.png": confusion_matrix_png} if confusion_matrix_png else {}),
        }
    )
    return metrics


def require_accuracy(accuracy: float, accuracy_threshold: float) -> None:
    """The pipeline's gate: refuse a model whose validation accuracy is below the threshold.

    Args:
        accuracy: the model's validation accuracy, from evaluate
        accuracy_threshold: the least accuracy a model is scored and published with
    """
    if accuracy < accuracy_threshold:
        raise InputError(
            f"validation accuracy {accuracy:.4%} is below accuracy_threshold {accuracy_threshold:.4%}: "
            "the model is not scored or published"
        )


def main(argv=None):
    metrics = command_line(
        evaluate, argv, aliases={"metrics_json": "--metrics", "confusion_matrix_png": "--confusion-matrix"}
    )
    print(
        f"validation accuracy {metrics['accuracy']:.4f} ({metrics['errors']} errors in {metrics['images']}), "
        f"loss {metrics['loss']:.4f}; int8 model {metrics['int8']['accuracy']:.4f}"
    )


if __name__ == "__main__":
    main()
