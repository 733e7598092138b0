import json

import numpy as np
import pytest

from common.errors import InputError
from components.evaluate import classification_metrics, evaluate, require_accuracy
from tests.conftest import run_module


def test_classification_metrics_by_hand():
    labels = np.array([0, 0, 1, 1, 2])
    probabilities = np.full((5, 10), 0.01)
    for row, predicted in enumerate([0, 1, 1, 1, 2]):
        probabilities[row, predicted] = 0.91
    metrics = classification_metrics(labels, probabilities)
    assert metrics["accuracy"] == 0.8
    assert metrics["errors"] == 1
    assert metrics["confusion_matrix"][0][:3] == [1, 1, 0]
    assert metrics["per_class"]["0"] == {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    assert metrics["per_class"]["1"]["precision"] == 2 / 3
    assert metrics["per_class"]["9"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    expected_loss = -(4 * np.log(0.91) + np.log(0.01)) / 5
    assert abs(metrics["loss"] - expected_loss) < 1e-9


def test_evaluate_writes_json_and_plot(tmp_path, exported, arrays):
    metrics = evaluate(*exported, arrays["validation"], tmp_path / "metrics.json", tmp_path / "cm.png")
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert metrics["images"] == 30
    assert sum(map(sum, metrics["confusion_matrix"])) == 30
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"
    assert set(metrics["int8"]) == {"accuracy", "loss", "agreement_with_fp32"}
    assert abs(metrics["int8"]["accuracy"] - metrics["accuracy"]) <= 1 - metrics["int8"]["agreement_with_fp32"] + 1e-9


def test_cli_reports_accuracy_and_bad_model(tmp_path, exported, arrays):
    onnx_model, int8_model = exported
    result = run_module(
        "-m",
        "components.evaluate",
        "--onnx-model",
        str(onnx_model),
        "--int8-model",
        str(int8_model),
        "--validation-data",
        str(arrays["validation"]),
        "--metrics",
        str(tmp_path / "m.json"),
    )
    assert result.returncode == 0
    assert result.stdout.startswith("validation accuracy ")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    result = run_module(
        "-m",
        "components.evaluate",
        "--onnx-model",
        str(tmp_path / "bad.onnx"),
        "--int8-model",
        str(int8_model),
        "--validation-data",
        str(arrays["validation"]),
        "--metrics",
        str(tmp_path / "m2.json"),
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {tmp_path / 'bad.onnx'}: not an ONNX model onnxruntime can load")
    assert not (tmp_path / "m2.json").exists()


def test_the_gate_refuses_a_model_below_the_threshold():
    require_accuracy(0.995, 0.99)
    require_accuracy(0.99, 0.99)
    with pytest.raises(
        InputError,
        match=r"validation accuracy 98.5000% is below accuracy_threshold 99.0000%: "
        "the model is not scored or published",
    ):
        require_accuracy(0.985, 0.99)
