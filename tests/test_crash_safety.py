"""No task is left behind: the real app in a child process is killed or stopped mid-task and started again on the
same storage, against the fake Nextcloud (which, like a real one, never times out a RUNNING task and sends no
/trigger while one is RUNNING) and the IONOS imitation (which holds the first generation for 20 s)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.child_app import ChildApp
from tests.conftest import wait_until
from tests.fake_ionos import FakeIonos
from tests.fake_nextcloud import STATUS_RUNNING, STATUS_SUCCESSFUL, FakeNextcloud

HANG = 20.0


@pytest.fixture
def ionos() -> Iterator[FakeIonos]:
    with FakeIonos() as fake:
        yield fake


@pytest.fixture
def app(nextcloud: FakeNextcloud, ionos: FakeIonos, tmp_path: Path) -> Iterator[ChildApp]:
    child = ChildApp(
        nextcloud,
        tmp_path / "storage",
        T2I_BACKEND="remote",
        T2I_REMOTE_BASE_URL=ionos.base_url,
        T2I_REMOTE_API_KEY=ionos.token,
        T2I_POLL_INTERVAL="30",  # no polling to hide a lost task: only /trigger and the journal
    )
    child.storage.mkdir()
    child.start()
    nextcloud.register_app()
    yield child
    child.close()


def _generating(nextcloud: FakeNextcloud, ionos: FakeIonos) -> int:
    """Schedule a task whose remote generation hangs, and wait until it does."""
    ionos.hang_next(HANG)
    task_id = nextcloud.schedule({"input": "a lighthouse in a storm", "numberOfImages": 1})
    wait_until(lambda: ionos.stats().hung == 1, 10, "the generation never reached the remote service")
    assert nextcloud.task(task_id)["status"] == STATUS_RUNNING
    return task_id


def _journal(app: ChildApp) -> list[str]:
    return sorted(path.name for path in (app.storage / "journal").glob("*.json"))


def _restart_and_finish(app: ChildApp, nextcloud: FakeNextcloud, task_id: int) -> float:
    """Start again (AppAPI sends no /enabled after a restart); the seconds until the task is SUCCESSFUL."""
    started = time.monotonic()
    app.start()
    task = nextcloud.wait_for_task(task_id, timeout=30)
    recovered = time.monotonic() - started
    assert task["status"] == STATUS_SUCCESSFUL, task
    wait_until(lambda: _journal(app) == [], 5, "the journal entry outlived its task")
    return recovered


def _next_task_is_triggered(nextcloud: FakeNextcloud) -> None:
    triggers = len(nextcloud.triggers)
    task = nextcloud.wait_for_task(nextcloud.schedule({"input": "the next one", "numberOfImages": 1}), timeout=10)
    assert task["status"] == STATUS_SUCCESSFUL
    assert len(nextcloud.triggers) == triggers + 1, "no task left RUNNING: Nextcloud triggers the next one"


def test_killed_mid_task_the_task_ends_after_the_restart(app: ChildApp, nextcloud: FakeNextcloud, ionos) -> None:
    task_id = _generating(nextcloud, ionos)
    assert _journal(app) == [f"{task_id}.json"]

    app.kill()
    time.sleep(0.5)
    assert nextcloud.task(task_id)["status"] == STATUS_RUNNING, "Nextcloud never times a RUNNING task out"

    recovered = _restart_and_finish(app, nextcloud, task_id)
    assert recovered < 10
    assert 't2i_tasks_recovered_total{outcome="redone"} 1.0' in httpx2.get(f"{app.url}/metrics").text
    _next_task_is_triggered(nextcloud)


def test_docker_stop_mid_task_exits_within_10_s_and_the_task_ends_after_the_restart(
    app: ChildApp, nextcloud: FakeNextcloud, ionos
) -> None:
    task_id = _generating(nextcloud, ionos)

    exited = app.terminate()
    assert exited < 10, f"docker stop would have killed the app ({exited:.1f} s after SIGTERM)"
    assert nextcloud.task(task_id)["status"] == STATUS_RUNNING
    assert _journal(app) == [f"{task_id}.json"], "a task that could not finish is kept for the next start"

    recovered = _restart_and_finish(app, nextcloud, task_id)
    assert recovered < 10
    _next_task_is_triggered(nextcloud)


def test_a_task_that_takes_the_app_down_each_time_is_given_up(app: ChildApp, nextcloud: FakeNextcloud, ionos) -> None:
    task_id = _generating(nextcloud, ionos)
    app.kill()
    ionos.hang_next(HANG)
    app.start()  # the recovered task hangs too, and the app is killed again
    wait_until(lambda: ionos.stats().hung == 2, 10, "the recovered task did not start again")
    app.kill()

    app.start()
    task = nextcloud.wait_for_task(task_id, timeout=10)
    assert task["status"] == "STATUS_FAILED"
    assert "stopped each time" in task["userFacingErrorMessage"]
    assert "given up" in nextcloud.admin_task(task_id)["errorMessage"]
    wait_until(lambda: _journal(app) == [], 5)
