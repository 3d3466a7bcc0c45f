"""Wire models of the /v1 API: OpenAI's Images and Models shapes plus our documented extensions.

Requests are validated here and every problem becomes an ``InvalidRequestError`` with a stable code
(``MISSING_PROMPT``, ``INVALID_SIZE``, ``INVALID_N``, …) and the OpenAI ``param`` it concerns, so clients get
OpenAI's 400 envelope rather than FastAPI's 422.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator

from ..backends import MAX_IMAGES
from ..errors import InvalidRequestError
from ..imaging import ImageSize
from ..service import MAX_SEED, ImageRequest

MAX_PROMPT_CHARS = 32_000
_SEEDS_TEXT = r"^ *\[? *[0-9]{1,10}( *, *[0-9]{1,10})* *\]? *$"
_SIZE_TEXT = r"^ *(auto|[0-9]{2,5} *[xX×] *[0-9]{2,5}) *$"

# the request field → the error code of a bad value (the name clients see in "param")
_FIELD_CODES: dict[str, str] = {
    "prompt": "INVALID_PROMPT",
    "model": "INVALID_MODEL",
    "n": "INVALID_N",
    "size": "INVALID_SIZE",
    "response_format": "INVALID_RESPONSE_FORMAT",
    "quality": "INVALID_QUALITY",
    "style": "INVALID_STYLE",
    "user": "INVALID_USER",
    "seed": "INVALID_SEED",
    "seeds": "INVALID_SEEDS",
    "negative_prompt": "INVALID_NEGATIVE_PROMPT",
    "steps": "INVALID_STEPS",
    "guidance_scale": "INVALID_GUIDANCE_SCALE",
    "useCache": "INVALID_USE_CACHE",
    "use_cache": "INVALID_USE_CACHE",
    "stream": "UNSUPPORTED_PARAMETER",
    "output_format": "UNSUPPORTED_PARAMETER",
    "background": "UNSUPPORTED_PARAMETER",
    "partial_images": "UNSUPPORTED_PARAMETER",
}
_UNSUPPORTED_MESSAGES: dict[str, str] = {
    "stream": "Streaming is not supported: leave 'stream' out or set it to false.",
    "output_format": "Only PNG output is supported: leave 'output_format' out or set it to 'png'.",
    "background": "Transparent backgrounds are not supported: use 'auto' or 'opaque'.",
    "partial_images": "Partial images are not supported: leave 'partial_images' out or set it to 0.",
}


class GenerationBody(BaseModel):
    """``POST /v1/images/generations``: OpenAI's request plus ``seed``, ``seeds``, ``negative_prompt``, ``steps``,
    ``guidance_scale``, our ``style`` and ``useCache``. Unknown fields are ignored."""

    model_config = ConfigDict(
        extra="ignore",
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {"prompt": "A lighthouse on a cliff at dawn, watercolour", "size": "512x512", "n": 1},
                {
                    "prompt": "A serene mountain lake at sunset",
                    "size": "512x512",
                    "n": 4,
                    "seeds": [101, 102, 103, 104],
                    "response_format": "url",
                },
            ]
        },
    )

    prompt: str = Field(
        ...,
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="What to draw. Required, not blank.",
        examples=["a red fox"],
    )
    model: str | None = Field(
        default=None,
        max_length=256,
        description=(
            "A model id from GET /v1/models. Omitted: the model Nextcloud tasks use. OpenAI's own names "
            "(dall-e-2, dall-e-3, gpt-image-*) also mean that model, so OpenAI clients work unchanged; any other "
            "unknown id is a 400 MODEL_NOT_FOUND."
        ),
    )
    n: int | None = Field(
        default=None,
        ge=1,
        le=MAX_IMAGES,
        description=f"How many images, 1–{MAX_IMAGES}. Default 1, or the number of seeds given.",
    )
    size: Annotated[
        ImageSize | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string", "maxLength": 32, "pattern": _SIZE_TEXT, "examples": ["512x512", "1024x1024"]},
                    {"type": "null"},
                ],
                "title": "Size",
            }
        ),
    ] = Field(
        default=None,
        description="WIDTHxHEIGHT, one of the model's sizes (see capabilities.sizes). Omitted or 'auto': the default.",
    )
    response_format: Literal["b64_json", "url"] = Field(
        default="b64_json",
        description="b64_json (default): the PNG inline. url: a link to GET /v1/images/{id}, valid for the image TTL.",
    )
    quality: Literal["standard", "hd", "auto", "low", "medium", "high", "xhigh", "max"] | None = Field(
        default=None,
        description="Accepted for compatibility and ignored: every image is made with the model's steps; set "
        "'steps' to trade time for detail.",
    )
    style: str | None = Field(
        default=None,
        max_length=50,
        description="A style added to the prompt (see capabilities.styles: photograph, watercolour, pixel_art, …); "
        "'none', and OpenAI's 'vivid' and 'natural', mean none.",
    )
    user: str | None = Field(default=None, max_length=256, description="Accepted for compatibility and ignored.")
    seed: int | None = Field(
        default=None, ge=0, lt=MAX_SEED, description="Seed of the first image; image i gets seed + i. Not with 'seeds'."
    )
    seeds: Annotated[
        list[int] | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {
                        "type": "array",
                        "items": {"type": "integer", "minimum": 0, "maximum": MAX_SEED - 1},
                        "minItems": 1,
                        "maxItems": MAX_IMAGES,
                    },
                    {"type": "string", "pattern": _SEEDS_TEXT, "examples": ["101,102", "[101, 102]"]},
                    {"type": "null"},
                ],
                "title": "Seeds",
            }
        ),
    ] = Field(
        default=None,
        min_length=1,
        max_length=MAX_IMAGES,
        description="One seed per image (0 to 2^32-1): a JSON array or a comma-separated string. Sets n when n "
        "is omitted. Requests with seeds are answered from the result cache unless useCache is false.",
    )
    negative_prompt: str | None = Field(
        default=None,
        max_length=MAX_PROMPT_CHARS,
        description="What to avoid; only for models with supports_negative_prompt.",
    )
    steps: int | None = Field(
        default=None, ge=1, le=200, description="Inference steps, within the model's steps range."
    )
    guidance_scale: float | None = Field(
        default=None, ge=0, le=50, allow_inf_nan=False, description="Classifier-free guidance scale."
    )
    use_cache: bool = Field(
        default=True,
        validation_alias=AliasChoices("useCache", "use_cache"),
        serialization_alias="useCache",
        description="Whether a seeded request may be answered from the result cache (default true).",
    )
    stream: Literal[False] | None = Field(default=None, description="Only false is supported.")
    output_format: Literal["png"] | None = Field(default=None, description="Only png is supported.")
    background: Literal["auto", "opaque"] | None = Field(
        default=None, description="Transparent backgrounds are not supported."
    )
    partial_images: int | None = Field(default=None, ge=0, le=0, description="Only 0 is supported.")

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        """Parsed once, here: ``auto`` and blank are None (the default size); bad text is ``INVALID_SIZE``."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if len(text) > 32:
            raise ValueError("is too long")
        if not text or text.lower() == "auto":
            return None
        return ImageSize.parse(text)

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_list(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                raise ValueError("is not a valid JSON array") from None
        return [part.strip() for part in text.split(",")]

    @field_validator("seeds")
    @classmethod
    def _seed_range(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(not 0 <= seed < MAX_SEED for seed in value):
            raise ValueError(f"every seed must be between 0 and {MAX_SEED - 1}")
        return value

    @classmethod
    def parse(cls, data: dict[str, Any]) -> GenerationBody:
        """Validate a decoded body; every problem is an ``InvalidRequestError`` naming its field."""
        prompt = data.get("prompt")
        if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
            raise InvalidRequestError(
                "The 'prompt' is missing or empty: say what the image should show.",
                code="MISSING_PROMPT",
                param="prompt",
            )
        try:
            request = cls.model_validate(data)
        except ValidationError as exc:
            raise _invalid(exc) from None
        request.check()
        return request

    def check(self) -> None:
        """Cross-field rules the field types cannot say."""
        if self.seed is not None and self.seeds is not None:
            raise InvalidRequestError("Give either 'seed' or 'seeds', not both.", code="INVALID_SEEDS", param="seeds")
        if self.seeds is not None and self.n is not None and len(self.seeds) != self.n:
            raise InvalidRequestError(
                f"Give one seed per image: n is {self.n} but {len(self.seeds)} seed(s) were given.",
                code="INVALID_SEEDS",
                param="seeds",
            )
        if self.seed is not None and self.seed + self.count - 1 >= MAX_SEED:
            raise InvalidRequestError(f"'seed' + n - 1 must stay below {MAX_SEED}.", code="INVALID_SEED", param="seed")

    @property
    def count(self) -> int:
        if self.n is not None:
            return self.n
        return len(self.seeds) if self.seeds is not None else 1

    def image_request(self) -> ImageRequest:
        """What this body asks the ImageService for."""
        return ImageRequest(
            prompt=self.prompt,
            count=self.count,
            size=self.size,
            seeds=self.seed_tuple,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            negative_prompt=self.negative_prompt or None,
            model=self.model,
            source="api",
            style=self.style,
        )

    @property
    def seed_tuple(self) -> tuple[int, ...] | None:
        if self.seeds is not None:
            return tuple(self.seeds)
        if self.seed is not None:
            return tuple(self.seed + index for index in range(self.count))
        return None


def _invalid(exc: ValidationError) -> InvalidRequestError:
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    code = _FIELD_CODES.get(field, "INVALID_REQUEST")
    if field == "prompt" and first["type"] == "string_too_long":
        code = "PROMPT_TOO_LONG"
    param = "useCache" if field == "use_cache" else (field or None)
    if field in _UNSUPPORTED_MESSAGES:
        return InvalidRequestError(_UNSUPPORTED_MESSAGES[field], code=code, param=param)
    reason = str(first["msg"])
    if first["type"] in ("literal_error", "enum") and "expected" in (first.get("ctx") or {}):
        reason = f"must be one of {first['ctx']['expected']}"
    return InvalidRequestError(f"Invalid '{param or 'request'}': {reason}.", code=code, param=param)


class ImageData(BaseModel):
    """One image: ``b64_json`` or ``url`` (by ``response_format``), with its seed."""

    b64_json: str | None = Field(default=None, description="The PNG, base64-encoded (response_format b64_json).")
    url: str | None = Field(
        default=None,
        description="Absolute URL of the PNG (response_format url); no authentication needed, expires after the "
        "image TTL (default one hour).",
    )
    seed: int | None = Field(
        default=None,
        description="The seed of this image: send it back in 'seeds' to make it again. Absent when the model takes "
        "no seed.",
    )


class ImagesResponse(BaseModel):
    """OpenAI's ``{"created", "data"}`` plus what made the images."""

    created: int = Field(..., description="Unix time of the response.")
    data: list[ImageData]
    model: str = Field(..., description="The model that made the images (also in the X-Model header).")
    backend: str = Field(..., description="local or remote (also X-Backend).")
    seeds: list[int] | None = Field(
        default=None, description="The seeds, in image order (also X-Seeds); absent when the model takes no seed."
    )
    size: str = Field(..., description="WIDTHxHEIGHT of the images.")
    generation_seconds: float = Field(
        ..., description="Seconds the generation took (also X-Generation-Seconds); for a cached answer, the original's."
    )
    cached: bool = Field(..., description="Whether the answer came from the result cache (also X-Cache).")
    output_format: Literal["png"] = "png"


class StepsRange(BaseModel):
    minimum: int
    maximum: int
    default: int


class ModelCapabilities(BaseModel):
    """Our extension to OpenAI's model object: what a request to this model may ask for."""

    backend: str = Field(..., description="local or remote.")
    sizes: list[str]
    default_size: str
    steps: StepsRange | None = Field(default=None, description="null: the model takes no 'steps'.")
    default_guidance: float | None
    max_guidance: float = Field(0.0, description="The largest guidance_scale; 0: the model takes none.")
    supports_negative_prompt: bool
    accepts_seed: bool = Field(True, description="Whether seed / seeds reach the model.")
    max_n: int = Field(..., description="The most images one request may ask for.")
    max_prompt_length: int | None = Field(default=None, description="In characters; null: no limit besides 32000.")
    seconds_per_image: float = Field(..., description="Rough time per image at the default size.")
    primary: bool = Field(..., description="Whether Nextcloud tasks and requests without 'model' use this model.")
    styles: list[str] = Field(
        default_factory=list, description="The values 'style' takes (empty: the admin turned styles off)."
    )
    license: str = ""


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(..., description="Unix time this server started serving the model.")
    owned_by: str
    capabilities: ModelCapabilities


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


INTERNAL_ERROR_MESSAGE = "The server had an internal error. Try again later."


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(..., examples=["invalid_request_error"])
    param: str | None = None
    code: str | None = Field(default=None, examples=["INVALID_SIZE"])


class ErrorEnvelope(BaseModel):
    """OpenAI's error shape, used for every /v1 error."""

    error: ErrorDetail


JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class ImageJob(BaseModel):
    """A job of ``POST /v1/images/jobs`` (shaped like OpenAI's fine-tuning job); once ``succeeded``, it also holds
    what the synchronous ``POST /v1/images/generations`` answers (``data``, ``model``, ``seeds``, …)."""

    id: str = Field(..., description="The job's id; only its creator (API key or Nextcloud user) can see it.")
    object: Literal["image.job"] = "image.job"
    status: JobStatus = Field(
        ...,
        description="queued → running (handed to the image service: it may still wait there for the GPU or the "
        "remote service's limits) → succeeded, failed or cancelled.",
    )
    progress: int = Field(..., ge=0, le=100, description="Percent done; 100 exactly when succeeded.")
    created_at: int = Field(..., description="Unix time the job was created.")
    finished_at: int | None = Field(default=None, description="Unix time it ended; absent while it runs.")
    expires_at: int | None = Field(
        default=None, description="Unix time after which the job is gone (404): its end plus the image TTL."
    )
    error: ErrorDetail | None = Field(
        default=None, description="Why it failed or that it was cancelled: the fields of OpenAI's error envelope."
    )
    data: list[ImageData] | None = Field(default=None, description="The images, as the synchronous call answers.")
    model: str | None = None
    backend: str | None = None
    seeds: list[int] | None = None
    size: str | None = None
    generation_seconds: float | None = None
    cached: bool | None = None
