"""The /v1 routes: OpenAI-compatible image generation, models, and the url images.

Who may call is ``access.py``; the body is read by ``body.py`` and validated by ``schemas.py``; the documentation
is ``docs.py``; ``serving.py`` makes the answer, through the same ``ImageService`` as Nextcloud tasks (one GPU, one
remote limit).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..backends import MAX_IMAGES, ModelInfo
from ..errors import NotFoundError
from ..service import unknown_model
from ..styles import STYLE_IDS
from . import docs
from .access import ContextDep, hub_of
from .body import read_body
from .schemas import (
    GenerationBody,
    ImagesResponse,
    ModelCapabilities,
    ModelList,
    ModelObject,
    StepsRange,
)
from .serving import admit, answer, base_url

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
    admit(context)
    body = await answer(wire, context, base=base_url(request, context))
    headers = {
        "X-Model": _header_value(body.model),
        "X-Backend": _header_value(body.backend),
        "X-Generation-Seconds": f"{body.generation_seconds:.3f}",
        "X-Cache": "hit" if body.cached else "miss",
    }
    if body.seeds is not None:
        headers["X-Seeds"] = ",".join(str(seed) for seed in body.seeds)
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
    available = [model.id for model in models]
    raise NotFoundError(unknown_model(model_id, available), code="MODEL_NOT_FOUND", param="model")


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
