"""The TaskProcessing loop: woken by /trigger or a polling interval, it drains Nextcloud's queue.

A task is claimed only when a slot is free to start it, and journaled (``journal.py``) before anything else happens:
Nextcloud never times out a RUNNING task, so one this process loses would stay RUNNING for ever. Each task runs
inside one boundary that always ends it SUCCESSFUL or FAILED (with an admin and a user-facing message), unless the
user cancelled or deleted it; on start-up, the journal's tasks are done again or reported FAILED.

A task frees its slot when its images are made, so the next one is claimed while it uploads and reports. Progress
is sent at most about once a second while the image is made (a call still in flight then is answered while the images
upload), never after the result is reported. When Nextcloud is unreachable or in maintenance the worker backs off;
results are kept and retried until the delivery deadline, and an outcome that could not be delivered stays in the
journal until Nextcloud answers again.

Shutdown fits ``docker stop`` (SIGKILL 10 s after SIGTERM): claiming stops at once, tasks get ``shutdown_grace``
seconds to finish, the others stop at their next step and stay in the journal for the next start. Disabling the
app instead reports them FAILED.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from nc_py_api.ex_app.providers.task_processing import TaskProcessingProvider

from .admin import ConfigReader, RuntimeConfig
from .backends import GenerationControl
from .errors import (
    BackendUnavailableError,
    ConfigurationError,
    GenerationCancelledError,
    InvalidRequestError,
    NextcloudUnavailableError,
    Text2ImageError,
)
from .journal import JournalEntry, TaskJournal
from .metrics import Metrics
from .nextcloud import STATUS_CANCELLED, STATUS_GONE, ClaimedTask
from .provider import PROVIDER_ID, TaskInput, provider_declaration, unconfigured_model
from .registration import Registration
from .service import GenerationResult, ImageRequest, ImageService
from .status import SetupStatus, setup_status

logger = logging.getLogger(__name__)
T = TypeVar("T")

INTERNAL_ERROR_MESSAGE = "The image could not be generated because of an internal error. Please try again later."
RESTART_MESSAGE = "The image service restarted before your image was ready. Please try again."
DISABLED_MESSAGE = "The image service was switched off by the administrator before your image was ready."
GIVEN_UP_MESSAGE = (
    "This image could not be generated: the image service stopped each time it tried. Please try another prompt or "
    "size, or ask your administrator."
)
UNDELIVERED_MESSAGE = "Your image was made, but the server could not store it in time. Please try again."
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
    shutdown_grace: float = 5.0
    """Seconds running tasks get to finish on shutdown (``docker stop`` kills 10 s after SIGTERM)."""
    recovery_limit: float = 3600.0
    """A journaled task claimed longer ago than this is reported FAILED at start-up rather than done again."""
    max_attempts: int = 2
    """Generations started for one task before it is given up (a task that takes the process down each time)."""


class _Backoff:
    def __init__(self, timing: WorkerTiming) -> None:
        self._timing = timing
        self.delay = 0.0

    def next(self) -> float:
        self.delay = min(self._timing.backoff_max, max(self._timing.backoff_initial, self.delay * 2))
        return self.delay

    def reset(self) -> None:
        self.delay = 0.0


class _Abandoned(Exception):
    """Nextcloud did not take a delivery before the deadline (the outcome stays in the journal)."""


@dataclass
class _Job:
    control: GenerationControl
    task_id: int
    generating: bool = True


class TaskWorker:
    def __init__(
        self,
        gateway: TaskGateway,
        service: ImageService,
        config: ConfigReader,
        registration: Registration,
        journal: TaskJournal,
        timing: WorkerTiming | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._gateway = gateway
        self._metrics = metrics or Metrics()
        self._service = service
        self._config = config
        self._timing = timing or WorkerTiming()
        self._registration = registration
        self._journal = journal
        self._status: SetupStatus | None = None
        self._wake = asyncio.Event()
        self._enabled: bool | None = None  # None: ask Nextcloud (AppAPI does not call /enabled after a restart)
        self._stopping = False
        self._disabling = False
        self._journal_due = True  # journaled tasks to finish: at start-up, and after an undelivered outcome
        self._jobs: dict[asyncio.Task[None], _Job] = {}
        self._last_pass: float | None = None

    # --- control from the HTTP handlers ---------------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    async def enable(self) -> None:
        """Register the provider and the settings form for the current config and start claiming tasks."""
        await self._sync_registration(enabling=True)
        self._enabled = True
        self._journal_due = True
        self.wake()

    async def disable(self) -> None:
        """Stop claiming, stop the tasks in hand (reported FAILED) and withdraw the provider and the form."""
        self._enabled = False
        self._disabling = True
        try:
            await self._stop_jobs()
        finally:
            self._disabling = False
        await self._registration.withdraw()

    @property
    def busy(self) -> int:
        return len(self._jobs)

    def last_pass_age(self) -> float | None:
        """Seconds since the last pass that reached Nextcloud (None: none yet)."""
        return None if self._last_pass is None else time.monotonic() - self._last_pass

    # --- the loop -------------------------------------------------------------------------------------------------
    async def run(self) -> None:
        backoff = _Backoff(self._timing)
        outage_logged = False
        while not self._stopping:
            try:
                await self._pass()
            except NextcloudUnavailableError as exc:
                delay = backoff.next()
                if not outage_logged:
                    logger.warning("Nextcloud unavailable (%s); retrying with back-off", exc)
                    outage_logged = True
                await self._idle(delay)
                continue
            self._last_pass = time.monotonic()
            if outage_logged:
                logger.info("Nextcloud is reachable again")
                outage_logged = False
            backoff.reset()
            await self._idle(self._timing.poll_interval)

    async def _pass(self) -> None:
        restored = False
        if self._enabled is None:
            answer = await self._gateway.enabled()
            if self._enabled is None:  # /enabled may have come meanwhile: it knows better
                self._enabled = restored = answer
                logger.info("enabled state from Nextcloud: %s", answer)
        if not self._enabled:
            return
        config = await self._sync_registration(enabling=restored)  # after a restart: register again
        if self._journal_due:
            self._journal_due = False
            await self._finish_journal()
        # with an invalid config, tasks are still claimed (one at a time) and fail with a message naming the setting
        slots = self._service.task_slots(config) if config is not None else 1
        while not self._stopping and self._enabled and self._generating() < slots:
            task = await self._gateway.claim_next(PROVIDER_ID)
            if task is None:
                return
            logger.debug("task %d claimed", task.id)
            entry = self._journal.new_entry(task.id, task.input, task.include_watermark)
            await self._journal.write(entry)
            self._start(entry)

    def _generating(self) -> int:
        return sum(job.generating for job in self._jobs.values())

    def _start(self, entry: JournalEntry) -> None:
        control = GenerationControl()
        job = asyncio.create_task(self._process(entry, control), name=f"task-{entry.task_id}")
        self._jobs[job] = _Job(control, entry.task_id)
        job.add_done_callback(self._finished)

    def _finished(self, job: asyncio.Task[None]) -> None:
        self._jobs.pop(job, None)
        self._wake.set()  # a slot is free: look for the next task at once

    def _generated(self, task_id: int) -> None:
        """The task's images are made: its slot is free for the next task while it uploads and reports."""
        for job in self._jobs.values():
            if job.task_id == task_id:
                job.generating = False
        self._wake.set()

    async def _idle(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

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

    # --- the journal --------------------------------------------------------------------------------------------------
    async def _finish_journal(self) -> None:
        """Finish what the journal holds and nobody is working on: report what is due, do the rest again."""
        in_hand = {job.task_id for job in self._jobs.values()}
        for entry in await self._journal.entries():
            if entry.task_id in in_hand:
                continue
            if entry.failure is not None:
                admin_message, user_message = entry.failure
                await self._fail(entry, admin_message, user_message or RESTART_MESSAGE)
            elif self._journal.age(entry) > self._timing.recovery_limit:
                hours = self._timing.recovery_limit / 3600
                self._metrics.task_recovered("failed")
                await self._fail(entry, f"claimed before a restart, more than {hours:g} h ago", RESTART_MESSAGE)
            elif entry.attempts >= self._timing.max_attempts:
                self._metrics.task_recovered("failed")
                admin = f"the app stopped during each of its {entry.attempts} attempts at this task: given up"
                await self._fail(entry, admin, GIVEN_UP_MESSAGE)
            else:
                logger.info("task %d was in hand before a restart: doing it again", entry.task_id)
                self._metrics.task_recovered("redone")
                self._start(entry)

    # --- one task ---------------------------------------------------------------------------------------------------
    async def _process(self, entry: JournalEntry, control: GenerationControl) -> None:
        """The per-task boundary: every task ends SUCCESSFUL or FAILED unless the user cancelled or deleted it."""
        progress = _ProgressReporter(self._gateway, entry.task_id, control, self._timing)
        try:
            result = await self._generate(entry, control)
            progress.halt()  # nothing more is sent; a call in flight ends while the images upload
            self._generated(entry.task_id)
            await self._deliver(entry, result, progress)
            await progress.stop()  # done already, unless the task was deleted or its delivery abandoned
        except GenerationCancelledError:
            await progress.stop()
            if self._disabling:
                await self._fail(entry, "the app was disabled while the task ran", DISABLED_MESSAGE)
            elif self._stopping:
                logger.info("task %d stopped by the shutdown: kept for the next start", entry.task_id)
            else:
                logger.info("task %d cancelled by the user; work stopped", entry.task_id)
                await self._journal.remove(entry.task_id)
        except InvalidRequestError as exc:
            await progress.stop()
            logger.info("task %d refused: %s", entry.task_id, exc)
            await self._fail(entry, str(exc), exc.user_message)
        except Text2ImageError as exc:
            await progress.stop()
            logger.warning("task %d failed: %s", entry.task_id, exc)
            if isinstance(exc, ConfigurationError):
                await self._gateway.log(NEXTCLOUD_LOG_ERROR, str(exc))
            await self._fail(entry, str(exc), exc.user_message)
        except asyncio.CancelledError:
            progress.abandon()
            if self._disabling:
                await asyncio.shield(self._fail(entry, "the app was disabled while the task ran", DISABLED_MESSAGE))
            raise  # a shutdown: the journal keeps the task for the next start
        except Exception as exc:  # the per-task boundary: no task is ever left RUNNING
            await progress.stop()
            logger.exception("task %d failed with an unexpected error", entry.task_id)
            await self._fail(entry, f"internal error: {type(exc).__name__}: {exc}", INTERNAL_ERROR_MESSAGE)

    async def _generate(self, entry: JournalEntry, control: GenerationControl) -> GenerationResult:
        config = await self._config.load()  # read after the claim: a value saved a moment ago applies
        request = TaskInput.parse(entry.input)
        seeds = None if request.seed is None else tuple(request.seed + i for i in range(request.count))
        spec = ImageRequest(
            prompt=request.prompt,
            count=request.count,
            size=request.size,
            seeds=seeds,
            watermark=entry.include_watermark,
            source="task",
        )
        await self._journal.started(entry)
        return await self._service.generate(spec, config, control)

    async def _deliver(self, entry: JournalEntry, result: GenerationResult, progress: _ProgressReporter) -> None:
        started = time.perf_counter()
        task_id = entry.task_id
        try:
            file_ids: list[int] = []
            for image in result.images:
                file_id = await self._retry(
                    task_id, "upload", functools.partial(self._gateway.upload_image, task_id, image.png)
                )
                if file_id is None:
                    logger.info("task %d was deleted before its images were stored", task_id)
                    await self._journal.remove(task_id)
                    return
                file_ids.append(file_id)
            await progress.stop()  # its last call is answered before the result is reported, never after
            status = await self._retry(task_id, "report", lambda: self._gateway.report_success(task_id, file_ids))
        except _Abandoned as exc:
            await self._keep_failure(entry, f"the images were made but could not be delivered: {exc}")
            return
        await self._journal.remove(task_id)
        if status == STATUS_CANCELLED:
            logger.info("task %d was cancelled; its result was discarded by Nextcloud", task_id)
            return
        logger.info(
            "task %d done: %d image(s) %s on %s/%s, generated in %.2f s, delivered in %.2f s",
            task_id,
            len(file_ids),
            result.size,
            result.backend,
            result.model,
            result.seconds,
            time.perf_counter() - started,
        )

    async def _fail(self, entry: JournalEntry, admin_message: str, user_message: str) -> None:
        task_id = entry.task_id
        try:
            report = functools.partial(self._gateway.report_failure, task_id, admin_message, user_message)
            await self._retry(task_id, "report", report)
        except _Abandoned as exc:
            await self._keep_failure(replace(entry, failure=(admin_message, user_message)), str(exc))
            return
        await self._journal.remove(task_id)

    async def _keep_failure(self, entry: JournalEntry, reason: str) -> None:
        """Nextcloud did not answer in time: keep the failure in the journal and report it once it answers again."""
        failure = entry.failure or (reason, UNDELIVERED_MESSAGE)
        await self._journal.write(replace(entry, failure=failure))
        self._journal_due = True
        logger.error(
            "task %d: %s; it stays RUNNING in Nextcloud until it can be reported FAILED, which is tried again when "
            "Nextcloud answers",
            entry.task_id,
            reason,
        )

    async def _retry(self, task_id: int, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` until Nextcloud takes it; ``_Abandoned`` when the delivery deadline passes first."""
        backoff = _Backoff(self._timing)
        started = time.monotonic()
        deadline = started + self._timing.delivery_deadline
        while True:
            try:
                return await call()
            except NextcloudUnavailableError as exc:
                delay = backoff.next()
                if time.monotonic() + delay > deadline:
                    raise _Abandoned(
                        f"Nextcloud did not take the {what} for {time.monotonic() - started:.0f} s ({exc})"
                    ) from exc
                logger.warning("task %d: %s failed (%s); retrying in %.1f s", task_id, what, exc, delay)
                await asyncio.sleep(delay)

    # --- shutdown ---------------------------------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Stop claiming; tasks get the grace period to finish, then stop at their next step (kept in the journal)."""
        self._stopping = True
        self._wake.set()
        await self._stop_jobs()

    async def _stop_jobs(self) -> None:
        if not self._jobs:
            return
        _, pending = await asyncio.wait(set(self._jobs), timeout=self._timing.shutdown_grace)
        for job in pending:
            self._jobs[job].control.cancel()  # cooperative: the generation stops at its next step
        if pending:
            _, still = await asyncio.wait(pending, timeout=1.0)
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
        self._stopped = False

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

    def halt(self) -> None:
        """Send nothing more; a call in flight goes on (``stop`` waits for it)."""
        self._stop.set()

    async def stop(self) -> None:
        """Wait for an in-flight progress call, so that nothing is sent after the result. A reporter that failed is
        logged here: progress is a courtesy, the task goes on."""
        self._stop.set()
        if self._stopped:
            return
        self._stopped = True
        (outcome,) = await asyncio.gather(self._job, return_exceptions=True)
        if isinstance(outcome, Exception):
            logger.error("task %d: progress reporting failed", self._task_id, exc_info=outcome)

    def abandon(self) -> None:
        self._stop.set()
        self._job.cancel()
