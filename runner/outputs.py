"""What a local run leaves in its folder: the pipeline's outputs under the names a user looks for, a list of
them, and runs/latest pointing at the newest run."""

import shutil
from pathlib import Path

from pipeline import PIPELINE_NAME

# The folder holding Triton's model repository of model.onnx (components/triton_repository.py).
TRITON_REPOSITORY = "triton"
# The pipeline's outputs (pipeline.PipelineOutputs) -> the file names in the run folder. Of a folder (the Keras
# models, `{keras}`: components.train's MODEL_FILE, one file per member of the ensemble) each file of that name;
# the Triton repository, a tree of folders, is copied whole.
RUN_FILES = {
    "onnx_model": "model.onnx",
    "int8_model": "model.int8.onnx",
    "triton_repository": TRITON_REPOSITORY,
    "keras_model": "{keras}",
    "history": "history.json",
    "metrics": "metrics.json",
    "training_curves": "training_curves.png",
    "confusion_matrix": "confusion_matrix.png",
}
# ... and from the steps behind the gate, which a pipeline cannot return: (step, output) -> file name.
GATED_RUN_FILES = {
    ("join", "submission"): "submission.csv",
    ("report", "report"): "report.html",
    ("report", "test_samples"): "test_samples.png",
}
# What each file of a run folder is, as the end of a run lists them.
RUN_FILE_WHAT = {
    "submission.csv": "Kaggle's submission (make kaggle-submit sends it)",
    "model.onnx": "the exported model, for serving",
    "model.int8.onnx": "the same, quantized to int8",
    TRITON_REPOSITORY: "the same as Triton's model repository (KServe's stock ONNX runtime serves it)",
    ".keras": "a trained Keras model (one per member of the ensemble)",
    "history.json": "per-epoch loss, accuracy, learning rate, seconds, images/s",
    "metrics.json": "validation accuracy, loss, per-digit figures, confusion matrix",
    "report.html": "the run on one page",
    "training_curves.png": "loss and error per epoch",
    "confusion_matrix.png": "validation confusion matrix",
    "test_samples.png": "test digits with their predicted labels",
    "run.json": "what made the run: parameters, data hashes, package versions, commit, step times",
    "run.log": "everything the steps printed",
}


def copy_outputs(pipeline_outputs: dict[str, str], pipeline_root: Path, out: Path) -> None:
    """Copy the run's outputs into `out`: `pipeline_outputs` are the pipeline's (name -> path), the gated ones
    lie in the newest run of kfp.local's `pipeline_root`."""
    from components.train import MODEL_FILE

    sources = {
        Path(pipeline_outputs[name]): file_name.format(keras=MODEL_FILE.format(member="*"))
        for name, file_name in RUN_FILES.items()
    }
    # kfp.local keeps each step's outputs in <pipeline root>/<run>/<step>/<output>: the newest run's are this one's.
    run_root = max(folder for folder in pipeline_root.iterdir() if folder.name.startswith(PIPELINE_NAME))
    sources.update(
        {run_root / f"{step}-component" / output: file_name for (step, output), file_name in GATED_RUN_FILES.items()}
    )
    for source, file_name in sources.items():
        if file_name == TRITON_REPOSITORY:
            shutil.copytree(source, out / file_name)
            continue
        for path in sorted(source.glob(file_name)) if source.is_dir() else [source]:
            shutil.copyfile(path, out / (path.name if source.is_dir() else file_name))


def listing(out: Path) -> list[str]:
    """A line for each file in `out`: its path and what it is."""
    return [
        f"  {path}  {RUN_FILE_WHAT.get(path.name, RUN_FILE_WHAT.get(path.suffix, ''))}"
        for path in sorted(out.iterdir())
    ]


def point_latest_at(out: Path) -> None:
    """Make runs/latest a relative link to `out` when `out` lies in runs/, replacing any old link at once."""
    out = out.resolve()
    runs = Path("runs").resolve()
    if out.parent != runs:
        return
    temporary = runs / f".latest-{out.name}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(out.name)
    temporary.replace(runs / "latest")
