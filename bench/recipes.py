"""Recipes on the leaderboard: each training recipe's submission.csv, its wall time, and its public score.

    python bench/recipes.py train RECIPE [RECIPE ...] [--seeds 42 43]
    python bench/recipes.py combine NAME RECIPE/SEED [RECIPE/SEED ...] [--tta]
    python bench/recipes.py score --leaderboard ../shared/tools/leaderboard
    python bench/recipes.py report
    python bench/recipes.py disagreements
    python bench/recipes.py import RESULTS_JSON

`train` runs the train step's own function (components.train.train) with the recipe's settings on the
split that `seed` draws (as the pipeline does), predicts Kaggle's test images with the trained members
averaged (the function that export converts to ONNX) and writes runs/recipes/RECIPE/seed-N/submission.csv,
and records the run in MLflow (experiment digit-recognizer-recipes of the store bench/results/recipes.db, committed:
its settings as parameters, its training time, images and validation accuracy as metrics;
`mlflow ui --backend-store-uri sqlite:///bench/results/recipes.db` shows them). `combine` averages
models already trained (an ensemble, or one model with test-time augmentation) at no training cost; its
time is the sum of its members'. `score` hands every submission to a scorer outside the project (Kaggle, or a
stand-in for its public leaderboard) and records what it says, and for a recipe that keeps its last epoch, the
score of its model at every 5th epoch (its learning curve: one run gives every point where the schedule does not
depend on the total, as Deotte's does not), as metrics of its run. `report` reads the runs back
(MLflow's search_runs), prints the tables of docs/MODEL.md and plots leaderboard accuracy against training images, and
the learning curves. Only scores on the leaderboard's 14,000 rows are reported (those on its earlier 7,000, kept as
they were in the JSON file of before, imported once with `import`, stay in the store with leaderboard_rows 7000).
`disagreements` counts the test images the single models label differently, and draws some.
A recipe already measured for a seed is not trained again, so the runs can be spread over sessions.
"""

import argparse
import functools
import json
import re
import statistics
import subprocess
import time
from pathlib import Path

import keras
import numpy as np

import components.augmentation
import components.train
from common.kaggle_format import SUBMISSION_HEADER
from components.artifacts import load_arrays
from components.augmentation import training_dataset
from components.export import inference_function, tensorflow_probabilities
from components.networks import build_model
from components.preprocess import preprocess
from components.train import MODEL_FILE, compile_for_training, load_models, train

# The default recipe before #19 (the compact network), which most recipes vary one thing of.
BEFORE_19 = {
    "network": "compact",
    "epochs": 15,
    "batch_size": 128,
    "patience": 5,
    "mixed_precision": "off",
    "float32_epochs": 0,
}
# The default since #25 (45 epochs, the last kept), in float32 on every CPU so that its seeds compare.
DEFAULT_45_LAST = {
    "network": "deotte",
    "epochs": 45,
    "batch_size": 128,
    "keep_epoch": "last",
    "mixed_precision": "off",
    "float32_epochs": 0,
}
# name: (what it is, settings of train(); every setting that ever changed default is spelled out)
RECIPES = {
    "quick": (
        "one CNN, 1 epoch (the quick profile before #19)",
        BEFORE_19 | {"epochs": 1},
    ),
    "default_5_epochs": (
        "one CNN, 5 epochs, otherwise the default",
        BEFORE_19 | {"epochs": 5},
    ),
    "default": (
        "one CNN, 15 epochs, batch 128, float32, early stopping after 5 stalled epochs (the default before #19)",
        BEFORE_19,
    ),
    "default_ema": (
        "the default with a weight average (ema_momentum 0.999)",
        BEFORE_19 | {"ema_momentum": 0.999},
    ),
    "bf16_b256_40": (
        "one CNN, 40 epochs, batch 256, bfloat16, early stopping after 5 stalled epochs",
        BEFORE_19 | {"epochs": 40, "batch_size": 256, "mixed_precision": "on"},
    ),
    "bf16_b256_30_full": (
        "one CNN, 30 epochs, batch 256, bfloat16, no early stopping",
        BEFORE_19 | {"epochs": 30, "batch_size": 256, "patience": 30, "mixed_precision": "on"},
    ),
    "strided": (
        "the strided network (the compact one with stride-2 convolutions in place of pooling), otherwise the default",
        BEFORE_19 | {"network": "strided"},
    ),
    "deotte": (
        "Deotte's network (strided convolutions, dense head), otherwise the default (the default since #19 in float32)",
        BEFORE_19 | {"network": "deotte"},
    ),
    "deotte_bf16": (
        "Deotte's network, all 15 epochs in bfloat16 (mixed_precision=on, float32_epochs=0), otherwise as since #19",
        BEFORE_19 | {"network": "deotte", "mixed_precision": "on"},
    ),
    "deotte_bf16_float32_last_3": (
        "Deotte's network in bfloat16, its last 3 epochs in float32 (the default since #19 on AVX-512 BF16)",
        BEFORE_19 | {"network": "deotte", "mixed_precision": "on", "float32_epochs": 3},
    ),
    "default_all_rows": (
        "the default trained on all 42,000 rows (validation included, last epoch kept)",
        BEFORE_19 | {"train_on_validation": True},
    ),
    "deotte_pseudo_labels": (
        "Deotte's network, trained again with the test images it labels at >= 0.85 (pseudo-labels)",
        BEFORE_19 | {"network": "deotte", "pseudo_labels": True},
    ),
    "default_elastic_mild": (
        "the default with mild elastic distortion (alpha 10, sigma 4) before the affine transform",
        BEFORE_19 | {"elastic_alpha": 10.0},
    ),
    "deotte_augmentation": (
        "the default with Deotte's augmentation: rotation 10°, zoom 10%, shift 10%, no shear",
        BEFORE_19 | {"affine": {"shear_degrees": 0}},
    ),
    "deotte_recipe_45": (
        "Deotte's own recipe: batch 64, Adam 1e-3 x0.95 an epoch, no shear, no label smoothing, 45 epochs, the last "
        "kept; float32",
        {
            "network": "deotte",
            "epochs": 45,
            "batch_size": 64,
            "learning_rate": 0.001,
            "learning_rate_schedule": "exponential",
            "weight_decay": 0.0,
            "label_smoothing": 0.0,
            "affine": {"shear_degrees": 0},
            "keep_epoch": "last",
            "mixed_precision": "off",
            "float32_epochs": 0,
        },
    ),
    "default_45_last": (
        "the default since #19 (cosine, AdamW, label smoothing, shear, batch 128) for 45 epochs, the last kept; "
        "float32",
        DEFAULT_45_LAST,
    ),
    "default_60_last": (
        "the default since #19 for 60 epochs, the last kept; float32 (the learning curve's point past 45)",
        DEFAULT_45_LAST | {"epochs": 60},
    ),
    "default_45_last_ema": (
        "default_45_last with a weight average (ema_momentum 0.999): the same training, its averaged weights kept",
        DEFAULT_45_LAST | {"ema_momentum": 0.999},
    ),
    "default_45_last_elastic": (
        "default_45_last with mild elastic distortion (elastic_alpha 10, sigma 4) before the affine transform",
        DEFAULT_45_LAST | {"elastic_alpha": 10.0},
    ),
    "default_45_last_pseudo_labels": (
        "default_45_last, trained again with the test images it labels at >= 0.85 (pseudo-labels)",
        DEFAULT_45_LAST | {"pseudo_labels": True},
    ),
    "snapshots_3x5": (
        "a snapshot ensemble: one CNN, 15 epochs in 3 cosine cycles of 5, the model at each cycle's end",
        {"network": "compact", "epochs": 15, "batch_size": 128, "snapshots": 3},
    ),
}
# Every recipe's seed (and every combination) is an MLflow run of this experiment in this store, committed with the
# project: its settings as parameters, its figures as metrics (the learning curve as one metric by epoch).
STORE = "sqlite:///bench/results/recipes.db"
EXPERIMENT = "digit-recognizer-recipes"
METRICS = ("train_seconds", "images_seen", "validation_accuracy", "leaderboard", "leaderboard_rows")
CURVE_METRIC = "leaderboard_by_epoch"
RUNS = Path("runs/recipes")
CURVE_EVERY = 5  # a recipe's models of every 5th epoch (and its last bfloat16 one) label the test images


def epoch_submissions(test_images, folder, epochs, float32_epochs):
    """An EpochProgress that also writes the test images' labels at every CURVE_EVERY-th epoch, so one run gives
    the learning curve: FOLDER/epoch-N.csv (under a schedule that does not depend on the total, like Deotte's,
    the model of epoch N is the model an N-epoch run would have kept)."""
    marked = {epochs - float32_epochs} | set(range(CURVE_EVERY, epochs + 1, CURVE_EVERY))

    class EpochSubmissions(components.train.EpochProgress):
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            if epoch + 1 in marked:
                folder.mkdir(parents=True, exist_ok=True)
                labels = self.model.predict(test_images.astype(np.float32), batch_size=512, verbose=0).argmax(axis=1)
                write_submission(labels, folder / f"epoch-{epoch + 1}.csv")

    return EpochSubmissions


def write_submission(labels, path):
    lines = [SUBMISSION_HEADER] + [f"{image_id},{label}" for image_id, label in enumerate(labels, start=1)]
    path.write_text("\n".join(lines) + "\n")


def tracking_client():
    """MLflow's client of the store (not mlflow.set_tracking_uri: the process's other MLflow calls keep theirs)."""
    import mlflow

    return mlflow.MlflowClient(STORE)


def load_results():
    """{recipe: {seed or "combined": result}} from the store's runs (searched by MLflow's client), each with its
    `run_id`."""
    client = tracking_client()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    results = {}
    for run in client.search_runs([experiment.experiment_id], max_results=50000) if experiment else []:
        tags, metrics = run.data.tags, run.data.metrics
        result = {name: metrics[name] for name in METRICS if name in metrics}
        result.update(
            run_id=run.info.run_id,
            description=tags["description"],
            submission=tags["submission"],
            epochs_run=json.loads(tags.get("epochs_run", "[]")),
            **({"members": json.loads(tags["members"]), "tta": tags["tta"] == "True"} if "members" in tags else {}),
        )
        if CURVE_METRIC in metrics:
            history = client.get_metric_history(run.info.run_id, CURVE_METRIC)
            result["curve"] = {str(point.step): point.value for point in history}
        results.setdefault(tags["recipe"], {})[tags["seed"]] = result
    return results


def record(name, seed, result):
    """Write a recipe's seed (or a combination, seed "combined") as a finished run of EXPERIMENT; returns its id."""
    from mlflow.entities import Param

    client = tracking_client()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    tags = {
        "recipe": name,
        "seed": str(seed),
        "description": result["description"],
        "submission": result["submission"],
        "epochs_run": json.dumps(result.get("epochs_run", [])),
    }
    if "members" in result:
        tags.update(members=json.dumps(result["members"]), tta=str(result["tta"]))
    run_id = client.create_run(experiment_id, run_name=f"{name}/{seed}", tags=tags).info.run_id
    settings = {key: json.dumps(value) for key, value in result.get("settings", {}).items()}
    client.log_batch(run_id, params=[Param(key, value) for key, value in {**settings, "seed": str(seed)}.items()])
    add_figures(run_id, {key: result[key] for key in METRICS if key in result}, result.get("curve", {}))
    client.set_terminated(run_id)
    return run_id


def add_figures(run_id, metrics, curve):
    """Log `metrics` (name -> number) and a learning `curve` (epoch -> leaderboard accuracy) into a recipe's run."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    points = [Metric(key, float(value), now, 0) for key, value in metrics.items()]
    points += [Metric(CURVE_METRIC, float(value), now, int(epoch)) for epoch, value in curve.items()]
    tracking_client().log_batch(run_id, metrics=points)


def import_results(path):
    """Record the results file bench/recipes.py kept before its runs were MLflow's (each recipe's seeds not yet in
    the store), so that no figure is lost."""
    known = load_results()
    for name, seeds in json.loads(Path(path).read_text()).items():
        for seed, result in seeds.items():
            if seed not in known.get(name, {}):
                settings = RECIPES[name][1] if name in RECIPES else {}
                leaderboard = {"leaderboard_rows": 7000} if "leaderboard" in result else {}  # its leaderboard then
                record(name, seed, {"settings": settings, **leaderboard, **result})
                print(f"imported {name}/{seed}")


def train_snapshots(
    train_data,
    validation_data,
    model_dir,
    history_path,
    seed,
    epochs,
    batch_size,
    snapshots,
    network,
    learning_rate=0.003,
    weight_decay=0.0001,
    label_smoothing=0.1,
):
    """A snapshot ensemble (Huang et al. 2017): one fit whose learning rate restarts a cosine `snapshots` times,
    with the model at the end of each cycle kept as a member; the train step's network, data and loss."""
    keras.utils.set_random_seed(seed)
    images, labels = load_arrays(train_data, "images", "labels")
    validation_images, validation_labels = load_arrays(validation_data, "images", "labels")
    steps_per_epoch = len(images) // batch_size
    cycle_epochs = epochs // snapshots
    model = build_model(network)
    learning_rates = keras.optimizers.schedules.CosineDecayRestarts(learning_rate, cycle_epochs * steps_per_epoch)
    compile_for_training(model, learning_rates, weight_decay, label_smoothing)
    Path(model_dir).mkdir(parents=True, exist_ok=True)

    def save_snapshot(epoch, logs):
        if (epoch + 1) % cycle_epochs == 0:  # the end of a cycle, where the learning rate is back at zero
            model.save(Path(model_dir) / MODEL_FILE.format(member=(epoch + 1) // cycle_epochs - 1))

    history = model.fit(
        training_dataset(images, labels, batch_size, epochs, seed, augment=True),
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        verbose=2,
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=save_snapshot)],
        validation_data=(validation_images.astype(np.float32), keras.utils.to_categorical(validation_labels, 10)),
    )
    history = {
        "members": [{name: [float(value) for value in values] for name, values in history.history.items()}],
        "pseudo_labels": 0,
    }
    Path(history_path).write_text(json.dumps(history))
    return history


def train_recipe(name, seed, train_csv, test_csv):
    description, settings = RECIPES[name]
    arrays = {part: RUNS / "arrays" / f"seed-{seed}" / f"{part}.npz" for part in ("train", "validation", "test")}
    if not all(path.is_file() for path in arrays.values()):
        preprocess(train_csv, test_csv, arrays["train"], arrays["validation"], arrays["test"], seed=seed)
    run = RUNS / name / f"seed-{seed}"
    started = time.perf_counter()
    options = dict(settings)
    pseudo_labels = options.pop("pseudo_labels", False)
    if pseudo_labels:
        options["pseudo_label_data"] = arrays["test"]
    fit = train_snapshots if "snapshots" in options else train
    # Other strengths of the affine transform than train's (it has no parameters for them): its defaults swapped here.
    affine = components.augmentation.random_affine
    components.augmentation.random_affine = functools.partial(affine, **options.pop("affine", {}))
    progress = components.train.EpochProgress
    (test_images,) = load_arrays(arrays["test"], "images")
    # No learning curve with pseudo-labels: the second training's epochs would overwrite the first's files.
    if options.get("keep_epoch") == "last" and not pseudo_labels:
        components.train.EpochProgress = epoch_submissions(
            test_images, run / "epochs", options["epochs"], options.get("float32_epochs", 0)
        )
    try:
        history = fit(arrays["train"], arrays["validation"], run / "model", run / "history.json", seed=seed, **options)
    finally:
        components.augmentation.random_affine = affine
        components.train.EpochProgress = progress
    seconds = time.perf_counter() - started
    validation_images, validation_labels = load_arrays(arrays["validation"], "images", "labels")
    serve = inference_function(load_models(run / "model"))
    write_submission(tensorflow_probabilities(serve, test_images).argmax(axis=1), run / "submission.csv")
    validation_accuracy = float(
        (tensorflow_probabilities(serve, validation_images).argmax(axis=1) == validation_labels).mean()
    )
    epochs_run = [len(member["loss"]) for member in history["members"]]
    (train_images,) = load_arrays(arrays["train"], "images")
    if settings.get("train_on_validation"):
        train_images = np.concatenate([train_images, validation_images])
    images_seen = sum(epochs_run) * (len(train_images) + history["pseudo_labels"])
    if "first_round_members" in history:
        images_seen += sum(len(member["loss"]) for member in history["first_round_members"]) * len(train_images)
    return {
        "description": description,
        "settings": settings,
        "train_seconds": round(seconds),
        "epochs_run": epochs_run,
        "images_seen": images_seen,
        "validation_accuracy": validation_accuracy,
        "submission": str(run / "submission.csv"),
    }


def combine(name, members, tta):
    """Submission of the members' models averaged (with `tta`, over shifted views too); recorded under `name`."""
    results = load_results()
    models, seconds, images = [], 0, 0
    for member in members:
        recipe, seed = member.split("/")
        models += load_models(RUNS / recipe / f"seed-{seed}" / "model")
        seconds += results[recipe][seed]["train_seconds"]
        images += results[recipe][seed]["images_seen"]
    run = RUNS / "combinations" / name
    run.mkdir(parents=True, exist_ok=True)
    (test_images,) = load_arrays(RUNS / "arrays" / f"seed-{seed}" / "test.npz", "images")
    write_submission(
        tensorflow_probabilities(inference_function(models, tta), test_images).argmax(axis=1), run / "submission.csv"
    )
    description = f"{' + '.join(members)}" + (" with test-time augmentation" if tta else "")
    record(
        name,
        "combined",
        {
            "description": description,
            "members": members,
            "tta": tta,
            "train_seconds": seconds,
            "images_seen": images,
            "submission": str(run / "submission.csv"),
        },
    )


def leaderboard_accuracy(leaderboard, submission):
    """The external scorer's accuracy of one submission.csv; it prints `N of M rows right`."""
    output = subprocess.run([leaderboard, submission], capture_output=True, text=True, check=True).stdout
    right, rows = map(int, re.search(r"(\d+) of (\d+) rows right", output).groups())
    return right / rows, rows


def score(leaderboard):
    """Ask the external scorer about every submission not yet scored, and every epoch's of a learning curve."""
    for name, seeds in load_results().items():
        for seed, result in seeds.items():
            if "leaderboard" not in result:
                accuracy, rows = leaderboard_accuracy(leaderboard, result["submission"])
                add_figures(result["run_id"], {"leaderboard": accuracy, "leaderboard_rows": rows}, {})
                print(f"{name} seed {seed}: {accuracy:.4%}")
            epochs = Path(result["submission"]).parent / "epochs"
            if epochs.is_dir() and "curve" not in result:
                submissions = {int(path.stem.split("-")[1]): path for path in epochs.glob("epoch-*.csv")}
                curve = {epoch: leaderboard_accuracy(leaderboard, str(submissions[epoch]))[0] for epoch in submissions}
                add_figures(result["run_id"], {}, curve)
                print(f"{name} seed {seed}, by epoch: {dict(sorted(curve.items()))}")


LEADERBOARD_ROWS = 14000  # the leaderboard's rows since #25; scores on its earlier 7,000 are not compared with them


def scored(seeds):
    """The results of a recipe's seeds scored on the leaderboard of LEADERBOARD_ROWS rows."""
    return {seed: result for seed, result in seeds.items() if result.get("leaderboard_rows") == LEADERBOARD_ROWS}


def summary(results):
    """Per recipe: mean and sd of the leaderboard accuracy over seeds, and the median training time."""
    rows = []
    for name, seeds in results.items():
        seeds = scored(seeds)
        scores = [result["leaderboard"] for result in seeds.values()]
        if scores:
            description = RECIPES[name][0] if name in RECIPES else next(iter(seeds.values()))["description"]
            images = [result["images_seen"] for result in seeds.values()]
            validations = [
                result["validation_accuracy"] for result in seeds.values() if "validation_accuracy" in result
            ]
            rows.append(
                {
                    "recipe": name,
                    "description": description,
                    "seeds": len(scores),
                    "images": statistics.median(images),
                    "mean": statistics.mean(scores),
                    "sd": statistics.stdev(scores) if len(scores) > 1 else None,
                    "validation": statistics.mean(validations) if validations else None,
                    "minutes": statistics.median(result["train_seconds"] for result in seeds.values()) / 60,
                }
            )
    return sorted(rows, key=lambda row: row["images"])


def learning_curves(results, plot_path):
    """Each learning curve's leaderboard accuracy by epoch, mean ± sd over the seeds that scored it: a table and a
    plot against training images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5))
    for name, seeds in results.items():
        curves = [result for result in scored(seeds).values() if "curve" in result]
        if not curves:
            continue
        epochs = sorted(set.intersection(*(set(map(int, result["curve"])) for result in curves)))
        images_per_epoch = statistics.median(result["images_seen"] / sum(result["epochs_run"]) for result in curves)
        means, sds = [], []
        counted = f"{len(curves)} seed{'s' if len(curves) > 1 else ''}"
        print(f"{name} ({counted}: {', '.join(scored(seeds))}):")
        for epoch in epochs:
            scores = [100 * result["curve"][str(epoch)] for result in curves]
            means.append(statistics.mean(scores))
            sds.append(statistics.stdev(scores) if len(scores) > 1 else 0.0)
            print(f"  epoch {epoch}: {means[-1]:.2f}% ± {sds[-1]:.2f} ({', '.join(f'{x:.2f}' for x in scores)})")
        images = [epoch * images_per_epoch / 1e6 for epoch in epochs]
        axis.errorbar(images, means, yerr=sds, marker="o", capsize=3, label=f"{name} ({counted})")
    axis.axhline(99.60, color="grey", linestyle="--", linewidth=0.8)
    axis.set(
        xlabel="training images (millions)",
        ylabel=f"leaderboard accuracy (%, {LEADERBOARD_ROWS:,} rows)",
        title="learning curves: the model of each 5th epoch on the leaderboard (mean ± sd over seeds)",
    )
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.savefig(plot_path, dpi=100, bbox_inches="tight")


def report(plot_path, curve_plot_path):
    learning_curves(load_results(), curve_plot_path)
    rows = summary(load_results())
    print("| recipe | seeds | leaderboard (mean ± sd) | validation | training images (millions) | training minutes |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        spread = f" ± {row['sd']:.2%}" if row["sd"] is not None else ""
        validation = f"{row['validation']:.2%}" if row["validation"] is not None else "–"
        print(
            f"| {row['description']} | {row['seeds']} | {row['mean']:.2%}{spread} | {validation} | "
            f"{row['images'] / 1e6:.2f} | {row['minutes']:.0f} |"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5.5))
    bottom = 99.2  # the one-epoch recipe scores far below: drawn on the bottom edge, its score in its label
    # Images, not minutes, on the axis: the minutes were measured on a shared machine; images/s is in BENCHMARKS.md.
    axis.set(
        xscale="log",
        xlim=(0.03, 5),
        ylim=(bottom - 0.03, 99.8),
        xlabel="training images processed, all members (millions; 800–2,100 a second on this 2-core CPU)",
        ylabel="public leaderboard accuracy (%)",
        title="what training buys (mean over seeds, ± sd; squares: several models averaged)",
    )
    labels = []  # where labels went, in pixels: each new one takes the first free place beside its point
    for row in rows:
        accuracy = 100 * row["mean"]
        point = (row["images"] / 1e6, max(accuracy, bottom))
        if accuracy < bottom:
            axis.plot(*point, marker="v", color="grey")
        else:
            averaged = "+" in row["description"] or "snapshots" in RECIPES.get(row["recipe"], ("", {}))[1]
            axis.errorbar(*point, yerr=100 * (row["sd"] or 0), marker="s" if averaged else "o", capsize=3)
        label = row["recipe"] + (f" ({accuracy:.1f}%)" if accuracy < bottom else "")
        x, y = axis.transData.transform(point)
        width = 6 * len(label)
        for dx, dy in ((6, 2), (6, -12), (-6 - width, 2), (-6 - width, -12), (6, 14), (6, -24), (-6 - width, 14)):
            left = x + dx
            if all(
                left + width < other_left or other_left + other_width < left or abs(y + dy - other_y) > 11
                for other_left, other_y, other_width in labels
            ):
                break
        labels.append((left, y + dy, width))
        axis.annotate(
            label, point, textcoords="offset points", xytext=(dx * 72 / figure.dpi, dy * 72 / figure.dpi), fontsize=8
        )
    for goal, text in ((99.60, "goal of the default"), (99.72, "goal of best (Deotte's 15 CNNs: 99.745% on MNIST)")):
        axis.axhline(goal, color="grey", linestyle="--", linewidth=0.8)
        axis.annotate(text, (0.03, goal), textcoords="offset points", xytext=(0, 3), fontsize=8, color="grey")
    axis.grid(alpha=0.3)
    figure.savefig(plot_path, dpi=100, bbox_inches="tight")


def disagreements(plot_path, test_csv, shown=24):
    """Where the single models trained so far disagree on Kaggle's test images: how often, and a plot of some.

    No labels are needed: an image the models split on is one that at least one of them gets wrong.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from components.kaggle_csv import read_csv
    from components.preprocess import as_images

    results = load_results()
    singles = {
        f"{name}/{seed}": result["submission"]
        for name, seeds in results.items()
        for seed, result in seeds.items()
        if name in RECIPES and RECIPES[name][1]["epochs"] >= 15 and "snapshots" not in RECIPES[name][1]
    }
    labels = np.array(
        [[int(line.split(",")[1]) for line in Path(path).read_text().splitlines()[1:]] for path in singles.values()]
    )
    votes = np.array([np.bincount(column, minlength=10) for column in labels.T])
    split = np.flatnonzero(votes.max(axis=1) < len(singles))
    print(
        f"{len(singles)} single models of 15 epochs or more ({', '.join(singles)}): they agree on "
        f"{len(labels[0]) - len(split)} of {len(labels[0])} test images and split on {len(split)}; "
        f"pairs differ on "
        f"{np.median([np.sum(a != b) for i, a in enumerate(labels) for b in labels[i + 1 :]]):.0f} (median)"
    )
    _, pixels = read_csv(test_csv, labelled=False)
    images = as_images(pixels)
    columns = 8
    figure, axes = plt.subplots(shown // columns, columns, figsize=(columns * 1.3, shown // columns * 1.55))
    for axis, index in zip(axes.flat, split[:shown]):
        axis.imshow(images[index, ..., 0], cmap="gray_r")
        counted = sorted(((count, digit) for digit, count in enumerate(votes[index]) if count), reverse=True)
        axis.set_title(" ".join(f"{digit}:{count}" for count, digit in counted), fontsize=8)
        axis.axis("off")
    figure.suptitle(f"test images the {len(singles)} models split on (digit:models)", fontsize=10)
    figure.savefig(plot_path, dpi=100, bbox_inches="tight")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train recipes and write their submissions")
    train_parser.add_argument("recipes", nargs="+", choices=list(RECIPES))
    train_parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    train_parser.add_argument("--train-csv", default="data/digit-recognizer/train.csv")
    train_parser.add_argument("--test-csv", default="data/digit-recognizer/test.csv")
    combine_parser = commands.add_parser("combine", help="average trained models into one submission")
    combine_parser.add_argument("name")
    combine_parser.add_argument("members", nargs="+", metavar="RECIPE/SEED")
    combine_parser.add_argument(
        "--tta", action="store_true", help="average over each image's four one-pixel shifts too"
    )
    score_parser = commands.add_parser("score", help="score every submission with an external leaderboard command")
    score_parser.add_argument(
        "--leaderboard", required=True, help="a command that takes submission.csv files and prints accuracies"
    )
    report_parser = commands.add_parser("report", help="print the table and plot accuracy against time")
    report_parser.add_argument("--plot", default="docs/images/leaderboard_vs_time.png")
    report_parser.add_argument("--curve-plot", default="docs/images/learning_curve.png")
    disagreements_parser = commands.add_parser(
        "disagreements", help="where the single models disagree on the test images"
    )
    disagreements_parser.add_argument("--plot", default="docs/images/test_disagreements.png")
    disagreements_parser.add_argument("--test-csv", default="data/digit-recognizer/test.csv")
    import_parser = commands.add_parser("import", help="record a results file of the JSON store kept before MLflow")
    import_parser.add_argument("results_json")
    args = parser.parse_args(argv)
    if args.command == "train":
        for seed in args.seeds:
            for name in args.recipes:
                if str(seed) in load_results().get(name, {}):
                    continue
                result = train_recipe(name, seed, args.train_csv, args.test_csv)
                record(name, seed, result)
                print(
                    f"{name} seed {seed}: validation {result['validation_accuracy']:.4%}, {result['train_seconds']} s",
                    flush=True,
                )
    elif args.command == "combine":
        combine(args.name, args.members, args.tta)
    elif args.command == "score":
        score(args.leaderboard)
    elif args.command == "import":
        import_results(args.results_json)
    elif args.command == "disagreements":
        disagreements(args.plot, args.test_csv)
    else:
        report(args.plot, args.curve_plot)


if __name__ == "__main__":
    main()
