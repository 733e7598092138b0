"""The pictures a run leaves: training curves, the confusion matrix, sample test digits with predictions."""

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

from components.artifacts import atomic_path


def _save(figure, path):
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)


def training_curves(histories, path):
    """Loss and error rate per epoch, training against validation, one pair of lines per ensemble member.

    Log scales show the last tenths of a percent.
    """
    figure, (loss_axis, error_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for member, history in enumerate(histories):
        epochs = np.arange(1, len(history["loss"]) + 1)
        name = f"member {member} " if len(histories) > 1 else ""
        for split, prefix, color in (("training", "", "tab:blue"), ("validation", "val_", "tab:orange")):
            style = dict(color=color, alpha=1 if member == 0 else 0.4, marker="o", markersize=3)
            loss_axis.plot(epochs, history[f"{prefix}loss"], label=f"{name}{split} loss", **style)
            error = 100 * (1 - np.asarray(history[f"{prefix}accuracy"]))
            error_axis.plot(epochs, np.maximum(error, 0.01), label=f"{name}{split} error", **style)
    loss_axis.set_title("loss")
    error_axis.set_title("error rate (%)")
    for axis in (loss_axis, error_axis):
        axis.set_xlabel("epoch")
        axis.set_yscale("log")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    _save(figure, path)


def confusion_matrix(matrix, path):
    """A 10x10 confusion matrix with counts in each cell; rows are true digits."""
    matrix = np.asarray(matrix)
    figure, axis = plt.subplots(figsize=(7, 6))
    image = axis.imshow(np.log1p(matrix), cmap="Blues")
    for true_digit in range(10):
        for predicted_digit in range(10):
            count = matrix[true_digit, predicted_digit]
            if count:
                axis.text(
                    predicted_digit,
                    true_digit,
                    str(count),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if true_digit == predicted_digit else "black",
                )
    axis.set_xticks(range(10))
    axis.set_yticks(range(10))
    axis.set_xlabel("predicted digit")
    axis.set_ylabel("true digit")
    axis.set_title("confusion matrix (validation)")
    figure.colorbar(image, ax=axis, label="log(1 + count)")
    _save(figure, path)


def digit_grid(images, labels, path, columns=10):
    """Digits in a grid, each titled with its (predicted) label."""
    rows = max(1, int(np.ceil(len(images) / columns)))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.25))
    for axis in np.ravel(axes):
        axis.axis("off")
    for axis, image, label in zip(np.ravel(axes), images, labels):
        axis.imshow(np.asarray(image).reshape(28, 28), cmap="gray_r")
        axis.set_title(str(label), fontsize=11)
    _save(figure, path)
