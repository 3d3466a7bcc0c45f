"""What Nextcloud shows of the app — the provider declaration and the admin settings form — kept in step with the
config, one registration at a time.

``/enabled`` and the worker's passes both register; on a real Nextcloud two registrations of the provider at the same
moment can collide (one is answered 996 "Entity which should be updated has no id"), so every call goes through one
lock. Nothing is sent when the declaration and the form are what Nextcloud already has.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from nc_py_api.ex_app.providers.task_processing import TaskProcessingProvider
from nc_py_api.ex_app.ui.settings import SettingsForm

from .admin import FORM_ID
from .provider import PROVIDER_ID

logger = logging.getLogger(__name__)

FormBuilder = Callable[[str], SettingsForm]
"""The settings form, given the status line to show in it."""


class Registry(Protocol):
    """What registration needs from Nextcloud (``nextcloud.NextcloudGateway``)."""

    async def register_provider(self, provider: TaskProcessingProvider) -> None: ...

    async def unregister_provider(self, provider_id: str) -> None: ...

    async def register_form(self, form: SettingsForm) -> None: ...

    async def unregister_form(self, form_id: str) -> None: ...


class Registration:
    def __init__(self, registry: Registry, form: FormBuilder) -> None:
        self._registry = registry
        self._form = form
        self._lock = asyncio.Lock()
        self._provider: TaskProcessingProvider | None = None
        self._registered_form: SettingsForm | None = None
        self._active = False

    async def sync(self, provider: TaskProcessingProvider, status: str, *, enabling: bool = False) -> None:
        """Register ``provider`` and the form showing ``status``, each only if it changed.

        Only ``enabling`` (``/enabled``) registers after a ``withdraw``: a worker pass that was under way when the
        app was disabled must not register it again.
        """
        form = self._form(status)
        async with self._lock:
            self._active = self._active or enabling
            if not self._active:
                return
            if form != self._registered_form:
                await self._registry.register_form(form)
                self._registered_form = form
            if provider != self._provider:
                await self._registry.register_provider(provider)
                self._provider = provider
                logger.info("registered provider %r (expected runtime %d s)", provider.name, provider.expected_runtime)

    async def withdraw(self) -> None:
        async with self._lock:
            self._active = False
            self._provider = self._registered_form = None
            await self._registry.unregister_provider(PROVIDER_ID)
            await self._registry.unregister_form(FORM_ID)
