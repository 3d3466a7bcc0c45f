"""The /v1 routes: OpenAI-compatible image generation, models, and the url images.

Who may call (all of /v1 but ``GET /v1/images/{id}``):

- through Nextcloud (``/index.php/apps/app_api/proxy/<appid>/v1/…``, a PUBLIC route): a logged-in Nextcloud user,
  recognised by valid AppAPI headers whose user part is not empty;
- directly or through Nextcloud: ``Authorization: Bearer <key>`` with a key from the admin settings (``api_keys``);
- standalone (no Nextcloud): API keys only.

Anything else is a 401 saying how to get access. A basic-auth caller's ``Authorization`` header carries their
Nextcloud password: it is never read, logged or stored.

Generation runs through the same ``ImageService`` as Nextcloud tasks (one GPU lock, one remote rate limit).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..admin import RuntimeConfig
from ..auth import appapi_user, bearer_token, matching_key
from ..backends import ModelInfo
from ..errors import (
    AuthenticationError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidRequestError,
    NotFoundError,
    RateLimitError,
)
from ..service import GenerationResult, GenerationSpec
from ..settings import Settings
from ..status import STANDALONE_HINT, setup_status
from .limits import cache_key
from .schemas import (
    MAX_IMAGES,
    ErrorEnvelope,
    ImageData,
    ImageGenerationRequest,
    ImagesResponse,
    ModelCapabilities,
    ModelList,
    ModelObject,
    StepsRange,
)
from .state import ApiHub

PROXY_PREFIX = "/index.php/apps/app_api/proxy"
OPENAI_MODEL_PREFIXES = ("dall-e-", "gpt-image", "chatgpt-image")
_HOST = re.compile(r"^[A-Za-z0-9.\-\[\]:]{1,255}$")
_INLINE_B64_LIMIT = 256 * 1024  # encode bigger results in a thread
MAX_BODY_BYTES = 1024 * 1024  # a 32,000-character prompt and every other field fit many times over

_bearer = HTTPBearer(
    auto_error=False,
    description="An API key from Administration settings → Artificial intelligence → Text2Image Hub → API keys "
    "(standalone: T2I_API_KEYS). Through Nextcloud, a logged-in user needs no key.",
)


def _error(description: str, example: dict[str, Any]) -> dict[str, Any]:
    return {"model": ErrorEnvelope, "description": description, "content": {"application/json": {"example": example}}}


def _envelope(message: str, error_type: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


_UNAUTHORIZED = _error(
    "No valid credentials: log in to Nextcloud, or send an API key.",
    _envelope("Authentication required: …", "authentication_error", "INVALID_API_KEY"),
)
_RATE_LIMITED = _error(
    "The per-user/per-key limit (admin setting api_rate_limit) or the remote service's limit; see Retry-After.",
    _envelope("Too many requests: …", "rate_limit_error", "RATE_LIMITED"),
)
_UNAVAILABLE = _error(
    "The backend is loading or unreachable, or Nextcloud did not answer; see Retry-After.",
    _envelope(
        "The image generator is starting or unavailable right now; …", "service_unavailable", "BACKEND_UNAVAILABLE"
    ),
)
_INTERNAL = _error(
    "An internal or configuration error (the server log has the details).",
    _envelope("The server had an internal error. Try again later.", "server_error", "INTERNAL_ERROR"),
)


@dataclass(frozen=True)
class Caller:
    kind: Literal["user", "key"]
    name: str

    @property
    def limit_key(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class ApiContext:
    hub: ApiHub
    caller: Caller
    config: RuntimeConfig


def _hub(request: Request) -> ApiHub:
    hub: ApiHub = request.state.hub
    return hub


def _secret(settings: Settings) -> str:
    return settings.app_secret.get_secret_value() if settings.app_secret else ""


async def authorized(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
) -> ApiContext:
    """The caller and the runtime config, or a 401 that says how to get access."""
    hub = _hub(request)
    settings = hub.settings
    if not settings.standalone:
        user = appapi_user(request.headers, settings.app_id, _secret(settings))
        if user:
            return ApiContext(hub, Caller("user", user), await hub.config.load())
    token = bearer_token(request.headers)
    if token is None:
        raise AuthenticationError(_how_to_get_access(settings, "Authentication required."))
    config = await hub.config.load()
    key = matching_key(token, config.api_key_list())
    if key is None:
        raise AuthenticationError(_how_to_get_access(settings, "The API key is not valid."))
    return ApiContext(hub, Caller("key", "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]), config)


def _how_to_get_access(settings: Settings, problem: str) -> str:
    if settings.standalone:
        return (
            f"{problem} Send 'Authorization: Bearer <API key>'; this server's keys are set with T2I_API_KEYS "
            "(or the key printed at start-up)."
        )
    return (
        f"{problem} Log in to Nextcloud and call this API through Nextcloud "
        f"({PROXY_PREFIX}/{settings.app_id}/v1/…), or send 'Authorization: Bearer <API key>' with a key an "
        "administrator creates in Administration settings → Artificial intelligence → Text2Image Hub → API keys."
    )


ContextDep = Annotated[ApiContext, Depends(authorized)]

router = APIRouter(
    prefix="/v1",
    tags=["images"],
    responses={  # documents OpenAI's envelope for every client error (and keeps FastAPI from documenting a 422)
        "4XX": _error(
            "A client error, in OpenAI's envelope.",
            _envelope("Invalid 'model_id': …", "invalid_request_error", "INVALID_REQUEST", "model_id"),
        )
    },
)

_GENERATION_BODY = {
    "required": True,
    "content": {
        media: {"schema": ImageGenerationRequest.model_json_schema(by_alias=True)}
        for media in ("application/json", "multipart/form-data", "application/x-www-form-urlencoded")
    },
}


@router.post(
    "/images/generations",
    response_model=ImagesResponse,
    summary="Create images from a prompt (OpenAI-compatible)",
    description=(
        "OpenAI's `POST /v1/images/generations` with extensions `seed`, `seeds`, `negative_prompt`, `steps`, "
        "`guidance_scale` and `useCache`. Send JSON, multipart/form-data or form-urlencoded. The answer names the "
        "model, backend, seeds and generation time in the body and in the headers `X-Model`, `X-Backend`, "
        "`X-Seeds`, `X-Generation-Seconds` (and `X-Cache: hit|miss`).\n\n"
        "**Models.** Omit `model` (or send an OpenAI name such as `dall-e-2`, as Nextcloud's OpenAI integration "
        "does) for the model Nextcloud tasks use; other ids come from `GET /v1/models`; an unknown id is a 404.\n\n"
        "**Cache.** Requests that give `seed` or `seeds` are answered from an in-memory result cache (keyed by "
        "prompt, model, size, steps, guidance, negative prompt, seeds, n and the admin settings that shape images) "
        "unless `useCache` is false. Without seeds every request makes new images.\n\n"
        "**URLs.** `response_format=url` answers links to `GET /v1/images/{id}`, which need no authentication (the "
        "unguessable id is the capability) and expire after the image TTL (`T2I_IMAGE_TTL`, default 3600 s). "
        "Called through Nextcloud, the links point through Nextcloud's AppAPI proxy.\n\n"
        "**Limits.** The admin setting `api_rate_limit` allows that many requests per minute per user or key "
        "(429 with `Retry-After` beyond it). `quality` and `style` are accepted and ignored."
    ),
    openapi_extra={"requestBody": _GENERATION_BODY},
    responses={
        200: {
            "headers": {
                name: {"description": text, "schema": {"type": "string"}}
                for name, text in (
                    ("X-Model", "The model that made the images."),
                    ("X-Backend", "local or remote."),
                    ("X-Seeds", "The seeds, comma-separated, in image order."),
                    ("X-Generation-Seconds", "Seconds the generation took."),
                    ("X-Cache", "hit or miss."),
                )
            }
        },
        400: _error(
            "Bad input; `code` names the problem: MISSING_PROMPT, PROMPT_TOO_LONG, INVALID_SIZE, INVALID_N, "
            "INVALID_QUALITY, INVALID_STYLE, INVALID_RESPONSE_FORMAT, INVALID_SEED, INVALID_SEEDS, INVALID_STEPS, "
            "INVALID_GUIDANCE_SCALE, INVALID_NEGATIVE_PROMPT, INVALID_USE_CACHE, INVALID_MODEL, INVALID_USER, "
            "UNSUPPORTED_PARAMETER, INVALID_BODY, UNSUPPORTED_MEDIA_TYPE, REQUEST_TOO_LARGE.",
            _envelope(
                "The size 640x480 is not supported by test/model. Supported sizes: 512x512, 1024x1024.",
                "invalid_request_error",
                "INVALID_SIZE",
                "size",
            ),
        ),
        401: _UNAUTHORIZED,
        404: _error(
            "Unknown model.",
            _envelope("The model 'x' does not exist or is not enabled.", "not_found_error", "MODEL_NOT_FOUND", "model"),
        ),
        429: _RATE_LIMITED,
        500: _INTERNAL,
        502: _error(
            "The remote image service answered with an error.",
            _envelope("The image service reported an error. Try again later.", "server_error", "REMOTE_ERROR"),
        ),
        503: _UNAVAILABLE,
    },
)
async def create_images(request: Request, context: ContextDep) -> Response:
    wire = ImageGenerationRequest.parse(await _read_body(request))
    hub, config = context.hub, context.config
    try:
        hub.api.limiter.check(context.caller.limit_key, config.api_rate_limit)
    except RateLimitError:
        hub.api.metrics.rate_limited()
        raise
    spec = GenerationSpec(
        prompt=wire.prompt,
        count=wire.count,
        size=wire.image_size,
        seeds=wire.seed_tuple,
        steps=wire.steps,
        guidance_scale=wire.guidance_scale,
        negative_prompt=wire.negative_prompt or None,
        model=await _model_for(wire.model, context),
        source="api",
    )
    result, cached = await _generate(spec, context, use_cache=wire.use_cache)
    if wire.response_format == "url":
        base = public_base_url(request.headers, request.url.scheme, request.scope.get("root_path", ""), hub.settings)
        ids = await asyncio.gather(*(hub.api.images.put(image.png) for image in result.images))
        data = [
            ImageData(url=f"{base}/v1/images/{image_id}", seed=image.seed)
            for image_id, image in zip(ids, result.images, strict=True)
        ]
    else:
        data = await _inline(result)
    body = ImagesResponse(
        created=int(time.time()),
        data=data,
        model=result.model,
        backend=result.backend,
        seeds=list(result.seeds),
        size=str(result.size),
        generation_seconds=round(result.seconds, 4),
        cached=cached,
    )
    headers = {
        "X-Model": _header_value(result.model),
        "X-Backend": _header_value(result.backend),
        "X-Seeds": ",".join(str(seed) for seed in result.seeds),
        "X-Generation-Seconds": f"{result.seconds:.3f}",
        "X-Cache": "hit" if cached else "miss",
    }
    return JSONResponse(body.model_dump(exclude_none=True), headers=headers)


@router.get(
    "/models",
    response_model=ModelList,
    summary="List the models (OpenAI-compatible)",
    description="OpenAI's model list; each model has a `capabilities` extension (sizes, steps range, negative "
    "prompt support, max n, backend). The first is the one used when a request names no model.",
    responses={401: _UNAUTHORIZED, 500: _INTERNAL, 503: _UNAVAILABLE},
)
async def list_models(context: ContextDep) -> ModelList:
    models = await context.hub.service.models(context.config)
    started = context.hub.api.started
    return ModelList(data=[_model_object(model, started, primary=index == 0) for index, model in enumerate(models)])


@router.get(
    "/models/{model_id:path}",
    response_model=ModelObject,
    summary="Describe one model (OpenAI-compatible)",
    responses={
        401: _UNAUTHORIZED,
        404: _error(
            "Unknown model.",
            _envelope("The model 'x' does not exist or is not enabled.", "not_found_error", "MODEL_NOT_FOUND", "model"),
        ),
        500: _INTERNAL,
        503: _UNAVAILABLE,
    },
)
async def get_model(model_id: str, context: ContextDep) -> ModelObject:
    models = await context.hub.service.models(context.config)
    for index, model in enumerate(models):
        if model.id == model_id:
            return _model_object(model, context.hub.api.started, primary=index == 0)
    raise _unknown_model(model_id, models)


@router.get(
    "/images/{image_id}",
    response_class=Response,
    summary="Download an image made with response_format=url",
    description="No authentication: the unguessable id is the capability. Images expire after the image TTL "
    "(default one hour); then this answers 404 IMAGE_NOT_FOUND.",
    responses={
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}, "description": "The PNG."},
        404: _error(
            "Unknown or expired image.",
            _envelope("This image does not exist or has expired: …", "not_found_error", "IMAGE_NOT_FOUND", "image_id"),
        ),
    },
)
async def get_image(image_id: str, request: Request) -> Response:
    png, remaining = await _hub(request).api.images.get(image_id)
    headers = {"Cache-Control": f"private, max-age={max(0, int(remaining))}", "X-Content-Type-Options": "nosniff"}
    return Response(png, media_type="image/png", headers=headers)


# --- helpers of the routes above -------------------------------------------------------------------------------------
async def _read_body(request: Request) -> dict[str, Any]:
    """The request body as a dict: JSON, multipart/form-data or form-urlencoded."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    if media in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return await _read_form(request)
    if media and media != "application/json" and not media.endswith("+json"):
        raise InvalidRequestError(
            f"Unsupported Content-Type {media[:80]!r}: send application/json, multipart/form-data or "
            "application/x-www-form-urlencoded.",
            code="UNSUPPORTED_MEDIA_TYPE",
        )
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise _too_large()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidRequestError("The request body is not valid JSON.", code="INVALID_BODY") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="INVALID_BODY")
    return data


def _too_large() -> InvalidRequestError:
    return InvalidRequestError(
        f"The request body is larger than {MAX_BODY_BYTES // 1024} KiB.", code="REQUEST_TOO_LARGE"
    )


async def _read_form(request: Request) -> dict[str, Any]:
    try:
        form = await request.form()
    except StarletteHTTPException as exc:  # Starlette's answer to a malformed multipart body
        raise InvalidRequestError(f"The form body could not be read: {exc.detail}", code="INVALID_BODY") from None
    data: dict[str, Any] = {}
    try:
        for key, value in form.multi_items():
            if not isinstance(value, str):
                raise InvalidRequestError(
                    f"The form field '{key[:40]}' is a file; this endpoint takes text fields only.",
                    code="INVALID_BODY",
                    param=key[:40],
                )
            if value == "" and key != "prompt":
                continue  # an empty form field means "not given"
            if key in data:  # a repeated field (seeds=1&seeds=2) becomes a list
                previous = data[key]
                data[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
            else:
                data[key] = value
    finally:
        await form.close()
    return data


async def _model_for(name: str | None, context: ApiContext) -> str | None:
    """The model id to ask the service for; None for the primary model."""
    if name is None or not name.strip():
        return None
    name = name.strip()
    models = await context.hub.service.models(context.config)
    if any(model.id == name for model in models):
        return name
    if name.lower().startswith(OPENAI_MODEL_PREFIXES):
        return None  # OpenAI clients (Nextcloud's among them) send OpenAI's names: use the primary model
    raise _unknown_model(name, models)


def _unknown_model(name: str, models: list[ModelInfo]) -> NotFoundError:
    available = ", ".join(model.id for model in models) or "none"
    return NotFoundError(
        f"The model '{name[:100]}' does not exist or is not enabled. Available: {available}.",
        code="MODEL_NOT_FOUND",
        param="model",
    )


async def _generate(spec: GenerationSpec, context: ApiContext, *, use_cache: bool) -> tuple[GenerationResult, bool]:
    """Generate through the shared ImageService, or answer a seeded request from the result cache."""
    state = context.hub.api
    key = cache_key(spec, context.config) if use_cache and spec.seeds is not None else None
    if key is not None:
        hit = state.cache.get(key)
        state.metrics.cache_lookup(hit=hit is not None)
        if hit is not None:
            return hit, True
    try:
        result = await context.hub.service.generate(spec, context.config)
    except (ConfigurationError, BackendUnavailableError) as exc:
        status = setup_status(context.config, context.hub.service.backends)
        if context.hub.settings.standalone and not status.usable and status.code != "MODEL_DOWNLOADING":
            # standalone, the setup is the operator's own: say what is missing and how to fix it
            raise BackendUnavailableError(str(exc), user_message=f"{status.text}. {STANDALONE_HINT}") from exc
        raise
    if key is not None:
        state.cache.put(key, result)
    return result, False


async def _inline(result: GenerationResult) -> list[ImageData]:
    def encode() -> list[ImageData]:
        return [
            ImageData(b64_json=base64.b64encode(image.png).decode("ascii"), seed=image.seed) for image in result.images
        ]

    if sum(len(image.png) for image in result.images) > _INLINE_B64_LIMIT:
        return await asyncio.to_thread(encode)
    return encode()


def public_base_url(headers: Headers, scheme: str, root_path: str, settings: Settings) -> str:
    """Where a client reaches this app's /v1, for absolute image URLs.

    Through Nextcloud's AppAPI proxy (recognised by valid AppAPI headers) the ``Host`` we receive is our own
    address, not the one the client used, so the URL is built from ``NEXTCLOUD_URL`` plus
    ``/index.php/apps/app_api/proxy/<appid>``; an ``X-Forwarded-Host`` / ``X-Forwarded-Proto`` that a reverse proxy
    in front of Nextcloud added (AppAPI passes them on) wins over NEXTCLOUD_URL's host and scheme. Called directly,
    the request's own ``Host`` (or ``X-Forwarded-Host``) and scheme (or ``X-Forwarded-Proto``) are used.
    """
    forwarded_proto = _first(headers.get("x-forwarded-proto"))
    proto = forwarded_proto if forwarded_proto in ("http", "https") else None
    forwarded_host = _first(headers.get("x-forwarded-host"))
    host = forwarded_host if forwarded_host and _HOST.match(forwarded_host) else None
    if not settings.standalone and appapi_user(headers, settings.app_id, _secret(settings)) is not None:
        nextcloud = urlsplit(settings.nextcloud_url or "")
        base = f"{proto or nextcloud.scheme or 'http'}://{host or nextcloud.netloc}{nextcloud.path.rstrip('/')}"
        return f"{base}{PROXY_PREFIX}/{settings.app_id}"
    own_host = headers.get("host", "")
    if host is None:
        host = own_host if _HOST.match(own_host) else f"{settings.app_host}:{settings.app_port}"
    return f"{proto or scheme}://{host}{root_path.rstrip('/')}"


def _header_value(text: str) -> str:
    """Printable ASCII only: a header value must not break the response (or carry a line break)."""
    return "".join(char if " " <= char <= "~" else "?" for char in text)[:200]


def _first(value: str | None) -> str | None:
    if not value:
        return None
    return value.split(",")[0].strip().lower() or None


def _model_object(model: ModelInfo, created: int, *, primary: bool) -> ModelObject:
    steps = model.steps
    return ModelObject(
        id=model.id,
        created=created,
        owned_by="text2image_hub",
        capabilities=ModelCapabilities(
            backend=model.backend,
            sizes=[str(size) for size in model.sizes],
            default_size=str(model.default_size),
            steps=StepsRange(minimum=steps.minimum, maximum=steps.maximum, default=steps.default) if steps else None,
            default_guidance=model.default_guidance,
            supports_negative_prompt=model.supports_negative_prompt,
            max_n=min(MAX_IMAGES, model.max_images_per_request),
            max_prompt_length=model.max_prompt_length,
            seconds_per_image=model.seconds_per_image,
            primary=primary,
            license=model.license,
        ),
    )
