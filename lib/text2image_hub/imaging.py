"""Image sizes, decoding images from elsewhere safely, PNG encoding with AI provenance metadata, and the optional
visible "AI-generated" mark."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin, UnidentifiedImageError

from .errors import InvalidRequestError
from .i18n import _

_SIZE_PATTERN = re.compile(r"^\s*(\d{2,5})\s*[xX×]\s*(\d{2,5})\s*$")
WATERMARK_TEXT = "AI-generated"
MAX_DECODE_PIXELS = 4096 * 4096
"""The most pixels an image from elsewhere may declare (our largest size is 1536x1536): ``decode_image`` refuses
bigger ones from their header, before decoding; ``__main__`` sets Pillow's decompression-bomb guard to it too."""


class ImageRejectedError(ValueError):
    """An image from elsewhere is unusable: not an image, the wrong size, or too large to decode."""


@dataclass(frozen=True, order=True)
class ImageSize:
    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> ImageSize:
        """Parse ``"1024x768"``; anything else is an ``InvalidRequestError`` with code ``INVALID_SIZE``."""
        match = _SIZE_PATTERN.match(text)
        if match is None:
            raise InvalidRequestError(
                _("Invalid size {size}: write it as WIDTHxHEIGHT, for example 1024x1024.", size=repr(text[:40])),
                code="INVALID_SIZE",
                param="size",
            )
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


def decode_image(raw: bytes, size: ImageSize) -> Image.Image:
    """Decode an image from an untrusted source (a remote service), checking it first from its header only.

    Declared dimensions other than ``size`` or over ``MAX_DECODE_PIXELS`` are refused before anything is decoded: a
    500 KB PNG may declare 13000x13000 pixels and take gigabytes to decode. Runs in a thread (it is CPU work).
    """
    try:
        with Image.open(io.BytesIO(raw)) as opened:
            width, height = opened.size
            if width * height > MAX_DECODE_PIXELS:
                raise ImageRejectedError(f"it declares {width}x{height} pixels, over the {MAX_DECODE_PIXELS} allowed")
            if (width, height) != (size.width, size.height):
                raise ImageRejectedError(f"it is {width}x{height} where {size} was asked for")
            opened.load()
            return opened.copy()
    except ImageRejectedError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        # ValueError: Pillow's own limits (an oversized text chunk: "Decompressed data too large")
        raise ImageRejectedError(f"it does not decode ({type(exc).__name__}: {exc})") from exc


def sizes_text(sizes: tuple[ImageSize, ...]) -> str:
    return ", ".join(str(size) for size in sizes)


@dataclass(frozen=True)
class Provenance:
    """What every PNG says about how it was made (IPTC's "trainedAlgorithmicMedia" plus our facts)."""

    model: str
    backend: str
    seed: int | None  # None: the model takes no seed, so none is claimed
    size: ImageSize
    app_version: str
    prompt: str | None = None
    style: str | None = None

    def text_chunks(self) -> dict[str, str]:
        chunks = {
            "AI-Generated": "true",
            "DigitalSourceType": "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia",
            "Software": f"text2image_hub {self.app_version}",
            "Model": self.model,
            "Backend": self.backend,
            "Size": str(self.size),
        }
        if self.seed is not None:
            chunks["Seed"] = str(self.seed)
        if self.style is not None:
            chunks["Style"] = self.style
        if self.prompt is not None:
            chunks["Prompt"] = self.prompt
        return chunks


def add_watermark(image: Image.Image) -> Image.Image:
    """A small, semi-transparent "AI-generated" label in the bottom-right corner (only that corner is composited)."""
    base = image.convert("RGB") if image.mode != "RGB" else image.copy()
    font_size = max(10, min(base.size) // 40)
    font = ImageFont.load_default(size=font_size)
    left, top, right, bottom = ImageDraw.Draw(base).textbbox((0, 0), WATERMARK_TEXT, font=font)
    pad = max(2, font_size // 3)
    box_w, box_h = int(right - left) + 2 * pad, int(bottom - top) + 2 * pad
    x0, y0 = max(0, base.width - box_w - pad), max(0, base.height - box_h - pad)
    corner = base.crop((x0, y0, x0 + box_w, y0 + box_h)).convert("RGBA")
    overlay = Image.new("RGBA", corner.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    draw.rounded_rectangle((0, 0, box_w - 1, box_h - 1), radius=pad, fill=(0, 0, 0, 90))
    draw.text((pad - left, pad - top), WATERMARK_TEXT, font=font, fill=(255, 255, 255, 200))
    base.paste(Image.alpha_composite(corner, overlay).convert("RGB"), (x0, y0))
    return base


def encode_png(image: Image.Image, provenance: Provenance, *, watermark: bool) -> bytes:
    """Encode as PNG with provenance text chunks, and the visible mark when ``watermark`` is true."""
    if watermark:
        image = add_watermark(image)
    elif image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    info = PngImagePlugin.PngInfo()
    for key, value in provenance.text_chunks().items():
        info.add_itxt(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=1)  # fast: encoding is on the hot path
    return buffer.getvalue()
