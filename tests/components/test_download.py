import os
import zipfile

import pytest

from common.errors import InputError
from components.download import download
from tests.conftest import run_module

FAKE_KAGGLE = """#!/bin/sh
# Stands in for the Kaggle CLI: `kaggle competitions download -c NAME -p FOLDER` copies a prepared archive.
echo "$@" > "$FAKE_KAGGLE_ARGS"
[ -n "$FAKE_KAGGLE_FAIL" ] && { echo "403 Client Error: Forbidden (accept the rules)" >&2; exit 1; }
cp "$FAKE_KAGGLE_ZIP" "$6/$4.zip"
"""


@pytest.fixture
def kaggle(tmp_path, monkeypatch, fixture_data):
    """A fake `kaggle` first on PATH, credentials in the environment as a Kubernetes secret would set them."""
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    (bin_folder / "kaggle").write_text(FAKE_KAGGLE)
    (bin_folder / "kaggle").chmod(0o755)
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as files:
        for name in ("train.csv", "test.csv", "sample_submission.csv"):
            files.write(fixture_data / ("test.csv" if name == "sample_submission.csv" else name), name)
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KAGGLE_ZIP", str(archive))
    monkeypatch.setenv("FAKE_KAGGLE_ARGS", str(tmp_path / "args"))
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    return archive


def test_download_fetches_and_checks_both_files(tmp_path, kaggle, fixture_data):
    download(tmp_path / "out" / "train.csv", tmp_path / "out" / "test.csv")
    assert (tmp_path / "args").read_text().split()[:4] == ["competitions", "download", "-c", "digit-recognizer"]
    for name in ("train.csv", "test.csv"):
        assert (tmp_path / "out" / name).read_bytes() == (fixture_data / name).read_bytes()
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["test.csv", "train.csv"]


def test_without_credentials_it_says_how_to_give_them(tmp_path, kaggle, monkeypatch):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(InputError, match="no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY"):
        download(tmp_path / "train.csv", tmp_path / "test.csv")
    assert not (tmp_path / "args").exists()


def test_a_failing_kaggle_cli_is_reported_in_its_own_words(tmp_path, kaggle, monkeypatch):
    monkeypatch.setenv("FAKE_KAGGLE_FAIL", "1")
    with pytest.raises(InputError, match=r"kaggle competitions download -c digit-recognizer failed: 403 Client Error"):
        download(tmp_path / "train.csv", tmp_path / "test.csv")


def test_a_wrong_archive_writes_neither_file(tmp_path, kaggle, fixture_data):
    with zipfile.ZipFile(kaggle, "w") as files:  # test.csv where train.csv should be
        files.write(fixture_data / "test.csv", "train.csv")
        files.write(fixture_data / "test.csv", "test.csv")
    with pytest.raises(InputError, match="train.csv: line 1 \\(header\\), column 1: expected 'label', found 'pixel0'"):
        download(tmp_path / "out" / "train.csv", tmp_path / "out" / "test.csv")
    assert not (tmp_path / "out").exists()
    with zipfile.ZipFile(kaggle, "w") as files:
        files.write(fixture_data / "test.csv", "test.csv")
    with pytest.raises(InputError, match="digit-recognizer.zip: has no train.csv"):
        download(tmp_path / "out" / "train.csv", tmp_path / "out" / "test.csv")


def test_cli(tmp_path, kaggle):
    result = run_module("-m", "components.download", "--out", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"downloaded train.csv and test.csv to {tmp_path / 'data'}"
