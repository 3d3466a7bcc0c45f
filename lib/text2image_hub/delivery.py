"""Delivering a task's outcome to Nextcloud: the images uploaded and reported, or the failure reported.

Each call is retried with back-off while Nextcloud is unavailable (timeout, maintenance, unreachable) until the
delivery deadline. The task's journal entry is removed once Nextcloud has the outcome; when the deadline passes
first, the outcome stays in the journal as a failure to report (``undelivered`` tells the worker), and the log says
what happened, at error level.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from .errors import NextcloudUnavailableError
from .i18n import Message, _
from .journal import JournalEntry, TaskJournal
from .nextcloud import STATUS_CANCELLED
from .service import GenerationResult

if TYPE_CHECKING:
    from .worker import TaskGateway, WorkerTiming

logger = logging.getLogger(__name__)
T = TypeVar("T")
Render = Callable[[Message | str, str], str]
"""A user's message in a language ("" for the installation's)."""

UNDELIVERED_MESSAGE = _("Your image was made, but the server could not store it in time. Please try again.")


class _Abandoned(Exception):
    """Nextcloud did not take a delivery before the deadline (the outcome stays in the journal)."""


class Delivery:
    def __init__(self, gateway: TaskGateway, journal: TaskJournal, timing: WorkerTiming, render: Render) -> None:
        self._gateway = gateway
        self._render = render
        self._journal = journal
        self._timing = timing
        self.undelivered = False
        """An outcome could not be delivered in time and waits in the journal (the worker clears this)."""

    async def success(
        self,
        entry: JournalEntry,
        result: GenerationResult,
        *,
        before_report: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Upload the images and report them; the journal entry goes once Nextcloud has them. ``before_report`` runs
        between the two (the task's last progress call is answered then: never after the result)."""
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
            if before_report is not None:
                await before_report()
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

    async def failure(self, entry: JournalEntry, admin_message: str, user_text: Message | str) -> None:
        """Report the task FAILED, its user's message in their language; the journal entry goes once Nextcloud has
        the outcome."""
        task_id = entry.task_id
        user_message = self._render(user_text, entry.language)
        try:
            report = functools.partial(self._gateway.report_failure, task_id, admin_message, user_message)
            await self._retry(task_id, "report", report)
        except _Abandoned as exc:
            await self._keep_failure(replace(entry, failure=(admin_message, user_message)), str(exc))
            return
        await self._journal.remove(task_id)

    async def _keep_failure(self, entry: JournalEntry, reason: str) -> None:
        """Nextcloud did not answer in time: keep the failure in the journal and report it once it answers again."""
        failure = entry.failure or (reason, self._render(UNDELIVERED_MESSAGE, entry.language))
        await self._journal.write(replace(entry, failure=failure))
        self.undelivered = True
        logger.error(
            "task %d: %s; it stays RUNNING in Nextcloud until it can be reported FAILED, which is tried again when "
            "Nextcloud answers",
            entry.task_id,
            reason,
        )

    async def _retry(self, task_id: int, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` until Nextcloud takes it; ``_Abandoned`` when the delivery deadline passes first."""
        backoff = self._timing.backoff()
        clock = self._timing.clock
        started = clock()
        deadline = started + self._timing.delivery_deadline
        while True:
            try:
                return await call()
            except NextcloudUnavailableError as exc:
                left = deadline - clock()
                if left <= 0:
                    raise _Abandoned(
                        f"Nextcloud did not take the {what} for {clock() - started:.0f} s ({exc})"
                    ) from exc
                delay = min(backoff.next(), left)  # the last try comes at the deadline, not before it
                logger.warning("task %d: %s failed (%s); retrying in %.1f s", task_id, what, exc, delay)
                await self._timing.sleep(delay)
