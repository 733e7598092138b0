"""Preprocess: validate Kaggle's CSVs, split a stratified validation set, write uint8 arrays.

    python -m components.preprocess --train-csv data/digit-recognizer/train.csv \
        --test-csv data/digit-recognizer/test.csv --out-dir work/
"""

from pathlib import Path

import numpy as np

from common.errors import InputError
from common.kaggle_format import IMAGE_SIZE
from components.artifacts import save_arrays
from components.cli import run_cli, step_parser
from components.kaggle_csv import read_csv


def stratified_split(labels, validation_fraction=0.1, seed=42):
    """Indices `(train, validation)`: each digit keeps its share in both parts.

    The validation set holds round(n * validation_fraction) images exactly; the
    remainders of the per-digit shares go to the digits with the largest ones.
    """
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be between 0 and 1, got {validation_fraction}")
    generator = np.random.default_rng(seed)
    digits, counts = np.unique(labels, return_counts=True)
    shares = counts * validation_fraction
    sizes = np.floor(shares).astype(int)
    remainder = int(round(len(labels) * validation_fraction)) - sizes.sum()
    sizes[np.argsort(sizes - shares, kind="stable")[:remainder]] += 1
    train_indices, validation_indices = [], []
    for digit, size in zip(digits, sizes):
        indices = generator.permutation(np.flatnonzero(labels == digit))
        validation_indices.append(indices[:size])
        train_indices.append(indices[size:])
    return (
        generator.permutation(np.concatenate(train_indices)),
        generator.permutation(np.concatenate(validation_indices)),
    )


def as_images(pixels):
    """Kaggle's flat rows of 784 pixels as images [n, 28, 28, 1]."""
    return pixels.reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 1)


def preprocess(
    train_csv: str | Path,
    test_csv: str | Path,
    train_data: str | Path,
    validation_data: str | Path,
    test_data: str | Path,
    validation_fraction: float = 0.1,
    seed: int = 42,
    train_csv_rows: int = 0,
) -> dict:
    """Read and check both CSVs, then write `images`/`labels` arrays for training, validation and test.

    Returns a summary (row counts) for logs and metadata.

    Args:
        train_csv: Kaggle's train.csv (label,pixel0..pixel783)
        test_csv: Kaggle's test.csv (pixel0..pixel783)
        train_data: where to write train.npz
        validation_data: where to write validation.npz
        test_data: where to write test.npz
        validation_fraction: share of train.csv held out, stratified by digit
        seed: seed of the split
        train_csv_rows: use only the first rows of train.csv, this many (0, or more than it holds: all of it)
    """
    if train_csv_rows < 0:
        raise ValueError(f"train_csv_rows must be 0 (all) or more, got {train_csv_rows}")
    labels, pixels = read_csv(train_csv, labelled=True)
    if train_csv_rows:  # every row is still checked: a bad file is refused whatever its rows' use
        labels, pixels = labels[:train_csv_rows], pixels[:train_csv_rows]
    _, test_pixels = read_csv(test_csv, labelled=False)
    if len(labels) * validation_fraction < 10:
        raise InputError(
            f"{train_csv}: {len(labels)} rows are too few to hold out {validation_fraction:.0%} for validation"
        )
    train_indices, validation_indices = stratified_split(labels, validation_fraction, seed)
    images = as_images(pixels)
    save_arrays(train_data, images=images[train_indices], labels=labels[train_indices])
    save_arrays(validation_data, images=images[validation_indices], labels=labels[validation_indices])
    save_arrays(test_data, images=as_images(test_pixels))
    return {"train_rows": len(train_indices), "validation_rows": len(validation_indices), "test_rows": len(test_pixels)}


def main(argv=None):
    # One folder on the command line for the three arrays, which the pipeline hands on one by one.
    outputs = {"train_data": "train.npz", "validation_data": "validation.npz", "test_data": "test.npz"}
    parser = step_parser(preprocess, exclude=tuple(outputs))
    parser.add_argument("--out-dir", required=True, help="folder for train.npz, validation.npz and test.npz")
    arguments = vars(parser.parse_args(argv))
    out_dir = arguments.pop("out_dir")
    print(run_cli(preprocess, dict(arguments, **{name: f"{out_dir}/{file}" for name, file in outputs.items()})))


if __name__ == "__main__":
    main()
