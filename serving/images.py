"""Photos, scans and drawings of a digit made to look like MNIST's 28x28 images.

MNIST was made this way: grey levels, ink bright on black, the digit cropped to its
ink, scaled (keeping its shape) to fit a 20x20 box, and placed in 28x28 so that its
centre of mass is the centre of the image.
"""

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from serving.errors import BadRequest

MAX_PIXELS = 40_000_000  # far beyond any photo; a decompression bomb stops here


def load_grey(data: bytes) -> np.ndarray:
    """Decode PNG/JPEG/... bytes as grey levels 0-255 (float), transparency flattened onto white."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise BadRequest(f"image of {image.width}x{image.height} pixels is too large")
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, rgba)
            return np.asarray(image.convert("L"), dtype=np.float32)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadRequest(f"the body is not an image that can be read ({error.__class__.__name__})") from None


def mnist_like(grey: np.ndarray) -> np.ndarray:
    """A grey image of one digit, any size and polarity, as MNIST's 28x28 raw pixels (float32, ink bright)."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if np.median(border) > 127:  # dark ink on light paper: make the ink bright
        grey = 255 - grey
    background, ink = np.percentile(grey, 50), grey.max()
    if ink - background < 16:
        return np.zeros((28, 28), np.float32)  # a blank page: nothing to centre
    ink_level = np.clip((grey - background) / (ink - background), 0, 1)
    ink_level[ink_level < 0.2] = 0  # paper texture and shadows are not ink
    rows, columns = np.nonzero(ink_level)
    ink_level = ink_level[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
    height, width = ink_level.shape
    scale = 20 / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    digit = np.asarray(Image.fromarray((ink_level * 255).astype(np.uint8)).resize(size, Image.LANCZOS), np.float32)
    canvas = np.zeros((28, 28), np.float32)
    top, left = (28 - size[1]) // 2, (28 - size[0]) // 2
    canvas[top : top + size[1], left : left + size[0]] = digit
    return centre_by_mass(canvas)


def centre_by_mass(canvas: np.ndarray) -> np.ndarray:
    """Shift the image by whole pixels so that its centre of mass lies at the centre."""
    total = canvas.sum()
    if total == 0:
        return canvas
    rows, columns = np.indices(canvas.shape)
    shift_rows = int(round(13.5 - (rows * canvas).sum() / total))
    shift_columns = int(round(13.5 - (columns * canvas).sum() / total))
    shifted = np.zeros_like(canvas)
    source = canvas[max(0, -shift_rows) : 28 - max(0, shift_rows), max(0, -shift_columns) : 28 - max(0, shift_columns)]
    shifted[
        max(0, shift_rows) : max(0, shift_rows) + source.shape[0],
        max(0, shift_columns) : max(0, shift_columns) + source.shape[1],
    ] = source
    return shifted


def image_to_pixels(data: bytes) -> np.ndarray:
    """Image file bytes as one MNIST-like image [28, 28, 1] of raw 0-255 pixels."""
    return mnist_like(load_grey(data))[..., None]
