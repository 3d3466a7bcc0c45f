"""The app's backends: the warm local pipeline (loaded once, imported only when used) and the remote pool."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..admin import RuntimeConfig
from ..errors import BackendUnavailableError, Text2ImageError
from ..settings import Settings
from . import Backend
from .catalog import LocalModelSpec, default_local_model, local_model
from .remote import RemoteAccount, RemoteBackendPool, preset, remote_http_client
from .weights import download_weights, weights_dir, weights_present

if TYPE_CHECKING:
    from .local import LocalBackend

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int], Awaitable[None]]
REACHABILITY_TTL = 60.0  # seconds a remote reachability check is remembered


class Backends:
    """A ``service.BackendSet`` over the real backends."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._http = remote_http_client()
        self._pool = RemoteBackendPool(self._http)
        self._local: LocalBackend | None = None
        self._loading = asyncio.Lock()
        self._reachable: dict[tuple[str, str, str], tuple[float, bool]] = {}

    def local_spec(self, config: RuntimeConfig) -> LocalModelSpec:
        if config.local_model:
            return local_model(config.local_model)
        return default_local_model(self._settings.torch_device)

    def _model_dir(self, spec: LocalModelSpec) -> Path:
        if self._settings.model_path is not None:
            return self._settings.model_path
        return weights_dir(self._settings.persistent_storage, spec.id)

    async def local(self, config: RuntimeConfig) -> Backend | None:
        spec = self.local_spec(config)
        if self._local is not None and self._local.spec.id == spec.id:
            return self._local
        if config.backend == "remote":
            return None
        model_dir = self._model_dir(spec)
        if not weights_present(model_dir):
            return None
        return await self._load(spec, model_dir)

    def remote_account(self, config: RuntimeConfig) -> RemoteAccount:
        """The configured remote service; raises ``ConfigurationError`` naming a missing or invalid field."""
        return RemoteAccount.from_preset(
            preset(config.remote_preset),
            config.remote_api_key,
            base_url=config.remote_base_url,
            model=config.remote_model,
            images_per_minute=config.remote_images_per_minute or None,
            burst=config.remote_burst or None,
        )

    def remote(self, config: RuntimeConfig) -> Backend:
        return self._pool.backend_for(self.remote_account(config))

    async def prepare(self, config: RuntimeConfig, progress: ProgressCallback, *, download: bool) -> None:
        if config.backend != "local":
            self.remote(config)  # checks the remote settings now rather than at the first task
        if config.backend == "remote":
            return
        spec = self.local_spec(config)
        model_dir = self._model_dir(spec)
        if not weights_present(model_dir):
            if not download:
                raise BackendUnavailableError(f"the weights of {spec.id} are not on this server yet")
            model_dir = await download_weights(
                spec.id, self._settings.persistent_storage, progress, model_path=self._settings.model_path
            )
        await self._load(spec, model_dir)

    async def _load(self, spec: LocalModelSpec, model_dir: Path) -> LocalBackend:
        async with self._loading:
            if self._local is not None and self._local.spec.id == spec.id:
                return self._local
            from .local import LocalBackend  # torch and diffusers are imported here, never by remote-only setups

            previous, self._local = self._local, None
            if previous is not None:
                await previous.aclose()
            logger.info("loading %s from %s", spec.id, model_dir)
            try:
                self._local = await LocalBackend.load(
                    spec, model_dir, device=self._settings.torch_device, speedups=self._settings.speedups
                )
            except (OSError, ValueError, RuntimeError) as exc:
                raise BackendUnavailableError(f"could not load {spec.id} from {model_dir}: {exc}") from exc
            return self._local

    async def ready(self, config: RuntimeConfig) -> bool:
        if config.backend == "local":
            return self._local is not None
        if config.backend == "local_then_remote" and self._local is not None:
            return True
        return await self._remote_reachable(config)

    async def _remote_reachable(self, config: RuntimeConfig) -> bool:
        """Whether the remote service answers ``GET /models`` with our token (remembered for a minute)."""
        try:
            backend = self._pool.backend_for(self.remote_account(config))
        except Text2ImageError as exc:
            logger.warning("remote service not usable: %s", exc)
            return False
        now = time.monotonic()
        checked = self._reachable.get(backend.account.key)
        if checked is not None and now - checked[0] < REACHABILITY_TTL:
            return checked[1]
        try:
            await backend.list_models()
            reachable = True
        except Text2ImageError as exc:
            logger.warning("remote service not reachable: %s", exc)
            reachable = False
        self._reachable[backend.account.key] = (now, reachable)
        return reachable

    async def aclose(self) -> None:
        if self._local is not None:
            await self._local.aclose()
        await self._pool.aclose()
        await self._http.aclose()
