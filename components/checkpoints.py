"""Resumable training: the checkpoint of a member's fit after every epoch, its file format, and its settings.

A checkpoint folder holds `settings.json` (the settings and data the checkpoints belong to) and one file per
member and round of training (round 1 is the second fit, with pseudo-labels): a `save_arrays` file whose
`state` array is JSON (epochs done, history, the watched callbacks' state) beside the model's, the optimizer's
and the weight average's variables and the best model file so far; once the member is finished, only its
history and its final model file.
"""

import hashlib
import json
from pathlib import Path

import keras
import numpy as np

from common.errors import InputError
from components import progress
from components.artifacts import atomic_path, load_arrays, load_json, save_arrays, save_json

CHECKPOINT_SETTINGS_FILE = "settings.json"
CHECKPOINT_FILE = "round-{round}-member-{member}.npz"


class TrainingCheckpoint(keras.callbacks.Callback):
    """After every epoch, everything a member's fit needs to go on from there, in one file written atomically.

    That is the model's variables (the dropout's seed state among them), the optimizer's (its step count drives
    the learning rate schedule), a weight average's raw weights and step, the history, the state of the
    best-epoch and early-stopping callbacks (`watched`) and the best model file so far. The batches need no
    state: `training_dataset` skips to them. Put it after the watched callbacks, so it restores their state
    after they reset it at the start of fit.
    """

    WATCHED_STATE = ("best", "wait", "best_epoch", "stopped_epoch")

    def __init__(self, path, best_model_path, watched, weight_average=None):
        super().__init__()
        self.path, self.best_model_path, self.watched = Path(path), Path(best_model_path), watched
        self.weight_average = weight_average
        saved = read_checkpoint(self.path)
        self.state, self.arrays = saved or ({"epochs_done": 0, "stopped": False, "history": {}, "watched": []}, {})

    def restore(self, model):
        """Give a freshly compiled model, its optimizer built, the saved weights and optimizer state; put the best
        model file back.

        Returns the number of epochs done: fit goes on from there.
        """
        if self.state["epochs_done"]:
            for name, variables in (("model", model.variables), ("optimizer", model.optimizer.variables)):
                for index, variable in enumerate(variables):
                    variable.assign(self.arrays[f"{name}_{index}"])
            if "best_model" in self.arrays:
                self.best_model_path.write_bytes(self.arrays["best_model"].tobytes())
            if self.weight_average:
                raw = [self.arrays[f"raw_{index}"] for index in range(len(model.weights))]
                self.weight_average.resume(raw, self.state["average_step"])
            progress.say(f"resuming from {self.path} after epoch {self.state['epochs_done']}")
        return self.state["epochs_done"]

    def on_train_begin(self, logs=None):
        for callback, state in zip(self.watched, self.state["watched"], strict=False):  # none saved before epoch 1
            for name, value in state.items():
                setattr(callback, name, value)

    def on_epoch_end(self, epoch, logs=None):
        for name, value in logs.items():
            self.state["history"].setdefault(name, []).append(float(value))
        self.state.update(
            epochs_done=epoch + 1,
            stopped=bool(self.model.stop_training),
            watched=[
                {name: jsonable(getattr(callback, name)) for name in self.WATCHED_STATE if hasattr(callback, name)}
                for callback in self.watched
            ],
        )
        arrays = {
            f"model_{index}": keras.ops.convert_to_numpy(variable)
            for index, variable in enumerate(self.model.variables)
        }
        arrays.update(
            {
                f"optimizer_{index}": keras.ops.convert_to_numpy(variable)
                for index, variable in enumerate(self.model.optimizer.variables)
            }
        )
        if self.weight_average:  # between epochs the model holds the average, the callback the raw weights
            raw, self.state["average_step"] = self.weight_average.state()
            arrays.update({f"raw_{index}": weight for index, weight in enumerate(raw)})
        if self.best_model_path.is_file() and self.best_model_path.stat().st_size:
            arrays["best_model"] = np.frombuffer(self.best_model_path.read_bytes(), np.uint8)
        write_checkpoint(self.path, self.state, arrays)

    def finish(self, model_path):
        """The member is done: keep only its history and final model, which a later start takes as they are."""
        self.state.update(finished=True, watched=[])
        write_checkpoint(self.path, self.state, {"model": np.frombuffer(Path(model_path).read_bytes(), np.uint8)})


def jsonable(value):
    return None if value is None else value if isinstance(value, (int, str)) else float(value)


def read_checkpoint(path):
    """A member's checkpoint as (state, arrays), or None where there is none yet."""
    if not Path(path).is_file():
        return None
    (state,) = load_arrays(path, "state")
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files if name != "state"}
    return json.loads(state.item()), arrays


def write_checkpoint(path, state, arrays):
    save_arrays(path, state=np.array(json.dumps(state)), **arrays)


def finished_member(checkpoint_path, model_path):
    """A member that an earlier start finished: write its model to `model_path`, return its history; else None."""
    saved = checkpoint_path and read_checkpoint(checkpoint_path)
    if not saved or not saved[0].get("finished"):
        return None
    state, arrays = saved
    with atomic_path(model_path) as temporary:
        temporary.write_bytes(arrays["model"].tobytes())
    progress.say(f"member finished before: taken from {checkpoint_path}")
    return state["history"]


def check_checkpoint_settings(checkpoint_dir, settings):
    """Refuse a checkpoint folder that holds checkpoints of other settings or data; claim an empty one."""
    path = Path(checkpoint_dir) / CHECKPOINT_SETTINGS_FILE
    if path.is_file():
        saved = load_json(path, "the settings of the checkpoints there")
        differing = sorted(name for name in set(saved) | set(settings) if saved.get(name) != settings.get(name))
        if differing:
            raise InputError(
                f"{checkpoint_dir}: holds checkpoints of other settings ({', '.join(differing)} differ); "
                f"start with the same settings and data, or with another (or an empty) checkpoint folder"
            )
    else:
        save_json(path, settings)


def array_digest(*arrays):
    """SHA-256 of arrays' contents (not of their files, whose zip headers hold the time they were written)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
