"""Supervised background work and a fast /readyz: a loop that dies is logged and restarted; readiness answers
within a second whatever the remote service does."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator

import httpx2
import pytest

from tests.conftest import ExAppRunner, wait_until
from tests.instant_backend import StaticBackends
from text2image_hub.admin import RuntimeConfig
from text2image_hub.backends import ProgressCallback
from text2image_hub.supervision import Supervisor

SUCCESS = "STATUS_SUCCESSFUL"


class _FailsOnce(StaticBackends):
    """The review's probe: an unexpected error (a CUDA error, say) on the worker's first pass after /enabled."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def prepare(self, config: RuntimeConfig, progress: ProgressCallback | None = None) -> None:
        self.calls += 1
        if self.calls == 3:  # /init, /enabled, then the worker's first pass
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        await super().prepare(config, progress)


def test_worker_pass_that_raises_is_logged_and_the_next_task_is_served(
    exapp: ExAppRunner, caplog: pytest.LogCaptureFixture
) -> None:
    exapp.backends = _FailsOnce()
    exapp.start()
    nextcloud = exapp.nextcloud
    with caplog.at_level(logging.ERROR, logger="text2image_hub"):
        nextcloud.register_app()
        task = nextcloud.wait_for_task(nextcloud.schedule({"input": "x", "numberOfImages": 1}), timeout=15)

    assert task["status"] == SUCCESS
    failed = [record for record in caplog.records if "background task task-worker failed" in record.getMessage()]
    assert len(failed) == 1
    assert failed[0].exc_info is not None
    assert "illegal memory access" in str(failed[0].exc_info[1])
    wait_until(lambda: any("task-worker failed" in entry["message"] for entry in nextcloud.logs), 5)


async def test_supervisor_restarts_a_dead_loop_with_back_off_and_leaves_a_finished_one() -> None:
    runs: list[str] = []
    third = asyncio.Event()

    async def flaky() -> None:
        runs.append("flaky")
        if runs.count("flaky") < 3:
            raise ValueError("boom")
        third.set()
        await asyncio.sleep(3600)

    async def one_shot() -> None:
        runs.append("one-shot")

    supervisor = Supervisor(backoff_initial=0.01, backoff_max=0.05)
    supervisor.start("flaky", flaky)
    supervisor.start("one-shot", one_shot)
    async with asyncio.timeout(5):
        await third.wait()
    assert supervisor.alive("flaky")
    assert supervisor.restarts("flaky") == 2
    assert runs.count("one-shot") == 1
    assert not supervisor.alive("one-shot")
    await supervisor.stop()
    assert not supervisor.alive("flaky")


@pytest.fixture
def silent_service() -> Iterator[str]:
    """A remote service that accepts connections and never answers (a firewall, a hung load balancer)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.05)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/v1"
    stop.set()
    thread.join(5)
    for connection in accepted:
        connection.close()
    server.close()


@pytest.mark.parametrize("where", ["silent", "refused"])
def test_readyz_answers_within_a_second_when_the_remote_service_does_not(
    exapp: ExAppRunner, silent_service: str, where: str
) -> None:
    from text2image_hub.app import default_backends

    url = silent_service if where == "silent" else "http://127.0.0.1:9/v1"
    exapp.backends_factory = default_backends
    exapp.start(T2I_BACKEND="remote", T2I_REMOTE_BASE_URL=url, T2I_REMOTE_API_KEY="token-of-a-silent-service")
    exapp.nextcloud.register_app()
    assert exapp.server is not None
    with httpx2.Client(base_url=exapp.server.url, timeout=10) as client:
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            answer = client.get("/readyz")
            timings.append(time.perf_counter() - started)
            assert answer.status_code == 503
            assert answer.json()["reason"] == "BACKEND_NOT_READY"
    assert max(timings) < 1.0, timings
