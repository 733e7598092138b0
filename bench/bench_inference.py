"""Inference throughput on Kaggle's test.csv: onnxruntime fp32 and int8 against Keras, scoring against bare inference.

    python bench/bench_inference.py [--run runs/latest] [--test-csv data/digit-recognizer/test.csv] [--repeats 5]

Every figure is the median of `--repeats` runs, measured side by side in one process.
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from common.onnx_model import INPUT_NAME, OUTPUT_NAMES, load_session
from components.kaggle_csv import read_csv
from components.preprocess import as_images
from components.score import score

BATCH_SIZES = (1, 16, 64, 256, 1024, 4096)


def median_seconds(function, repeats):
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def machine():
    """The CPU's model name and how many cores this process may use."""
    cpuinfo = Path("/proc/cpuinfo")
    names = (
        [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        if cpuinfo.exists()
        else []
    )
    return f"{names[0] if names else platform.machine()}, {len(os.sched_getaffinity(0))} cores"


def bare_inference(session, images, batch_size):
    """Only session.run over float32 images already in memory: the floor end-to-end scoring is held to."""
    for start in range(0, len(images), batch_size):
        session.run(OUTPUT_NAMES, {INPUT_NAME: images[start : start + batch_size]})


def quantized_formats(run, images):
    """Sessions of the fp32 model quantized both ways onnxruntime offers (calibrated on 1,024 `images`: speed only)."""
    from components.export import quantize

    sessions = {}
    with tempfile.TemporaryDirectory() as folder:
        for quant_format in ("QDQ", "QOperator"):
            path = Path(folder) / f"{quant_format}.onnx"
            quantize(run / "model.onnx", images[:1024], path, quant_format)
            sessions[quant_format] = load_session(path)
    return sessions


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", default="runs/latest", help="a run folder with model.onnx, model.int8.onnx and model-0.keras"
    )
    parser.add_argument("--test-csv", default="data/digit-recognizer/test.csv")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--score-batch-size", type=int, default=1024, help="the scorer's batch size (its default)")
    parser.add_argument("--results", default="bench/results/inference.json")
    parser.add_argument("--plot", default="docs/images/throughput_vs_batch_size.png")
    args = parser.parse_args(argv)
    run = Path(args.run)
    _, pixels = read_csv(args.test_csv, labelled=False)
    images = as_images(pixels).astype(np.float32)
    sessions = {"fp32": load_session(run / "model.onnx"), "int8": load_session(run / "model.int8.onnx")}
    formats = quantized_formats(run, images)
    results = {
        "machine": machine(),
        "images": len(images),
        "repeats": args.repeats,
        "onnxruntime_images_per_second": {},
    }

    for name, session in sessions.items():
        bare_inference(session, images[:4096], 256)  # warm-up
        per_batch = {}
        for batch_size in BATCH_SIZES:
            subset = images[:2048] if batch_size == 1 else images  # 28,000 single calls would take minutes
            seconds = median_seconds(lambda: bare_inference(session, subset, batch_size), args.repeats)
            per_batch[batch_size] = len(subset) / seconds
            print(f"onnxruntime {name} batch {batch_size:5d}: {per_batch[batch_size]:8.0f} images/s", flush=True)
        results["onnxruntime_images_per_second"][name] = per_batch

    results["int8_formats_images_per_second"] = {
        name: len(images) / median_seconds(lambda: bare_inference(session, images, 1024), args.repeats)
        for name, session in formats.items()
    }
    print(f"int8 formats at batch 1024: {results['int8_formats_images_per_second']}", flush=True)

    import keras

    model = keras.models.load_model(run / "model-0.keras")
    model.predict(images[:2048], batch_size=1024, verbose=0)
    seconds = median_seconds(lambda: model.predict(images, batch_size=1024, verbose=0), max(3, args.repeats // 2))
    results["keras_predict_images_per_second"] = len(images) / seconds
    print(f"keras predict batch 1024: {results['keras_predict_images_per_second']:8.0f} images/s", flush=True)

    results["end_to_end"] = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in sessions:
            bare = median_seconds(lambda: bare_inference(sessions[name], images, args.score_batch_size), args.repeats)
            end_to_end = median_seconds(
                lambda: score(
                    run / ("model.onnx" if name == "fp32" else "model.int8.onnx"),
                    args.test_csv,
                    Path(folder) / "submission.csv",
                    batch_size=args.score_batch_size,
                ),
                args.repeats,
            )
            results["end_to_end"][name] = {
                "bare_seconds": bare,
                "end_to_end_seconds": end_to_end,
                "ratio": end_to_end / bare,
            }
            print(
                f"score {name}: end to end {end_to_end:.2f} s, bare inference {bare:.2f} s, "
                f"ratio {end_to_end / bare:.2f}",
                flush=True,
            )

    best = {name: max(per_batch.values()) for name, per_batch in results["onnxruntime_images_per_second"].items()}
    results["ratios"] = {
        "int8_over_fp32": best["int8"] / best["fp32"],
        "fp32_over_keras": best["fp32"] / results["keras_predict_images_per_second"],
        "int8_over_keras": best["int8"] / results["keras_predict_images_per_second"],
    }
    print(json.dumps(results["ratios"], indent=2))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.plot)


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for name, per_batch in results["onnxruntime_images_per_second"].items():
        axis.plot(list(map(int, per_batch)), list(per_batch.values()), "o-", label=f"onnxruntime {name}")
    axis.axhline(
        results["keras_predict_images_per_second"], color="grey", linestyle="--", label="Keras predict (batch 1024)"
    )
    axis.set_xscale("log", base=2)
    axis.set_xlabel("batch size")
    axis.set_ylabel("images per second")
    axis.set_title(f"inference throughput, {results['machine']}")
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    figure.savefig(path, dpi=100, bbox_inches="tight")


if __name__ == "__main__":
    main()
