import pytest
from PIL import Image
from PIL.PngImagePlugin import PngImageFile

from tests.pngs import open_png
from text2image_hub.errors import InvalidRequestError
from text2image_hub.imaging import ImageSize, Provenance, encode_png


@pytest.mark.parametrize("text", ["1024x1024", "1024X768", " 512 x 512 ", "768×1024"])
def test_size_parse_accepts_common_spellings(text):
    size = ImageSize.parse(text)
    assert str(size) == text.strip().lower().replace(" ", "").replace("×", "x")


@pytest.mark.parametrize("text", ["", "1024", "axb", "1024x", "-1x5", "1x1"])
def test_size_parse_rejects_garbage(text):
    with pytest.raises(InvalidRequestError) as caught:
        ImageSize.parse(text)
    assert caught.value.code == "INVALID_SIZE"


def _png(watermark: bool, prompt: str | None = None) -> PngImageFile:
    image = Image.new("RGB", (256, 128), (10, 20, 30))
    provenance = Provenance("m/model", "local", 42, ImageSize(256, 128), "1.0.0", prompt)
    return open_png(encode_png(image, provenance, watermark=watermark))


def test_png_carries_provenance_without_prompt():
    decoded = _png(watermark=False)
    assert decoded.format == "PNG"
    assert decoded.size == (256, 128)
    assert decoded.text["AI-Generated"] == "true"
    assert decoded.text["Model"] == "m/model"
    assert decoded.text["Backend"] == "local"
    assert decoded.text["Seed"] == "42"
    assert decoded.text["Size"] == "256x128"
    assert "1.0.0" in decoded.text["Software"]
    assert "Prompt" not in decoded.text
    assert decoded.convert("RGB").getpixel((250, 120)) == (10, 20, 30)


def test_png_includes_prompt_only_when_given():
    assert _png(watermark=False, prompt="a cat").text["Prompt"] == "a cat"


def test_watermark_marks_only_the_corner():
    decoded = _png(watermark=True).convert("RGB")
    assert decoded.getpixel((5, 5)) == (10, 20, 30)
    corner = [decoded.getpixel((x, y)) for x in range(180, 256) for y in range(100, 128)]
    assert any(pixel != (10, 20, 30) for pixel in corner)
