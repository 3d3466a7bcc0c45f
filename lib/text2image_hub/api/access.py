"""Who may call /v1, and the runtime config the call runs with.

- through Nextcloud (``/index.php/apps/app_api/proxy/<appid>/…``, a PUBLIC route): a logged-in Nextcloud user,
  recognised by valid AppAPI headers whose user part is not empty;
- directly or through Nextcloud: ``Authorization: Bearer <key>`` with a key from the admin settings (``api_keys``);
- standalone (no Nextcloud): API keys only.

Anything else is a 401 saying how to get access. A basic-auth caller's ``Authorization`` header carries their
Nextcloud password: it is never read, logged or stored. (``GET /v1/images/{id}`` needs no credentials.)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..admin import RuntimeConfig
from ..auth import appapi_user, bearer_token, matching_key
from ..errors import AuthenticationError
from ..settings import Settings
from .docs import BEARER
from .state import ApiHub

_bearer = HTTPBearer(auto_error=False, description=BEARER)  # documents the scheme; the header is read below


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
    via_nextcloud: bool
    """The request came through Nextcloud's AppAPI proxy (valid AppAPI headers)."""


def hub_of(request: Request) -> ApiHub:
    hub: ApiHub = request.state.hub
    return hub


async def authorized(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
) -> ApiContext:
    """The caller and the runtime config, or a 401 that says how to get access."""
    hub = hub_of(request)
    settings = hub.settings
    user = None if settings.standalone else appapi_user(request.headers, settings.app_id, settings.app_secret_value)
    if user:
        return ApiContext(hub, Caller("user", user), await hub.config.load(), via_nextcloud=True)
    token = bearer_token(request.headers)
    if token is None:
        raise AuthenticationError(_how_to_get_access(settings, "Authentication required."))
    config = await hub.config.load()
    key = matching_key(token, config.api_key_list())
    if key is None:
        raise AuthenticationError(_how_to_get_access(settings, "The API key is not valid."))
    caller = Caller("key", "key-" + hashlib.sha256(key.encode()).hexdigest()[:12])
    return ApiContext(hub, caller, config, via_nextcloud=user is not None)


def _how_to_get_access(settings: Settings, problem: str) -> str:
    if settings.standalone:
        return (
            f"{problem} Send 'Authorization: Bearer <API key>'; this server's keys are set with T2I_API_KEYS "
            "(or the key printed at start-up)."
        )
    return (
        f"{problem} Log in to Nextcloud and call this API through Nextcloud "
        f"({settings.proxy_path}/v1/…), or send 'Authorization: Bearer <API key>' with a key an "
        "administrator creates in Administration settings → Artificial intelligence → Text2Image Hub → API keys."
    )


ContextDep = Annotated[ApiContext, Depends(authorized)]
