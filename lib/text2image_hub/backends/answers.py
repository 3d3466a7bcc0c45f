"""Reading what an OpenAI-compatible image service answered: bodies read within a size cap, JSON, the images'
bytes, ``Retry-After``, and a refusal mapped onto the error tree with the server's own words (scrubbed of the token
by the caller)."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx2

from ..errors import RemoteAuthError, RemoteRejectedError, RemoteServiceError
from ..i18n import _

MAX_IMAGE_BYTES = 30 * 1024 * 1024  # one downloaded or decoded image
MAX_ERROR_BODY_BYTES = 64 * 1024  # what we read of an error answer
_DETAIL_CHARS = 300


@dataclass(frozen=True)
class Answer:
    status: int
    headers: httpx2.Headers
    body: bytes


async def read_capped(response: httpx2.Response, cap: int, where: str, *, truncate: bool = False) -> bytes:
    """Read at most ``cap`` bytes of the body: more is a ``RemoteServiceError`` (or cut off when ``truncate``)."""
    declared = response.headers.get("content-length")
    if not truncate and declared is not None and declared.isdigit() and int(declared) > cap:
        raise RemoteServiceError(f"{where} answered {declared} bytes, over the {cap}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > cap:
            if truncate:
                chunks.append(chunk[: len(chunk) - (size - cap)])
                break
            raise RemoteServiceError(f"{where} answered more than {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def json_payload(body: bytes, where: str) -> object:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RemoteServiceError(f"{where} answered something that is not JSON") from exc


def image_entries(payload: object, count: int, where: str) -> list[object]:
    """The ``data`` list of a generation answer, which must hold exactly ``count`` entries."""
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list) or len(data) != count:
        found = len(data) if isinstance(data, list) else "no"
        raise RemoteServiceError(f"{where} answered {found} image(s) where {count} were asked for")
    return data


def inline_image(item: object, where: str) -> bytes | str:
    """An entry's image: its bytes (``b64_json``), or the URL to download it from."""
    if isinstance(item, dict) and isinstance(item.get("b64_json"), str):
        text: str = item["b64_json"]
        if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            raise RemoteServiceError(f"{where} answered an image over {MAX_IMAGE_BYTES} bytes")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RemoteServiceError(f"{where} answered invalid base64 image data") from exc
    if isinstance(item, dict) and isinstance(item.get("url"), str):
        url: str = item["url"]
        if not url.startswith(("http://", "https://")):
            raise RemoteServiceError(f"{where} answered an image URL that is not http(s)")
        return url
    raise RemoteServiceError(f"{where} answered an image entry with neither b64_json nor url")


def retry_after(headers: httpx2.Headers, cap: float) -> float | None:
    """``Retry-After`` in seconds (delta or HTTP date), capped at ``cap``; None if absent or invalid."""
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds: float | None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError, IndexError):
            seconds = None
    if seconds is None or seconds != seconds:  # absent or NaN
        return None
    return min(max(seconds, 0.0), cap)


def raise_refusal(answer: Answer, where: str, provider: str, detail: str) -> None:
    """401/403: the token; any other 4xx: the request itself, said so to the user; a 5xx returns (retried)."""
    if answer.status in (401, 403):
        raise RemoteAuthError(
            f"{where} rejected the token (HTTP {answer.status}): {detail}",
            user_message=_(
                "The {provider} image service refused this server's access: please ask your administrator to "
                "check the remote service token in the Text2Image Hub settings.",
                provider=provider,
            ),
        )
    if answer.status < 500:
        raise RemoteRejectedError(
            f"{where} refused the request (HTTP {answer.status}): {detail}",
            user_message=_(
                "The image service refused this request ({reason}). Please change it, for example the prompt, "
                "and try again.",
                reason=detail[:200],
            ),
        )


def error_detail(body: bytes) -> str:
    """The admin-readable message of an error answer: OpenAI's envelope, IONOS's ``messages``, or plain text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        payload = json.loads(text)
    except ValueError:
        return _shorten(text) or "(empty body)"
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            code = error.get("code") or error.get("type")
            return _shorten(f"{error['message']}" + (f" ({code})" if code else ""))
        if isinstance(error, str) and error:
            return _shorten(error)
        messages = payload.get("messages")
        if isinstance(messages, list) and messages:
            parts = [
                f"{item.get('errorCode', '?')}: {item.get('message', '')}" if isinstance(item, dict) else str(item)
                for item in messages
            ]
            return _shorten("; ".join(parts))
        for key in ("detail", "message"):
            if payload.get(key):
                return _shorten(str(payload[key]))
    return _shorten(text)


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_CHARS else text[: _DETAIL_CHARS - 1] + "…"
