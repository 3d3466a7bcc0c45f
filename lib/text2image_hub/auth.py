"""Who is calling: AppAPI's request signature, and bearer API keys for /v1. All comparisons are constant-time.

Nothing here logs or stores a credential; a caller's ``Authorization`` header (a bearer key, or under basic auth
through the AppAPI proxy the user's Nextcloud password) is only compared, never echoed.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Iterable, Mapping


def appapi_user(headers: Mapping[str, str], app_id: str, app_secret: str) -> str | None:
    """The Nextcloud user id (``""`` for none) when AppAPI's headers are valid; None when they are missing or wrong."""
    given_app = headers.get("ex-app-id", "")
    signature = headers.get("authorization-app-api", "")
    if not given_app or not signature or not headers.get("ex-app-version"):
        return None
    if not secrets.compare_digest(given_app.encode(), app_id.encode()):
        return None
    try:
        decoded = base64.b64decode(signature, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, separator, secret = decoded.partition(":")
    if not separator or not app_secret or not secrets.compare_digest(secret.encode(), app_secret.encode()):
        return None
    return user


def bearer_token(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def matching_key(token: str, keys: Iterable[str]) -> str | None:
    """The configured key equal to ``token`` (every key is compared, in constant time), else None."""
    found = None
    for key in keys:
        if secrets.compare_digest(token.encode(), key.encode()):
            found = key
    return found
