"""Fixtures that run the real app (uvicorn, its own thread) against the fake Nextcloud over real HTTP."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fake_nextcloud import FakeNextcloud
from tests.instant_backend import StaticBackends
from tests.servers import ServerThread, free_port
from text2image_hub.admin import FIELD_IDS
from text2image_hub.app import BackendFactory, create_app
from text2image_hub.backends import BackendSet
from text2image_hub.settings import Settings, load_settings
from text2image_hub.worker import WorkerTiming

FAST_TIMING = WorkerTiming(
    poll_interval=30.0,
    progress_interval=0.05,
    progress_keepalive=0.5,
    backoff_initial=0.05,
    backoff_max=0.5,
    delivery_deadline=60.0,
    shutdown_grace=1.0,
)
ROUTES = [("^/v1/.*", "GET,POST,DELETE", 0)]  # as appinfo/info.xml declares


_APP_VARIABLES = ("APP_", "T2I_", "NEXTCLOUD_", "COMPUTE_DEVICE", "HP_SHARED_KEY", "HF_")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's own settings (an exported NEXTCLOUD_URL, T2I_BACKEND, …), as httpx's suite does."""
    for name in list(os.environ):
        if name.startswith(_APP_VARIABLES):
            monkeypatch.delenv(name)


@pytest.fixture
def app_secret() -> str:
    return "secret-" + secrets.token_hex(16)


@pytest.fixture
def nextcloud(app_secret: str) -> Iterator[FakeNextcloud]:
    with FakeNextcloud(app_secret=app_secret, routes=ROUTES) as fake:
        yield fake


def exapp_settings(nextcloud: FakeNextcloud, storage: Path, port: int, **environ: str) -> Settings:
    return load_settings(
        {
            "APP_ID": nextcloud.app_id,
            "APP_SECRET": nextcloud.app_secret,
            "APP_VERSION": nextcloud.app_version,
            "APP_PORT": str(port),
            "NEXTCLOUD_URL": nextcloud.url,
            "APP_PERSISTENT_STORAGE": str(storage),
            "T2I_NEXTCLOUD_TIMEOUT": "5",
            **environ,
        },
        FIELD_IDS,
    )


class ExAppRunner:
    """Starts (and restarts) the app as AppAPI would run it, wired to the fake Nextcloud."""

    def __init__(self, nextcloud: FakeNextcloud, storage: Path) -> None:
        self.nextcloud = nextcloud
        self.storage = storage
        self.port = free_port()
        self.backends: BackendSet = StaticBackends()
        self.backends_factory: BackendFactory | None = None
        self.server: ServerThread | None = None

    def start(self, *, timing: WorkerTiming = FAST_TIMING, **environ: str) -> ServerThread:
        """``T2I_BACKEND`` defaults to ``local`` here (the test backends); pass ``T2I_BACKEND="auto"`` for the real
        default."""
        settings = exapp_settings(self.nextcloud, self.storage, self.port, **{"T2I_BACKEND": "local", **environ})
        backends = self.backends

        async def static(_: Settings) -> BackendSet:
            return backends

        factory = self.backends_factory or static
        self.server = ServerThread(
            create_app(settings, backends=factory, timing=timing), port=self.port, lifespan="on"
        ).start()
        self.nextcloud.app_url = self.server.url
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture
def exapp(nextcloud: FakeNextcloud, tmp_path: Path) -> Iterator[ExAppRunner]:
    runner = ExAppRunner(nextcloud, tmp_path)
    yield runner
    runner.stop()


@pytest.fixture
def registered(exapp: ExAppRunner) -> Callable[..., ExAppRunner]:
    """Start the app and register it the way AppAPI does (heartbeat, init, enabled)."""

    def start(**kwargs: object) -> ExAppRunner:
        exapp.start(**kwargs)  # type: ignore[arg-type]
        exapp.nextcloud.register_app()
        return exapp

    return start


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, message: str = "") -> None:
    """Poll ``condition`` every 10 ms; fail the test if it is still false after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message or "the condition never came true"
        time.sleep(0.01)
