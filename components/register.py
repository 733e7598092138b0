"""Register: a model that passed the gate, as a new version of `digit-recognizer` in MLflow's model registry.

    python -m components.register --onnx-model work/model.onnx --model-uri models:/m-... --accuracy 0.995 \
        --train-csv data/digit-recognizer/train.csv --test-csv data/digit-recognizer/test.csv

It needs MLflow tracking (MLFLOW_TRACKING_URI and MLFLOW_RUN_ID, as KFP's backend or `pipeline.py run` sets them);
without it, nothing is registered.
"""

from pathlib import Path

from common.onnx_model import load_session, model_digest
from components import progress, tracking
from components.artifacts import file_digest
from components.cli import command_line


def register(
    onnx_model: str | Path,
    train_csv: str | Path,
    test_csv: str | Path,
    accuracy: float,
    model_uri: str = "",
) -> str:
    """Register `model_uri` (`onnx_model` as export logged it to MLflow) as a new version of the registered model
    `digit-recognizer`, tagged with the pipeline's MLflow run, the validation `accuracy`, the SHA-256 of the data and
    the model's own identity (the digest export wrote into it). Returns the version; "" when nothing is registered
    (no tracking, no logged model, or MLflow failed: one warning line).

    Args:
        onnx_model: model.onnx from export
        train_csv: Kaggle's train.csv, as the run read it
        test_csv: Kaggle's test.csv, as the run read it
        accuracy: the model's validation accuracy, from evaluate
        model_uri: the model's MLflow URI (models:/...), which export logged
    """
    if not tracking.task_run() or not model_uri:
        progress.figure(
            "not registered: " + ("export logged no MLflow model" if tracking.task_run() else "no tracking")
        )
        return ""
    tags = {
        "pipeline_run_id": tracking.parent_run() or "",
        "validation_accuracy": accuracy,
        "train_csv_sha256": file_digest(train_csv),
        "test_csv_sha256": file_digest(test_csv),
        "onnx_sha256": model_digest(load_session(onnx_model)),
    }
    version = tracking.register_model(model_uri, tags) or ""
    if version:
        progress.figure(f"registered as {tracking.REGISTERED_MODEL} version {version}")
    return version


def main(argv=None):
    print(command_line(register, argv) or "nothing registered")


if __name__ == "__main__":
    main()
