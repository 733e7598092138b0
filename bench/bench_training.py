"""Training throughput: images per second of the train step's model under each setting that could buy more epochs.

    python bench/bench_training.py [--train-csv data/digit-recognizer/train.csv] [--steps 40] [--repeats 3]

Every variant is built once, then they take turns, `--repeats` times each (after one warm-up round for
tracing and thread pools), so a busy machine slows all of them alike; medians are reported, with each
variant's ratio to the baseline: the default before #19, the compact network in float32, batch 128, augmented.
The bfloat16 variants run only where the CPU computes bfloat16 (AVX-512 BF16 or AMX).
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import keras

from components.augmentation import training_dataset
from components.kaggle_csv import read_csv
from components.networks import build_model
from components.preprocess import as_images
from components.train import cpu_computes_bfloat16

# name: (network, dtype policy, batch size, augmentation, XLA compilation, steps per execution)
BASELINE = "compact network, float32 (the default before #19)"
VARIANTS = {
    BASELINE: ("compact", "float32", 128, True, False, 1),
    "compact, no augmentation": ("compact", "float32", 128, False, False, 1),
    "compact, 8 steps per execution": ("compact", "float32", 128, True, False, 8),
    "compact, bfloat16": ("compact", "mixed_bfloat16", 128, True, False, 1),
    "deotte network, float32 (the default)": ("deotte", "float32", 128, True, False, 1),
    "strided network, float32": ("strided", "float32", 128, True, False, 1),
    "strided, no augmentation": ("strided", "float32", 128, False, False, 1),
    "strided, 8 steps per execution": ("strided", "float32", 128, True, False, 8),
    "strided, batch 256": ("strided", "float32", 256, True, False, 1),
    "strided, XLA": ("strided", "float32", 128, True, True, 1),
    "strided, bfloat16": ("strided", "mixed_bfloat16", 128, True, False, 1),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-csv", default="data/digit-recognizer/train.csv")
    parser.add_argument("--steps", type=int, default=40, help="training steps of batch 128 timed per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", default="bench/results/training.json")
    args = parser.parse_args(argv)
    labels, pixels = read_csv(args.train_csv, labelled=True)
    images = as_images(pixels)
    # Without bfloat16 arithmetic TensorFlow emulates it, some ten times slower than float32: not worth timing.
    computes_bfloat16 = cpu_computes_bfloat16()
    variants = {
        name: variant for name, variant in VARIANTS.items() if variant[1] != "mixed_bfloat16" or computes_bfloat16
    }
    models = {}
    for name, (network, policy, batch_size, augment, jit_compile, steps_per_execution) in variants.items():
        keras.mixed_precision.set_global_policy(policy)
        model = build_model(network)
        model.compile(
            optimizer="adamw",
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
        )
        models[name] = model
    keras.mixed_precision.set_global_policy("float32")
    timings = {name: [] for name in variants}
    for repeat in range(args.repeats + 1):
        for name, (network, policy, batch_size, augment, jit_compile, steps_per_execution) in variants.items():
            steps = args.steps * 128 // batch_size  # the same images in every measurement
            dataset = training_dataset(images, labels, batch_size, epochs=1, seed=repeat, augment=augment).take(steps)
            started = time.perf_counter()
            models[name].fit(dataset, epochs=1, verbose=0)
            if repeat:  # the first round warms up
                timings[name].append(steps * batch_size / (time.perf_counter() - started))
    images_per_second = {name: statistics.median(values) for name, values in timings.items()}
    results = {
        "steps_of_128": args.steps,
        "repeats": args.repeats,
        "cpu_computes_bfloat16": computes_bfloat16,
        "images_per_second": images_per_second,
        "ratio_to_baseline": {name: value / images_per_second[BASELINE] for name, value in images_per_second.items()},
    }
    print(json.dumps(results, indent=2))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
