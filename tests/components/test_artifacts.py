import json

import numpy as np
import pytest

from common.errors import InputError
from components.artifacts import atomic_path, load_arrays, load_json, save_arrays, save_json


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "submission.csv"
    target.write_text("old and good\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half-writ")
            raise RuntimeError("step failed")
    assert target.read_text() == "old and good\n"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_path_replaces_on_success_and_is_readable_by_others(tmp_path):
    target = tmp_path / "nested" / "out.txt"
    with atomic_path(target) as temporary:
        temporary.write_text("new")
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o044 == 0o044


def test_arrays_round_trip_as_uint8_even_without_npz_suffix(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28, 1)
    save_arrays(tmp_path / "train_data", images=images, labels=np.array([1, 7], np.uint8))
    loaded_images, labels = load_arrays(tmp_path / "train_data", "images", "labels")
    assert loaded_images.dtype == np.uint8
    np.testing.assert_array_equal(loaded_images, images)
    assert labels.tolist() == [1, 7]


def test_load_arrays_names_what_is_wrong(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_arrays(tmp_path / "missing.npz", "images")
    save_arrays(tmp_path / "test.npz", images=np.zeros((1, 28, 28, 1), np.uint8))
    with pytest.raises(InputError, match="has no array named labels"):
        load_arrays(tmp_path / "test.npz", "images", "labels")
    (tmp_path / "text.npz").write_text("not arrays")
    with pytest.raises(InputError, match="not an array file written by preprocess"):
        load_arrays(tmp_path / "text.npz", "images")


def test_save_json_writes_readable_json(tmp_path):
    save_json(tmp_path / "m.json", {"accuracy": 0.99})
    assert json.loads((tmp_path / "m.json").read_text()) == {"accuracy": 0.99}


def test_load_json_reads_back_and_names_a_bad_file(tmp_path):
    save_json(tmp_path / "m.json", {"accuracy": 0.99})
    assert load_json(tmp_path / "m.json", "metrics") == {"accuracy": 0.99}
    with pytest.raises(InputError, match=r"none.json: file not found \(metrics\)"):
        load_json(tmp_path / "none.json", "metrics")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InputError, match="bad.json: not JSON"):
        load_json(tmp_path / "bad.json", "metrics")
