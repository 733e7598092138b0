import numpy as np
import pandas as pd
import pytest

from components.artifacts import InputError
from components.kaggle_csv import read_csv
from components.onnx_model import load_session, predict
from components.preprocess import as_images
from components.score import score
from tests.conftest import run_module


def test_submission_has_kaggles_shape_header_ids_and_labels(tmp_path, onnx_model, fixture_data):
    summary = score(onnx_model, fixture_data / "test.csv", tmp_path / "submission.csv",
                    samples_png=tmp_path / "samples.png", batch_size=16)
    assert summary["rows"] == 60
    text = (tmp_path / "submission.csv").read_text()
    assert text.startswith("ImageId,Label\n")
    submission = pd.read_csv(tmp_path / "submission.csv")
    assert list(submission.columns) == ["ImageId", "Label"]
    assert submission["ImageId"].tolist() == list(range(1, 61))
    assert submission["Label"].between(0, 9).all()
    _, pixels = read_csv(fixture_data / "test.csv", labelled=False)
    _, expected = predict(load_session(onnx_model), as_images(pixels))
    np.testing.assert_array_equal(submission["Label"], expected)
    assert (tmp_path / "samples.png").read_bytes()[:4] == b"\x89PNG"


def test_batch_size_does_not_change_the_answer(tmp_path, onnx_model, fixture_data):
    score(onnx_model, fixture_data / "test.csv", tmp_path / "a.csv", batch_size=7)
    score(onnx_model, fixture_data / "test.csv", tmp_path / "b.csv", batch_size=1000)
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def test_bad_test_file_keeps_the_previous_submission(tmp_path, onnx_model, fixture_data):
    lines = (fixture_data / "test.csv").read_text().splitlines()
    lines[50] = lines[50].rsplit(",", 1)[0]  # 783 pixels
    bad = tmp_path / "test.csv"
    bad.write_text("\n".join(lines) + "\n")
    (tmp_path / "submission.csv").write_text("previous\n")
    with pytest.raises(InputError, match=r"row 50 \(line 51\) has 783 values, expected 784"):
        score(onnx_model, bad, tmp_path / "submission.csv", batch_size=16)
    assert (tmp_path / "submission.csv").read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv", "test.csv"]


def test_cli(tmp_path, onnx_model, fixture_data):
    result = run_module("-m", "components.score", "--onnx-model", str(onnx_model), "--test-csv",
                        str(fixture_data / "test.csv"), "--submission", str(tmp_path / "s.csv"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("scored 60 rows")
    result = run_module("-m", "components.score", "--onnx-model", str(onnx_model), "--test-csv",
                        str(fixture_data / "train.csv"), "--submission", str(tmp_path / "t.csv"))
    assert result.returncode == 2
    assert "column 1: expected 'pixel0', found 'label'" in result.stderr
    assert not (tmp_path / "t.csv").exists()
