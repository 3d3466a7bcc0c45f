"""Styles: a few words added to the user's prompt (and a negative prompt where the model takes one).

Each style has two wordings, fitted to how the active model reads a prompt: a short phrase for models prompted in
plain sentences (FLUX.1, whose remote services also cap the prompt: IONOS takes 256 characters), and comma-separated
tags with a negative prompt for models with classifier-free guidance (SDXL). The style's words count against the
model's prompt limit: ``fit`` rejects or shortens the user's part, as the admin's prompt length policy says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .backends import ModelInfo
from .errors import InvalidRequestError
from .i18n import Message, _

NO_STYLE = "none"
OPENAI_STYLES = ("vivid", "natural")
"""OpenAI's ``style`` values (DALL·E 3): clients send them; they mean no style of ours."""


@dataclass(frozen=True)
class Style:
    id: str
    label: Message
    phrase: str
    """Appended to a plain-sentence prompt (FLUX)."""
    tags: str
    """Appended to a tag prompt (SDXL)."""
    negative: str = ""
    """Added to the negative prompt of a model that takes one."""


STYLES: tuple[Style, ...] = (
    Style(NO_STYLE, _("None"), "", ""),
    Style(
        "photograph",
        _("Photograph"),
        ", as a realistic photograph, natural light",
        ", photograph, realistic, natural light, 35mm, sharp focus",
        "illustration, painting, drawing, cartoon, 3d render",
    ),
    Style(
        "illustration",
        _("Illustration"),
        ", as a clean digital illustration",
        ", digital illustration, clean lines, flat colours, vector art",
        "photograph, photorealistic, blurry",
    ),
    Style(
        "watercolour",
        _("Watercolour"),
        ", as a watercolour painting on paper",
        ", watercolour painting, soft washes, paper texture, delicate",
        "photograph, 3d render, harsh lines",
    ),
    Style(
        "3d_render",
        _("3D render"),
        ", as a 3D render, soft studio lighting",
        ", 3d render, octane render, studio lighting, high detail",
        "photograph, drawing, flat, sketch",
    ),
    Style(
        "pixel_art",
        _("Pixel art"),
        ", as 16-bit pixel art",
        ", pixel art, 16-bit, retro game, crisp pixels",
        "photograph, blurry, smooth gradients, 3d render",
    ),
    Style(
        "line_drawing",
        _("Line drawing"),
        ", as a black ink line drawing on white",
        ", line drawing, black ink, white background, minimal, clean lines",
        "colour, photograph, shading, 3d render",
    ),
    Style(
        "oil_painting",
        _("Oil painting"),
        ", as an oil painting with visible brush strokes",
        ", oil painting, visible brush strokes, canvas texture, rich colours",
        "photograph, 3d render, flat colours",
    ),
    Style(
        "anime",
        _("Anime"),
        ", in anime style",
        ", anime style, cel shading, vibrant colours, detailed",
        "photograph, realistic, 3d render",
    ),
)
STYLE_IDS: tuple[str, ...] = tuple(style.id for style in STYLES)


def find_style(name: str | None, *, enabled: bool) -> Style | None:
    """The style ``name`` asks for; None for no style (none asked, ``none``, OpenAI's ``vivid``/``natural``)."""
    if name is None or not name.strip():
        return None
    key = name.strip().lower()
    if key == NO_STYLE or key in OPENAI_STYLES:
        return None
    if not enabled:
        raise InvalidRequestError(
            _("Styles are turned off on this server: describe the style in the prompt instead."),
            code="STYLES_DISABLED",
            param="style",
        )
    for style in STYLES:
        if style.id == key:
            return style
    raise InvalidRequestError(
        _("The style '{name}' does not exist. Styles: {styles}.", name=name[:50], styles=", ".join(STYLE_IDS)),
        code="INVALID_STYLE",
        param="style",
    )


@dataclass(frozen=True)
class StyledPrompt:
    prompt: str
    negative_prompt: str | None


def fit(
    prompt: str,
    negative_prompt: str | None,
    style: Style | None,
    model: ModelInfo,
    policy: Literal["reject", "truncate"],
) -> StyledPrompt:
    """``prompt`` in ``style`` for ``model``, within its prompt limit (the style's words count against it)."""
    words = "" if style is None else (style.tags if model.supports_negative_prompt else style.phrase)
    negative = negative_prompt or None
    if style is not None and style.negative and model.supports_negative_prompt:
        negative = f"{negative}, {style.negative}" if negative else style.negative
    limit = model.max_prompt_length
    if limit is None or len(prompt) + len(words) <= limit:
        return StyledPrompt(prompt + words, negative)
    room = limit - len(words)
    if policy == "reject" or room < 1:
        raise InvalidRequestError(_too_long(prompt, words, style, model, limit), code="PROMPT_TOO_LONG", param="prompt")
    return StyledPrompt(prompt[:room].rstrip() + words, negative)


def _too_long(prompt: str, words: str, style: Style | None, model: ModelInfo, limit: int) -> Message:
    if style is None:
        return _(
            "The prompt is {length} characters long; {model} accepts at most {limit}. Please shorten it.",
            length=len(prompt),
            model=model.id,
            limit=limit,
        )
    return _(
        "The prompt is {length} characters long and the style '{style}' adds {extra}; {model} accepts at most "
        "{limit}. Please shorten the prompt or choose no style.",
        length=len(prompt),
        style=style.id,
        extra=len(words),
        model=model.id,
        limit=limit,
    )
