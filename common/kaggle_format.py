"""Kaggle's Digit Recognizer CSV format: columns, and what makes a value good (no pandas: the server uses it too)."""

import re

IMAGE_SIZE = 28
PIXEL_COLUMNS = [f"pixel{index}" for index in range(IMAGE_SIZE * IMAGE_SIZE)]
TRAIN_HEADER = ["label", *PIXEL_COLUMNS]
TEST_HEADER = PIXEL_COLUMNS
SUBMISSION_HEADER = "ImageId,Label"
_INTEGER = re.compile(r"\s*[+-]?\d+\s*")


def value_problem(name, value):
    """What is wrong with one CSV field of column `name`, or None if it is a good label or pixel."""
    if not value.strip():
        return "missing value"
    if not _INTEGER.fullmatch(value):
        return f"'{value}' is not an integer"
    number = int(value)
    if name == "label" and not 0 <= number <= 9:
        return f"label {number} is not a digit 0-9"
    if name != "label" and not 0 <= number <= 255:
        return f"pixel value {number} is outside 0-255"
    return None
