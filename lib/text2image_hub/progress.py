"""Progress of a running task, sent to Nextcloud about once a second; cancellation learnt from the answer.

The answer to ``set_progress`` carries the task, and ``status == STATUS_CANCELLED`` there is the only sign that the
user cancelled (a deleted task answers 404): the generation is then stopped at its next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from .backends import GenerationControl
from .errors import NextcloudUnavailableError
from .nextcloud import STATUS_CANCELLED, STATUS_GONE

if TYPE_CHECKING:
    from .worker import TaskGateway, WorkerTiming

logger = logging.getLogger(__name__)


class ProgressReporter:
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
