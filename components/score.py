"""Score: predict every row of Kaggle's test.csv with onnxruntime, in batches, into Kaggle's submission.csv.

    python -m components.score --onnx-model work/model.onnx \
        --test-csv data/digit-recognizer/test.csv --submission work/submission.csv
"""
import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from components.artifacts import atomic_path
from components.cli import run_cli, signature_defaults
from components.kaggle_csv import iter_csv
from components.kaggle_format import SUBMISSION_HEADER
from components.onnx_model import load_session, predict
from components.plots import digit_grid
from components.preprocess import as_images


READ_ROWS = 8192  # rows parsed at a time: big enough that pandas' per-chunk cost vanishes, 6 MB of pixels


def prefetched(iterator):
    """Items of `iterator`, the next one read in a worker thread while the caller works on this one."""
    with ThreadPoolExecutor(max_workers=1) as reader:
        upcoming = reader.submit(next, iterator, None)
        while (item := upcoming.result()) is not None:
            upcoming = reader.submit(next, iterator, None)
            yield item


def score(onnx_model, test_csv, submission, samples_png=None, batch_size=1024, sample_count=40):
    """Write `ImageId,Label` (ImageId from 1, one row per test row, in order); memory stays at two chunks of rows.

    Reading the CSV overlaps inference: the next chunk is parsed while onnxruntime scores this one.
    With `samples_png`, the first `sample_count` test digits are drawn with their predicted labels.
    Returns the row count and the throughput.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    session = load_session(onnx_model)
    started = time.perf_counter()
    rows = 0
    samples, sample_labels = [], []
    with atomic_path(submission) as temporary, open(temporary, "w", newline="") as file:
        file.write(SUBMISSION_HEADER + "\n")
        for _, pixels in prefetched(iter_csv(test_csv, labelled=False, chunk_rows=READ_ROWS)):
            images = as_images(pixels)
            _, labels = predict(session, images, batch_size)
            image_ids = np.arange(rows + 1, rows + len(labels) + 1)
            file.write("".join(f"{image_id},{label}\n" for image_id, label in zip(image_ids.tolist(), labels.tolist())))
            if len(samples) < sample_count:
                samples.extend(images[:sample_count - len(samples)])
                sample_labels.extend(labels[:sample_count - len(sample_labels)])
            rows += len(labels)
    seconds = time.perf_counter() - started
    if samples_png:
        digit_grid(samples, sample_labels, samples_png)
    return {"rows": rows, "seconds": seconds, "images_per_second": rows / seconds}


def main(argv=None):
    defaults = signature_defaults(score)
    parser = argparse.ArgumentParser(prog="python -m components.score", description=__doc__.splitlines()[0])
    parser.add_argument("--onnx-model", required=True, help="model.onnx from export")
    parser.add_argument("--test-csv", required=True, help="Kaggle's test.csv (pixel0..pixel783)")
    parser.add_argument("--submission", required=True, help="where to write submission.csv")
    parser.add_argument("--samples", dest="samples_png", help="where to draw sample test digits with their predictions (PNG, optional)")
    parser.add_argument("--batch-size", type=int, default=defaults["batch_size"], help="images per onnxruntime call (default: %(default)s)")
    parser.add_argument("--sample-count", type=int, default=defaults["sample_count"], help="digits drawn in --samples (default: %(default)s)")
    summary = run_cli(score, vars(parser.parse_args(argv)))
    print(f"scored {summary['rows']} rows in {summary['seconds']:.1f} s ({summary['images_per_second']:.0f} images/s)")


if __name__ == "__main__":
    main()
