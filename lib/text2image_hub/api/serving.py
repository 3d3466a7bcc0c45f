"""The one path from a ``GenerationBody`` to an ``ImagesResponse``, for ``/v1/images/generations`` and for jobs.

``admit`` applies the per-caller rate limit (``api_rate_limit``); ``base_url`` says where the caller reaches /v1
(for ``response_format=url`` links); ``answer`` answers a seeded request from the result cache or generates through
the shared ``ImageService`` (one GPU lock, one remote limit for tasks and /v1), then stores the PNGs for url links
or encodes them inline.
"""

from __future__ import annotations

import asyncio
import base64
import time

from fastapi import Request

from ..backends import MODEL_DOWNLOADING, GenerationControl
from ..errors import BackendUnavailableError, ConfigurationError, RateLimitError
from ..service import GenerationResult, ImageRequest
from ..status import STANDALONE_HINT, setup_status
from .access import ApiContext
from .images import public_base_url
from .limits import cache_key
from .schemas import GenerationBody, ImageData, ImagesResponse

_INLINE_B64_LIMIT = 256 * 1024  # encode bigger results in a thread


def admit(context: ApiContext) -> None:
    """Take one request from the caller's ``api_rate_limit`` bucket, or raise ``RateLimitError`` (429)."""
    api = context.hub.api
    try:
        api.limiter.check(context.caller.limit_key, context.config.api_rate_limit)
    except RateLimitError:
        api.metrics.rate_limited()
        raise


def base_url(request: Request, context: ApiContext) -> str:
    """Where this caller reaches the app's /v1 (through Nextcloud: the AppAPI proxy)."""
    return public_base_url(
        request.headers,
        request.url.scheme,
        request.scope.get("root_path", ""),
        context.hub.settings,
        via_nextcloud=context.via_nextcloud,
    )


async def answer(
    wire: GenerationBody, context: ApiContext, *, base: str, control: GenerationControl | None = None
) -> ImagesResponse:
    """The images ``wire`` asks for, as the synchronous route answers them; ``base`` from ``base_url``."""
    result, cached = await _generate(wire.image_request(), context, use_cache=wire.use_cache, control=control)
    if wire.response_format == "url":
        ids = await asyncio.gather(*(context.hub.api.images.put(image.png) for image in result.images))
        data = [
            ImageData(url=f"{base}/v1/images/{image_id}", seed=image.seed)
            for image_id, image in zip(ids, result.images, strict=True)
        ]
    else:
        data = await _inline(result)
    seeds = result.seeds
    return ImagesResponse(
        created=int(time.time()),
        data=data,
        model=result.model,
        backend=result.backend,
        seeds=list(seeds) if seeds is not None else None,
        size=str(result.size),
        generation_seconds=round(result.seconds, 4),
        cached=cached,
    )


async def _generate(
    asked: ImageRequest, context: ApiContext, *, use_cache: bool, control: GenerationControl | None
) -> tuple[GenerationResult, bool]:
    """Generate through the shared ImageService, or answer a seeded request from the result cache."""
    state = context.hub.api
    key = cache_key(asked, context.config) if use_cache and asked.seeds is not None else None
    if key is not None:
        hit = state.cache.get(key)
        state.metrics.cache_lookup(hit=hit is not None)
        if hit is not None:
            return hit, True
    try:
        result = await context.hub.service.generate(asked, context.config, control)
    except (ConfigurationError, BackendUnavailableError) as exc:
        status = setup_status(context.config, context.hub.backends)
        if context.hub.settings.standalone and not status.usable and status.code != MODEL_DOWNLOADING:
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
