import numpy as np
import pytest

from common.errors import InputError
from components.artifacts import load_arrays
from components.preprocess import main, preprocess, stratified_split
from tests.conftest import run_module


def test_stratified_split_keeps_each_digit_share():
    labels = np.repeat(np.arange(10), [100, 200, 50, 50, 50, 50, 50, 50, 50, 350])
    train, validation = stratified_split(labels, validation_fraction=0.1, seed=1)
    assert len(np.intersect1d(train, validation)) == 0
    assert len(train) + len(validation) == len(labels)
    assert np.bincount(labels[validation]).tolist() == [10, 20, 5, 5, 5, 5, 5, 5, 5, 35]


def test_stratified_split_depends_on_seed_only():
    labels = np.arange(1000) % 10
    first, second = stratified_split(labels, 0.2, seed=3), stratified_split(labels, 0.2, seed=3)
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[1], stratified_split(labels, 0.2, seed=4)[1])


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_stratified_split_rejects_fractions_outside_0_1(fraction):
    with pytest.raises(ValueError, match="validation_fraction must be between 0 and 1"):
        stratified_split(np.arange(100) % 10, fraction)


def test_arrays_are_uint8_images_and_cover_the_input(arrays):
    train_images, train_labels = load_arrays(arrays["train"], "images", "labels")
    validation_images, validation_labels = load_arrays(arrays["validation"], "images", "labels")
    (test_images,) = load_arrays(arrays["test"], "images")
    assert train_images.dtype == np.uint8 and train_images.shape[1:] == (28, 28, 1)
    assert len(train_images) + len(validation_images) == 300
    assert len(validation_images) == 30
    assert test_images.shape == (60, 28, 28, 1)


def test_cli_writes_the_arrays(tmp_path, fixture_data):
    main(
        [
            "--train-csv",
            str(fixture_data / "train.csv"),
            "--test-csv",
            str(fixture_data / "test.csv"),
            "--out-dir",
            str(tmp_path),
            "--validation-fraction",
            "0.2",
            "--seed",
            "7",
        ]
    )
    _, labels = load_arrays(tmp_path / "validation.npz", "images", "labels")
    assert len(labels) == 60


def test_train_csv_rows_takes_the_first_rows_and_still_checks_the_rest(tmp_path, fixture_data):
    outputs = {name: tmp_path / f"{name}.npz" for name in ("train_data", "validation_data", "test_data")}
    csv_files = {"train_csv": fixture_data / "train.csv", "test_csv": fixture_data / "test.csv"}
    summary = preprocess(**csv_files, **outputs, train_csv_rows=100)
    assert (summary["train_rows"], summary["validation_rows"]) == (90, 10)
    first_labels = np.loadtxt(fixture_data / "train.csv", delimiter=",", skiprows=1, usecols=0, max_rows=100)
    labels = np.concatenate([load_arrays(outputs[name], "labels")[0] for name in ("train_data", "validation_data")])
    assert sorted(labels) == sorted(first_labels)
    assert preprocess(**csv_files, **outputs, train_csv_rows=10**6)["train_rows"] == 270  # all 300 rows
    lines = (fixture_data / "train.csv").read_text().splitlines()
    lines[200] = lines[200].replace(",0,", ",-1,", 1)
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="row 200"):
        preprocess(tmp_path / "bad.csv", csv_files["test_csv"], **outputs, train_csv_rows=100)
    with pytest.raises(ValueError, match="train_csv_rows must be 0 \\(all\\) or more, got -1"):
        preprocess(**csv_files, **outputs, train_csv_rows=-1)


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, fixture_data):
    bad = tmp_path / "train.csv"
    lines = (fixture_data / "train.csv").read_text().splitlines()
    lines[3] = lines[3].replace(",0,", ",abc,", 1)
    bad.write_text("\n".join(lines) + "\n")
    result = run_module(
        "-m",
        "components.preprocess",
        "--train-csv",
        str(bad),
        "--test-csv",
        str(fixture_data / "test.csv"),
        "--out-dir",
        str(tmp_path / "out"),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {bad}: row 3 (line 4), column 'pixel{lines[3].split(',').index('abc') - 1}': 'abc' is not an integer"
    ]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_help_explains_every_option():
    result = run_module("-m", "components.preprocess", "--help")
    for option in ("--train-csv", "--test-csv", "--out-dir", "--validation-fraction", "--seed", "--train-csv-rows"):
        assert option in result.stdout
