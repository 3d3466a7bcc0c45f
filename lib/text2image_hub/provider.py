"""The ``core:text2image`` provider declaration and the task input as Nextcloud delivers it.

Nextcloud checks input types only: an empty prompt, ``numberOfImages: 500`` or ``"2"`` arrive as sent, so
``TaskInput`` coerces and range-checks every field and turns problems into messages a user understands.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nc_py_api.ex_app.providers.task_processing import (
    ShapeDescriptor,
    ShapeEnumValue,
    ShapeType,
    TaskProcessingProvider,
)

from .backends import MAX_IMAGES, ModelInfo
from .errors import InvalidRequestError
from .i18n import Message, _
from .imaging import ImageSize
from .styles import NO_STYLE, STYLES

PROVIDER_ID = "text2image_hub"
TASK_TYPE = "core:text2image"
RANDOM_SEED = -1
UNCONFIGURED = "not configured"
_BACKEND_LABELS = {"local": _("on this server"), "remote": _("remote service")}
Render = Callable[[Message], str]
"""A text in the language of the provider's declaration."""


def _size_label(size: ImageSize) -> Message:
    dimensions = f"{size.width} × {size.height}"
    if size.width == size.height:
        return _("{dimensions} (square)", dimensions=dimensions)
    if size.width > size.height:
        return _("{dimensions} (landscape)", dimensions=dimensions)
    return _("{dimensions} (portrait)", dimensions=dimensions)


def unconfigured_model() -> ModelInfo:
    """What the provider declares while the admin settings are incomplete (tasks then fail with a clear message)."""
    sizes = (ImageSize(1024, 1024), ImageSize(768, 768), ImageSize(512, 512))
    return ModelInfo(
        id=UNCONFIGURED,
        backend=UNCONFIGURED,
        sizes=sizes,
        default_size=sizes[0],
        steps=None,
        default_guidance=None,
        supports_negative_prompt=False,
        max_images_per_request=MAX_IMAGES,
        seconds_per_image=10.0,
    )


def _name(model: ModelInfo, fallback: bool, render: Render) -> str:
    if model.backend == UNCONFIGURED:
        return render(_("Text2Image Hub (not configured yet)"))
    short_model = model.id.rsplit("/", 1)[-1]
    if fallback:
        return render(_("Text2Image Hub: {model} (on this server, remote fallback)", model=short_model))
    where = _BACKEND_LABELS.get(model.backend)
    return render(
        _("Text2Image Hub: {model} ({where})", model=short_model, where=render(where) if where else model.backend)
    )


def provider_declaration(
    model: ModelInfo,
    default_size: ImageSize,
    *,
    render: Render = str,
    fallback: bool = False,
    styles: bool = True,
) -> TaskProcessingProvider:
    """Our provider as Assistant shows it: name, honest expected runtime, size choices, styles (unless the admin
    turned them off) and a seed. Its texts are rendered by ``render``, in the installation's language (an input's
    name is its key in the task input: only its description is text)."""
    size_help = _("Image size (width × height)")
    inputs = [ShapeDescriptor(name="size", description=render(size_help), shape_type=ShapeType.ENUM)]
    enum_values = {"size": [ShapeEnumValue(name=render(_size_label(size)), value=str(size)) for size in model.sizes]}
    defaults: dict[str, str | int | float] = {"size": str(default_size)}
    if styles:
        style_help = _("Style: a look for the image, added to the prompt")
        inputs.append(ShapeDescriptor(name="style", description=render(style_help), shape_type=ShapeType.ENUM))
        enum_values["style"] = [ShapeEnumValue(name=render(style.label), value=style.id) for style in STYLES]
        defaults["style"] = NO_STYLE
    if model.accepts_seed:  # a remote service that takes no seed gets none
        seed_help = _("Seed: the same seed and prompt give the same image; -1 picks a random one")
        inputs.append(ShapeDescriptor(name="seed", description=render(seed_help), shape_type=ShapeType.NUMBER))
        defaults["seed"] = RANDOM_SEED
    return TaskProcessingProvider(
        id=PROVIDER_ID,
        name=_name(model, fallback, render),
        task_type=TASK_TYPE,
        expected_runtime=max(1, math.ceil(model.seconds_per_image + 2)),
        optional_input_shape=inputs,
        optional_input_shape_enum_values=enum_values,
        optional_input_shape_defaults=defaults,
        input_shape_defaults={"numberOfImages": 1},
    )


@dataclass(frozen=True)
class TaskInput:
    """A validated task input: prompt, count, size (None → default), seed (None → random) and style (None → none;
    checked against the styles by ``ImageService.resolve``)."""

    prompt: str
    count: int
    size: ImageSize | None
    seed: int | None
    style: str | None = None

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> TaskInput:
        prompt = raw.get("input")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequestError(
                _("Please describe the image you want: the prompt is empty."), code="MISSING_PROMPT"
            )
        count = raw.get("numberOfImages")
        count = 1 if count is None else count  # absent or null: the declared default
        style = raw.get("style")
        return cls(
            prompt.strip(),
            _count(count),
            _size(raw.get("size")),
            _seed(raw.get("seed")),
            style if isinstance(style, str) and style.strip() else None,
        )


def _count(value: object) -> int:
    number = _integer(value)
    if number is None or not 1 <= number <= MAX_IMAGES:
        raise InvalidRequestError(
            _("The number of images must be between 1 and {most}.", most=MAX_IMAGES),
            code="INVALID_N",
            param="numberOfImages",
        )
    return number


def _size(value: object) -> ImageSize | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise InvalidRequestError(_("The size must be written as WIDTHxHEIGHT."), code="INVALID_SIZE", param="size")
    return ImageSize.parse(value)


def _seed(value: object) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = _integer(value)
    if number is None or not RANDOM_SEED <= number < 2**63:
        raise InvalidRequestError(
            _("The seed must be a whole number (0 or more), or -1 for a random one."), code="INVALID_SEED", param="seed"
        )
    return None if number == RANDOM_SEED else number


def _integer(value: object) -> int | None:
    """Whole numbers given as int, integral float or numeric string; anything else is None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                return None
            return int(number) if number.is_integer() else None
    return None
