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


def training_curves(history, path):
    """Loss and error rate per epoch, training against validation; log scales show the last tenths of a percent."""
    epochs = np.arange(1, len(history["loss"]) + 1)
    figure, (loss_axis, error_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for split, prefix in (("training", ""), ("validation", "val_")):
        loss_axis.plot(epochs, history[f"{prefix}loss"], "o-", label=f"{split} loss")
        error = 100 * (1 - np.asarray(history[f"{prefix}accuracy"]))
        error_axis.plot(epochs, np.maximum(error, 0.01), "o-", label=f"{split} error")
    loss_axis.set_title("loss")
    error_axis.set_title("error rate (%)")
    for axis in (loss_axis, error_axis):
        axis.set_xlabel("epoch")
        axis.set_yscale("log")
        axis.grid(alpha=0.3, which="both")
        axis.legend()
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
                axis.text(predicted_digit, true_digit, str(count), ha="center", va="center", fontsize=8,
                          color="white" if true_digit == predicted_digit else "black")
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
