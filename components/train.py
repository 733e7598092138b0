"""Train: batch-normalized Keras CNNs on augmented digits, on every GPU present (or the CPU).

    python -m components.train --train-data work/train.npz \
        --validation-data work/validation.npz --model-dir work/model
"""

import re
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from common.errors import InputError
from components import progress, tracking
from components.artifacts import atomic_path, load_arrays, save_json
from components.augmentation import training_dataset
from components.callbacks import EpochProgress, EpochTimer, EpochTracking, Float32Finish, WeightAverage
from components.checkpoints import (
    CHECKPOINT_FILE,
    TrainingCheckpoint,
    array_digest,
    check_checkpoint_settings,
    finished_member,
)
from components.cli import command_line
from components.networks import NETWORKS, build_model, check_network, load_model_file
from components.plots import training_curves
from components.preprocess import stratified_split

MODEL_FILE = "model-{member}.keras"  # one file per member of the ensemble
LEARNING_RATE_SCHEDULES = ("cosine", "constant", "exponential")
EXPONENTIAL_DECAY = 0.95  # the "exponential" schedule's factor per epoch (Chris Deotte's)
KEPT_EPOCHS = ("best", "last")
# The most train steps per call of the compiled train function: a call's own cost (Python, callbacks) was 23% of a
# step of batch 64 on one 2-core CPU (docs/BENCHMARKS.md). A weight average updates after every step, so it runs one a
# call, and so does MirroredStrategy (Keras 3.15's loop of several steps fails under it: a placeholder left unfed).
STEPS_PER_EXECUTION = 16
MIXED_PRECISION_MODES = ("auto", "on", "off")


def training_devices():
    """The GPUs TensorFlow sees; an empty list means the CPU."""
    return tf.config.list_logical_devices("GPU")


def distribution_strategy(devices):
    """Mirror the model over several devices (one replica each, gradients summed); one device needs no strategy."""
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    return tf.distribute.get_strategy()


def cpu_computes_bfloat16(cpuinfo="/proc/cpuinfo"):
    """Whether the CPU has bfloat16 arithmetic (AVX-512 BF16 or AMX); without it TensorFlow emulates bfloat16."""
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", read_cpuinfo(cpuinfo)) is not None


def cpu_trains_faster_in_bfloat16(cpuinfo="/proc/cpuinfo"):
    """Whether bfloat16 trains faster than float32 here: with AMX, or AVX-512 BF16 on AMD's CPUs.

    Measured (docs/BENCHMARKS.md): Deotte's network 1.5x as fast in bfloat16 on an AMD EPYC Zen 4, but 0.88x on an
    Intel Xeon with AVX-512 BF16 and no AMX, where TensorFlow's oneDNN kernels convert more than they gain.
    """
    text = read_cpuinfo(cpuinfo)
    return re.search(r"\bamx_bf16\b", text) is not None or (
        "AuthenticAMD" in text and re.search(r"\bavx512_bf16\b", text) is not None
    )


def read_cpuinfo(cpuinfo):
    try:
        return Path(cpuinfo).read_text()
    except OSError:  # not Linux
        return ""


def precision_policy(mixed_precision, gpus):
    """The Keras dtype policy: "on", "off", or "auto" (mixed precision where it is known to pay).

    Mixed precision is float16 on GPUs (auto: when every GPU has tensor cores, compute capability 7.0 or
    newer) and bfloat16 on the CPU (auto: where it was measured faster than float32, cpu_trains_faster_in_bfloat16;
    emulated, without AVX-512 BF16 or AMX, it is much slower). Train finishes a mixed-precision fit in float32
    (`float32_epochs`): on AVX-512 BF16, so trained, Deotte's network scored within 0.05 points of float32 on the
    leaderboard, in three quarters of its time; all in bfloat16 it scored lower (docs/MODEL.md).
    """
    if mixed_precision not in MIXED_PRECISION_MODES:
        raise ValueError(f"mixed_precision must be auto, on or off, got {mixed_precision!r}")
    mixed = "mixed_float16" if gpus else "mixed_bfloat16"
    if mixed_precision != "auto":
        return mixed if mixed_precision == "on" else "float32"
    if not gpus:
        return mixed if cpu_trains_faster_in_bfloat16() else "float32"
    capabilities = [tf.config.experimental.get_device_details(gpu).get("compute_capability", (0, 0)) for gpu in gpus]
    return mixed if capabilities and min(capabilities) >= (7, 0) else "float32"


def fit(
    model_path,
    train_images,
    train_labels,
    validation_images,
    validation_labels,
    strategy,
    network,
    epochs,
    batch_size,
    learning_rate,
    learning_rate_schedule,
    weight_decay,
    label_smoothing,
    augment,
    elastic_alpha,
    patience,
    seed,
    train_on_validation,
    ema_momentum,
    float32_epochs,
    keep_epoch,
    checkpoint_path=None,
    epoch_progress=None,
    epoch_tracking=None,
):
    """Fit one CNN and write it to `model_path`; returns its history (one list per metric, one value per epoch).

    With `checkpoint_path`, the fit is saved there after every epoch and goes on from there when started again.
    `epoch_progress` and `epoch_tracking` (callbacks) hear of each epoch after its figures are complete.
    """
    finished = finished_member(checkpoint_path, model_path)
    if finished is not None:
        return finished
    keras.utils.set_random_seed(seed)
    batch_size = min(batch_size, len(train_images))
    steps_per_epoch = len(train_images) // batch_size
    if learning_rate_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=learning_rate / 10,
            warmup_target=learning_rate,
            warmup_steps=steps_per_epoch,
            decay_steps=max(1, (epochs - 1) * steps_per_epoch),
        )
    elif learning_rate_schedule == "exponential":
        learning_rate = keras.optimizers.schedules.ExponentialDecay(
            learning_rate, decay_steps=steps_per_epoch, decay_rate=EXPONENTIAL_DECAY, staircase=True
        )
    with strategy.scope():
        model = build_model(network)
        one_step_a_call = ema_momentum or strategy.num_replicas_in_sync > 1
        compile_for_training(
            model, learning_rate, weight_decay, label_smoothing, 1 if one_step_a_call else steps_a_call(steps_per_epoch)
        )
    with atomic_path(model_path) as temporary_path:
        # Validation images inside the training set make validation accuracy meaningless for choosing an epoch:
        # then the last epoch is kept and nothing stops early.
        keep_last = keep_epoch == "last" or train_on_validation
        best_epoch_callbacks = (
            []
            if keep_last
            else [
                keras.callbacks.ModelCheckpoint(
                    temporary_path, monitor="val_accuracy", mode="max", save_best_only=True
                ),
                keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max", patience=patience),
            ]
        )
        # With an average of the weights, validation, the best-epoch model and the saved model all use it.
        weight_average = WeightAverage(ema_momentum) if ema_momentum else None
        callbacks = [
            EpochTimer(steps_per_epoch * batch_size),
            *([epoch_progress] if epoch_progress else []),
            *([epoch_tracking] if epoch_tracking else []),
            *([weight_average] if weight_average else []),
            *best_epoch_callbacks,
        ]
        if float32_epochs and model.compute_dtype != "float32":
            callbacks.insert(0, Float32Finish(epochs - float32_epochs))
        checkpoint = checkpoint_path and TrainingCheckpoint(
            checkpoint_path, temporary_path, best_epoch_callbacks, weight_average
        )
        initial_epoch = 0
        if checkpoint:
            callbacks.append(checkpoint)
            with strategy.scope():
                initial_epoch = checkpoint.restore(model)
        history = model.fit(
            training_dataset(
                train_images,
                train_labels,
                batch_size,
                epochs,
                seed,
                augment,
                elastic_alpha,
                first_step=initial_epoch * steps_per_epoch,
            ),
            steps_per_epoch=steps_per_epoch,
            initial_epoch=initial_epoch,
            epochs=initial_epoch if checkpoint and checkpoint.state["stopped"] else epochs,
            validation_data=(validation_images.astype(np.float32), keras.utils.to_categorical(validation_labels, 10)),
            validation_batch_size=512,
            shuffle=False,  # the dataset shuffles, reproducibly
            callbacks=callbacks,
            verbose=0,  # EpochProgress prints one line per epoch
        )
        if keep_last:
            model.save(temporary_path)
    if checkpoint:
        checkpoint.finish(model_path)
        return checkpoint.state["history"]
    return {name: [float(value) for value in values] for name, values in history.history.items()}


def steps_a_call(steps_per_epoch):
    """The most steps, up to STEPS_PER_EXECUTION, that divide an epoch: Keras 3.15 runs whole calls, so a call
    straddling an epoch's end would take steps of the next one (and a resumed fit would not repeat it)."""
    return max(steps for steps in range(1, STEPS_PER_EXECUTION + 1) if steps_per_epoch % steps == 0)


def compile_for_training(model, learning_rate, weight_decay, label_smoothing, steps_per_execution=1):
    """Compile `model` with train's optimizer (AdamW), loss (label-smoothed cross-entropy) and accuracy metric.

    Every variable is made here, before fit (the optimizer's, and the accuracy's, named rather than "accuracy"):
    a train step that makes variables is traced twice, 4 s more of Deotte's network here.
    """
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        steps_per_execution=steps_per_execution,
    )
    model.optimizer.build(model.trainable_variables)


def train(
    train_data: str | Path,
    validation_data: str | Path,
    model_dir: str | Path,
    history_path: str | Path | None = None,
    network: str = "deotte",
    epochs: int = 45,
    batch_size: int = 128,
    learning_rate: float = 0.003,
    learning_rate_schedule: str = "cosine",
    weight_decay: float = 0.0001,
    label_smoothing: float = 0.1,
    augment: bool = True,
    elastic_alpha: float = 0.0,
    patience: int = 5,
    seed: int = 42,
    ensemble_size: int = 1,
    member_splits: bool = False,
    train_on_validation: bool = False,
    ema_momentum: float = 0.0,
    pseudo_label_data: str | Path | None = None,
    pseudo_label_confidence: float = 0.85,
    mixed_precision: str = "auto",
    float32_epochs: int = 3,
    keep_epoch: str = "last",
    curves_png: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
) -> dict:
    """Fit `ensemble_size` CNNs (seeds `seed`, `seed + 1`, ...), keep each one's last (or best validation) epoch,
    write them and their histories.

    The learning rate warms up for one epoch, then follows a cosine down to zero ("cosine"), stays
    at `learning_rate` ("constant"), or is multiplied by 0.95 after each epoch ("exponential", Chris Deotte's).
    `keep_epoch` "best" keeps each member's best validation epoch, and early stopping ends a member whose
    validation accuracy stalls for `patience` epochs; "last" keeps the last epoch and never stops early.
    `augment` rotates, shifts, shears and zooms; `elastic_alpha` > 0 adds elastic distortion of that strength.
    `ema_momentum` > 0 keeps an exponential moving average of the weights and batch-norm statistics
    (Polyak averaging, updated every step with that momentum, warmed up): validation, the best-epoch
    choice and the saved model use the average.
    `member_splits` gives each member from the second on its own stratified split of all labelled images (the
    given train and validation ones), drawn with its seed as preprocess draws one (Chris Deotte's ensembles): the
    members together see every image, and the validation images' figures flatter the ensemble.
    `train_on_validation` adds the validation images to the training set (for a final fit once the
    settings are chosen) and keeps each member's last epoch. With `pseudo_label_data` (test.npz), the
    ensemble first labels the test images, then is trained afresh with the test images it labelled with
    at least `pseudo_label_confidence` added to the training set (label smoothing 0.1 caps a sure
    prediction near 0.91; at 0.85 a model took 89% of the test images, and was right on every validation
    image it was that sure of). Several GPUs are used as one (MirroredStrategy); `mixed_precision` is
    "auto" (float16 compute on GPUs with tensor cores, bfloat16 on CPUs with bfloat16 arithmetic), "on"
    (float16 on GPUs, bfloat16 on the CPU) or "off"; with it, the last `float32_epochs` epochs compute in
    float32. With `curves_png`, loss and error per epoch are plotted there. With MLflow tracking
    (components/tracking.py), each epoch's figures, the settings the inputs do not name (precision, GPUs, image
    counts, versions) and the curves go to the task's run. With `checkpoint_dir`, each member's fit is saved there
    after every epoch; started again with the same settings and data, training goes on after the last finished epoch
    and keeps the members already finished (a folder holding checkpoints of other settings is refused).
    Returns {"members": [one history per member], "pseudo_labels": images added (0 without)}, and after a second
    round with pseudo-labels its first round's histories as "first_round_members".

    Args:
        train_data: train.npz from preprocess
        validation_data: validation.npz from preprocess
        model_dir: folder for the trained models (model-N.keras)
        history_path: per-epoch history as JSON (default: MODEL_DIR/history.json)
        network: deotte (strided 5x5 convolutions, dense head), compact (max pooling, global average pooling) or
            strided (compact with stride-2 convolutions in place of pooling)
        epochs: passes over the training set
        batch_size: images per step
        learning_rate: peak learning rate
        learning_rate_schedule: one epoch of warm-up then a cosine to zero, constant, or exponential (x0.95 an epoch)
        weight_decay: AdamW weight decay
        label_smoothing: label smoothing of the loss
        augment: rotate, shift, shear and zoom the training images at random; --no-augment trains on them as they are
        elastic_alpha: strength of elastic distortion in pixels, 0 for none (Simard et al. used 34)
        patience: epochs without a better validation accuracy before stopping (with keep_epoch best)
        seed: seed of weights, shuffling and augmentation
        ensemble_size: CNNs to train, with seeds SEED, SEED+1, ...
        member_splits: each member after the first trains on its own split of all labelled images (seed SEED+N)
        train_on_validation: add the validation images to the training set and keep the last epoch
        ema_momentum: keep an exponential moving average of the weights with this momentum, and use it; 0 for none
        pseudo_label_data: test.npz from preprocess: train again with the test images the first models label
            confidently
        pseudo_label_confidence: least probability for a pseudo-label
        mixed_precision: mixed precision: float16 on GPUs, bfloat16 on the CPU; auto turns it on for GPUs with
            tensor cores and CPUs with bfloat16 arithmetic (AVX-512 BF16 or AMX)
        float32_epochs: with mixed precision, the last epochs, which compute in float32
        keep_epoch: the epoch each member keeps: best (on validation, stopping early after PATIENCE stalled
            epochs) or last
        curves_png: where to plot the training curves (PNG, optional)
        checkpoint_dir: save each epoch there; started again with the same settings, training goes on from the
            last one (default: no checkpoints)
    """
    for name, value in (
        ("epochs", epochs),
        ("batch_size", batch_size),
        ("patience", patience),
        ("ensemble_size", ensemble_size),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if member_splits and train_on_validation:
        raise ValueError("member_splits and train_on_validation: each member already trains on every labelled image")
    if float32_epochs < 0:
        raise ValueError(f"float32_epochs must be at least 0, got {float32_epochs}")
    check_network(network)
    if learning_rate_schedule not in LEARNING_RATE_SCHEDULES:
        raise ValueError(
            f"learning_rate_schedule must be cosine, constant or exponential, got {learning_rate_schedule!r}"
        )
    if keep_epoch not in KEPT_EPOCHS:
        raise ValueError(f"keep_epoch must be best or last, got {keep_epoch!r}")
    if not 0 <= ema_momentum < 1:
        raise ValueError(f"ema_momentum must be in [0, 1), got {ema_momentum}")
    if not 0 < pseudo_label_confidence <= 1:
        raise ValueError(f"pseudo_label_confidence must be in (0, 1], got {pseudo_label_confidence}")
    devices = training_devices()
    gpus = tf.config.list_physical_devices("GPU")
    # A fit whose every epoch is in float32 (the quick profile's one epoch) has no mixed precision.
    policy = precision_policy(mixed_precision, gpus) if float32_epochs < epochs else "float32"
    where = f"training on {len(devices)} GPU(s)" if devices else "training on the CPU (no GPU found)"
    if policy != "float32":
        where += f", mixed precision ({policy.removeprefix('mixed_')})"
        where += f", float32 from epoch {epochs - float32_epochs + 1}" if float32_epochs else ""
    progress.say(where)
    if policy == "mixed_bfloat16" and not cpu_computes_bfloat16():
        progress.say("this CPU has no bfloat16 arithmetic (AVX-512 BF16 or AMX): it is emulated, several times slower")
    train_images, train_labels = load_arrays(train_data, "images", "labels")
    validation_images, validation_labels = load_arrays(validation_data, "images", "labels")
    if train_on_validation:
        train_images = np.concatenate([train_images, validation_images])
        train_labels = np.concatenate([train_labels, validation_labels])
    recipe = dict(
        network=network,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        learning_rate_schedule=learning_rate_schedule,
        weight_decay=weight_decay,
        label_smoothing=label_smoothing,
        augment=augment,
        elastic_alpha=elastic_alpha,
        patience=patience,
        train_on_validation=train_on_validation,
        ema_momentum=ema_momentum,
        float32_epochs=float32_epochs,
        keep_epoch=keep_epoch,
    )
    if checkpoint_dir:
        check_checkpoint_settings(
            checkpoint_dir,
            dict(
                recipe,
                seed=seed,
                ensemble_size=ensemble_size,
                member_splits=member_splits,
                pseudo_labels=pseudo_label_data is not None,
                pseudo_label_confidence=pseudo_label_confidence,
                mixed_precision=policy,
                data=array_digest(train_images, train_labels, validation_images, validation_labels),
                pseudo_label_data=pseudo_label_data and array_digest(*load_arrays(pseudo_label_data, "images")),
            ),
        )
    # What the task's inputs (which KFP's launcher logs into its MLflow run) do not say.
    tracking.log_params(
        dict(
            precision_policy=policy,
            gpus=len(devices),
            training_images=len(train_images),
            validation_images=len(validation_images),
            tensorflow_version=tf.__version__,
            keras_version=keras.__version__,
        )
    )
    settings = dict(recipe, strategy=distribution_strategy(devices))
    model_paths = [Path(model_dir) / MODEL_FILE.format(member=member) for member in range(ensemble_size)]
    labelled_images = np.concatenate([train_images, validation_images])
    labelled_labels = np.concatenate([train_labels, validation_labels])

    def member_data(member):
        """A member's training and validation images and labels: the given split, or with `member_splits` (and
        from the second member on) its own split of all labelled images, as preprocess draws one."""
        if not member_splits or member == 0:
            return train_images, train_labels, validation_images, validation_labels
        train_part, validation_part = stratified_split(
            labelled_labels, len(validation_images) / len(labelled_labels), seed + member
        )
        return (
            labelled_images[train_part],
            labelled_labels[train_part],
            labelled_images[validation_part],
            labelled_labels[validation_part],
        )

    def fit_members(added_images, added_labels, round_of_training):
        """Fit every member, each on its data and the `added` (pseudo-labelled) images."""
        histories = []
        for member, path in enumerate(model_paths):
            images, labels, member_validation_images, member_validation_labels = member_data(member)
            histories.append(
                fit(
                    path,
                    np.concatenate([images, added_images]),
                    np.concatenate([labels, added_labels]),
                    member_validation_images,
                    member_validation_labels,
                    seed=seed + member,
                    epoch_progress=EpochProgress(member, ensemble_size, epochs),
                    epoch_tracking=EpochTracking(
                        ("pseudo_labels/" if round_of_training else "")
                        + (f"member_{member}/" if ensemble_size > 1 else "")
                    )
                    if tracking.task_run()
                    else None,
                    checkpoint_path=checkpoint_dir
                    and Path(checkpoint_dir) / CHECKPOINT_FILE.format(round=round_of_training, member=member),
                    **settings,
                )
            )
        return histories

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        histories = fit_members(train_images[:0], train_labels[:0], 0)
        first_round, pseudo_labels = histories, 0
        if pseudo_label_data is not None:
            (test_images,) = load_arrays(pseudo_label_data, "images")
            probabilities = np.mean(
                [
                    load_model_file(path).predict(test_images.astype(np.float32), batch_size=512, verbose=0)
                    for path in model_paths
                ],
                axis=0,
            )
            confident = probabilities.max(axis=1) >= pseudo_label_confidence
            pseudo_labels = int(confident.sum())
            progress.say(
                f"pseudo-labels: {pseudo_labels} of {len(test_images)} test images at confidence >= "
                f"{pseudo_label_confidence}"
                + ("; training again with them" if pseudo_labels else "; keeping the first models")
            )
            if pseudo_labels:
                pseudo = probabilities[confident].argmax(axis=1).astype(train_labels.dtype)
                histories = fit_members(test_images[confident], pseudo, 1)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    # Members of an earlier, larger ensemble in the same folder would be averaged in by export.
    for stale in set(Path(model_dir).glob(MODEL_FILE.format(member="*"))) - set(model_paths):
        stale.unlink()
    history = {"members": histories, "pseudo_labels": pseudo_labels}
    if histories is not first_round:
        history["first_round_members"] = first_round
    save_json(history_path or Path(model_dir) / "history.json", history)
    if curves_png:
        training_curves(histories, curves_png)
        tracking.log_files({"training_curves.png": curves_png})
    for member, member_history in enumerate(histories):
        progress.figure(
            f"member {member}: best validation accuracy {max(member_history['val_accuracy']):.4f} "
            f"after {len(member_history['val_accuracy'])} epochs"
        )
    return history


def load_models(model_dir):
    """The members that train wrote to `model_dir`, in order."""
    paths = sorted(
        Path(model_dir).glob(MODEL_FILE.format(member="*")), key=lambda path: int(path.stem.rsplit("-", 1)[1])
    )
    if not paths:
        raise InputError(
            f"{Path(model_dir) / MODEL_FILE.format(member=0)}: file not found (the model folder that train writes)"
        )
    return [load_model_file(path) for path in paths]


def main(argv=None):
    command_line(
        train,
        argv,
        choices={
            "network": NETWORKS,
            "learning_rate_schedule": LEARNING_RATE_SCHEDULES,
            "mixed_precision": MIXED_PRECISION_MODES,
            "keep_epoch": KEPT_EPOCHS,
        },
        aliases={"history_path": "--history", "curves_png": "--curves"},
    )


if __name__ == "__main__":
    main()
