"""/v1/images/jobs: the job store's bounds and expiry."""

from __future__ import annotations

import asyncio
import time

import pytest

from text2image_hub.api.jobs import Job, JobStore, Work
from text2image_hub.api.schemas import ImageData, ImagesResponse
from text2image_hub.backends import GenerationControl
from text2image_hub.errors import NotFoundError, TooManyJobsError


class Clock:
    """The wall clock, plus whatever a test moves it by (jobs and url images expire by it)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


# --- the store itself ------------------------------------------------------------------------------------------------
def _response(b64_chars: int = 4) -> ImagesResponse:
    return ImagesResponse(
        created=0,
        data=[ImageData(b64_json="x" * b64_chars)],
        model="m",
        backend="local",
        size="64x64",
        generation_seconds=0.0,
        cached=False,
    )


def _done(b64_chars: int = 4) -> Work:
    async def work(_: GenerationControl) -> ImagesResponse:
        return _response(b64_chars)

    return work


async def _settle(*jobs: Job) -> None:
    await asyncio.gather(*(job.task for job in jobs if job.task is not None))


async def test_store_keeps_at_most_max_kept_jobs_per_caller_dropping_the_oldest_ended() -> None:
    store = JobStore(60, max_active=2, max_kept=3)
    jobs = []
    for _ in range(5):
        job = store.submit("key:a", _done())
        await _settle(job)
        jobs.append(job)
    other = store.submit("key:b", _done())
    await _settle(other)
    for job in jobs[:2]:
        with pytest.raises(NotFoundError):
            store.get(job.id, "key:a")
    assert [store.get(job.id, "key:a").status for job in jobs[2:]] == ["succeeded"] * 3
    with pytest.raises(NotFoundError):
        store.get(other.id, "key:a")  # another caller's job: unknown
    assert len(store) == 4


async def test_store_refuses_beyond_max_active() -> None:
    store = JobStore(60, max_active=1)
    release = asyncio.Event()

    async def slow(_: GenerationControl) -> ImagesResponse:
        await release.wait()
        return _response()

    first = store.submit("key:a", slow)
    with pytest.raises(TooManyJobsError) as caught:
        store.submit("key:a", slow)
    assert caught.value.retry_after > 0
    release.set()
    await _settle(first)
    await _settle(store.submit("key:a", slow))


async def test_store_drops_the_oldest_ended_jobs_beyond_max_bytes() -> None:
    store = JobStore(60, max_bytes=100)
    first = store.submit("key:a", _done(60))
    await _settle(first)
    second = store.submit("key:b", _done(60))
    await _settle(second)
    assert store.kept_bytes == 60
    with pytest.raises(NotFoundError):
        store.get(first.id, "key:a")
    assert store.get(second.id, "key:b").response is not None


async def test_sweeper_drops_expired_jobs_but_never_a_running_one() -> None:
    clock = Clock()
    store = JobStore(60, clock=clock)
    release = asyncio.Event()

    async def slow(_: GenerationControl) -> ImagesResponse:
        await release.wait()
        return _response()

    ended = store.submit("key:a", _done())
    await _settle(ended)
    running = store.submit("key:a", slow)
    sweeper = asyncio.create_task(store.sweep_periodically(0.01))
    try:
        clock.advance(61)
        for _ in range(100):
            if len(store) == 1:
                break
            await asyncio.sleep(0.01)
        assert len(store) == 1
        assert store.get(running.id, "key:a").status == "running"
    finally:
        sweeper.cancel()
        release.set()
        await asyncio.gather(sweeper, return_exceptions=True)
        await _settle(running)
