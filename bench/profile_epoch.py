"""Where one training epoch's time goes, by kind of operation, and how far it is from the CPU's arithmetic limit.

    python bench/profile_epoch.py [--variants NAME ...] [--train-csv data/digit-recognizer/train.csv]

Each variant of bench_training.py (by default the one before #19 and the two precisions of the one since)
trains one epoch (37,800 images, batch 128, augmented, compiled as the train step does), timed, after a few
steps of warm-up; then
`--profiled-steps` more under TensorFlow's profiler (a whole epoch's trace does not fit in memory). The
profile's operations are summed by kind (the convolutions' three passes, batch normalization, the optimizer,
the rest), as a share of the time the operations ran. The arithmetic limit is what this CPU does on a large
matrix product in float32 (and bfloat16, where the CPU computes it), measured in the same run; the network's
multiply-adds per image (forward) times three (forward and backward) say how much arithmetic an image takes.
"""

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf
from bench_training import BASELINE, BFLOAT16, FLOAT32, VARIANTS, build_variant
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from components.augmentation import training_dataset
from components.kaggle_csv import read_csv
from components.preprocess import as_images
from components.train import compile_for_training, cpu_computes_bfloat16

BATCH_SIZE = 128
# Kinds of operation, by the first pattern found in the operation's name or type.
KINDS = (
    ("convolution, weights' gradient", ("Conv2DBackpropFilter",)),
    ("convolution, inputs' gradient", ("Conv2DBackpropInput",)),
    ("convolution, forward", ("Conv2D",)),
    ("batch normalization", ("batch_normalization", "FusedBatchNorm")),
    ("casts between float32 and bfloat16", ("Cast",)),
    ("optimizer update", ("adam_w", "AssignVariableOp", "ReadVariableOp")),
    ("pooling and activations", ("max_pooling", "MaxPool", "re_lu", "Relu")),
)


def multiply_adds(model):
    """Multiply-adds of one image's forward pass through the model's convolutions and dense layers."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, filters = layer.output.shape
            kernel_height, kernel_width = layer.kernel_size
            total += height * width * filters * kernel_height * kernel_width * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return total


def matrix_product_flops(dtype, size=2048, repeats=10, trials=5):
    """FLOP/s of TensorFlow's matrix product in `dtype` on this CPU, the best of `trials`: the arithmetic limit in
    practice (one trial alone can be half of it while the cores' clocks settle)."""
    a, b = (tf.cast(tf.random.normal([size, size]), dtype) for _ in range(2))
    tf.matmul(a, b).numpy()
    best = 0.0
    for _ in range(trials):
        started = time.perf_counter()
        for _ in range(repeats):
            product = tf.matmul(a, b)
        product.numpy()
        best = max(best, repeats * 2 * size**3 / (time.perf_counter() - started))
    return best


def kind_of(name, op_type):
    for kind, patterns in KINDS:
        if any(pattern in op_type or pattern in name for pattern in patterns):
            return kind
    return "other operations"


def operation_seconds(profile_dir):
    """Seconds per kind of operation, summed over the host's operation threads, from the profiler's XSpace."""
    (path,) = Path(profile_dir).rglob("*.xplane.pb")
    space = xplane_pb2.XSpace()
    space.ParseFromString(path.read_bytes())
    seconds = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            # The threads that run the training step's operations, and those of tf.data's map (the augmentation).
            input_pipeline = line.name.startswith("tf_data_private_threadpool")
            if not (input_pipeline or line.name.startswith("tf_Compute")):
                continue
            for event in line.events:
                metadata = plane.event_metadata[event.metadata_id]
                if metadata.display_name:  # an operation (executor and thread-pool bookkeeping have none)
                    kind = "input pipeline" if input_pipeline else kind_of(metadata.name, metadata.display_name)
                    seconds[kind] += event.duration_ps / 1e12
    return seconds


def profile(variant, images, labels, profiled_steps):
    network, policy, fused_batch_norm, *_ = VARIANTS[variant]
    model = build_variant(network, policy, fused_batch_norm)
    compile_for_training(model, learning_rate=0.003, weight_decay=0.0001, label_smoothing=0.1)
    steps = len(images) // BATCH_SIZE
    model.fit(training_dataset(images, labels, BATCH_SIZE, 1, seed=0, augment=True).take(5), verbose=0)
    started = time.perf_counter()
    model.fit(training_dataset(images, labels, BATCH_SIZE, 1, seed=1, augment=True), steps_per_epoch=steps, verbose=0)
    seconds = time.perf_counter() - started
    # A whole epoch's trace does not fit in memory (24 GiB ran out): the profile is a window of its steps.
    with tempfile.TemporaryDirectory() as profile_dir:
        tf.profiler.experimental.start(profile_dir)
        window = training_dataset(images, labels, BATCH_SIZE, 1, seed=2, augment=True).take(profiled_steps)
        model.fit(window, verbose=0)
        tf.profiler.experimental.stop()
        by_kind = operation_seconds(profile_dir)
    operations = sum(by_kind.values())
    return {
        "epoch_seconds": seconds,
        "images_per_second": steps * BATCH_SIZE / seconds,
        "multiply_adds_per_image": multiply_adds(model),
        "profiled_steps": profiled_steps,
        "operation_share": {kind: value / operations for kind, value in by_kind.most_common()},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=[BASELINE, FLOAT32, BFLOAT16], choices=list(VARIANTS))
    parser.add_argument("--train-csv", default="data/digit-recognizer/train.csv")
    parser.add_argument("--images", type=int, default=37_800, help="an epoch: the train step's 90%% of 42,000 rows")
    parser.add_argument("--profiled-steps", type=int, default=20, help="steps of the epoch traced by the profiler")
    parser.add_argument("--results", default="bench/results/profile.json")
    args = parser.parse_args(argv)
    labels, pixels = read_csv(args.train_csv, labelled=True)
    images, labels = as_images(pixels)[: args.images], labels[: args.images]
    limits = {"float32": matrix_product_flops(tf.float32)}
    if cpu_computes_bfloat16():
        limits["mixed_bfloat16"] = matrix_product_flops(tf.bfloat16)
    results = {"matrix_product_gflops": {policy: flops / 1e9 for policy, flops in limits.items()}, "variants": {}}
    for variant in args.variants:
        measured = profile(variant, images, labels, args.profiled_steps)
        # Forward and backward: about three times the forward pass's multiply-adds, two FLOPs each.
        flops = 6 * measured["multiply_adds_per_image"] * measured["images_per_second"]
        measured["gflops"] = flops / 1e9
        measured["share_of_matrix_product"] = flops / limits[VARIANTS[variant][1]]
        results["variants"][variant] = measured
    print(json.dumps(results, indent=2))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
