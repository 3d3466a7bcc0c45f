"""The real app in a child process (``python -m text2image_hub``), as AppAPI runs it, so that tests can kill it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2

from tests.fake_nextcloud import FakeNextcloud
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


class ChildApp:
    """Starts, stops and kills the app as a child process wired to ``nextcloud``; output goes to ``log``."""

    def __init__(self, nextcloud: FakeNextcloud, storage: Path, **environ: str) -> None:
        self.nextcloud = nextcloud
        self.storage = storage
        self.port = free_port()
        self.log = storage.parent / f"{storage.name}-app.log"
        self.environ = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(ROOT / "lib"),
            "PYTHONUNBUFFERED": "1",
            "APP_ID": nextcloud.app_id,
            "APP_SECRET": nextcloud.app_secret,
            "APP_VERSION": nextcloud.app_version,
            "APP_HOST": "127.0.0.1",
            "APP_PORT": str(self.port),
            "NEXTCLOUD_URL": nextcloud.url,
            "APP_PERSISTENT_STORAGE": str(storage),
            "T2I_NEXTCLOUD_TIMEOUT": "5",
            **environ,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "text2image_hub"], env=self.environ, stdout=log, stderr=log, cwd=self.storage
            )
        self.nextcloud.app_url = self.url
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the app did not start; its log:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            return httpx2.get(f"{self.url}/heartbeat", timeout=1).status_code == 200
        except httpx2.HTTPError:
            return False

    def terminate(self, timeout: float = 30.0) -> float:
        """SIGTERM, as ``docker stop`` sends it; the seconds until the process exited."""
        return self._stop(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: the OOM killer, a node crash, ``docker stop`` after its grace period."""
        self._stop(signal.SIGKILL, 10.0)

    def _stop(self, signum: int, timeout: float) -> float:
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signum)
        self.process.wait(timeout)
        self.process = None
        return time.monotonic() - started

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None
