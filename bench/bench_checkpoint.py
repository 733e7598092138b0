"""What resumable training costs: writing the checkpoint after each epoch, and skipping to a resumed epoch's batches.

    python bench/bench_checkpoint.py [--data data/digit-recognizer] [--epochs 2]

Trains the default model with the default settings on Kaggle's train.csv (its default 90/10 split) for
`--epochs` epochs with a checkpoint folder, timing each checkpoint write against its epoch; then times how long
a start from that checkpoint takes to reach its first batch (restoring, then skipping the finished epochs'
batches) for 1 and 14 finished epochs (the default run's last resume point).
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from components.artifacts import load_arrays
from components.augmentation import training_dataset
from components.checkpoints import CHECKPOINT_FILE, TrainingCheckpoint
from components.cli import signature_defaults
from components.preprocess import preprocess
from components.train import train


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/digit-recognizer", help="folder with Kaggle's train.csv and test.csv")
    parser.add_argument("--epochs", type=int, default=2, help="epochs to train and checkpoint")
    parser.add_argument("--results", default="bench/results/checkpoint.json")
    args = parser.parse_args(argv)
    defaults = signature_defaults(train)
    write_seconds = []
    timed_write = TrainingCheckpoint.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        started = time.perf_counter()
        timed_write(self, epoch, logs)
        write_seconds.append(time.perf_counter() - started)

    TrainingCheckpoint.on_epoch_end = on_epoch_end
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        arrays = {name: folder / f"{name}.npz" for name in ("train", "validation", "test")}
        preprocess(
            Path(args.data) / "train.csv",
            Path(args.data) / "test.csv",
            arrays["train"],
            arrays["validation"],
            arrays["test"],
        )
        history = train(
            arrays["train"],
            arrays["validation"],
            folder / "model",
            folder / "history.json",
            epochs=args.epochs,
            checkpoint_dir=folder / "checkpoints",
        )
        epoch_seconds = history["members"][0]["seconds"]
        checkpoint_bytes = (folder / "checkpoints" / CHECKPOINT_FILE.format(round=0, member=0)).stat().st_size
        images, labels = load_arrays(arrays["train"], "images", "labels")
        steps_per_epoch = len(images) // defaults["batch_size"]
        skip_seconds = {}
        for finished_epochs in (1, defaults["epochs"] - 1):
            started = time.perf_counter()
            dataset = training_dataset(
                images,
                labels,
                defaults["batch_size"],
                defaults["epochs"],
                defaults["seed"],
                defaults["augment"],
                first_step=finished_epochs * steps_per_epoch,
            )
            next(iter(dataset))
            skip_seconds[finished_epochs] = time.perf_counter() - started
    # The epoch's own seconds (EpochTimer) end before the checkpoint is written: the share is of epoch + write.
    shares = [write / (epoch + write) for write, epoch in zip(write_seconds, epoch_seconds)]
    results = {
        "epochs": args.epochs,
        "epoch_seconds": epoch_seconds,
        "checkpoint_write_seconds": write_seconds,
        "checkpoint_megabytes": checkpoint_bytes / 1e6,
        "median_share_of_epoch": statistics.median(shares),
        "first_batch_after_resume_seconds": {str(epochs): seconds for epochs, seconds in skip_seconds.items()},
    }
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"epochs: {', '.join(f'{s:.1f}' for s in epoch_seconds)} s; checkpoint writes: "
        f"{', '.join(f'{s:.3f}' for s in write_seconds)} s ({checkpoint_bytes / 1e6:.1f} MB), "
        f"median {100 * statistics.median(shares):.2f}% of an epoch"
    )
    print(
        "first batch of a resumed fit after "
        + ", ".join(f"{epochs} epoch(s): {seconds:.1f} s" for epochs, seconds in skip_seconds.items())
    )


if __name__ == "__main__":
    main()
