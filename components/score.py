"""Score: Kaggle's test.csv predicted with onnxruntime in batches into submission.csv (whole, or shards joined after).

    python -m components.score --onnx-model work/model.onnx \
        --test-csv data/digit-recognizer/test.csv --submission work/submission.csv
"""

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common.errors import InputError
from common.kaggle_format import SUBMISSION_HEADER
from common.onnx_model import load_session, predict
from components.artifacts import atomic_path
from components.cli import command_line
from components.kaggle_csv import iter_csv
from components.preprocess import as_images

READ_ROWS = 8192  # rows parsed at a time: big enough that pandas' per-chunk cost vanishes, 6 MB of pixels


def prefetched(iterator):
    """Items of `iterator`, the next one read in a worker thread while the caller works on this one."""
    with ThreadPoolExecutor(max_workers=1) as reader:
        upcoming = reader.submit(next, iterator, None)
        while (item := upcoming.result()) is not None:
            upcoming = reader.submit(next, iterator, None)
            yield item


def score(
    onnx_model: str | Path,
    test_csv: str | Path,
    submission: str | Path,
    start_row: int = 0,
    stop_row: int | None = None,
    batch_size: int = 1024,
) -> dict:
    """Write `ImageId,Label` for rows `start_row` up to `stop_row` of test.csv (all by default), in order.

    ImageId counts from 1 at the file's first row, so shards of one file join into Kaggle's
    submission. Memory stays at two chunks of rows: the next chunk is parsed while onnxruntime
    scores this one. Returns the row count and the throughput.

    Args:
        onnx_model: model.onnx from export
        test_csv: Kaggle's test.csv (pixel0..pixel783)
        submission: where to write submission.csv
        start_row: first row to score, from 0
        stop_row: score up to this row, exclusive (default: the end)
        batch_size: images per onnxruntime call
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if start_row < 0 or (stop_row is not None and stop_row <= start_row):
        raise ValueError(f"need 0 <= start_row < stop_row, got {start_row} and {stop_row}")
    session = load_session(onnx_model)
    started = time.perf_counter()
    rows = 0
    with atomic_path(submission) as temporary, open(temporary, "w", newline="") as file:
        file.write(SUBMISSION_HEADER + "\n")
        for first_row, pixels in prefetched(row_ranges(test_csv, start_row, stop_row)):
            _, labels = predict(session, as_images(pixels), batch_size)
            image_ids = np.arange(first_row + 1, first_row + len(labels) + 1)
            file.write("".join(f"{image_id},{label}\n" for image_id, label in zip(image_ids.tolist(), labels.tolist())))
            rows += len(labels)
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds, "images_per_second": rows / seconds}


def row_ranges(test_csv, start_row, stop_row):
    """`(first row number, pixels)` chunks of test.csv, cut to rows `start_row` up to `stop_row`.

    A shard parses the rows before its own: parsing costs a tenth of scoring, and so every shard
    counts rows (and checks values) exactly as a whole-file read does.
    """
    first_row = 0
    for _, pixels in iter_csv(test_csv, labelled=False, chunk_rows=READ_ROWS):
        last_row = first_row + len(pixels)
        if last_row > start_row:
            yield max(first_row, start_row), pixels[max(0, start_row - first_row) : (stop_row or last_row) - first_row]
        if stop_row is not None and last_row >= stop_row:
            return
        first_row = last_row


def shard_plan(test_csv: str | Path, shards: int) -> list[dict]:
    """Split test.csv's rows into `shards` contiguous ranges of nearly equal size (fewer if rows are fewer).

    Reading the whole file here also checks it before any scoring starts.
    Returns [{"start_row": ..., "stop_row": ...}, ...].

    Args:
        test_csv: Kaggle's test.csv (pixel0..pixel783)
        shards: how many ranges to cut it into
    """
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    rows = sum(len(pixels) for _, pixels in iter_csv(test_csv, labelled=False, chunk_rows=READ_ROWS))
    bounds = np.linspace(0, rows, min(shards, rows) + 1).round().astype(int).tolist()
    return [{"start_row": start, "stop_row": stop} for start, stop in zip(bounds, bounds[1:])]


def join_submissions(shard_submissions: list[str | Path], submission: str | Path) -> int:
    """Concatenate shard submissions, in order, into one submission.csv; ImageIds must run 1, 2, ... without gaps.

    Returns the number of rows.

    Args:
        shard_submissions: the shards' submission.csv files, from score, in the order of their rows
        submission: where to write the joined submission.csv
    """
    next_image_id = 1
    with atomic_path(submission) as temporary, open(temporary, "w", newline="") as output:
        output.write(SUBMISSION_HEADER + "\n")
        for shard in shard_submissions:
            with open(shard, newline="") as file:
                header = file.readline().strip()
                if header != SUBMISSION_HEADER:
                    raise InputError(f"{shard}: line 1: expected the header {SUBMISSION_HEADER!r}, found {header!r}")
                for line_number, line in enumerate(file, start=2):
                    image_id = line.partition(",")[0]
                    if image_id != str(next_image_id):
                        raise InputError(
                            f"{shard}: line {line_number}: expected ImageId {next_image_id}, found {image_id!r}"
                        )
                    output.write(line)
                    next_image_id += 1
    return next_image_id - 1


def main(argv=None):
    summary = command_line(score, argv)
    print(f"scored {summary['rows']} rows in {summary['seconds']:.1f} s ({summary['images_per_second']:.0f} images/s)")


if __name__ == "__main__":
    main()
