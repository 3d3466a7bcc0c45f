"""The remote backend end to end: the real worker, the fake Nextcloud and the IONOS imitation (time-scaled limits)."""

from __future__ import annotations

import dataclasses
import logging
import random

import httpx2
import pytest

from tests.fake_ionos import FakeIonos, ionos_account
from tests.instant_backend import InstantBackend
from tests.pngs import open_png
from text2image_hub.admin import RuntimeConfig
from text2image_hub.backends import Backend
from text2image_hub.backends.presets import RemoteAccount
from text2image_hub.backends.registry import BackendRegistry
from text2image_hub.errors import BackendUnavailableError, GpuOutOfMemoryError
from text2image_hub.settings import Settings

SUCCESS = "STATUS_SUCCESSFUL"
FAILED = "STATUS_FAILED"
TIME_SCALE = 60.0


class ImitationBackends(BackendRegistry):
    """The real backends, with the IONOS limits time-scaled like the imitation's and an optional local stand-in."""

    def __init__(self, settings: Settings, ionos: FakeIonos, local_backend: Backend | None = None) -> None:
        super().__init__(settings)
        self._ionos = ionos
        self._local_backend = local_backend

    async def local(self, config: RuntimeConfig) -> Backend:
        if self._local_backend is None:
            raise BackendUnavailableError("no local model in this test")
        return self._local_backend

    def remote_account(self, config: RuntimeConfig) -> RemoteAccount:
        account = super().remote_account(config)
        if account.preset.id != "ionos":
            return account
        return dataclasses.replace(account, limits=ionos_account(self._ionos).limits)


@pytest.fixture
def ionos():
    with FakeIonos(time_scale=TIME_SCALE) as fake:
        yield fake


def _start(exapp, ionos: FakeIonos, local_backend: Backend | None = None, **environ: str):
    async def factory(settings: Settings) -> BackendRegistry:
        return ImitationBackends(settings, ionos, local_backend)

    exapp.backends_factory = factory
    environ = {"T2I_BACKEND": "remote", "T2I_REMOTE_BASE_URL": ionos.base_url, **environ}
    exapp.start(**environ)
    exapp.nextcloud.register_app()
    return exapp.nextcloud


def _save_token(nextcloud, token: str) -> None:
    nextcloud.save_setting("remote_api_key", token)  # through /value-sensitive, as the settings page does


def test_thirty_tasks_of_one_to_four_images_all_succeed(exapp, ionos, caplog):
    caplog.set_level(logging.DEBUG)
    nextcloud = _start(exapp, ionos)
    _save_token(nextcloud, ionos.token)
    counts = [random.Random(i).randint(1, 4) for i in range(30)]
    task_ids = [nextcloud.schedule({"input": f"a city no. {i}", "numberOfImages": n}) for i, n in enumerate(counts)]
    tasks = [nextcloud.wait_for_task(task_id, timeout=60) for task_id in task_ids]
    assert [task["status"] for task in tasks] == [SUCCESS] * 30
    assert [len(task["output"]["images"]) for task in tasks] == counts
    image = open_png(nextcloud.file(tasks[0]["id"], tasks[0]["output"]["images"][0]))
    assert image.size == (1024, 1024)
    assert image.text["Backend"] == "remote"
    assert image.text["Model"] == "black-forest-labs/FLUX.1-schnell"
    assert ionos.stats().images == sum(counts)
    assert ionos.token not in caplog.text


def test_bad_token_fails_with_a_message_naming_the_token(exapp, ionos, caplog):
    caplog.set_level(logging.DEBUG)
    nextcloud = _start(exapp, ionos)
    _save_token(nextcloud, "wrong-token-123456")
    task = nextcloud.wait_for_task(nextcloud.schedule({"input": "x", "numberOfImages": 2}), timeout=30)
    assert task["status"] == FAILED
    assert task["userFacingErrorMessage"].startswith(
        "The IONOS image service refused this server's access: please ask your administrator"
    )
    assert "wrong-token-123456" not in caplog.text
    assert "wrong-token-123456" not in nextcloud.admin_task(task["id"])["errorMessage"]
    assert all("wrong-token-123456" not in entry["message"] for entry in nextcloud.logs)


def test_overlong_prompt_fails_naming_the_limit(exapp, ionos):
    nextcloud = _start(exapp, ionos)
    _save_token(nextcloud, ionos.token)
    task = nextcloud.wait_for_task(nextcloud.schedule({"input": "x" * 257, "numberOfImages": 1}), timeout=30)
    assert task["status"] == FAILED
    assert "256" in task["userFacingErrorMessage"]
    assert ionos.stats().requests == 0


def test_url_answering_server_works(exapp):
    with FakeIonos(answer="url", time_scale=TIME_SCALE) as server:
        nextcloud = _start(
            exapp,
            server,
            T2I_REMOTE_PRESET="custom",
            T2I_REMOTE_MODEL="black-forest-labs/FLUX.1-schnell",
            T2I_REMOTE_API_KEY=server.token,
        )
        task = nextcloud.wait_for_task(
            nextcloud.schedule({"input": "a boat", "numberOfImages": 2, "size": "512x512"}), timeout=30
        )
    assert task["status"] == SUCCESS
    image = open_png(nextcloud.file(task["id"], task["output"]["images"][1]))
    assert image.size == (512, 512)


def test_failover_runs_on_the_remote_imitation_when_local_fails(exapp, ionos, caplog):
    caplog.set_level(logging.INFO)
    local = InstantBackend(fail_with=GpuOutOfMemoryError("CUDA out of memory"))
    nextcloud = _start(exapp, ionos, local, T2I_BACKEND="local_then_remote")
    _save_token(nextcloud, ionos.token)
    task = nextcloud.wait_for_task(nextcloud.schedule({"input": "x", "numberOfImages": 1}), timeout=30)
    assert task["status"] == SUCCESS
    assert len(local.calls) == 1
    assert ionos.stats().images == 1
    image = open_png(nextcloud.file(task["id"], task["output"]["images"][0]))
    assert image.text["Backend"] == "remote"
    assert "runs on the remote backend" in caplog.text


def test_missing_token_still_enables_and_tasks_ask_for_the_admin(exapp, ionos):
    nextcloud = _start(exapp, ionos)  # no token yet: the admin must be able to reach the form
    assert "admin_settings" in nextcloud.forms
    task = nextcloud.wait_for_task(nextcloud.schedule({"input": "x", "numberOfImages": 1}), timeout=30)
    assert task["status"] == FAILED
    assert "administrator" in task["userFacingErrorMessage"]
    assert "remote_api_key" in nextcloud.admin_task(task["id"])["errorMessage"]
    _save_token(nextcloud, ionos.token)
    assert nextcloud.wait_for_task(nextcloud.schedule({"input": "y", "numberOfImages": 1}), timeout=30)["status"] == (
        SUCCESS
    )


def test_readyz_checks_that_the_remote_service_takes_our_token(exapp, ionos):
    nextcloud = _start(exapp, ionos)
    with httpx2.Client(base_url=exapp.server.url) as client:
        assert client.get("/readyz").status_code == 503  # no token yet
        _save_token(nextcloud, "wrong-token-123456")
        assert client.get("/readyz").status_code == 503
        _save_token(nextcloud, ionos.token)
        answer = client.get("/readyz")
        assert answer.status_code == 200
        assert answer.json()["backend"] == "remote"
