import base64
import re

import pytest

from common.errors import InputError
from components.report import report
from components.score import score
from tests.conftest import run_module


@pytest.fixture
def run_files(tmp_path, trained_model, exported, arrays, fixture_data):
    from components.evaluate import evaluate

    onnx_model, int8_model = exported
    evaluate(onnx_model, int8_model, arrays["validation"], tmp_path / "metrics.json")
    score(onnx_model, fixture_data / "test.csv", tmp_path / "submission.csv")
    return dict(
        history=trained_model[0] / "history.json",
        metrics_json=tmp_path / "metrics.json",
        submission=tmp_path / "submission.csv",
        test_csv=fixture_data / "test.csv",
    )


def test_report_is_one_page_with_figures_and_inline_pictures(tmp_path, run_files):
    figures = report(**run_files, report_html=tmp_path / "report.html", test_samples_png=tmp_path / "samples.png")
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!doctype html>")
    assert re.search(r"<th>validation accuracy</th><td>\d+\.\d{4}% \(\d+ errors in 30 images\)</td>", page)
    assert "<th>ensemble members</th><td>1</td>" in page and figures["ensemble members"] == "1"
    pictures = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(pictures) == 3  # training curves, confusion matrix, sample digits
    assert all(base64.b64decode(picture)[:4] == b"\x89PNG" for picture in pictures)
    assert base64.b64decode(pictures[2]) == (tmp_path / "samples.png").read_bytes()
    assert "The first 40 test digits" in page
    assert "http" not in page.replace("<!doctype html>", "")  # nothing fetched from elsewhere


def test_missing_or_bad_inputs_are_named(tmp_path, run_files):
    with pytest.raises(InputError, match=r"none.json: file not found \(metrics.json from evaluate\)"):
        report(**{**run_files, "metrics_json": tmp_path / "none.json"}, report_html=tmp_path / "r.html")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="broken.json: not JSON"):
        report(**{**run_files, "history": tmp_path / "broken.json"}, report_html=tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_cli(tmp_path, run_files):
    arguments = [
        "--history",
        run_files["history"],
        "--metrics",
        run_files["metrics_json"],
        "--submission",
        run_files["submission"],
        "--test-csv",
        run_files["test_csv"],
        "--report",
        tmp_path / "r.html",
    ]
    result = run_module("-m", "components.report", *map(str, arguments))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "r.html").is_file()
