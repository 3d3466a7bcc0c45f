"""Errors as OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}``, and the request middleware.

- ``Text2ImageError``: its ``http_status``, ``error_type``, ``code`` and ``user_message`` (never ``str(exc)``, which
  is for admins and goes to the log for 5xx); 429 carries ``Retry-After``, 503 a ``Retry-After`` of 30 s, 401 a
  ``WWW-Authenticate: Bearer``.
- FastAPI's ``RequestValidationError``: 400 ``INVALID_REQUEST`` (never 422, like OpenAI).
- Starlette's ``HTTPException`` (unknown route, wrong method, malformed form body): its status, code ``HTTP_<status>``.
- A client that hangs up while its body is read: an INFO line and 499 in ``/metrics``, no answer (nothing went wrong
  here, and nothing reaches nextcloud.log).
- Anything else: ``RequestMiddleware`` logs it and answers a generic 500 "internal error". This is one of the two
  broad ``except`` sites of the app (the other is the task worker's per-task boundary).

``RequestMiddleware`` also counts every request for ``/metrics`` by route template, method and status.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import (
    AuthenticationError,
    BackendUnavailableError,
    NextcloudUnavailableError,
    RateLimitError,
    Text2ImageError,
)
from ..metrics import Metrics
from .schemas import INTERNAL_ERROR_MESSAGE
from .state import ApiState

logger = logging.getLogger(__name__)

UNAVAILABLE_RETRY_AFTER = 30
CLIENT_CLOSED = 499
"""The status /metrics records for a request whose client went away (nginx's "client closed request")."""
_HTTP_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


def error_response(
    status: int,
    message: str,
    *,
    error_type: str,
    code: str | None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


async def text2image_error_handler(request: Request, exc: Text2ImageError) -> Response:
    if exc.http_status >= 500:
        logger.warning("%s %s failed (%s): %s", request.method, request.url.path, exc.code, exc)
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimitError):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    elif isinstance(exc, BackendUnavailableError | NextcloudUnavailableError):
        headers["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER)
    elif isinstance(exc, AuthenticationError):
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(
        exc.http_status,
        exc.user_message,
        error_type=exc.error_type,
        code=exc.code,
        param=exc.param,
        headers=headers,
    )


async def validation_error_handler(request: Request, exc: RequestValidationError) -> Response:
    first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ())]
    param = location[-1] if location else None
    message = f"Invalid '{param}': {first.get('msg', 'invalid value')}." if param else "Invalid request."
    return error_response(400, message, error_type="invalid_request_error", code="INVALID_REQUEST", param=param)


async def http_error_handler(request: Request, exc: StarletteHTTPException) -> Response:
    status = exc.status_code
    error_type = _HTTP_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    message = exc.detail if isinstance(exc.detail, str) else "Request failed."
    if status == 400:
        message = f"The request body could not be read: {message}"
    return error_response(
        status,
        message,
        error_type=error_type,
        code=f"HTTP_{status}",
        headers=dict(exc.headers) if exc.headers else None,
    )


def internal_error() -> JSONResponse:
    return error_response(500, INTERNAL_ERROR_MESSAGE, error_type="server_error", code="INTERNAL_ERROR")


class RequestMiddleware:
    """Counts requests by route for ``/metrics`` and answers OpenAI's generic 500 for any unhandled exception."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False

        async def observe(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observe)
        except ClientDisconnect:  # the client hung up while its body was read: nothing to answer, nothing wrong
            logger.info("the client of %s %s went away before its request was read", scope.get("method"), _route(scope))
            status = CLIENT_CLOSED
        except Exception:  # the API's fallback handler: an unexpected error becomes a generic 500
            logger.exception("unexpected error in %s %s", scope.get("method"), _route(scope))
            if response_started:
                raise
            status = 500
            await internal_error()(scope, receive, send)
        finally:
            metrics = _metrics(scope)
            if metrics is not None:
                metrics.request_finished(_route(scope), str(scope.get("method")), status, time.perf_counter() - started)


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


def _metrics(scope: Scope) -> Metrics | None:
    state = scope.get("state")
    hub = state.get("hub") if isinstance(state, dict) else None
    api = getattr(hub, "api", None)
    return api.metrics if isinstance(api, ApiState) else None
