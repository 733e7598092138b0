import numpy as np
import pandas as pd
import pytest

from common.errors import InputError
from common.onnx_model import load_session, predict
from components.kaggle_csv import read_csv
from components.preprocess import as_images
from components.score import join_submissions, score, shard_plan
from tests.conftest import run_module


def test_submission_has_kaggles_shape_header_ids_and_labels(tmp_path, onnx_model, fixture_data):
    summary = score(onnx_model, fixture_data / "test.csv", tmp_path / "submission.csv", batch_size=16)
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
    result = run_module(
        "-m",
        "components.score",
        "--onnx-model",
        str(onnx_model),
        "--test-csv",
        str(fixture_data / "test.csv"),
        "--submission",
        str(tmp_path / "s.csv"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("scored 60 rows")
    result = run_module(
        "-m",
        "components.score",
        "--onnx-model",
        str(onnx_model),
        "--test-csv",
        str(fixture_data / "train.csv"),
        "--submission",
        str(tmp_path / "t.csv"),
    )
    assert result.returncode == 2
    assert "column 1: expected 'pixel0', found 'label'" in result.stderr
    assert not (tmp_path / "t.csv").exists()


@pytest.mark.parametrize(
    "shards, sizes", [(1, [60]), (4, [15, 15, 15, 15]), (7, [9, 8, 9, 8, 9, 8, 9]), (100, [1] * 60)]
)
def test_shard_plan_covers_every_row_once(fixture_data, shards, sizes):
    plan = shard_plan(fixture_data / "test.csv", shards)
    assert [shard["stop_row"] - shard["start_row"] for shard in plan] == sizes
    assert plan[0]["start_row"] == 0 and plan[-1]["stop_row"] == 60
    assert all(previous["stop_row"] == shard["start_row"] for previous, shard in zip(plan, plan[1:]))


def test_shards_joined_equal_the_whole_file_scored_at_once(tmp_path, onnx_model, fixture_data, monkeypatch):
    monkeypatch.setattr("components.score.READ_ROWS", 16)  # shard edges fall inside and between read chunks
    score(onnx_model, fixture_data / "test.csv", tmp_path / "whole.csv")
    shards = []
    for number, shard in enumerate(shard_plan(fixture_data / "test.csv", 7)):
        shards.append(tmp_path / f"shard-{number}.csv")
        result = score(onnx_model, fixture_data / "test.csv", shards[-1], **shard)
        assert result["rows"] == shard["stop_row"] - shard["start_row"]
    assert join_submissions(shards, tmp_path / "joined.csv") == 60
    assert (tmp_path / "joined.csv").read_text() == (tmp_path / "whole.csv").read_text()


def test_join_refuses_shards_out_of_order_and_writes_nothing(tmp_path, onnx_model, fixture_data):
    plan = shard_plan(fixture_data / "test.csv", 2)
    for number, shard in enumerate(plan):
        score(onnx_model, fixture_data / "test.csv", tmp_path / f"shard-{number}.csv", **shard)
    with pytest.raises(InputError, match=r"shard-1.csv: line 2: expected ImageId 1, found '31'"):
        join_submissions([tmp_path / "shard-1.csv", tmp_path / "shard-0.csv"], tmp_path / "submission.csv")
    assert not (tmp_path / "submission.csv").exists()
    (tmp_path / "bad.csv").write_text("Id,Label\n")
    with pytest.raises(InputError, match="bad.csv: line 1: expected the header 'ImageId,Label', found 'Id,Label'"):
        join_submissions([tmp_path / "bad.csv"], tmp_path / "submission.csv")


def test_bad_row_ranges_are_refused(tmp_path, onnx_model, fixture_data):
    with pytest.raises(ValueError, match="need 0 <= start_row < stop_row, got 5 and 5"):
        score(onnx_model, fixture_data / "test.csv", tmp_path / "s.csv", start_row=5, stop_row=5)
    with pytest.raises(ValueError, match="shards must be at least 1"):
        shard_plan(fixture_data / "test.csv", 0)
