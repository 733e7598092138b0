import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from common.onnx_model import load_session, predict
from components.kaggle_csv import read_csv
from serving.errors import BadRequest
from serving.images import image_to_pixels, mnist_like


def fixture_digits(fixture_data, count=40):
    labels, pixels = read_csv(fixture_data / "train.csv", labelled=True)
    return labels[:count], pixels[:count].reshape(-1, 28, 28).astype(np.float32)


def as_photo(digit, seed, size=(300, 420)):
    """A digit as a phone photo of paper would show it: large, dark grey ink on uneven light paper, blurred, JPEG."""
    generator = np.random.default_rng(seed)
    ink = Image.fromarray(digit.astype(np.uint8)).resize((180, 180), Image.BICUBIC)
    ink = ink.rotate(generator.uniform(-8, 8), resample=Image.BICUBIC)
    paper = np.linspace(200, 240, size[0])[None, :] + generator.normal(0, 6, (size[1], size[0]))
    canvas = np.zeros((size[1], size[0]), np.float32)
    top, left = generator.integers(40, size[1] - 220), generator.integers(20, size[0] - 200)
    canvas[top : top + 180, left : left + 180] = np.asarray(ink, np.float32) / 255
    photo = paper * (1 - 0.75 * canvas)
    rgb = np.stack([photo, photo * 0.97, photo * 0.92], axis=-1).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(1.5))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def encode(array, format="PNG", mode="L"):
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).convert(mode).save(buffer, format=format)
    return buffer.getvalue()


def test_an_mnist_digit_comes_back_much_the_same(fixture_data, served_model):
    labels, digits = fixture_digits(fixture_data)
    again = np.stack([mnist_like(digit) for digit in digits])
    correlations = [np.corrcoef(a.ravel(), d.ravel())[0, 1] for a, d in zip(again, digits)]
    assert np.median(correlations) > 0.7  # MNIST's own centring differs by a pixel here and there
    _, predicted = predict(load_session(served_model), again[..., None])
    assert (predicted == labels).mean() >= 0.95


def test_the_digit_fits_20x20_and_is_centred_by_mass():
    page = np.full((400, 300), 250.0)
    page[50:350, 100:140] = 20  # a tall dark stroke on white paper
    pixels = mnist_like(page)
    rows, columns = np.nonzero(pixels > 10)
    assert rows.max() - rows.min() + 1 <= 21 and columns.max() - columns.min() + 1 <= 21
    total = pixels.sum()
    centre = ((np.arange(28)[:, None] * pixels).sum() / total, (np.arange(28)[None, :] * pixels).sum() / total)
    assert abs(centre[0] - 13.5) <= 0.5 and abs(centre[1] - 13.5) <= 0.5
    assert pixels.max() > 200  # the ink is bright, as in MNIST


def test_both_polarities_and_colour_give_the_same_pixels(fixture_data):
    _, digits = fixture_digits(fixture_data, 1)
    big = np.asarray(Image.fromarray(digits[0].astype(np.uint8)).resize((112, 112), Image.BICUBIC), np.float32)
    light_on_dark = image_to_pixels(encode(big))
    dark_on_light = image_to_pixels(encode(255 - big))
    colour = image_to_pixels(encode(np.stack([255 - big] * 3, axis=-1), mode="RGB"))
    assert np.abs(light_on_dark - dark_on_light).max() < 2
    assert np.abs(dark_on_light - colour).max() < 2


def test_transparent_drawing_is_flattened_onto_white():
    rgba = np.zeros((200, 200, 4), np.uint8)
    rgba[40:160, 90:110] = (0, 0, 0, 255)  # black stroke on a transparent canvas
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    pixels = image_to_pixels(buffer.getvalue())
    assert pixels.max() > 200 and pixels[0, 0, 0] == 0


def test_blank_page_is_all_zero():
    assert image_to_pixels(encode(np.full((50, 50), 255))).max() == 0


def test_photos_of_digits_on_paper_read_as_well_as_the_digits(fixture_data, served_model):
    labels, digits = fixture_digits(fixture_data)
    session = load_session(served_model)
    photos = np.stack([image_to_pixels(as_photo(digit, seed)) for seed, digit in enumerate(digits)])
    _, from_photos = predict(session, photos)
    _, from_pixels = predict(session, digits[..., None])
    assert (from_pixels == labels).mean() >= 0.95
    assert (from_photos == labels).mean() >= (from_pixels == labels).mean() - 0.05


@pytest.mark.parametrize("data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20])
def test_not_an_image(data):
    with pytest.raises(BadRequest, match="not an image"):
        image_to_pixels(data)
