"""The app's backends: the configured local model (``provisioning.LocalModels``; torch and diffusers are imported
only when a model loads) and one remote backend per account (``RemoteBackendPool``: the task worker and /v1 share
its rate limiter)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import httpx2

from ..admin import RuntimeConfig
from ..errors import ConfigurationError, Text2ImageError
from ..settings import Settings
from . import Backend, ModelInfo, ProgressCallback
from .presets import RemoteAccount, preset
from .provisioning import LocalModels, LocalModelStatus
from .remote import RemoteBackend, remote_http_client

logger = logging.getLogger(__name__)

REACHABILITY_TTL = 30.0
"""Seconds a remote reachability check is remembered (reachable or not)."""
PROBE_WAIT = 0.9
"""Seconds a readiness check waits for a running probe."""


class RemoteBackendPool:
    """One ``RemoteBackend`` (and so one rate limiter) per account, shared by the task worker and the /v1 API."""

    def __init__(self, http: httpx2.AsyncClient) -> None:
        self._http = http
        self._backends: dict[tuple[str, str, str], RemoteBackend] = {}

    def backend_for(self, account: RemoteAccount) -> RemoteBackend:
        """The backend for ``account``; the same one (same limiter) while the account (URL, model, token, limits,
        deadline) stays the same."""
        key = account.key
        existing = self._backends.get(key)
        if existing is not None and existing.account == account:
            return existing
        backend = RemoteBackend(account, self._http)
        self._backends[key] = backend
        return backend

    async def aclose(self) -> None:
        self._backends.clear()


class BackendRegistry:
    """A ``backends.BackendSet`` over the real backends."""

    def __init__(self, settings: Settings, *, local_models: LocalModels | None = None) -> None:
        self._settings = settings
        self._http = remote_http_client()
        self._pool = RemoteBackendPool(self._http)
        self._local = local_models if local_models is not None else LocalModels(settings)
        self._reachable: dict[tuple[str, str, str], tuple[float, bool]] = {}
        self._probes: dict[tuple[str, str, str], asyncio.Task[bool]] = {}

    @property
    def local_models(self) -> LocalModels:
        return self._local

    def local_model(self, config: RuntimeConfig) -> ModelInfo:
        return self._local.spec(config).model_info(self._settings.torch_device)

    async def local(self, config: RuntimeConfig) -> Backend:
        return await self._local.backend(config)

    def local_status(self, config: RuntimeConfig) -> LocalModelStatus:
        return self._local.status(config)

    def remote_account(self, config: RuntimeConfig) -> RemoteAccount:
        """The configured remote service; raises ``ConfigurationError`` naming a missing or invalid field."""
        return RemoteAccount.from_preset(
            preset(config.remote_preset),
            config.remote_api_key,
            base_url=config.remote_base_url,
            model=config.remote_model,
            images_per_minute=config.remote_images_per_minute or None,
            burst=config.remote_burst or None,
            deadline=config.remote_deadline or None,
        )

    def remote(self, config: RuntimeConfig) -> Backend:
        return self._remote(config)

    def _remote(self, config: RuntimeConfig) -> RemoteBackend:
        return self._pool.backend_for(self.remote_account(config))

    async def prepare(self, config: RuntimeConfig, progress: ProgressCallback | None = None) -> None:
        if config.backend == "remote":
            return
        with contextlib.suppress(ConfigurationError):  # reported by status(), tasks and the log
            if progress is None:
                self._local.provision(config)
            else:
                await self._local.download(config, progress)

    async def ready(self, config: RuntimeConfig) -> bool:
        if config.backend == "local":
            return self._local.status(config).ready
        if config.backend == "local_then_remote" and self._local.status(config).ready:
            return True
        return await self._remote_reachable(config)

    async def _remote_reachable(self, config: RuntimeConfig) -> bool:
        """Whether the remote service answers ``GET /models`` with our token, within about a second.

        One probe at a time per account (concurrent readiness checks share it), one attempt with a short timeout,
        its answer remembered for ``REACHABILITY_TTL``. A probe still running after ``PROBE_WAIT`` answers with the
        last known result (not reachable when there is none) and goes on in the background.
        """
        try:
            backend = self._remote(config)
        except Text2ImageError as exc:
            logger.debug("remote service not usable: %s", exc)
            return False
        key = backend.account.key
        known = self._reachable.get(key)
        if known is not None and time.monotonic() - known[0] < REACHABILITY_TTL:
            return known[1]
        probe = self._probes.get(key)
        if probe is None:
            probe = asyncio.create_task(self._probe(backend), name="remote-probe")
            self._probes[key] = probe
        try:
            return await asyncio.wait_for(asyncio.shield(probe), PROBE_WAIT)
        except TimeoutError:
            return known[1] if known is not None else False

    async def _probe(self, backend: RemoteBackend) -> bool:
        key = backend.account.key
        try:
            await backend.list_models(probe=True)
            reachable = True
        except Text2ImageError as exc:
            logger.warning("remote service not reachable: %s", exc)
            reachable = False
        finally:
            self._probes.pop(key, None)
        self._reachable[key] = (time.monotonic(), reachable)
        return reachable

    async def aclose(self) -> None:
        for probe in self._probes.values():
            probe.cancel()
        await self._local.aclose()
        await self._pool.aclose()
        await self._http.aclose()
