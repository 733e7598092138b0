import numpy as np
import pandas as pd
import pytest

from common.errors import InputError
from common.kaggle_format import TEST_HEADER, TRAIN_HEADER
from components.kaggle_csv import iter_csv, read_csv


def write_rows(path, header, rows, newline="\n", bom=False):
    text = newline.join([",".join(header), *(",".join(map(str, row)) for row in rows)]) + newline
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return path


def train_rows(count=3):
    return [[digit % 10, *([0] * 783), 255] for digit in range(count)]


def test_reads_the_fixture_as_pandas_does(fixture_data):
    labels, pixels = read_csv(fixture_data / "train.csv", labelled=True)
    expected = pd.read_csv(fixture_data / "train.csv").to_numpy()
    assert labels.dtype == np.uint8 and pixels.dtype == np.uint8
    assert pixels.shape == (300, 784)
    np.testing.assert_array_equal(labels, expected[:, 0])
    np.testing.assert_array_equal(pixels, expected[:, 1:])


def test_unlabelled_test_file(fixture_data):
    labels, pixels = read_csv(fixture_data / "test.csv", labelled=False)
    assert labels is None
    assert pixels.shape == (60, 784)


def test_chunks_cover_every_row_in_order(fixture_data):
    chunks = list(iter_csv(fixture_data / "train.csv", labelled=True, chunk_rows=64))
    assert [len(labels) for labels, _ in chunks] == [64, 64, 64, 64, 44]
    _, pixels = read_csv(fixture_data / "train.csv", labelled=True)
    np.testing.assert_array_equal(np.concatenate([p for _, p in chunks]), pixels)


@pytest.mark.parametrize("newline, bom", [("\r\n", False), ("\n", True), ("\r\n", True)])
def test_windows_line_endings_and_byte_order_mark_are_accepted(tmp_path, newline, bom):
    path = write_rows(tmp_path / "train.csv", TRAIN_HEADER, train_rows(), newline, bom)
    labels, pixels = read_csv(path, labelled=True)
    assert labels.tolist() == [0, 1, 2]
    assert pixels[:, -1].tolist() == [255, 255, 255]


def bad_row(position, value):
    row = [3, *([0] * 784)]
    row[position] = value
    return row


@pytest.mark.parametrize(
    "row, message",
    [
        (bad_row(5, 256), "row 2 (line 3), column 'pixel4': pixel value 256 is outside 0-255"),
        (bad_row(5, -1), "row 2 (line 3), column 'pixel4': pixel value -1 is outside 0-255"),
        (bad_row(5, "abc"), "row 2 (line 3), column 'pixel4': 'abc' is not an integer"),
        (bad_row(5, "1.5"), "row 2 (line 3), column 'pixel4': '1.5' is not an integer"),
        (bad_row(5, ""), "row 2 (line 3), column 'pixel4': missing value"),
        (bad_row(0, 10), "row 2 (line 3), column 'label': label 10 is not a digit 0-9"),
        ([3, *([0] * 783)], "row 2 (line 3) has 784 values, expected 785"),
        ([3, *([0] * 782)], "row 2 (line 3) has 783 values, expected 785"),
        ([3, *([0] * 785)], "row 2 (line 3) has 786 values, expected 785"),
    ],
)
def test_bad_values_name_file_row_and_column(tmp_path, row, message):
    path = write_rows(tmp_path / "train.csv", TRAIN_HEADER, [train_rows(1)[0], row, train_rows(1)[0]])
    with pytest.raises(InputError) as error:
        read_csv(path, labelled=True)
    assert str(error.value) == f"{path}: {message}"


def test_a_bad_value_deep_in_a_large_file_is_found(tmp_path):
    rows = train_rows(5000)
    rows[4321][100] = 300
    path = write_rows(tmp_path / "train.csv", TRAIN_HEADER, rows)
    with pytest.raises(InputError, match=r"row 4322 \(line 4323\), column 'pixel99': pixel value 300"):
        read_csv(path, labelled=True)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"train.csv: file not found"):
        read_csv(tmp_path / "train.csv", labelled=True)


def test_empty_file(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("")
    with pytest.raises(InputError, match=r"train.csv: file is empty \(expected the header line label,pixel0"):
        read_csv(path, labelled=True)


def test_header_without_rows(tmp_path):
    path = write_rows(tmp_path / "test.csv", TEST_HEADER, [])
    with pytest.raises(InputError, match="test.csv: has a header but no data rows"):
        read_csv(path, labelled=False)


def test_wrong_header_names_the_column(tmp_path):
    header = list(TRAIN_HEADER)
    header[3] = "pixel_2"
    path = write_rows(tmp_path / "train.csv", header, train_rows())
    with pytest.raises(InputError, match=r"line 1 \(header\), column 4: expected 'pixel2', found 'pixel_2'"):
        read_csv(path, labelled=True)


def test_test_file_given_as_train_file(fixture_data):
    with pytest.raises(InputError, match=r"test.csv: line 1 \(header\), column 1: expected 'label', found 'pixel0'"):
        read_csv(fixture_data / "test.csv", labelled=True)


def test_header_with_too_few_columns(tmp_path):
    path = write_rows(tmp_path / "test.csv", TEST_HEADER[:-1], [])
    with pytest.raises(InputError, match=r"line 1 \(header\) has 783 columns, expected 784"):
        read_csv(path, labelled=False)


def test_binary_file(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(InputError, match=r"train.csv: line 1 \(header\)"):
        read_csv(path, labelled=True)


@pytest.mark.parametrize(
    "text",
    [
        "{header}\r\n{row}\r\n{row}\r\n",  # Windows line endings
        "\ufeff{header}\n{row}\n",  # UTF-8 byte-order mark
        "{header}\n{row}\n\n{row}\n\n",  # blank lines
        "{header}\n{spaced}\n",  # spaces and plus signs around integers
        "{header}\n{row}",  # no newline at the end
    ],
)
def test_odd_but_valid_files_read_as_pandas_reads_them(tmp_path, text):
    row = ",".join(str((7 * index) % 256) for index in range(784))
    spaced = ",".join(f" +{(3 * index) % 256} " for index in range(784))
    path = tmp_path / "test.csv"
    path.write_bytes(text.format(header=",".join(TEST_HEADER), row=row, spaced=spaced).encode())
    _, pixels = read_csv(path, labelled=False)
    expected = pd.read_csv(path, encoding="utf-8-sig").to_numpy()
    np.testing.assert_array_equal(pixels, expected)
