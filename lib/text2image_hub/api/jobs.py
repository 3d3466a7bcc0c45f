"""Jobs of ``/v1/images/jobs``: generations that outlive the request that started them.

A job runs ``answer`` (``serving.py``, the synchronous route's own path: the same ImageService, GPU lock, remote
limits and result cache) as an asyncio task with its own ``GenerationControl``, whose progress it reports and whose
``cancel()`` stops the generation at its next step. Its id is ``secrets.token_urlsafe(24)``; its owner is the
caller's ``limit_key``, and a job asked for by anyone else is exactly as unknown as a job that never existed (404).

    queued ──task starts──► running ──► succeeded   (the ImagesResponse is kept)
                                    ├─► failed      (a Text2ImageError's envelope; anything else: a generic one, logged)
                                    └─► cancelled   (DELETE, or the control was cancelled)

A job that has ended is kept ``ttl`` seconds (the image TTL), then is gone: reading it drops it, and ``sweep`` (run
periodically) drops every one. Bounds: ``max_active`` jobs per caller not yet ended (``TooManyJobsError`` beyond
it); ``max_kept`` per caller in all (a new job drops the caller's oldest ended one); ``max_bytes`` of kept images
over all callers (the oldest ended jobs go first). A job cancelled by ``DELETE`` reads ``cancelled`` at once, and
still counts as active until its generation has stopped.

Nothing is caught broadly here: an unexpected exception ends the task, and its done-callback reads it
(``task.exception()``), logs it with its traceback and marks the job failed with the generic internal error.
The store lives in the app's ``ApiState`` and is used from the event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..backends import GenerationControl
from ..errors import GenerationCancelledError, NotFoundError, Text2ImageError, TooManyJobsError
from .schemas import INTERNAL_ERROR_MESSAGE, ErrorDetail, ImageJob, ImagesResponse, JobStatus

logger = logging.getLogger(__name__)

MAX_ACTIVE_PER_CALLER = 4
"""Jobs not yet ended per caller: one GPU works on one at a time, so more would only wait in its queue."""
MAX_KEPT_PER_CALLER = 16
MAX_KEPT_BYTES = 256 * 1024 * 1024
"""Bytes of images (base64 or URLs) that ended jobs hold in memory, over all callers."""
TOO_MANY_RETRY_AFTER = 10.0
SHUTDOWN_GRACE = 1.0
"""Seconds cancelled jobs get to stop at their next step when the app shuts down, before their tasks are cancelled."""

Work = Callable[[GenerationControl], Awaitable[ImagesResponse]]

_RESULT_FIELDS = set(ImagesResponse.model_fields) & set(ImageJob.model_fields)
"""What a succeeded job shows of the synchronous answer."""

_CANCELLED = ErrorDetail(message="The job was cancelled.", type="invalid_request_error", code="CANCELLED")
_INTERNAL = ErrorDetail(message=INTERNAL_ERROR_MESSAGE, type="server_error", code="INTERNAL_ERROR")
_SHUTDOWN = ErrorDetail(
    message="The server shut down while the job ran. Create it again.",
    type="service_unavailable",
    code="SERVER_SHUTDOWN",
)


def _error_of(exc: Text2ImageError) -> ErrorDetail:
    """Why a job failed: the fields of OpenAI's error envelope."""
    return ErrorDetail(message=exc.user_message, type=exc.error_type, param=exc.param, code=exc.code)


@dataclass(eq=False)
class Job:
    id: str
    owner: str
    created_at: float
    control: GenerationControl = field(default_factory=GenerationControl)
    status: JobStatus = "queued"
    finished_at: float | None = None
    expires_at: float | None = None
    response: ImagesResponse | None = None
    error: ErrorDetail | None = None
    task: asyncio.Task[None] | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    final: dict[str, Any] | None = field(default=None, repr=False)
    """The payload once the job has ended (it changes no more: polls do not rebuild it)."""

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    @property
    def active(self) -> bool:
        """Its generation still runs (also for a moment after a cancel, until the next step)."""
        return self.task is not None and not self.task.done()

    @property
    def progress(self) -> int:
        if self.status == "succeeded":
            return 100
        return min(99, int(self.control.progress * 100))

    @property
    def kept_bytes(self) -> int:
        if self.response is None:
            return 0
        return sum(len(image.b64_json or "") + len(image.url or "") for image in self.response.data)

    async def wait(self, seconds: float) -> None:
        """Return when the job ends or after ``seconds``, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ended.wait(), seconds)

    def view(self) -> ImageJob:
        result = {} if self.response is None else self.response.model_dump(include=_RESULT_FIELDS)
        return ImageJob(
            id=self.id,
            status=self.status,
            progress=self.progress,
            created_at=int(self.created_at),
            finished_at=None if self.finished_at is None else int(self.finished_at),
            expires_at=None if self.expires_at is None else int(self.expires_at),
            error=self.error,
            **result,
        )

    def payload(self) -> dict[str, Any]:
        """The job's JSON: absent fields left out as in the synchronous answer, the error envelope's fields all in."""
        if self.final is not None:
            return self.final
        view = self.view()
        body = view.model_dump(exclude_none=True)
        if view.error is not None:
            body["error"] = view.error.model_dump()
        if self.finished:
            self.final = body
        return body


class JobStore:
    def __init__(
        self,
        ttl: float,
        *,
        clock: Callable[[], float] = time.time,
        max_active: int = MAX_ACTIVE_PER_CALLER,
        max_kept: int = MAX_KEPT_PER_CALLER,
        max_bytes: int = MAX_KEPT_BYTES,
    ) -> None:
        self._ttl = ttl
        self._clock = clock
        if max_kept <= max_active:
            raise ValueError("max_kept must be above max_active: a new job must always find room")
        self._max_active = max_active
        self._max_kept = max_kept
        self._max_bytes = max_bytes
        self._jobs: dict[str, Job] = {}  # oldest first
        self._bytes = 0

    @property
    def ttl(self) -> float:
        return self._ttl

    def submit(self, owner: str, work: Work) -> Job:
        """Start ``work`` as a new job of ``owner``; ``TooManyJobsError`` when ``owner`` has ``max_active`` running."""
        mine = [job for job in self._jobs.values() if job.owner == owner]
        if sum(job.active for job in mine) >= self._max_active:
            raise TooManyJobsError(
                f"{owner.partition(':')[0]} already has {self._max_active} jobs running",
                retry_after=TOO_MANY_RETRY_AFTER,
                user_message=f"Too many jobs: at most {self._max_active} per user or API key may run at once. "
                "Wait for one to end (or cancel one), then try again.",
            )
        ended = [job for job in mine if not job.active]
        for job in ended[: max(0, len(mine) - self._max_kept + 1)]:
            self._remove(job)
        job = Job(secrets.token_urlsafe(24), owner, self._clock())
        self._jobs[job.id] = job
        job.task = asyncio.create_task(self._run(job, work), name=f"job-{job.id[:8]}")
        job.task.add_done_callback(lambda task: self._task_ended(job, task))
        return job

    def get(self, job_id: str, owner: str) -> Job:
        """The job, if ``owner``'s and not expired; else ``NotFoundError`` (the same for all three cases)."""
        job = self._jobs.get(job_id)
        if job is None or job.owner != owner:
            raise _not_found()
        if self._expired(job, self._clock()):
            self._remove(job)
            raise _not_found()
        return job

    def delete(self, job_id: str, owner: str) -> Job:
        """Cancel a job that has not ended (it is kept, ``cancelled``); forget one that has. Returns it."""
        job = self.get(job_id, owner)
        if job.finished:
            self._remove(job)
        else:
            job.control.cancel()  # the generation stops at its next step; the job has ended for its owner now
            self._finish(job, "cancelled", error=_CANCELLED)
        return job

    def sweep(self) -> int:
        """Drop the expired jobs; returns how many."""
        now = self._clock()
        expired = [job for job in self._jobs.values() if self._expired(job, now)]
        for job in expired:
            self._remove(job)
        return len(expired)

    async def sweep_periodically(self, interval: float) -> None:
        """Sweep every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            if dropped := self.sweep():
                logger.info("dropped %d expired job(s)", dropped)

    async def aclose(self) -> None:
        """App shutdown: end every running job (failed, SERVER_SHUTDOWN), stop its generation, wait for its task."""
        tasks = []
        for job in self._jobs.values():
            if job.task is not None and job.active:
                tasks.append(job.task)
                job.control.cancel()
                self._finish(job, "failed", error=_SHUTDOWN)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE)
        for task in pending:
            task.cancel()
        await asyncio.wait(tasks)  # each outcome was read by _task_ended

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def kept_bytes(self) -> int:
        return self._bytes

    # --- a job's life ----------------------------------------------------------------------------------------------
    async def _run(self, job: Job, work: Work) -> None:
        if job.finished:
            return  # cancelled before it started
        job.status = "running"
        try:
            response = await work(job.control)
        except GenerationCancelledError:
            self._finish(job, "cancelled", error=_CANCELLED)
        except Text2ImageError as exc:
            log = logger.warning if exc.http_status >= 500 else logger.info
            log("job %s failed (%s): %s", job.id[:8], exc.code, exc)
            self._finish(job, "failed", error=_error_of(exc))
        else:
            self._finish(job, "succeeded", response=response)

    def _task_ended(self, job: Job, task: asyncio.Task[None]) -> None:
        """Read the task's outcome: its cancellation (the app stopping) or an exception nobody expected."""
        if task.cancelled():
            self._finish(job, "failed", error=_SHUTDOWN)
            return
        error = task.exception()
        if error is not None:
            logger.error("job %s failed with an unexpected error", job.id[:8], exc_info=error)
            self._finish(job, "failed", error=_INTERNAL)

    def _finish(
        self, job: Job, status: JobStatus, *, response: ImagesResponse | None = None, error: ErrorDetail | None = None
    ) -> None:
        if job.finished:
            return  # the first end stands (a cancelled job's late result is not kept)
        now = self._clock()
        job.status, job.response, job.error = status, response, error
        job.finished_at, job.expires_at = now, now + self._ttl
        job.ended.set()
        logger.info("job %s %s after %.1f s", job.id[:8], status, now - job.created_at)
        if job.id in self._jobs:
            self._bytes += job.kept_bytes
            self._bound_bytes(keep=job)

    def _bound_bytes(self, *, keep: Job) -> None:
        for other in list(self._jobs.values()):
            if self._bytes <= self._max_bytes:
                return
            if other is not keep and not other.active and other.kept_bytes:
                logger.info("dropped job %s early: ended jobs hold more than %d bytes", other.id[:8], self._max_bytes)
                self._remove(other)

    def _expired(self, job: Job, now: float) -> bool:
        return job.expires_at is not None and now >= job.expires_at and not job.active

    def _remove(self, job: Job) -> None:
        if self._jobs.pop(job.id, None) is not None and job.finished:
            self._bytes -= job.kept_bytes


def _not_found() -> NotFoundError:
    return NotFoundError(
        "This job does not exist or has expired: a job is kept for a limited time after it ends.",
        code="JOB_NOT_FOUND",
        param="job_id",
    )
