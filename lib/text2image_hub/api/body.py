"""Reading a /v1 request body: JSON, multipart/form-data or form-urlencoded, bounded while it streams.

The body is read chunk by chunk and refused as soon as it passes ``MAX_BODY_BYTES`` (a declared Content-Length
over the limit is refused before reading) or takes longer than ``BODY_TIMEOUT``, then parsed from memory: a
multipart upload is never spooled to disk, and a form with a file part is refused (this API takes text fields only).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import Request
from starlette.datastructures import FormData
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

from ..errors import InvalidRequestError

MAX_BODY_BYTES = 1024 * 1024  # a 32,000-character prompt and every other field fit many times over
BODY_TIMEOUT = 30.0
"""Seconds a client has to send the whole body (a slow sender must not hold a connection for ever)."""
_FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")


async def read_body(request: Request) -> dict[str, Any]:
    """The request body as a dict; every problem is an ``InvalidRequestError``."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media and media not in _FORMS and media != "application/json" and not media.endswith("+json"):
        raise InvalidRequestError(
            f"Unsupported Content-Type {media[:80]!r}: send application/json, multipart/form-data or "
            "application/x-www-form-urlencoded.",
            code="UNSUPPORTED_MEDIA_TYPE",
        )
    raw = await _bounded(request)
    if media in _FORMS:
        return await _form_fields(request, raw, multipart=media == "multipart/form-data")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidRequestError("The request body is not valid JSON.", code="INVALID_BODY") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="INVALID_BODY")
    return data


async def _bounded(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    raw = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > MAX_BODY_BYTES:
                    raise _too_large()
    except TimeoutError:
        raise InvalidRequestError(
            f"The request body did not arrive within {BODY_TIMEOUT:g} s.", code="REQUEST_TIMEOUT"
        ) from None
    return bytes(raw)


def _too_large() -> InvalidRequestError:
    return InvalidRequestError(
        f"The request body is larger than {MAX_BODY_BYTES // 1024} KiB.", code="REQUEST_TOO_LARGE"
    )


async def _form_fields(request: Request, raw: bytes, *, multipart: bool) -> dict[str, Any]:
    async def replay() -> AsyncGenerator[bytes, None]:
        yield raw

    try:
        if multipart:
            form: FormData = await MultiPartParser(request.headers, replay(), max_files=0).parse()
        else:
            form = await FormParser(request.headers, replay()).parse()
    except MultiPartException as exc:
        message = str(exc.message)
        if "files" in message.lower():
            message = "a form field is a file; this endpoint takes text fields only"
        raise InvalidRequestError(f"The form body could not be read: {message}.", code="INVALID_BODY") from None
    data: dict[str, Any] = {}
    for key, value in form.multi_items():
        if not isinstance(value, str):  # cannot happen with max_files=0; a file is never accepted
            raise InvalidRequestError(f"The form field '{key[:40]}' is a file.", code="INVALID_BODY", param=key[:40])
        if value == "" and key != "prompt":
            continue  # an empty form field means "not given"
        if key in data:  # a repeated field (seeds=1&seeds=2) becomes a list
            previous = data[key]
            data[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            data[key] = value
    return data
