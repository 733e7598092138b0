"""Training throughput: images per second of the train step's model under each setting that could buy more epochs.

    python bench/bench_training.py [--train-csv data/digit-recognizer/train.csv] [--steps 64] [--repeats 5]

Every variant is built once, then they take turns, `--repeats` times each (after one warm-up round for
tracing and thread pools), so a busy machine slows all of them alike; medians are reported, with each
variant's ratio to the baseline: the default before #19, the compact network in float32 with Keras' own batch
normalization, batch 128, augmented. A measurement is the steps between the first step's end and the last's:
a fit's start (the first batch) and end (up to 2.5 s while training's tf.data autotuned) are not training.
The bfloat16 variants run only where the CPU computes bfloat16 (AVX-512 BF16 or AMX). Where bfloat16 was measured
faster (components.train.cpu_trains_faster_in_bfloat16) the default trains its first epochs in bfloat16 and its
last ones in float32, and its row is that mix of the two rates; elsewhere it is the float32 row. Train runs
STEPS_PER_EXECUTION steps per call of its train function: the variants that say so do too.
"""

import argparse
import inspect
import json
import statistics
import time
from pathlib import Path

import keras

import components.networks
from components.augmentation import training_dataset
from components.kaggle_csv import read_csv
from components.networks import build_model
from components.preprocess import as_images
from components.train import STEPS_PER_EXECUTION, cpu_computes_bfloat16, cpu_trains_faster_in_bfloat16, train

EPOCH_SPLIT = ("epochs", "float32_epochs")  # train's, for the default's rate over a whole training


def build_variant(network, policy, fused_batch_norm):
    """The train step's network under a dtype policy, with its fused batch normalization or Keras' own."""
    keras.mixed_precision.set_global_policy(policy)
    fused = components.networks.FusedBatchNormalization
    if not fused_batch_norm:
        components.networks.FusedBatchNormalization = keras.layers.BatchNormalization
    try:
        return build_model(network)
    finally:
        components.networks.FusedBatchNormalization = fused
        keras.mixed_precision.set_global_policy("float32")


# name: (network, dtype policy, fused batch normalization, batch size, augmentation, XLA, steps per execution)
BASELINE = "compact network, float32, Keras' batch normalization (the default before #19)"
FLOAT32 = f"Deotte's network, float32, fused, {STEPS_PER_EXECUTION} steps per execution (the default's float32 epochs)"
BFLOAT16 = f"Deotte's, bfloat16, fused, {STEPS_PER_EXECUTION} steps per execution (mixed_precision=on)"
DEFAULT = "the default: Deotte's network as mixed_precision=auto trains it here (its precisions' rows)"
VARIANTS = {
    BASELINE: ("compact", "float32", False, 128, True, False, 1),
    "compact, fused batch normalization": ("compact", "float32", True, 128, True, False, 1),
    "compact, bfloat16": ("compact", "mixed_bfloat16", False, 128, True, False, 1),
    "compact, bfloat16, fused": ("compact", "mixed_bfloat16", True, 128, True, False, 1),
    "Deotte's network, float32, Keras' batch normalization": ("deotte", "float32", False, 128, True, False, 1),
    "Deotte's network, float32, fused batch normalization, one step per execution": (
        "deotte",
        "float32",
        True,
        128,
        True,
        False,
        1,
    ),
    FLOAT32: ("deotte", "float32", True, 128, True, False, STEPS_PER_EXECUTION),
    "Deotte's float32 fused, no augmentation": ("deotte", "float32", True, 128, False, False, 1),
    "Deotte's float32 fused, batch 64, one step per execution": ("deotte", "float32", True, 64, True, False, 1),
    "Deotte's float32 fused, batch 64": ("deotte", "float32", True, 64, True, False, STEPS_PER_EXECUTION),
    "Deotte's float32 fused, batch 256": ("deotte", "float32", True, 256, True, False, 1),
    "Deotte's float32 fused, XLA": ("deotte", "float32", True, 128, True, True, 1),
    "Deotte's, bfloat16, Keras' batch normalization": ("deotte", "mixed_bfloat16", False, 128, True, False, 1),
    "Deotte's, bfloat16, fused, one step per execution": ("deotte", "mixed_bfloat16", True, 128, True, False, 1),
    BFLOAT16: ("deotte", "mixed_bfloat16", True, 128, True, False, STEPS_PER_EXECUTION),
    "strided network, float32, fused": ("strided", "float32", True, 128, True, False, 1),
    "strided, bfloat16, fused": ("strided", "mixed_bfloat16", True, 128, True, False, 1),
}


def images_per_second(model, dataset, batch_size, steps_per_execution):
    """Images a second between the first and the last step's end (Keras calls back once per execution)."""
    ends = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter()))
    model.fit(dataset, epochs=1, verbose=0, callbacks=[record])
    return (len(ends) - 1) * steps_per_execution * batch_size / (ends[-1] - ends[0])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-csv", default="data/digit-recognizer/train.csv")
    parser.add_argument(
        "--steps",
        type=int,
        default=64,
        help=f"training steps of batch 128 per measurement, a multiple of {STEPS_PER_EXECUTION}",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", default="bench/results/training.json")
    args = parser.parse_args(argv)
    if args.steps % STEPS_PER_EXECUTION:
        parser.error(f"--steps must be a multiple of {STEPS_PER_EXECUTION}, got {args.steps}")
    labels, pixels = read_csv(args.train_csv, labelled=True)
    images = as_images(pixels)
    # Without bfloat16 arithmetic TensorFlow emulates it, some ten times slower than float32: not worth timing.
    computes_bfloat16 = cpu_computes_bfloat16()
    variants = {
        name: variant for name, variant in VARIANTS.items() if variant[1] != "mixed_bfloat16" or computes_bfloat16
    }
    models = {}
    for name, (network, policy, fused, batch_size, augment, jit_compile, steps_per_execution) in variants.items():
        models[name] = build_variant(network, policy, fused)
        models[name].compile(
            optimizer="adamw",
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
        )
    timings = {name: [] for name in variants}
    for repeat in range(args.repeats + 1):
        for name, (network, policy, fused, batch_size, augment, jit_compile, steps_per_execution) in variants.items():
            steps = args.steps * 128 // batch_size  # the same images in every measurement
            dataset = training_dataset(images, labels, batch_size, epochs=1, seed=repeat, augment=augment).take(steps)
            measured = images_per_second(models[name], dataset, batch_size, steps_per_execution)
            if repeat:  # the first round warms up
                timings[name].append(measured)
    default_epochs = {name: inspect.signature(train).parameters[name].default for name in EPOCH_SPLIT}
    if not cpu_trains_faster_in_bfloat16():
        timings[DEFAULT] = timings[FLOAT32]  # mixed_precision=auto trains in float32 here
    else:
        # The default's rate over a whole training: its first epochs at the bfloat16 rate, the rest at float32's,
        # from the two measured in the same round.
        epochs, float32_epochs = default_epochs.values()
        timings[DEFAULT] = [
            epochs / ((epochs - float32_epochs) / bfloat16 + float32_epochs / float32)
            for bfloat16, float32 in zip(timings[BFLOAT16], timings[FLOAT32], strict=True)
        ]
    medians = {name: statistics.median(values) for name, values in timings.items()}
    results = {
        "steps_of_128": args.steps,
        "steps_per_execution": STEPS_PER_EXECUTION,
        "repeats": args.repeats,
        "cpu_computes_bfloat16": computes_bfloat16,
        "cpu_trains_faster_in_bfloat16": cpu_trains_faster_in_bfloat16(),
        "default_epochs": default_epochs,
        "images_per_second": medians,
        "ratio_to_baseline": {name: value / medians[BASELINE] for name, value in medians.items()},
    }
    print(json.dumps(results, indent=2))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
