"""The ``core:text2image`` provider declaration and the task input as Nextcloud delivers it.

Nextcloud checks input types only: an empty prompt, ``numberOfImages: 500`` or ``"2"`` arrive as sent, so
``TaskInput`` coerces and range-checks every field and turns problems into messages a user understands.
"""

from __future__ import annotations

import math
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
from .imaging import ImageSize

PROVIDER_ID = "text2image_hub"
TASK_TYPE = "core:text2image"
RANDOM_SEED = -1
UNCONFIGURED = "not configured"
_BACKEND_LABELS = {"local": "on this server", "remote": "remote service"}


_SEED_INPUT = ShapeDescriptor(
    name="seed",
    description="Seed: the same seed and prompt give the same image; -1 picks a random one",
    shape_type=ShapeType.NUMBER,
)


def _size_label(size: ImageSize) -> str:
    if size.width == size.height:
        shape = "square"
    elif size.width > size.height:
        shape = "landscape"
    else:
        shape = "portrait"
    return f"{size.width} × {size.height} ({shape})"


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


def provider_declaration(
    model: ModelInfo, default_size: ImageSize, *, fallback: bool = False
) -> TaskProcessingProvider:
    """Our provider as Assistant shows it: name, honest expected runtime, size choices and a seed."""
    if model.backend == UNCONFIGURED:
        name = "Text2Image Hub (not configured yet)"
    else:
        where = _BACKEND_LABELS.get(model.backend, model.backend)
        short_model = model.id.rsplit("/", 1)[-1]
        name = f"Text2Image Hub: {short_model} ({where}{', remote fallback' if fallback else ''})"
    return TaskProcessingProvider(
        id=PROVIDER_ID,
        name=name,
        task_type=TASK_TYPE,
        expected_runtime=max(1, math.ceil(model.seconds_per_image + 2)),
        optional_input_shape=[
            ShapeDescriptor(name="size", description="Image size (width × height)", shape_type=ShapeType.ENUM),
            *([_SEED_INPUT] if model.accepts_seed else []),  # a remote service that takes no seed gets none
        ],
        optional_input_shape_enum_values={
            "size": [ShapeEnumValue(name=_size_label(size), value=str(size)) for size in model.sizes],
        },
        optional_input_shape_defaults={
            "size": str(default_size),
            **({"seed": RANDOM_SEED} if model.accepts_seed else {}),
        },
        input_shape_defaults={"numberOfImages": 1},
    )


@dataclass(frozen=True)
class TaskInput:
    """A validated task input: prompt, count, size (None → default) and seed (None → random)."""

    prompt: str
    count: int
    size: ImageSize | None
    seed: int | None

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> TaskInput:
        prompt = raw.get("input")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidRequestError("Please describe the image you want: the prompt is empty.", code="MISSING_PROMPT")
        count = raw.get("numberOfImages")
        count = 1 if count is None else count  # absent or null: the declared default
        return cls(prompt.strip(), _count(count), _size(raw.get("size")), _seed(raw.get("seed")))


def _count(value: object) -> int:
    number = _integer(value)
    if number is None or not 1 <= number <= MAX_IMAGES:
        raise InvalidRequestError(
            f"The number of images must be between 1 and {MAX_IMAGES}.",
            code="INVALID_N",
            param="numberOfImages",
        )
    return number


def _size(value: object) -> ImageSize | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise InvalidRequestError("The size must be written as WIDTHxHEIGHT.", code="INVALID_SIZE", param="size")
    return ImageSize.parse(value)


def _seed(value: object) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = _integer(value)
    if number is None or not RANDOM_SEED <= number < 2**63:
        raise InvalidRequestError(
            "The seed must be a whole number (0 or more), or -1 for a random one.", code="INVALID_SEED", param="seed"
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
