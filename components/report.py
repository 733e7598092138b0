"""Report: a run on one self-contained HTML page (figures, curves, confusion matrix, test digits with predictions).

    python -m components.report --history work/model/history.json --metrics work/metrics.json \
        --submission work/submission.csv --test-csv data/digit-recognizer/test.csv --report work/report.html
"""

import base64
import html
import tempfile
from itertools import islice
from pathlib import Path

from common.errors import InputError
from common.kaggle_format import SUBMISSION_HEADER
from components import tracking
from components.artifacts import atomic_path, load_json
from components.cli import command_line
from components.kaggle_csv import iter_csv
from components.plots import confusion_matrix, digit_grid, training_curves
from components.preprocess import as_images


def first_labels(submission, count):
    """The first `count` predicted labels of a submission.csv."""
    try:
        with open(submission, newline="") as file:
            if file.readline().strip() != SUBMISSION_HEADER:
                raise InputError(f"{submission}: line 1: expected the header {SUBMISSION_HEADER!r}")
            return [line.strip().partition(",")[2] for line in islice(file, count)]
    except FileNotFoundError:
        raise InputError(f"{submission}: file not found") from None


def report(
    history: str | Path,
    metrics_json: str | Path,
    submission: str | Path,
    test_csv: str | Path,
    report_html: str | Path,
    test_samples_png: str | Path | None = None,
    sample_count: int = 40,
    service_url: str = "",
    model_version: str = "",
) -> dict:
    """Write the run's report as one HTML file (images inline, so the KFP UI shows it as it is).

    The sample grid shows the first `sample_count` test digits with their submitted labels; with
    `test_samples_png` it is also written there; `service_url` is where the deploy step serves the
    model; `model_version` its version in MLflow's model registry. With MLflow tracking (components/tracking.py) the
    page goes to the task's run too. Returns the figures the report shows.

    Args:
        history: history.json from train
        metrics_json: metrics.json from evaluate
        submission: submission.csv from score
        test_csv: Kaggle's test.csv: the digits of the sample grid
        report_html: where to write report.html
        test_samples_png: where to write the sample grid as PNG too (optional)
        sample_count: test digits in the grid
        service_url: where the model is served, shown in the report (optional)
        model_version: the model's version in MLflow's model registry, from register (optional)
    """
    history, metrics = (
        load_json(history, "history.json from train"),
        load_json(metrics_json, "metrics.json from evaluate"),
    )
    labels = first_labels(submission, sample_count)
    _, pixels = next(iter_csv(test_csv, labelled=False, chunk_rows=len(labels) or 1))
    members = history["members"]
    figures = {
        "validation accuracy": (
            f"{metrics['accuracy']:.4%} ({metrics['errors']} errors in {metrics['images']:,} images)"
        ),
        "validation log loss": f"{metrics['loss']:.4f}",
        "int8 model accuracy": f"{metrics['int8']['accuracy']:.4%}",
        "ensemble members": str(len(members)),
        "epochs trained": ", ".join(str(len(member["loss"])) for member in members),
        "pseudo-labelled test images": f"{history['pseudo_labels']:,}",
        "training speed": f"{sum(member['images_per_second'][-1] for member in members) / len(members):,.0f} images/s",
    }
    if service_url:
        figures["served at (KServe)"] = service_url
    if model_version:
        figures["registered model (MLflow)"] = f"{tracking.REGISTERED_MODEL} version {model_version}"
    with tempfile.TemporaryDirectory() as folder:
        pictures = {name: Path(folder) / f"{name}.png" for name in ("curves", "confusion", "samples")}
        training_curves(members, pictures["curves"])
        confusion_matrix(metrics["confusion_matrix"], pictures["confusion"])
        digit_grid(as_images(pixels[: len(labels)]), labels, pictures["samples"])
        inline = {name: base64.b64encode(path.read_bytes()).decode() for name, path in pictures.items()}
        if test_samples_png:
            with atomic_path(test_samples_png) as temporary:
                temporary.write_bytes(pictures["samples"].read_bytes())
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>" for name, value in figures.items()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Digit Recognizer run</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} th{{text-align:left;padding-right:2em}}
img{{max-width:100%}}</style></head><body>
<h1>Digit Recognizer run</h1>
<table>{rows}</table>
<h2>Training curves</h2><img alt="training curves" src="data:image/png;base64,{inline["curves"]}">
<h2>Confusion matrix (validation)</h2><img alt="confusion matrix" src="data:image/png;base64,{inline["confusion"]}">
<h2>The first {len(labels)} test digits and the submitted labels</h2>
<img alt="test digits with predictions" src="data:image/png;base64,{inline["samples"]}">
</body></html>
"""
    with atomic_path(report_html) as temporary:
        temporary.write_text(page)
    tracking.log_files({"report.html": report_html})
    return figures


def main(argv=None):
    command_line(
        report, argv, aliases={"metrics_json": "--metrics", "report_html": "--report", "test_samples_png": "--samples"}
    )


if __name__ == "__main__":
    main()
