"""Ablation: what each choice of the training recipe is worth on the validation split.

    python bench/ablation.py [--train-csv data/digit-recognizer/train.csv] [--epochs 8]

Every variant trains on the same stratified split (seed 42, 4,200 validation images) for the same
number of epochs and changes one thing against the baseline (the default recipe). Seeds 43 and 44
repeat the baseline: their spread says how large a difference must be to mean anything, and the
three together are the ensemble rows. Test-time augmentation and ensembles change only the exported
graph, so they are measured on models already trained. Results are written after every variant,
and a variant already in the results file is not trained again (the run can be resumed).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from components.artifacts import load_arrays
from components.export import inference_function, tensorflow_probabilities
from components.preprocess import preprocess
from components.train import load_models

# name: (what changes, extra flags of components.train)
VARIANTS = {
    "baseline": ("default recipe: BN CNN, affine augmentation, warm-up + cosine, label smoothing 0.1", []),
    "no_augmentation": ("no augmentation", ["--no-augment"]),
    "elastic": ("+ elastic distortion, Simard's strength (alpha 34, sigma 4)", ["--elastic-alpha", "34"]),
    "elastic_mild": ("+ mild elastic distortion (alpha 10, sigma 4)", ["--elastic-alpha", "10"]),
    "no_label_smoothing": ("label smoothing 0", ["--label-smoothing", "0"]),
    "constant_learning_rate": (
        "constant learning rate (no warm-up, no cosine)",
        ["--learning-rate-schedule", "constant"],
    ),
    "seed_43": ("baseline, seed 43", ["--seed", "43"]),
    "seed_44": ("baseline, seed 44", ["--seed", "44"]),
    "pseudo_labels": (
        "+ pseudo-labels (test images labelled at >= 0.85, second round)",
        ["--pseudo-label-data", "{test}"],
    ),
}
# name: (what it is, trained variants averaged, test-time augmentation)
COMBINATIONS = {
    "baseline_tta": ("baseline + test-time augmentation (5 shifted views)", ["baseline"], True),
    "seed_43_tta": ("seed 43 + test-time augmentation", ["seed_43"], True),
    "seed_44_tta": ("seed 44 + test-time augmentation", ["seed_44"], True),
    "ensemble_3": ("ensemble of 3 (seeds 42, 43, 44)", ["baseline", "seed_43", "seed_44"], False),
    "ensemble_3_tta": ("ensemble of 3 + test-time augmentation", ["baseline", "seed_43", "seed_44"], True),
}


def accuracy(model_dirs, tta, images, labels):
    serve = inference_function([model for folder in model_dirs for model in load_models(folder)], tta)
    predicted = tensorflow_probabilities(serve, images).argmax(axis=1)
    return float((predicted == labels).mean()), int((predicted != labels).sum())


def plot(variants, path):
    """Validation error per epoch, one line per trained variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for name, result in variants.items():
        if "history" in result:
            error = 100 * (1 - np.asarray(result["history"]["val_accuracy"]))
            axis.plot(np.arange(1, len(error) + 1), error, marker="o", markersize=3, label=name.replace("_", " "))
    axis.set(
        xlabel="epoch", ylabel="validation error (%)", yscale="log", title="validation error per epoch (seed 42 split)"
    )
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.savefig(path, dpi=100, bbox_inches="tight")


def markdown_table(variants):
    """The results as the table in docs/MODEL.md."""
    baseline = variants["baseline"]["errors"]
    lines = ["| variant | validation accuracy | errors | vs baseline |", "| --- | --- | --- | --- |"]
    for result in variants.values():
        change = result["errors"] - baseline
        lines.append(
            f"| {result['description']} | {result['accuracy']:.2%} | {result['errors']} | "
            f"{'+' if change > 0 else ''}{change if change else '='} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-csv", default="data/digit-recognizer/train.csv")
    parser.add_argument("--test-csv", default="data/digit-recognizer/test.csv")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--work", default="build/ablation", help="arrays and trained models")
    parser.add_argument("--results", default="bench/results/ablation.json")
    parser.add_argument("--only", nargs="*", help="variants to run (default: all)")
    parser.add_argument(
        "--plot", default="docs/images/ablation_curves.png", help="where to plot validation error per epoch"
    )
    args = parser.parse_args(argv)
    work, results_path = Path(args.work), Path(args.results)
    arrays = {name: work / f"{name}.npz" for name in ("train", "validation", "test")}
    if not all(path.is_file() for path in arrays.values()):
        preprocess(args.train_csv, args.test_csv, arrays["train"], arrays["validation"], arrays["test"], seed=42)
    images, labels = load_arrays(arrays["validation"], "images", "labels")
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if results.get("epochs", args.epochs) != args.epochs:
        raise SystemExit(f"{results_path} holds results for {results['epochs']} epochs; use another --results")
    results.update(epochs=args.epochs, validation_images=len(labels))
    variants = results.setdefault("variants", {})
    for name, (description, flags) in VARIANTS.items():
        if name in variants or (args.only and name not in args.only):
            continue
        model_dir = work / name
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "components.train",
                "--train-data",
                str(arrays["train"]),
                "--validation-data",
                str(arrays["validation"]),
                "--model-dir",
                str(model_dir),
                "--epochs",
                str(args.epochs),
                "--patience",
                str(args.epochs),
                *[flag.format(test=arrays["test"]) for flag in flags],
            ],
            check=True,
        )
        seconds = time.perf_counter() - started
        history = json.loads((model_dir / "history.json").read_text())
        variant_accuracy, errors = accuracy([model_dir], False, images, labels)
        variants[name] = {
            "description": description,
            "accuracy": variant_accuracy,
            "errors": errors,
            "seconds": round(seconds),
            "history": history["members"][0],
            "pseudo_labels": history["pseudo_labels"],
        }
        results_path.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{name}: {variant_accuracy:.4%} ({errors} errors) in {seconds:.0f} s", flush=True)
    for name, (description, members, tta) in COMBINATIONS.items():
        if all(member in variants for member in members):
            combined_accuracy, errors = accuracy([work / member for member in members], tta, images, labels)
            variants[name] = {"description": description, "accuracy": combined_accuracy, "errors": errors}
            print(f"{name}: {combined_accuracy:.4%} ({errors} errors)", flush=True)
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    plot(variants, args.plot)
    print(markdown_table(variants))


if __name__ == "__main__":
    main()
