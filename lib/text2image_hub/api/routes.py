"""The /v1 routes: OpenAI-compatible image generation, models, and the url images.

Who may call is ``access.py``; the body is read by ``body.py`` and validated by ``schemas.py``; the documentation
is ``docs.py``. Generation runs through the same ``ImageService`` as Nextcloud tasks (one GPU, one remote limit).
"""

from __future__ import annotations

import asyncio
import base64
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..backends import MAX_IMAGES, ModelInfo
from ..errors import BackendUnavailableError, ConfigurationError, NotFoundError, RateLimitError
from ..service import GenerationResult, ImageRequest
from ..status import STANDALONE_HINT, setup_status
from ..styles import STYLE_IDS
from . import docs
from .access import ApiContext, ContextDep, hub_of
from .body import read_body
from .images import public_base_url
from .limits import cache_key
from .schemas import (
    GenerationBody,
    ImageData,
    ImagesResponse,
    ModelCapabilities,
    ModelList,
    ModelObject,
    StepsRange,
)

_INLINE_B64_LIMIT = 256 * 1024  # encode bigger results in a thread

router = APIRouter(prefix="/v1", tags=["images"], responses=docs.CLIENT_ERRORS)


@router.post(
    "/images/generations",
    response_model=ImagesResponse,
    summary="Create images from a prompt (OpenAI-compatible)",
    description=docs.GENERATION_DESCRIPTION,
    openapi_extra={"requestBody": docs.GENERATION_BODY},
    responses=docs.GENERATION_RESPONSES,
)
async def create_images(request: Request, context: ContextDep) -> Response:
    wire = GenerationBody.parse(await read_body(request))
    hub, config = context.hub, context.config
    try:
        hub.api.limiter.check(context.caller.limit_key, config.api_rate_limit)
    except RateLimitError:
        hub.api.metrics.rate_limited()
        raise
    result, cached = await _generate(wire.image_request(), context, use_cache=wire.use_cache)
    if wire.response_format == "url":
        base = public_base_url(
            request.headers,
            request.url.scheme,
            request.scope.get("root_path", ""),
            hub.settings,
            via_nextcloud=context.via_nextcloud,
        )
        ids = await asyncio.gather(*(hub.api.images.put(image.png) for image in result.images))
        data = [
            ImageData(url=f"{base}/v1/images/{image_id}", seed=image.seed)
            for image_id, image in zip(ids, result.images, strict=True)
        ]
    else:
        data = await _inline(result)
    seeds = result.seeds
    body = ImagesResponse(
        created=int(time.time()),
        data=data,
        model=result.model,
        backend=result.backend,
        seeds=list(seeds) if seeds is not None else None,
        size=str(result.size),
        generation_seconds=round(result.seconds, 4),
        cached=cached,
    )
    headers = {
        "X-Model": _header_value(result.model),
        "X-Backend": _header_value(result.backend),
        "X-Generation-Seconds": f"{result.seconds:.3f}",
        "X-Cache": "hit" if cached else "miss",
    }
    if seeds is not None:
        headers["X-Seeds"] = ",".join(str(seed) for seed in seeds)
    return JSONResponse(body.model_dump(exclude_none=True), headers=headers)


@router.get(
    "/models",
    response_model=ModelList,
    summary="List the models (OpenAI-compatible)",
    description=docs.MODELS_DESCRIPTION,
    responses={401: docs.UNAUTHORIZED, 500: docs.INTERNAL, 503: docs.UNAVAILABLE},
)
async def list_models(context: ContextDep) -> ModelList:
    models = await context.hub.service.models(context.config)
    started = context.hub.api.started
    styles = context.config.styles
    return ModelList(
        data=[_model_object(model, started, primary=index == 0, styles=styles) for index, model in enumerate(models)]
    )


@router.get(
    "/models/{model_id:path}",
    response_model=ModelObject,
    summary="Describe one model (OpenAI-compatible)",
    responses={401: docs.UNAUTHORIZED, 404: docs.MODEL_NOT_FOUND, 500: docs.INTERNAL, 503: docs.UNAVAILABLE},
)
async def get_model(model_id: str, context: ContextDep) -> ModelObject:
    models = await context.hub.service.models(context.config)
    for index, model in enumerate(models):
        if model.id == model_id:
            return _model_object(model, context.hub.api.started, primary=index == 0, styles=context.config.styles)
    available = ", ".join(model.id for model in models) or "none"
    raise NotFoundError(
        f"The model '{model_id[:100]}' does not exist or is not enabled. Available: {available}.",
        code="MODEL_NOT_FOUND",
        param="model",
    )


@router.get(
    "/images/{image_id}",
    response_class=Response,
    summary="Download an image made with response_format=url",
    description=docs.IMAGE_DESCRIPTION,
    responses={200: docs.PNG_RESPONSE, 404: docs.IMAGE_NOT_FOUND},
)
async def get_image(image_id: str, request: Request) -> Response:
    png, remaining = await hub_of(request).api.images.get(image_id)
    headers = {"Cache-Control": f"private, max-age={max(0, int(remaining))}", "X-Content-Type-Options": "nosniff"}
    return Response(png, media_type="image/png", headers=headers)


# --- serving: what the routes above share with nothing else ------------------------------------------------------
async def _generate(asked: ImageRequest, context: ApiContext, *, use_cache: bool) -> tuple[GenerationResult, bool]:
    """Generate through the shared ImageService, or answer a seeded request from the result cache."""
    state = context.hub.api
    key = cache_key(asked, context.config) if use_cache and asked.seeds is not None else None
    if key is not None:
        hit = state.cache.get(key)
        state.metrics.cache_lookup(hit=hit is not None)
        if hit is not None:
            return hit, True
    try:
        result = await context.hub.service.generate(asked, context.config)
    except (ConfigurationError, BackendUnavailableError) as exc:
        status = setup_status(context.config, context.hub.backends)
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


def _header_value(text: str) -> str:
    """Printable ASCII only: a header value must not break the response (or carry a line break)."""
    return "".join(char if " " <= char <= "~" else "?" for char in text)[:200]


def _model_object(model: ModelInfo, created: int, *, primary: bool, styles: bool) -> ModelObject:
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
            max_guidance=model.max_guidance,
            supports_negative_prompt=model.supports_negative_prompt,
            accepts_seed=model.accepts_seed,
            max_n=min(MAX_IMAGES, model.max_images_per_request),
            max_prompt_length=model.max_prompt_length,
            seconds_per_image=model.seconds_per_image,
            primary=primary,
            styles=list(STYLE_IDS) if styles else [],
            license=model.license,
        ),
    )
