"""Kaggle's Digit Recognizer CSVs: read fast, validate strictly, name what is wrong.

`train.csv` is `label,pixel0,...,pixel783`; `test.csv` the same without `label`.
Every value is an integer: labels 0-9, pixels 0-255. Windows line endings and a
UTF-8 byte-order mark are accepted.
"""

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import InputError
from common.kaggle_format import TEST_HEADER, TRAIN_HEADER, value_problem


def expected_header(labelled):
    return TRAIN_HEADER if labelled else TEST_HEADER


def check_header(path, labelled):
    """Raise InputError unless `path` exists and starts with Kaggle's header line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    with open(path, encoding="utf-8-sig", newline="") as file:
        try:
            header = next(csv.reader(file), None)
        except (UnicodeDecodeError, csv.Error) as error:
            raise InputError(f"{path}: line 1 (header): not a CSV text line ({error})") from None
    if not header:
        raise InputError(f"{path}: file is empty (expected the header line {_describe(labelled)})")
    expected = expected_header(labelled)
    header = [name.strip() for name in header]
    for column, (found, wanted) in enumerate(zip(header, expected), start=1):
        if found != wanted:
            raise InputError(f"{path}: line 1 (header), column {column}: expected '{wanted}', found '{found}'")
    if len(header) != len(expected):
        raise InputError(
            f"{path}: line 1 (header) has {len(header)} columns, expected {len(expected)} ({_describe(labelled)})"
        )


def iter_csv(path, labelled, chunk_rows=4096):
    """Yield `(labels, pixels)` chunks: labels uint8 [n] (None if unlabelled), pixels uint8 [n, 784].

    Memory stays at one chunk however long the file. The fast path is pandas' C
    parser; anything it stumbles on is located exactly by `_find_bad_value`.
    """
    check_header(path, labelled)
    width = len(expected_header(labelled))
    rows_read = 0
    try:
        # uint8 straight from the text: pandas refuses values outside 0-255, text, blanks and short rows.
        chunks = pd.read_csv(path, encoding="utf-8-sig", dtype=np.uint8, chunksize=chunk_rows, engine="c")
        for chunk in chunks:
            values = chunk.to_numpy()
            if len(values) == 0:
                continue
            if values.shape[1] != width or (labelled and values[:, 0].max() > 9):
                raise ValueError("a row of the wrong width or a label above 9")
            rows_read += len(values)
            yield (values[:, 0], values[:, 1:]) if labelled else (None, values)
    except (ValueError, OverflowError, pd.errors.ParserError, UnicodeDecodeError) as error:
        _find_bad_value(path, labelled)
        raise InputError(f"{path}: could not be read as a Kaggle CSV ({error})") from None
    if rows_read == 0:
        raise InputError(f"{path}: has a header but no data rows")


def read_csv(path, labelled):
    """Read a whole Kaggle CSV: `(labels or None, pixels)` as uint8 arrays."""
    chunks = list(iter_csv(path, labelled, chunk_rows=8192))
    pixels = np.concatenate([pixels for _, pixels in chunks])
    labels = np.concatenate([labels for labels, _ in chunks]) if labelled else None
    return labels, pixels


def _find_bad_value(path, labelled):
    """Scan `path` line by line and raise InputError for the first bad value (slow; only on errors)."""
    header = expected_header(labelled)
    with open(path, encoding="utf-8-sig", newline="") as file:
        reader = csv.reader(file)
        try:
            next(reader)
            for row_number, row in enumerate(filter(None, reader), start=1):
                where = f"{path}: row {row_number} (line {reader.line_num})"
                if len(row) != len(header):
                    raise InputError(f"{where} has {len(row)} values, expected {len(header)}")
                for name, value in zip(header, row):
                    problem = value_problem(name, value)
                    if problem:
                        raise InputError(f"{where}, column '{name}': {problem}")
        except (UnicodeDecodeError, csv.Error) as error:
            raise InputError(f"{path}: line {reader.line_num + 1}: not a CSV text line ({error})") from None


def _describe(labelled):
    return "label,pixel0,...,pixel783" if labelled else "pixel0,...,pixel783"
