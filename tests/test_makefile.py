import os
import subprocess

from tests.conftest import ROOT


def test_make_data_without_files_or_credentials_says_how_to_get_them(tmp_path):
    environment = {key: value for key, value in os.environ.items() if not key.startswith("KAGGLE_")}
    environment["HOME"] = str(tmp_path)  # no ~/.kaggle/kaggle.json
    result = subprocess.run(["make", "-s", "data", f"DATA={tmp_path / 'data'}"], cwd=ROOT, env=environment,
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "train.csv and test.csv are missing" in result.stdout
    assert "kaggle.com/competitions/digit-recognizer/data" in result.stdout
    assert "error: no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY" in result.stderr
    assert "kaggle.json" in result.stderr and "Traceback" not in result.stderr


def test_make_data_with_the_files_does_nothing(tmp_path):
    for name in ("train.csv", "test.csv"):
        (tmp_path / name).write_text("x\n")
    result = subprocess.run(["make", "-s", "data", f"DATA={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == ""
