"""Training throughput: images per second with and without augmentation, to show the input pipeline keeps up.

    python bench/bench_training.py [--train-csv data/digit-recognizer/train.csv] [--steps 60] [--repeats 3]

The two settings alternate, `--repeats` times each, over the same model; medians are reported.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import keras

from components.kaggle_csv import read_csv
from components.preprocess import as_images
from components.train import build_model, training_dataset


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-csv", default="data/digit-recognizer/train.csv")
    parser.add_argument("--steps", type=int, default=60, help="training steps timed per measurement")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", default="bench/results/training.json")
    args = parser.parse_args(argv)
    labels, pixels = read_csv(args.train_csv, labelled=True)
    images = as_images(pixels)
    model = build_model()
    model.compile(optimizer="adamw", loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1))
    timings = {True: [], False: []}
    for repeat in range(args.repeats + 1):
        for augment in (True, False):
            dataset = training_dataset(images, labels, args.batch_size, epochs=1, seed=repeat, augment=augment)
            dataset = dataset.take(args.steps)
            started = time.perf_counter()
            model.fit(dataset, epochs=1, verbose=0)
            if repeat:  # the first round warms up (tracing, thread pools)
                timings[augment].append(time.perf_counter() - started)
    images_per_second = {
        ("augmented" if augment else "plain"): args.steps * args.batch_size / statistics.median(seconds)
        for augment, seconds in timings.items()
    }
    results = {"steps": args.steps, "batch_size": args.batch_size, "repeats": args.repeats,
               "images_per_second": images_per_second,
               "augmented_over_plain": images_per_second["augmented"] / images_per_second["plain"]}
    print(json.dumps(results, indent=2))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
