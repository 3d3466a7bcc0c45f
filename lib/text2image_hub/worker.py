"""The TaskProcessing loop: woken by /trigger or a polling interval, it drains Nextcloud's queue.

A task is claimed only when a slot is free to start it. Each task runs inside one boundary that always ends it
SUCCESSFUL or FAILED (with an admin and a user-facing message), unless the user cancelled or deleted it.
Progress is sent at most about once a second while the image is made, never after the result is reported.
When Nextcloud is unreachable or in maintenance the worker backs off, and results are kept and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from nc_py_api.ex_app.providers.task_processing import TaskProcessingProvider

from .admin import ConfigReader, RuntimeConfig
from .backends import GenerationControl
from .errors import (
    BackendUnavailableError,
    ConfigurationError,
    GenerationCancelledError,
    NextcloudUnavailableError,
    Text2ImageError,
)
from .metrics import Metrics
from .nextcloud import STATUS_CANCELLED, STATUS_GONE, ClaimedTask
from .provider import PROVIDER_ID, TaskInput, provider_declaration, unconfigured_model
from .registration import Registration
from .service import GenerationResult, GenerationSpec, ImageService
from .status import SetupStatus, setup_status

logger = logging.getLogger(__name__)
T = TypeVar("T")

INTERNAL_ERROR_MESSAGE = "The image could not be generated because of an internal error. Please try again later."
SHUTDOWN_MESSAGE = "The image service restarted before your image was ready. Please try again."
NEXTCLOUD_LOG_WARNING = 2
NEXTCLOUD_LOG_ERROR = 3


class TaskGateway(Protocol):
    """What the worker needs from Nextcloud (``nextcloud.NextcloudGateway``)."""

    async def claim_next(self, provider_id: str) -> ClaimedTask | None: ...

    async def set_progress(self, task_id: int, percent: float) -> str: ...

    async def upload_image(self, task_id: int, png: bytes) -> int | None: ...

    async def report_success(self, task_id: int, file_ids: list[int]) -> str: ...

    async def report_failure(self, task_id: int, admin_message: str, user_message: str) -> str: ...

    async def enabled(self) -> bool: ...

    async def log(self, level: int, message: str) -> None: ...


@dataclass(frozen=True)
class WorkerTiming:
    poll_interval: float = 5.0
    progress_interval: float = 1.0
    progress_keepalive: float = 5.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    delivery_deadline: float = 900.0
    shutdown_grace: float = 30.0


class _Backoff:
    def __init__(self, timing: WorkerTiming) -> None:
        self._timing = timing
        self.delay = 0.0

    def next(self) -> float:
        self.delay = min(self._timing.backoff_max, max(self._timing.backoff_initial, self.delay * 2))
        return self.delay

    def reset(self) -> None:
        self.delay = 0.0


class TaskWorker:
    def __init__(
        self,
        gateway: TaskGateway,
        service: ImageService,
        config: ConfigReader,
        registration: Registration,
        timing: WorkerTiming | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._gateway = gateway
        self._metrics = metrics or Metrics()
        self._service = service
        self._config = config
        self._timing = timing or WorkerTiming()
        self._registration = registration
        self._status: SetupStatus | None = None
        self._wake = asyncio.Event()
        self._enabled: bool | None = None  # None: ask Nextcloud (AppAPI does not call /enabled after a restart)
        self._stopping = False
        self._running: dict[asyncio.Task[None], GenerationControl] = {}

    # --- control from the HTTP handlers ---------------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    async def enable(self) -> None:
        """Register the provider and the settings form for the current config and start claiming tasks."""
        await self._sync_registration(enabling=True)
        self._enabled = True
        self.wake()

    async def disable(self) -> None:
        self._enabled = False
        await self._registration.withdraw()

    @property
    def busy(self) -> int:
        return len(self._running)

    # --- the loop -------------------------------------------------------------------------------------------------
    async def run(self) -> None:
        backoff = _Backoff(self._timing)
        outage_logged = False
        while not self._stopping:
            try:
                await self._claim_while_slots_free()
            except NextcloudUnavailableError as exc:
                delay = backoff.next()
                if not outage_logged:
                    logger.warning("Nextcloud unavailable (%s); retrying with back-off", exc)
                    outage_logged = True
                await self._idle(delay)
                continue
            if outage_logged:
                logger.info("Nextcloud is reachable again")
                outage_logged = False
            backoff.reset()
            await self._idle(self._timing.poll_interval)

    async def _claim_while_slots_free(self) -> None:
        restored = False
        if self._enabled is None:
            self._enabled = restored = await self._gateway.enabled()
            logger.info("enabled state from Nextcloud: %s", self._enabled)
        if not self._enabled:
            return
        config = await self._sync_registration(enabling=restored)  # after a restart: register again
        # with an invalid config, tasks are still claimed (one at a time) and fail with a message naming the setting
        slots = self._service.task_slots(config) if config is not None else 1
        while not self._stopping and self._enabled and len(self._running) < slots:
            task = await self._gateway.claim_next(PROVIDER_ID)
            if task is None:
                return
            logger.info("task %d claimed", task.id)
            control = GenerationControl()
            job = asyncio.create_task(self._process(task, control), name=f"task-{task.id}")
            self._running[job] = control
            job.add_done_callback(self._finished)

    async def _sync_registration(self, *, enabling: bool = False) -> RuntimeConfig | None:
        """Read the config, start what the local model needs, and keep the provider and the form in step with it."""
        config: RuntimeConfig | None = None
        try:
            config = await self._config.load()
        except ConfigurationError as exc:
            status = SetupStatus(False, exc.code, str(exc))
        else:
            await self._service.backends.prepare(config)
            status = setup_status(config, self._service.backends)
        await self._note(status)
        await self._registration.sync(await self._declaration(config), status.text, enabling=enabling)
        return config

    async def _note(self, status: SetupStatus) -> None:
        """Log the setup status when it changes (not on every pass); a problem also goes to nextcloud.log."""
        previous, self._status = self._status, status
        if previous is not None and (previous.code, previous.usable) == (status.code, status.usable):
            return
        if status.usable:
            logger.info("ready: %s", status.text)
        else:
            logger.warning("not ready: %s", status.text)
            await self._gateway.log(NEXTCLOUD_LOG_WARNING, f"Text2Image Hub is not ready: {status.text}")

    def _finished(self, job: asyncio.Task[None]) -> None:
        self._running.pop(job, None)
        self._wake.set()  # a slot is free: look for the next task at once

    async def _idle(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _declaration(self, config: RuntimeConfig | None) -> TaskProcessingProvider:
        if config is None:
            return provider_declaration(unconfigured_model(), unconfigured_model().default_size)
        try:
            model = await self._service.primary_model(config)
        except (ConfigurationError, BackendUnavailableError):
            model = unconfigured_model()  # the status line (logged on change) says why
        chosen = config.default_size
        default = chosen if chosen is not None and chosen in model.sizes else model.default_size
        return provider_declaration(model, default, fallback=config.backend == "local_then_remote")

    # --- one task ---------------------------------------------------------------------------------------------------
    async def _process(self, task: ClaimedTask, control: GenerationControl) -> None:
        """The per-task boundary: every task ends SUCCESSFUL or FAILED unless the user cancelled or deleted it."""
        progress = _ProgressReporter(self._gateway, task.id, control, self._timing)
        try:
            config = await self._config.load()  # read after the claim: a value saved a moment ago applies
            request = TaskInput.parse(task.input)
            seeds = None if request.seed is None else tuple(request.seed + i for i in range(request.count))
            spec = GenerationSpec(
                prompt=request.prompt,
                count=request.count,
                size=request.size,
                seeds=seeds,
                watermark=task.include_watermark,
                source="task",
            )
            self._metrics.generation_started("task")
            result = await self._service.generate(spec, config, control)
            self._metrics.generation_finished("task", result.backend, len(result.images), result.seconds)
            await progress.stop()
            await self._deliver(task, result)
        except GenerationCancelledError as exc:
            self._metrics.generation_failed("task", exc.code)
            await progress.stop()
            if self._stopping:
                await self._fail(task, "generation stopped by a shutdown of the ExApp", SHUTDOWN_MESSAGE)
            else:
                logger.info("task %d cancelled by the user; work stopped", task.id)
        except Text2ImageError as exc:
            self._metrics.generation_failed("task", exc.code)
            await progress.stop()
            logger.warning("task %d failed: %s", task.id, exc)
            if isinstance(exc, ConfigurationError):
                await self._gateway.log(NEXTCLOUD_LOG_ERROR, str(exc))
            await self._fail(task, str(exc), exc.user_message)
        except asyncio.CancelledError:
            progress.abandon()
            await asyncio.shield(self._fail(task, "the ExApp stopped while the task ran", SHUTDOWN_MESSAGE))
            raise
        except Exception as exc:  # the per-task boundary: no task is ever left RUNNING
            self._metrics.generation_failed("task", "INTERNAL_ERROR")
            await progress.stop()
            logger.exception("task %d failed with an unexpected error", task.id)
            await self._fail(task, f"internal error: {type(exc).__name__}: {exc}", INTERNAL_ERROR_MESSAGE)

    async def _deliver(self, task: ClaimedTask, result: GenerationResult) -> None:
        file_ids: list[int] = []
        for image in result.images:
            file_id = await self._retry(
                task.id, "upload", functools.partial(self._gateway.upload_image, task.id, image.png)
            )
            if file_id is None:
                logger.info("task %d was deleted before its images were stored", task.id)
                return
            file_ids.append(file_id)
        status = await self._retry(task.id, "report", lambda: self._gateway.report_success(task.id, file_ids))
        if status == STATUS_CANCELLED:
            logger.info("task %d was cancelled; its result was discarded by Nextcloud", task.id)
        else:
            logger.info(
                "task %d done: %d image(s) %s on %s in %.2f s",
                task.id,
                len(file_ids),
                result.size,
                result.backend,
                result.seconds,
            )

    async def _fail(self, task: ClaimedTask, admin_message: str, user_message: str) -> None:
        await self._retry(task.id, "report", lambda: self._gateway.report_failure(task.id, admin_message, user_message))

    async def _retry(self, task_id: int, what: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """Run ``call`` until Nextcloud takes it or the delivery deadline passes (then the result is lost: logged)."""
        backoff = _Backoff(self._timing)
        deadline = time.monotonic() + self._timing.delivery_deadline
        while True:
            try:
                return await call()
            except NextcloudUnavailableError as exc:
                delay = backoff.next()
                if time.monotonic() + delay > deadline:
                    logger.error("task %d: giving up the %s after %s (%s)", task_id, what, "retries", exc)
                    return None
                logger.warning("task %d: %s failed (%s); retrying in %.1f s", task_id, what, exc, delay)
                await asyncio.sleep(delay)

    # --- shutdown ---------------------------------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Stop claiming; let running tasks finish within the grace period, then stop them and report them failed."""
        self._stopping = True
        self._wake.set()
        if not self._running:
            return
        jobs = set(self._running)
        _, pending = await asyncio.wait(jobs, timeout=self._timing.shutdown_grace)
        for job in pending:
            self._running[job].cancel()
        if pending:
            _, still = await asyncio.wait(pending, timeout=self._timing.shutdown_grace)
            for job in still:
                job.cancel()
            await asyncio.gather(*still, return_exceptions=True)


class _ProgressReporter:
    """Sends the generation's progress to Nextcloud about once a second and learns of cancellation from the answer."""

    def __init__(self, gateway: TaskGateway, task_id: int, control: GenerationControl, timing: WorkerTiming) -> None:
        self._gateway = gateway
        self._task_id = task_id
        self._control = control
        self._timing = timing
        self._stop = asyncio.Event()
        self._job = asyncio.create_task(self._run(), name=f"progress-{task_id}")

    async def _run(self) -> None:
        sent = -1.0
        last_sent_at = 0.0
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._timing.progress_interval)
            if self._stop.is_set():
                return
            percent = round(self._control.progress * 100, 1)
            now = time.monotonic()
            if percent == sent and now - last_sent_at < self._timing.progress_keepalive:
                continue
            try:
                status = await self._gateway.set_progress(self._task_id, percent)
            except NextcloudUnavailableError as exc:
                logger.debug("task %d: progress not sent (%s)", self._task_id, exc)
                continue
            sent, last_sent_at = percent, now
            if status in (STATUS_CANCELLED, STATUS_GONE):
                logger.info("task %d: Nextcloud says %s; stopping the generation", self._task_id, status)
                self._control.cancel()
                return

    async def stop(self) -> None:
        """Wait for an in-flight progress call, so that nothing is sent after the result."""
        self._stop.set()
        await self._job

    def abandon(self) -> None:
        self._stop.set()
        self._job.cancel()
