"""/v1/images/jobs through the real HTTP stack: create, progress, events, cancel, ownership, expiry and limits."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import ExAppRunner, wait_until
from tests.instant_backend import InstantBackend, StaticBackends
from tests.test_api import (
    PROXY,
    Running,
    appapi,
    error_of,
    parse_metrics,
    png_size,
    serve,
    serve_under_nextcloud,
    standalone_settings,
)
from text2image_hub.api.jobs import Job, JobStore, Work
from text2image_hub.api.schemas import ImageData, ImagesResponse
from text2image_hub.backends import GenerationControl
from text2image_hub.errors import GpuOutOfMemoryError, NotFoundError, TooManyJobsError

JOBS = "/v1/images/jobs"
FINAL = ("succeeded", "failed", "cancelled")


class Clock:
    """The wall clock, plus whatever a test moves it by (jobs and url images expire by it)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def stepped() -> StaticBackends:
    """A backend that takes about a second per job: 20 steps of 50 ms."""
    return StaticBackends(local_backend=InstantBackend(steps=20, step_seconds=0.05))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def api(tmp_path: Path, clock: Clock) -> Iterator[Running]:
    with serve(standalone_settings(tmp_path), stepped(), clock=clock) as running:
        yield running


def create(client: httpx2.Client, **body: Any) -> dict[str, Any]:
    response = client.post(JOBS, json={"prompt": "a fox", "size": "256x256", **body})
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def finished(client: httpx2.Client, job_id: str, timeout: float = 10.0) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def ended() -> bool:
        seen.update(client.get(f"{JOBS}/{job_id}").json())
        return seen.get("status") in FINAL

    wait_until(ended, timeout, f"job {job_id} did not end")
    return seen


def read_events(lines: Iterator[str]) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs until the stream ends."""
    events: list[tuple[str, dict[str, Any]]] = []
    name = ""
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


# --- create, progress, result --------------------------------------------------------------------------------------
def test_job_is_202_then_holds_the_synchronous_answer(api: Running) -> None:
    api.local.step_seconds = 0.0
    body = {"prompt": "a fox", "size": "256x256", "n": 2, "seeds": [5, 6], "useCache": False}
    with api.client() as client:
        response = client.post(JOBS, json=body)
        assert response.status_code == 202, response.text
        job = response.json()
        final = finished(client, job["id"])
        synchronous = client.post("/v1/images/generations", json=body).json()
    assert (job["object"], job["status"], job["progress"]) == ("image.job", "queued", 0)
    assert len(job["id"]) >= 32
    assert response.headers["Location"] == f"{api.url}{JOBS}/{job['id']}"
    assert (final["status"], final["progress"]) == ("succeeded", 100)
    assert final["expires_at"] == final["finished_at"] + api.settings.image_ttl
    assert "error" not in final
    assert final["data"] == synchronous["data"]
    assert [png_size(base64.b64decode(image["b64_json"])) for image in final["data"]] == [(256, 256)] * 2
    for field in ("model", "backend", "seeds", "size", "cached"):
        assert final[field] == synchronous[field], field


def test_progress_rises_from_0_to_100_while_the_backend_steps(api: Running) -> None:
    seen = []
    with api.client() as client:
        job = create(client)
        seen.append(job["progress"])
        while (current := client.get(f"{JOBS}/{job['id']}").json())["status"] not in FINAL:
            seen.append(current["progress"])
            time.sleep(0.02)
        seen.append(current["progress"])
    assert current["status"] == "succeeded"
    assert seen == sorted(seen)
    assert (seen[0], seen[-1]) == (0, 100)
    assert len({value for value in seen if 0 < value < 100}) >= 3, seen
    assert api.local.steps_run == 20


def test_url_job_answers_links_that_need_no_credentials(api: Running) -> None:
    api.local.step_seconds = 0.0
    with api.client() as client:
        final = finished(client, create(client, response_format="url")["id"])
    url = final["data"][0]["url"]
    assert url.startswith(f"{api.url}/v1/images/")
    assert png_size(httpx2.get(url).content) == (256, 256)


def test_body_error_is_400_at_once_and_a_model_error_fails_the_job(api: Running) -> None:
    with api.client() as client:
        refused = client.post(JOBS, json={"prompt": "x", "n": 13})
        job = create(client, size="640x480")  # only the model knows its sizes
        final = finished(client, job["id"])
    assert error_of(refused, 400)["code"] == "INVALID_N"
    assert final["status"] == "failed"
    assert final["error"] == {
        "message": final["error"]["message"],
        "type": "invalid_request_error",
        "param": "size",
        "code": "INVALID_SIZE",
    }
    assert "256x256" in final["error"]["message"]
    assert "data" not in final


def test_backend_failure_is_a_failed_job_with_the_envelope(api: Running) -> None:
    api.local.fail_with = GpuOutOfMemoryError("CUDA out of memory at 0x7f")
    with api.client() as client:
        final = finished(client, create(client)["id"])
    assert final["status"] == "failed"
    assert final["error"] == {
        "message": str(GpuOutOfMemoryError.default_user_message),
        "type": "server_error",
        "param": None,
        "code": "GPU_OUT_OF_MEMORY",
    }
    assert "0x7f" not in json.dumps(final)


def test_unexpected_exception_fails_the_job_generically_and_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backends = stepped()
    with caplog.at_level(logging.ERROR), serve(standalone_settings(tmp_path), backends) as running:
        running.local.fail_with = RuntimeError("internal detail 0xdeadbeef")
        with running.client() as client:
            final = finished(client, create(client)["id"])
            assert client.get("/v1/models").status_code == 200  # the server keeps serving
    gc.collect()  # an exception nobody retrieved would be reported when its task is collected
    assert final["status"] == "failed"
    assert (final["error"]["code"], final["error"]["type"]) == ("INTERNAL_ERROR", "server_error")
    assert "0xdeadbeef" not in json.dumps(final)
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1, caplog.text
    assert "unexpected error" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert "0xdeadbeef" in caplog.text  # the admin finds the cause in the log
    assert "never retrieved" not in caplog.text


# --- cancel ----------------------------------------------------------------------------------------------------------
def test_delete_cancels_a_running_job_and_the_backend_stops_early(api: Running) -> None:
    with api.client() as client:
        job = create(client)
        wait_until(lambda: api.local.steps_run >= 3, 5, "the job never started")
        cancelled = client.delete(f"{JOBS}/{job['id']}")
        time.sleep(0.3)  # six steps' time: a generation that was not stopped would go on
        steps = api.local.steps_run
        time.sleep(0.2)
        after = client.get(f"{JOBS}/{job['id']}")
        forgotten = client.delete(f"{JOBS}/{job['id']}")
        gone = client.get(f"{JOBS}/{job['id']}")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["error"]["code"] == "CANCELLED"
    assert api.local.steps_run == steps < 20
    assert after.json()["status"] == "cancelled"
    assert after.json()["progress"] < 100
    assert "data" not in after.json()
    assert forgotten.status_code == 200
    assert forgotten.json()["status"] == "cancelled"
    assert error_of(gone, 404)["code"] == "JOB_NOT_FOUND"


def test_deleting_a_finished_job_removes_it(api: Running) -> None:
    api.local.step_seconds = 0.0
    with api.client() as client:
        job_id = create(client)["id"]
        finished(client, job_id)
        deleted = client.delete(f"{JOBS}/{job_id}")
        gone = client.get(f"{JOBS}/{job_id}")
    assert deleted.json()["status"] == "succeeded"
    assert error_of(gone, 404)["code"] == "JOB_NOT_FOUND"


# --- ownership -------------------------------------------------------------------------------------------------------
def test_another_key_cannot_see_events_or_delete_the_job(api: Running) -> None:
    unknown = secrets.token_urlsafe(24)
    with api.client() as owner, api.client(key="k2") as other:
        job_id = create(owner)["id"]
        answers = [
            other.get(f"{JOBS}/{job_id}"),
            other.get(f"{JOBS}/{job_id}/events"),
            other.delete(f"{JOBS}/{job_id}"),
        ]
        never_existed = other.get(f"{JOBS}/{unknown}")
        final = finished(owner, job_id)
    for answer in answers:
        assert error_of(answer, 404) == error_of(never_existed, 404)  # a foreign job looks like no job at all
    assert final["status"] == "succeeded"  # the other key's DELETE changed nothing


def test_under_nextcloud_a_user_sees_only_their_own_jobs(tmp_path: Path) -> None:
    with serve_under_nextcloud(tmp_path, stepped()) as running, running.client(key=None, **appapi("alice")) as alice:
        response = alice.post(JOBS, json={"prompt": "x", "size": "256x256"})
        job_id = response.json()["id"]
        with running.client(key=None, **appapi("admin")) as admin, running.client(**appapi("")) as key:
            refused = [
                caller.request(method, path)
                for caller in (admin, key)
                for method, path in (("GET", f"{JOBS}/{job_id}"), ("GET", f"{JOBS}/{job_id}/events"))
            ]
            refused += [admin.delete(f"{JOBS}/{job_id}"), key.delete(f"{JOBS}/{job_id}")]
        final = finished(alice, job_id)
    assert response.status_code == 202
    assert response.headers["Location"] == f"{running.settings.nextcloud_url}{PROXY}{JOBS}/{job_id}"
    for answer in refused:
        assert error_of(answer, 404)["code"] == "JOB_NOT_FOUND"
    assert final["status"] == "succeeded"


def test_through_the_appapi_proxy_a_user_creates_and_cancels(
    exapp: ExAppRunner, registered: Callable[..., ExAppRunner]
) -> None:
    exapp.backends = stepped()
    registered()
    nextcloud = exapp.nextcloud
    proxy = f"{nextcloud.url}/index.php/apps/app_api/proxy/{nextcloud.app_id}"
    with (
        httpx2.Client(base_url=proxy, headers=nextcloud.user_headers("alice"), timeout=30) as alice,
        httpx2.Client(base_url=proxy, headers=nextcloud.user_headers("admin"), timeout=30) as admin,
    ):
        job_id = create(alice)["id"]
        foreign = admin.delete(f"{JOBS}/{job_id}")
        cancelled = alice.delete(f"{JOBS}/{job_id}")  # DELETE must be among the route's verbs
        after = alice.get(f"{JOBS}/{job_id}").json()
    assert error_of(foreign, 404)["code"] == "JOB_NOT_FOUND"
    assert cancelled.status_code == 200, cancelled.text
    assert after["status"] == "cancelled"


# --- expiry and limits -----------------------------------------------------------------------------------------------
def test_job_expires_the_image_ttl_after_its_end(api: Running, clock: Clock) -> None:
    api.local.step_seconds = 0.0
    ttl = api.settings.image_ttl
    with api.client() as client:
        job_id = create(client)["id"]
        finished(client, job_id)
        clock.advance(ttl - 5)
        kept = client.get(f"{JOBS}/{job_id}")
        clock.advance(10)
        expired = client.get(f"{JOBS}/{job_id}")
        events = client.get(f"{JOBS}/{job_id}/events")
    assert kept.status_code == 200
    assert error_of(expired, 404)["code"] == "JOB_NOT_FOUND"
    assert error_of(events, 404)["code"] == "JOB_NOT_FOUND"


def test_fifth_running_job_of_a_caller_is_429_and_others_are_not_limited(api: Running) -> None:
    api.local.step_seconds = 0.25  # 5 s a job: room comes back only through the cancel
    with api.client() as client, api.client(key="k2") as other:
        jobs = [create(client)["id"] for _ in range(4)]
        refused = client.post(JOBS, json={"prompt": "x", "size": "256x256"})
        other_caller = other.post(JOBS, json={"prompt": "x", "size": "256x256"})
        client.delete(f"{JOBS}/{jobs[0]}")
        # a cancelled job counts until its generation has stopped (its next step), then there is room again
        wait_until(lambda: client.post(JOBS, json={"prompt": "x"}).status_code == 202, 2, "no room after a cancel")
    error = error_of(refused, 429)
    assert (error["code"], error["type"]) == ("TOO_MANY_JOBS", "rate_limit_error")
    assert refused.headers["Retry-After"] == "10"
    assert other_caller.status_code == 202


def test_api_rate_limit_counts_job_creations_with_synchronous_requests(tmp_path: Path) -> None:
    with serve(standalone_settings(tmp_path, T2I_API_RATE_LIMIT="2")) as running, running.client() as client:
        synchronous = client.post("/v1/images/generations", json={"prompt": "x"})
        job = client.post(JOBS, json={"prompt": "x"})
        limited = client.post(JOBS, json={"prompt": "x"})
    assert (synchronous.status_code, job.status_code) == (200, 202)
    assert error_of(limited, 429)["code"] == "RATE_LIMITED"
    assert "Retry-After" in limited.headers


# --- events ----------------------------------------------------------------------------------------------------------
def test_events_arrive_in_order_and_end_with_done(api: Running) -> None:
    with api.client() as client:
        job_id = create(client)["id"]
        with client.stream("GET", f"{JOBS}/{job_id}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            events = read_events(response.iter_lines())  # returns only when the server ends the stream
    names = [name for name, _ in events]
    assert names[-1] == "done"
    assert set(names[:-1]) == {"progress"}
    progress = [data["progress"] for _, data in events[:-1]]
    assert progress == sorted(progress)
    assert len(progress) >= 3
    assert len(set(progress)) == len(progress)  # an event only when something changed
    assert all(data["status"] in ("queued", "running") for _, data in events[:-1])
    done = events[-1][1]
    assert (done["id"], done["status"], done["progress"]) == (job_id, "succeeded", 100)
    assert png_size(base64.b64decode(done["data"][0]["b64_json"])) == (256, 256)


def test_events_end_with_failed_or_cancelled(api: Running) -> None:
    with api.client() as client:
        job_id = create(client)["id"]
        with client.stream("GET", f"{JOBS}/{job_id}/events") as response:
            lines = response.iter_lines()
            assert next(lines) == "event: progress"
            client.delete(f"{JOBS}/{job_id}")
            cancelled = read_events(lines)
        api.local.fail_with = GpuOutOfMemoryError("oom")
        failing = create(client)["id"]
        with client.stream("GET", f"{JOBS}/{failing}/events") as response:
            failed = read_events(response.iter_lines())
        again = client.get(f"{JOBS}/{job_id}/events")  # an ended job: its final event at once
    assert cancelled[-1][0] == "cancelled"
    assert cancelled[-1][1]["error"]["code"] == "CANCELLED"
    assert failed[-1][0] == "failed"
    assert failed[-1][1]["error"]["code"] == "GPU_OUT_OF_MEMORY"
    assert again.text.startswith("event: cancelled\n")


def test_client_leaving_the_event_stream_is_no_error(api: Running, caplog: pytest.LogCaptureFixture) -> None:
    route = f'route="{JOBS}/{{job_id}}/events"'
    with caplog.at_level(logging.WARNING), api.client() as client:
        job_id = create(client)["id"]
        with client.stream("GET", f"{JOBS}/{job_id}/events") as response:
            assert next(response.iter_lines()) == "event: progress"
        # the server notices the disconnect and ends the stream: the request is counted as finished
        wait_until(
            lambda: any(route in name for name in parse_metrics(httpx2.get(f"{api.url}/metrics").text)),
            5,
            "the stream did not end after the client left",
        )
        final = finished(client, job_id)
    assert final["status"] == "succeeded"  # the job goes on without its watcher
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []


def test_shutdown_stops_running_jobs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    backends = StaticBackends(local_backend=InstantBackend(steps=20, step_seconds=0.2))
    with caplog.at_level(logging.WARNING), serve(standalone_settings(tmp_path), backends) as running:
        with running.client() as client:
            create(client)
        wait_until(lambda: running.local.steps_run >= 1, 5, "the job never started")
        started = time.monotonic()
    assert time.monotonic() - started < 3
    assert running.local.steps_run < 20
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []


def test_openapi_documents_the_job_routes(api: Running) -> None:
    paths = httpx2.get(f"{api.url}/openapi.json").json()["paths"]
    create_job = paths[JOBS]["post"]
    assert {"202", "400", "401", "429"} <= set(create_job["responses"])
    assert set(create_job["requestBody"]["content"]) >= {"application/json", "multipart/form-data"}
    assert {"get", "delete"} <= set(paths[f"{JOBS}/{{job_id}}"])
    assert "text/event-stream" in paths[f"{JOBS}/{{job_id}}/events"]["get"]["responses"]["200"]["content"]


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
