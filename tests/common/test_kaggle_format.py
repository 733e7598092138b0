import pytest

from common.kaggle_format import PIXEL_COLUMNS, TEST_HEADER, TRAIN_HEADER, value_problem


def test_the_headers_are_kaggles():
    assert TRAIN_HEADER[:2] == ["label", "pixel0"] and TRAIN_HEADER[-1] == "pixel783" and len(TRAIN_HEADER) == 785
    assert TEST_HEADER == PIXEL_COLUMNS == TRAIN_HEADER[1:]


@pytest.mark.parametrize(
    "name, value, problem",
    [
        ("label", "7", None),
        ("pixel0", " 255 ", None),
        ("pixel0", "+0", None),
        ("pixel0", "", "missing value"),
        ("pixel0", "1.5", "'1.5' is not an integer"),
        ("label", "10", "label 10 is not a digit 0-9"),
        ("pixel3", "256", "pixel value 256 is outside 0-255"),
        ("pixel3", "-1", "pixel value -1 is outside 0-255"),
    ],
)
def test_value_problem_names_what_is_wrong_with_a_field(name, value, problem):
    assert value_problem(name, value) == problem
