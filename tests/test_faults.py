"""Bounded under hostile or broken peers: a remote service that trickles, answers late, sends a decompression bomb,
echoes the token or refuses the prompt; a /v1 client that hangs up; a Nextcloud outage longer than the delivery
deadline. Every task ends within its deadline with the right message, through the real worker and backends."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx2
import psutil
import pytest

from tests.conftest import FAST_TIMING, ExAppRunner, wait_until
from tests.fake_ionos import FakeIonos
from tests.fake_nextcloud import FakeNextcloud
from tests.instant_backend import InstantBackend, StaticBackends
from tests.servers import ServerThread
from text2image_hub.admin import FIELD_IDS
from text2image_hub.app import create_app, default_backends
from text2image_hub.delivery import UNDELIVERED_MESSAGE
from text2image_hub.server import GuardedH11Protocol
from text2image_hub.settings import load_settings

FAILED = "STATUS_FAILED"
DEADLINE = 1.5


@pytest.fixture
def ionos():
    with FakeIonos() as fake:
        yield fake


def _remote(exapp: ExAppRunner, ionos: FakeIonos) -> FakeNextcloud:
    exapp.backends_factory = default_backends
    exapp.start(
        T2I_BACKEND="remote",
        T2I_REMOTE_BASE_URL=ionos.base_url,
        T2I_REMOTE_API_KEY=ionos.token,
        T2I_REMOTE_DEADLINE=str(DEADLINE),
    )
    exapp.nextcloud.register_app()
    return exapp.nextcloud


def _task(nextcloud: FakeNextcloud, images: int = 1) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    task = nextcloud.wait_for_task(nextcloud.schedule({"input": "a lighthouse", "numberOfImages": images}), timeout=30)
    return task, time.monotonic() - started


@pytest.mark.parametrize("fault", ["trickle", "late"])
def test_a_slow_service_fails_the_task_at_the_deadline_without_paying_twice(
    exapp: ExAppRunner, ionos: FakeIonos, fault: str
) -> None:
    nextcloud = _remote(exapp, ionos)
    if fault == "trickle":
        ionos.fault_next("trickle")
    else:
        ionos.hang_next(60.0)
    task, seconds = _task(nextcloud)
    assert task["status"] == FAILED
    assert task["userFacingErrorMessage"] == "The image service did not answer in time. Please try again later."
    assert "not sent again" in nextcloud.admin_task(task["id"])["errorMessage"]
    assert DEADLINE <= seconds < DEADLINE + 5
    assert ionos.stats().requests == 1, "a generation that may have reached the service is not sent again"


def test_a_decompression_bomb_is_refused_from_its_header(exapp: ExAppRunner, ionos: FakeIonos) -> None:
    nextcloud = _remote(exapp, ionos)
    ionos.fault_next("bomb", 4)
    _task(nextcloud)  # warm-up: the bomb is built once, and the first task's imports settle
    gc.collect()
    process = psutil.Process()
    before = process.memory_info().rss
    ionos.fault_next("bomb", 4)
    task, _ = _task(nextcloud, images=4)
    gc.collect()
    grown = process.memory_info().rss - before
    assert task["status"] == FAILED
    assert "8192x8192" in nextcloud.admin_task(task["id"])["errorMessage"]
    assert grown < 64 * 1024**2, f"RSS grew by {grown / 1024**2:.0f} MB for four 192 MB bombs"


def test_an_echoed_token_appears_nowhere(
    exapp: ExAppRunner, ionos: FakeIonos, caplog: pytest.LogCaptureFixture
) -> None:
    nextcloud = _remote(exapp, ionos)
    ionos.fault_next("echo_token", 10)
    with caplog.at_level(logging.DEBUG):
        task, _ = _task(nextcloud)
    assert task["status"] == FAILED
    texts = [caplog.text, task["userFacingErrorMessage"], nextcloud.admin_task(task["id"])["errorMessage"]]
    texts += [entry["message"] for entry in nextcloud.logs]
    assert "upstream error for Bearer ***" in nextcloud.admin_task(task["id"])["errorMessage"]
    assert all(ionos.token not in text for text in texts)


def test_a_refused_prompt_tells_the_user_about_the_request(exapp: ExAppRunner, ionos: FakeIonos) -> None:
    nextcloud = _remote(exapp, ionos)
    ionos.fault_next("refuse_prompt")
    task, _ = _task(nextcloud)
    assert task["status"] == FAILED
    message = task["userFacingErrorMessage"]
    assert "refused this request" in message
    assert "content filter" in message
    assert "try again later" not in message.lower()
    assert ionos.stats().requests == 1


def test_number_of_images_null_takes_the_declared_default(registered: Any) -> None:
    nextcloud = registered().nextcloud
    task = nextcloud.wait_for_task(nextcloud.schedule({"input": "x", "numberOfImages": None}), timeout=10)
    assert task["status"] == "STATUS_SUCCESSFUL"
    assert len(task["output"]["images"]) == 1


@dataclass
class VirtualClock:
    """Time that passes only when slept: a 16-minute outage in a few seconds."""

    now: float = 0.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0.01)


def test_an_outage_longer_than_the_delivery_deadline_ends_failed_with_a_true_log_line(
    exapp: ExAppRunner, caplog: pytest.LogCaptureFixture
) -> None:
    clock = VirtualClock()
    backend = InstantBackend(steps=4, step_seconds=0.1)
    exapp.backends = StaticBackends(local_backend=backend)
    timing = replace(
        FAST_TIMING,
        poll_interval=0.5,
        backoff_initial=1.0,
        backoff_max=60.0,
        delivery_deadline=900.0,
        clock=clock,
        sleep=clock.sleep,
    )
    exapp.start(timing=timing)
    nextcloud = exapp.nextcloud
    nextcloud.register_app()
    with caplog.at_level(logging.WARNING, logger="text2image_hub"):
        task_id = nextcloud.schedule({"input": "x", "numberOfImages": 1})
        wait_until(lambda: backend.steps_run >= 1)
        nextcloud.set_failure("refuse")  # Nextcloud goes away while the image is made: its upload cannot happen
        wait_until(lambda: any("could not be delivered" in r.getMessage() for r in caplog.records), 60)
        returned = time.monotonic()
        nextcloud.set_failure(None)  # 16 minutes on: Nextcloud is back
        task = nextcloud.wait_for_task(task_id, timeout=10)
    noticed = time.monotonic() - returned
    assert task["status"] == FAILED
    assert task["userFacingErrorMessage"] == str(UNDELIVERED_MESSAGE)
    assert noticed < timing.poll_interval + 2, "the worker notices Nextcloud's return within a poll interval"
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    given_up = [re.search(r"did not take the upload for (\d+) s", message) for message in errors]
    seconds = [int(found.group(1)) for found in given_up if found]
    assert seconds, errors
    assert seconds[0] >= timing.delivery_deadline, "it tried for the whole deadline (15 minutes, simulated)"
    assert not any("deleted" in message for message in errors), "the task was not deleted: no false log line"


def test_a_v1_client_hanging_up_is_no_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(
        {"APP_PERSISTENT_STORAGE": str(tmp_path), "T2I_API_KEYS": "k", "T2I_BACKEND": "local"}, FIELD_IDS
    )

    async def factory(_: Any) -> StaticBackends:
        return StaticBackends()

    with caplog.at_level(logging.INFO), ServerThread(create_app(settings, backends=factory), lifespan="on") as server:
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            client.sendall(
                b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
                b'Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"prompt": "half a bo'
            )
            time.sleep(0.2)
        wait_until(lambda: any("went away" in record.getMessage() for record in caplog.records), 5)
        metrics = httpx2.get(f"{server.url}/metrics").text
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert 'status="499"' in metrics
    assert 'status="500"' not in metrics


def test_a_slow_request_head_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    monkeypatch.setattr(GuardedH11Protocol, "head_timeout", 0.3)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    config = uvicorn.Config(app, http=GuardedH11Protocol, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    async def scenario() -> tuple[bytes, bytes]:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        await asyncio.to_thread(wait_until, lambda: server.started, 5)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # a slowloris head, never finished
        await writer.drain()
        cut = await asyncio.wait_for(reader.read(), 5)  # b"": the server closed the connection
        fast_reader, fast_writer = await asyncio.open_connection("127.0.0.1", port)
        fast_writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(fast_reader.read(100), 5)
        writer.close()
        fast_writer.close()
        server.should_exit = True
        await serving
        return cut, answer

    cut, answer = asyncio.run(scenario())
    assert cut == b""
    assert answer.startswith(b"HTTP/1.1 200")
