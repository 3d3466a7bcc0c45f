"""Reading the PNGs the app made, with their text chunks."""

from __future__ import annotations

import io

from PIL import Image, PngImagePlugin


def open_png(data: bytes) -> PngImagePlugin.PngImageFile:
    image = Image.open(io.BytesIO(data))
    assert isinstance(image, PngImagePlugin.PngImageFile), f"not a PNG: {image.format}"
    return image
