"""Crash safety, measured: the real app in a child process, killed (SIGKILL) or stopped (SIGTERM, as docker stop
sends it) while a remote generation is held by the IONOS imitation, then started again on the same storage.

Prints per run: seconds from SIGTERM to exit, and from the restart to the interrupted task's SUCCESSFUL (journal
recovery: the app asks Nextcloud whether it is enabled, finds the task in its journal, generates and delivers it).

Run: PYTHONPATH=lib:. .venv/bin/python bench/recovery.py [--runs N]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.child_app import ChildApp
from tests.conftest import ROUTES
from tests.fake_ionos import FakeIonos
from tests.fake_nextcloud import STATUS_SUCCESSFUL, FakeNextcloud


def one_run(storage: Path, *, kill: bool) -> tuple[float | None, float]:
    with FakeIonos() as ionos, FakeNextcloud(app_secret=secrets.token_hex(16), routes=ROUTES) as nextcloud:
        app = ChildApp(
            nextcloud,
            storage,
            T2I_BACKEND="remote",
            T2I_REMOTE_BASE_URL=ionos.base_url,
            T2I_REMOTE_API_KEY=ionos.token,
            T2I_POLL_INTERVAL="30",
        )
        storage.mkdir()
        try:
            app.start()
            nextcloud.register_app()
            ionos.hang_next(20.0)
            task_id = nextcloud.schedule({"input": "a lighthouse in a storm", "numberOfImages": 1})
            while ionos.stats().hung < 1:
                time.sleep(0.01)
            exited = None
            if kill:
                app.kill()
            else:
                exited = app.terminate()
            started = time.monotonic()
            app.start()
            task = nextcloud.wait_for_task(task_id, timeout=60)
            recovered = time.monotonic() - started
        finally:
            app.close()
        if task["status"] != STATUS_SUCCESSFUL:
            raise SystemExit(f"the task was not recovered: {task}")
        return exited, recovered


def _figures(seconds: list[float]) -> str:
    return f"median {statistics.median(seconds):.2f} s, max {max(seconds):.2f} s (n={len(seconds)})"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="t2i-recovery-") as scratch:
        killed = [one_run(Path(scratch) / f"kill-{run}", kill=True)[1] for run in range(args.runs)]
        stopped = [one_run(Path(scratch) / f"stop-{run}", kill=False) for run in range(args.runs)]
    exits = [exited for exited, _ in stopped if exited is not None]
    print(f"SIGKILL mid-task → restart → task SUCCESSFUL: {_figures(killed)}")
    print(f"SIGTERM mid-task → process exited: {_figures(exits)}")
    print(f"SIGTERM → restart → task SUCCESSFUL: {_figures([seconds for _, seconds in stopped])}")
    print("(each restart includes the process start-up: imports, settings, uvicorn, the first pass)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
