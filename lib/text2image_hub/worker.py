"""The TaskProcessing loop: woken by /trigger or a polling interval, it drains Nextcloud's queue.

A task is claimed only when a slot is free to start it, and journaled (``journal.py``) before anything else happens:
Nextcloud never times out a RUNNING task, so one this process loses would stay RUNNING for ever. Each task runs
inside one boundary that always ends it SUCCESSFUL or FAILED (with an admin and a user-facing message), unless the
user cancelled or deleted it; on start-up, the journal's tasks are done again or reported FAILED.

A task frees its slot when its images are made, so the next one is claimed while it uploads and reports. Progress
is sent while the image is made (``progress.py``; a call still in flight then is answered while the images upload),
never after the result is reported; results are delivered with retries until the delivery deadline, and an outcome
that could not be delivered stays in the journal until Nextcloud answers again (``delivery.py``). When Nextcloud is
unreachable or in maintenance the loop backs off.

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
from dataclasses import dataclass
from typing import Protocol

from nc_py_api.ex_app.providers.task_processing import TaskProcessingProvider

from .admin import ConfigReader, RuntimeConfig
from .backends import BackendSet, GenerationControl
from .backoff import Backoff
from .delivery import Delivery
from .errors import (
    BackendUnavailableError,
    ConfigurationError,
    GenerationCancelledError,
    InvalidRequestError,
    NextcloudUnavailableError,
    Text2ImageError,
)
from .i18n import Languages, Message, _
from .journal import JournalEntry, TaskJournal
from .metrics import Metrics
from .nextcloud import ClaimedTask
from .progress import ProgressReporter
from .provider import PROVIDER_ID, TaskInput, provider_declaration, unconfigured_model
from .registration import Registration
from .service import GenerationResult, ImageRequest, ImageService
from .status import SetupStatus, setup_status

logger = logging.getLogger(__name__)

INTERNAL_ERROR_MESSAGE = _("The image could not be generated because of an internal error. Please try again later.")
RESTART_MESSAGE = _("The image service restarted before your image was ready. Please try again.")
DISABLED_ADMIN_MESSAGE = "the app was disabled while the task ran"
DISABLED_MESSAGE = _("The image service was switched off by the administrator before your image was ready.")
GIVEN_UP_MESSAGE = _(
    "This image could not be generated: the image service stopped each time it tried. Please try another prompt or "
    "size, or ask your administrator."
)


class TaskGateway(Protocol):
    """What the worker needs from Nextcloud (``nextcloud.NextcloudGateway``)."""

    async def claim_next(self, provider_id: str) -> ClaimedTask | None: ...

    async def set_progress(self, task_id: int, percent: float) -> str: ...

    async def upload_image(self, task_id: int, png: bytes) -> int | None: ...

    async def report_success(self, task_id: int, file_ids: list[int]) -> str: ...

    async def report_failure(self, task_id: int, admin_message: str, user_message: str) -> str: ...

    async def enabled(self) -> bool: ...

    async def user_language(self, user_id: str) -> str | None: ...

    async def log(self, level: int, message: str) -> None:
        """Write to nextcloud.log; ``level`` is a stdlib ``logging`` level."""
        ...


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
    clock: Callable[[], float] = time.monotonic
    """The clock and the sleep of delivery retries (tests pass simulated ones to cover a 16-minute outage)."""
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def backoff(self) -> Backoff:
        return Backoff(self.backoff_initial, self.backoff_max)


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
        backends: BackendSet,
        config: ConfigReader,
        registration: Registration,
        journal: TaskJournal,
        timing: WorkerTiming | None = None,
        metrics: Metrics | None = None,
        languages: Languages | None = None,
    ) -> None:
        self._gateway = gateway
        self._metrics = metrics or Metrics()
        self._service = service
        self._backends = backends
        self._config = config
        self._timing = timing or WorkerTiming()
        self._registration = registration
        self._journal = journal
        self._languages = languages or Languages(None)
        self._language = self._languages.installation()  # the installation's, per the last config read
        self._delivery = Delivery(gateway, journal, self._timing, self._render)
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

    async def enable(self, accept_language: str | None = None) -> None:
        """Register the provider and the settings form for the current config and start claiming tasks.
        ``accept_language``: what Nextcloud sent with /enabled (the installation's language, unless the admin
        chose one)."""
        self._languages.remember(accept_language)
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
        backoff = self._timing.backoff()
        outage_logged = False
        while not self._stopping:
            try:
                await self._pass()
            except NextcloudUnavailableError as exc:
                delay = min(backoff.next(), self._timing.poll_interval)  # Nextcloud's return is seen within a poll
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
        if self._journal_due or self._delivery.undelivered:
            self._journal_due = self._delivery.undelivered = False
            await self._finish_journal()
        # with an invalid config, tasks are still claimed (one at a time) and fail with a message naming the setting
        slots = self._service.task_slots(config) if config is not None else 1
        while not self._stopping and self._enabled and self._generating() < slots:
            task = await self._gateway.claim_next(PROVIDER_ID)
            if task is None:
                return
            logger.debug("task %d claimed", task.id)
            entry = self._journal.new_entry(task.id, task.input, task.include_watermark, task.user_id)
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
            self._language = self._languages.installation(config.language)
            await self._backends.prepare(config)
            status = setup_status(config, self._backends)
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
            await self._gateway.log(logging.WARNING, f"Text2Image Hub is not ready: {status.text}")

    def _render(self, message: Message | str, language: str) -> str:
        return self._languages.render(message, language or self._language)

    async def _declaration(self, config: RuntimeConfig | None) -> TaskProcessingProvider:
        render = functools.partial(self._render, language=self._language)
        if config is None:
            return provider_declaration(unconfigured_model(), unconfigured_model().default_size, render=render)
        try:
            model = await self._service.primary_model(config)
        except (ConfigurationError, BackendUnavailableError):
            model = unconfigured_model()  # the status line (logged on change) says why
        chosen = config.default_size
        default = chosen if chosen is not None and chosen in model.sizes else model.default_size
        return provider_declaration(
            model, default, render=render, fallback=config.backend == "local_then_remote", styles=config.styles
        )

    # --- the journal --------------------------------------------------------------------------------------------------
    async def _finish_journal(self) -> None:
        """Finish what the journal holds and nobody is working on: report what is due, do the rest again."""
        in_hand = {job.task_id for job in self._jobs.values()}
        for entry in await self._journal.entries():
            if entry.task_id in in_hand:
                continue
            if entry.failure is not None:
                admin_message, user_message = entry.failure
                await self._delivery.failure(entry, admin_message, user_message or RESTART_MESSAGE)
            elif self._journal.age(entry) > self._timing.recovery_limit:
                hours = self._timing.recovery_limit / 3600
                self._metrics.task_recovered("failed")
                await self._delivery.failure(
                    entry, f"claimed before a restart, more than {hours:g} h ago", RESTART_MESSAGE
                )
            elif entry.attempts >= self._timing.max_attempts:
                self._metrics.task_recovered("failed")
                admin = f"the app stopped during each of its {entry.attempts} attempts at this task: given up"
                await self._delivery.failure(entry, admin, GIVEN_UP_MESSAGE)
            else:
                logger.info("task %d was in hand before a restart: doing it again", entry.task_id)
                self._metrics.task_recovered("redone")
                self._start(entry)

    # --- one task ---------------------------------------------------------------------------------------------------
    async def _process(self, entry: JournalEntry, control: GenerationControl) -> None:
        """The per-task boundary: every task ends SUCCESSFUL or FAILED unless the user cancelled or deleted it."""
        progress = ProgressReporter(self._gateway, entry.task_id, control, self._timing)
        try:
            entry = await self._started(entry)
            result = await self._generate(entry, control)
            progress.halt()  # nothing more is sent; a call in flight ends while the images upload
            self._generated(entry.task_id)
            await self._delivery.success(entry, result, before_report=progress.stop)
            await progress.stop()  # done already, unless the task was deleted or its delivery abandoned
        except GenerationCancelledError:
            await progress.stop()
            if self._disabling:
                await self._delivery.failure(entry, DISABLED_ADMIN_MESSAGE, DISABLED_MESSAGE)
            elif self._stopping:
                logger.info("task %d stopped by the shutdown: kept for the next start", entry.task_id)
            else:
                logger.info("task %d cancelled by the user; work stopped", entry.task_id)
                await self._journal.remove(entry.task_id)
        except InvalidRequestError as exc:
            await progress.stop()
            logger.info("task %d refused: %s", entry.task_id, exc)
            await self._delivery.failure(entry, str(exc), exc.user_text)
        except Text2ImageError as exc:
            await progress.stop()
            logger.warning("task %d failed: %s", entry.task_id, exc)
            if isinstance(exc, ConfigurationError):
                await self._gateway.log(logging.ERROR, str(exc))
            await self._delivery.failure(entry, str(exc), exc.user_text)
        except asyncio.CancelledError:
            progress.abandon()
            if self._disabling:
                await asyncio.shield(self._delivery.failure(entry, DISABLED_ADMIN_MESSAGE, DISABLED_MESSAGE))
            raise  # a shutdown: the journal keeps the task for the next start
        except Exception as exc:  # the per-task boundary: no task is ever left RUNNING
            await progress.stop()
            logger.exception("task %d failed with an unexpected error", entry.task_id)
            await self._delivery.failure(entry, f"internal error: {type(exc).__name__}: {exc}", INTERNAL_ERROR_MESSAGE)

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
            style=request.style,
        )
        return await self._service.generate(spec, config, control)

    async def _started(self, entry: JournalEntry) -> JournalEntry:
        """The entry journaled as started, with its user's language (looked up after the claim was journaled, and
        remembered by the gateway: a user's next tasks ask Nextcloud nothing)."""
        language = await self._gateway.user_language(entry.user_id) if entry.user_id else None
        return await self._journal.started(entry, language or self._language)

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
