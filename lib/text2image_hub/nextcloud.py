"""The gateway to Nextcloud: the only module that calls nc_py_api.

nc_py_api's ``next_task``, ``set_progress`` and ``report_result`` return ``{}`` both for "nothing" and for
"Nextcloud failed" (timeout, maintenance, wrong secret), and connection errors escape as niquests exceptions.
This gateway calls the same OCS endpoints through nc_py_api's session so that failures raise
``NextcloudUnavailableError`` and the worker can back off and retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import niquests
from nc_py_api import AsyncNextcloudApp, NextcloudException
from nc_py_api.ex_app import LogLvl
from nc_py_api.ex_app.providers.task_processing import TaskProcessingProvider
from nc_py_api.ex_app.ui.settings import SettingsForm

from .errors import NextcloudUnavailableError
from .provider import TASK_TYPE
from .settings import Settings

logger = logging.getLogger(__name__)

STATUS_CANCELLED = "STATUS_CANCELLED"
STATUS_GONE = "STATUS_GONE"  # ours: the task was deleted (Nextcloud answers 404)
_TP = "/ocs/v2.php/taskprocessing/tasks_provider"
_APP_API = "/ocs/v1.php/apps/app_api"
T = TypeVar("T")


@dataclass(frozen=True)
class ClaimedTask:
    """A task Nextcloud handed to us (it is RUNNING now and ours alone)."""

    id: int
    input: dict[str, Any] = field(repr=False)  # holds the prompt: not for logs
    include_watermark: bool = True
    user_id: str | None = None


def _unavailable(exc: Exception, what: str) -> NextcloudUnavailableError:
    if isinstance(exc, NextcloudException):
        return NextcloudUnavailableError(f"Nextcloud answered {exc.status_code} to {what}")
    return NextcloudUnavailableError(f"Nextcloud is unreachable ({type(exc).__name__}) during {what}")


_FAILURES = (NextcloudException, niquests.exceptions.RequestException, OSError)
LANGUAGE_TTL = 600.0
"""Seconds a user's language is remembered."""


def _client(settings: Settings) -> AsyncNextcloudApp:
    return AsyncNextcloudApp(  # type: ignore[no-untyped-call]  # nc_py_api takes **kwargs
        nextcloud_url=settings.nextcloud_url,
        app_id=settings.app_id,
        app_version=settings.app_version,
        app_secret=settings.app_secret_value,
        npa_timeout=settings.nextcloud_timeout,
    )


class NextcloudGateway:
    """Claim, progress, upload, report, configuration and logging, with failures made visible."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._nc = _client(settings)
        self._as_user = _client(settings)  # acts as one user at a time (set_user), for what only the user may read
        self._as_user_lock = asyncio.Lock()
        self._languages: dict[str, tuple[float, str]] = {}
        self._clock = clock

    # --- TaskProcessing -------------------------------------------------------------------------------------------
    async def claim_next(self, provider_id: str) -> ClaimedTask | None:
        """The next task for our provider, or None when there is none. Raises when Nextcloud fails."""
        body = {"providerIds": [provider_id], "taskTypeIds": [TASK_TYPE]}
        data = await self._guarded("next_task", self._nc._session.ocs("GET", f"{_TP}/next", json=body))
        if not data:
            return None
        task = data["task"]
        return ClaimedTask(
            id=int(task["id"]),
            input=dict(task.get("input") or {}),
            include_watermark=bool(task.get("includeWatermark", True)),
            user_id=str(task["userId"]) if task.get("userId") else None,
        )

    async def set_progress(self, task_id: int, percent: float) -> str:
        """Report progress; returns the task's status (``STATUS_CANCELLED`` when the user cancelled it)."""
        body = {"taskId": task_id, "progress": min(max(percent, 0.0), 100.0) / 100.0}
        return await self._task_status("set_progress", f"{_TP}/{task_id}/progress", body)

    async def upload_image(self, task_id: int, png: bytes) -> int | None:
        """Upload one result file; None when the task is gone."""
        upload = self._nc.providers.task_processing.upload_result_file(task_id, png)
        file_id = await self._unless_gone("upload_result_file", upload)
        return None if file_id is None else int(file_id)

    async def report_success(self, task_id: int, file_ids: list[int]) -> str:
        body = {"taskId": task_id, "output": {"images": file_ids}}
        return await self._task_status("report_result", f"{_TP}/{task_id}/result", body)

    async def report_failure(self, task_id: int, admin_message: str, user_message: str) -> str:
        body = {
            "taskId": task_id,
            "output": None,
            "errorMessage": admin_message[:4000],
            "userFacingErrorMessage": user_message[:1000],
        }
        return await self._task_status("report_result", f"{_TP}/{task_id}/result", body)

    async def _task_status(self, what: str, path: str, body: dict[str, Any]) -> str:
        """POST to a task endpoint; the task's status from the answer, ``STATUS_GONE`` when it was deleted.

        Raises when the call may not have reached Nextcloud (a result is then retried by the worker).
        """
        data = await self._unless_gone(what, self._nc._session.ocs("POST", path, json=body))
        if data is None:
            return STATUS_GONE
        return str((data or {}).get("task", {}).get("status", ""))

    async def _guarded(self, what: str, call: Awaitable[T]) -> T:
        """Await an nc_py_api call; refused, timed out, 503 or wrong secret become ``NextcloudUnavailableError``."""
        try:
            return await call
        except _FAILURES as exc:
            raise _unavailable(exc, what) from exc

    async def _unless_gone(self, what: str, call: Awaitable[T]) -> T | None:
        """Like ``_guarded``, but None when Nextcloud answers 404: the task was deleted."""
        try:
            return await call
        except NextcloudException as exc:
            if exc.status_code == 404:
                return None
            raise _unavailable(exc, what) from exc
        except _FAILURES as exc:
            raise _unavailable(exc, what) from exc

    # --- AppAPI ---------------------------------------------------------------------------------------------------
    async def register_provider(self, provider: TaskProcessingProvider) -> None:
        await self._guarded("register provider", self._nc.providers.task_processing.register(provider))

    async def unregister_provider(self, provider_id: str) -> None:
        await self._guarded("unregister provider", self._nc.providers.task_processing.unregister(provider_id))

    async def register_form(self, form: SettingsForm) -> None:
        await self._guarded("register settings form", self._nc.ui.settings.register_form(form))

    async def unregister_form(self, form_id: str) -> None:
        await self._guarded("unregister settings form", self._nc.ui.settings.unregister_form(form_id))

    async def set_init_status(self, progress: int) -> None:
        """Init's progress (0..100); init never reports an error (see ``app._initialize``)."""
        await self._guarded("set_init_status", self._nc.set_init_status(progress))

    async def enabled(self) -> bool:
        """Whether AppAPI has the app enabled. Raises when Nextcloud cannot tell."""
        return bool(await self._guarded("enabled_state", self._nc._session.ocs("GET", f"{_APP_API}/ex-app/state")))

    async def config_values(self, keys: tuple[str, ...]) -> dict[str, str]:
        """Saved admin values (fields never saved are absent). Raises when Nextcloud fails."""
        records = await self._guarded("appconfig_ex", self._nc.appconfig_ex.get_values(list(keys)))
        return {record.key: record.value for record in records}

    async def ensure_sensitive_keys(self, keys: tuple[str, ...]) -> None:
        """Create the sensitive keys (empty) if missing, so admin saves read back as plaintext."""
        existing = await self.config_values(keys)
        for key in keys:
            if key not in existing:
                await self._guarded("appconfig_ex", self._nc.appconfig_ex.set_value(key, "", sensitive=True))

    async def log(self, level: int, message: str) -> None:
        """Write to nextcloud.log at the stdlib ``logging`` ``level`` (never raises: logging must not break the
        caller)."""
        try:
            await self._nc.log(_nextcloud_level(level), message, fast_send=True)
        except _FAILURES:
            logger.debug("could not forward a log record to Nextcloud", exc_info=True)

    async def user_language(self, user_id: str) -> str | None:
        """The user's Nextcloud language (``de``, ``pt_BR``, …), remembered for ``LANGUAGE_TTL``; None when Nextcloud
        cannot tell (the caller then uses the installation's language: a language is never worth failing for)."""
        known = self._languages.get(user_id)
        if known is not None and self._clock() - known[0] < LANGUAGE_TTL:
            return known[1]
        async with self._as_user_lock:
            try:
                await self._as_user.set_user(user_id)
                language = str((await self._as_user.users.get_user()).language or "")
            except (*_FAILURES, KeyError, TypeError, ValueError) as exc:
                logger.debug("the language of a user is unknown (%s)", type(exc).__name__)
                return None
        self._languages[user_id] = (self._clock(), language)
        return language or None

    async def aclose(self) -> None:
        for client in (self._nc, self._as_user):
            for adapter in ("adapter", "adapter_dav"):
                session = getattr(client._session, adapter, None)
                if session is not None:
                    await session.close()


def _nextcloud_level(level: int) -> LogLvl:
    """The nextcloud.log level of a stdlib ``logging`` level."""
    if level >= logging.CRITICAL:
        return LogLvl.FATAL
    if level >= logging.ERROR:
        return LogLvl.ERROR
    if level >= logging.WARNING:
        return LogLvl.WARNING
    return LogLvl.INFO if level >= logging.INFO else LogLvl.DEBUG


class NextcloudLogForwarder(logging.Handler):
    """Sends our ERROR records to nextcloud.log through a queue (nc_py_api's own handler blocks on HTTP)."""

    def __init__(self, gateway: NextcloudGateway, loop: asyncio.AbstractEventLoop, capacity: int = 100) -> None:
        super().__init__(level=logging.ERROR)
        self._gateway = gateway
        self._loop = loop
        self._queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue(maxsize=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._loop.call_soon_threadsafe(self._offer, record.levelno, f"{record.name}: {record.getMessage()}")
        except RuntimeError:  # the loop is closed (the app is stopping): as stdlib handlers do
            self.handleError(record)

    def _offer(self, level: int, message: str) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a flood of errors must not grow memory without bound
            self._queue.put_nowait((level, message))

    async def run(self) -> None:
        while True:
            level, message = await self._queue.get()
            await self._gateway.log(level, message)
