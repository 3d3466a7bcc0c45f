"""Operations endpoints: liveness, readiness and Prometheus metrics.

They are not declared as AppAPI routes, so they are reachable only on the app's own port (for the container
health check and a metrics scraper), never through Nextcloud; they need no authentication and reveal no secrets.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..errors import Text2ImageError
from ..status import setup_status
from .access import hub_of

router = APIRouter(tags=["operations"])

READINESS_WAIT = 0.5
"""Seconds /readyz waits for Nextcloud's answer to the configuration request."""


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the configured backend can take work",
    responses={503: {"description": "Not ready (model loading, backend missing, or configuration invalid)."}},
)
async def readyz(request: Request) -> JSONResponse:
    hub = hub_of(request)
    try:
        config = await asyncio.wait_for(hub.config.load(), READINESS_WAIT)
    except TimeoutError:
        detail = f"Nextcloud did not answer the configuration request within {READINESS_WAIT:g} s"
        return JSONResponse({"status": "not ready", "reason": "NEXTCLOUD_UNAVAILABLE", "detail": detail}, 503)
    except Text2ImageError as exc:
        return JSONResponse({"status": "not ready", "reason": exc.code, "detail": str(exc)}, status_code=503)
    status = setup_status(config, hub.backends)
    body: dict[str, object] = {"backend": config.backend, "detail": status.text}
    if status.percent is not None:
        body["progress"] = status.percent
    if not status.usable:
        return JSONResponse({"status": "not ready", "reason": status.code, **body}, status_code=503)
    problem = hub.worker_problem()
    if problem is not None:
        return JSONResponse({"status": "not ready", "reason": "WORKER_NOT_RUNNING", **body, "detail": problem}, 503)
    if not await hub.backends.ready(config):
        return JSONResponse({"status": "not ready", "reason": "BACKEND_NOT_READY", **body}, status_code=503)
    return JSONResponse({"status": "ready", **body})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Text format 0.0.4."}},
)
async def metrics(request: Request) -> Response:
    hub = hub_of(request)
    body, content_type = hub.api.metrics.render()
    return Response(body, media_type=content_type)
