"""The OpenAI-compatible HTTP API (/v1) and the operations endpoints (/healthz, /readyz, /metrics).

``install_api(app)`` adds the routers, the error handlers (OpenAI's envelope everywhere, 400 instead of 422, a
generic 500) and the request middleware; ``ApiState.create(settings)`` builds the per-app state the lifespan keeps
in ``Hub.api``.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import Text2ImageError
from . import job_routes, operations, routes
from .handlers import RequestMiddleware, http_error_handler, text2image_error_handler, validation_error_handler
from .state import ApiHub, ApiState

__all__ = ["ApiHub", "ApiState", "install_api"]

_TAGS = [
    {
        "name": "images",
        "description": (
            "OpenAI-compatible image generation. **Authentication**: through Nextcloud "
            "(`/index.php/apps/app_api/proxy/<appid>/v1/…`) a logged-in Nextcloud user needs nothing more; "
            "otherwise send `Authorization: Bearer <API key>` (Administration settings → Artificial intelligence "
            "→ Text2Image Hub → API keys; standalone: `T2I_API_KEYS`). `GET /v1/images/{id}` needs no "
            'authentication. **Errors** always use OpenAI\'s envelope `{"error": {"message", "type", '
            '"param", "code"}}`, with 400 (never 422) for bad input.'
        ),
    },
    {"name": "operations", "description": "Health, readiness and Prometheus metrics (only on the app's own port)."},
]


def install_api(app: FastAPI) -> None:
    app.include_router(routes.router)
    app.include_router(job_routes.router)
    app.include_router(operations.router)
    app.exception_handler(Text2ImageError)(text2image_error_handler)
    app.exception_handler(RequestValidationError)(validation_error_handler)
    app.exception_handler(StarletteHTTPException)(http_error_handler)
    app.add_middleware(RequestMiddleware)
    app.openapi_tags = [*(app.openapi_tags or []), *_TAGS]
