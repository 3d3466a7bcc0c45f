"""First runs, end to end: the real app and backends against the fake Nextcloud (and the IONOS imitation).

A CPU server with no configuration uses IONOS and waits for its token; a GPU server uses the local FLUX.1-schnell;
a failed download leaves the app enabled with its form; a saved local model downloads once, in the background;
a model folder says what it holds; standalone without a model says what to do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import ExAppRunner, wait_until
from tests.fake_ionos import FakeIonos
from tests.fake_nextcloud import FakeNextcloud
from tests.pngs import open_png
from tests.servers import ServerThread
from tests.tiny_models import save_tiny_flux, save_tiny_sdxl
from text2image_hub.admin import FIELD_IDS
from text2image_hub.app import create_app
from text2image_hub.backends import Backend
from text2image_hub.backends.catalog import FLUX_SCHNELL, SDXL_TURBO, LocalModelSpec
from text2image_hub.backends.provisioning import LocalModels, ProgressCallback, load_local_backend
from text2image_hub.backends.registry import BackendRegistry
from text2image_hub.errors import BackendUnavailableError
from text2image_hub.settings import Settings, load_settings

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

SUCCESS = "STATUS_SUCCESSFUL"
FAILED = "STATUS_FAILED"


class Hub:
    """Stands in for the Hugging Face Hub: counts downloads, fails, or hands out a tiny model when released."""

    def __init__(self, *, fail: str | None = None) -> None:
        self.fail = fail
        self.calls: list[str] = []
        self.release: asyncio.Event | None = None

    async def fetch(self, spec: LocalModelSpec, target: Path, progress: ProgressCallback) -> None:
        self.calls.append(spec.id)
        await progress(0)
        if self.fail is not None:
            raise BackendUnavailableError(f"Downloading the weights of {spec.id} failed: {self.fail}")
        await progress(30)
        self.release = asyncio.Event()
        await self.release.wait()
        await asyncio.to_thread(save_tiny_sdxl, target, variant="fp16")
        await progress(99)


def real_backends(hub: Hub | None = None, loads: list[str] | None = None) -> Callable[..., Any]:
    """The app's own backends; ``hub`` replaces the network, ``loads`` records every model load."""

    async def factory(settings: Settings) -> BackendRegistry:
        async def load(spec: LocalModelSpec, folder: Path) -> Backend:
            if loads is not None:
                loads.append(spec.id)
            return await load_local_backend(spec, folder, device=settings.torch_device, speedups=frozenset())

        models = LocalModels(settings, load=load) if hub is None else LocalModels(settings, load=load, fetch=hub.fetch)
        return BackendRegistry(settings, local_models=models)

    return factory


def _run(nextcloud: FakeNextcloud, task_input: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    return nextcloud.wait_for_task(nextcloud.schedule(task_input), timeout=timeout)


def _form_status(nextcloud: FakeNextcloud) -> str:
    return str(nextcloud.forms["admin_settings"]["description"]).partition("Status: ")[2]


@pytest.fixture
def ionos():
    with FakeIonos() as fake:
        yield fake


def test_cpu_server_without_configuration_waits_for_the_ionos_token(exapp: ExAppRunner, ionos: FakeIonos) -> None:
    hub = Hub()
    exapp.backends_factory = real_backends(hub)
    exapp.start(T2I_BACKEND="", T2I_REMOTE_BASE_URL=ionos.base_url, COMPUTE_DEVICE="CPU")
    nextcloud = exapp.nextcloud
    nextcloud.register_app()  # init reaches 100 at once: nothing to download

    assert nextcloud.enabled
    assert nextcloud.forms["admin_settings"]["fields"][0]["default"] == "auto"
    assert "token is missing" in _form_status(nextcloud)
    assert nextcloud.providers["text2image_hub"]["name"] == "Text2Image Hub (not configured yet)"
    assert any("not ready" in entry["message"] and "remote_api_key" in entry["message"] for entry in nextcloud.logs)
    task = _run(nextcloud, {"input": "a lighthouse", "numberOfImages": 1})
    assert task["status"] == FAILED
    assert "administrator" in task["userFacingErrorMessage"]

    nextcloud.save_setting("remote_api_key", ionos.token)  # through the settings page: no restart
    task = _run(nextcloud, {"input": "a lighthouse", "numberOfImages": 1})
    assert task["status"] == SUCCESS, task
    image = open_png(nextcloud.file(task["id"], task["output"]["images"][0]))
    assert (image.text["Backend"], image.text["Model"]) == ("remote", "black-forest-labs/FLUX.1-schnell")
    wait_until(lambda: "remote service" in _form_status(nextcloud), 5, "the form still shows the old status")
    assert hub.calls == [], "a remote-only first run downloads nothing"
    assert not (exapp.storage / "models").exists()


def test_gpu_server_without_configuration_uses_local_flux(exapp: ExAppRunner) -> None:
    hub = Hub(fail="ConnectError: [Errno 111] Connection refused")
    exapp.backends_factory = real_backends(hub)
    exapp.start(T2I_BACKEND="", COMPUTE_DEVICE="CUDA")  # the device check: what AppAPI passes for a GPU daemon
    nextcloud = exapp.nextcloud
    nextcloud.register_app()

    assert hub.calls == [FLUX_SCHNELL]
    assert "FLUX.1-schnell" in nextcloud.providers["text2image_hub"]["name"]


def test_failed_download_leaves_the_app_enabled_with_its_form(
    exapp: ExAppRunner, caplog: pytest.LogCaptureFixture
) -> None:
    hub = Hub(fail="ConnectError: [Errno -3] Temporary failure in name resolution")
    exapp.backends_factory = real_backends(hub)
    exapp.start(T2I_BACKEND="local", T2I_LOCAL_MODEL=SDXL_TURBO)
    nextcloud = exapp.nextcloud
    nextcloud.register_app()  # init ends at 100 even though the download failed

    assert nextcloud.init_progress == 100
    assert not nextcloud.init_error
    assert nextcloud.enabled
    assert "could not be downloaded" in _form_status(nextcloud)
    assert any(entry["level"] == 3 and "name resolution" in entry["message"] for entry in nextcloud.logs)
    assert exapp.server is not None
    with httpx2.Client(base_url=exapp.server.url) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["reason"] == "MODEL_DOWNLOAD_FAILED"
    task = _run(nextcloud, {"input": "x", "numberOfImages": 1})
    assert task["status"] == FAILED
    assert "could not download its image model" in task["userFacingErrorMessage"]
    assert "name resolution" in nextcloud.admin_task(task["id"])["errorMessage"]
    assert [_run(nextcloud, {"input": "y", "numberOfImages": 1})["status"] for _ in range(3)] == [FAILED] * 3
    assert hub.calls == [SDXL_TURBO], "a failed download is not retried by every task"


@pytest.mark.slow
def test_saving_a_local_model_downloads_it_once_in_the_background(exapp: ExAppRunner) -> None:
    hub = Hub()
    exapp.backends_factory = real_backends(hub)
    exapp.start(T2I_BACKEND="", COMPUTE_DEVICE="CPU")
    nextcloud = exapp.nextcloud
    nextcloud.register_app()
    assert hub.calls == []

    nextcloud.save_setting("backend", "local")
    nextcloud.save_setting("local_model", SDXL_TURBO)
    task = _run(nextcloud, {"input": "a fox", "numberOfImages": 1})  # the worker's pass starts the download
    assert task["status"] == FAILED
    assert "being downloaded" in task["userFacingErrorMessage"]
    wait_until(lambda: "(30 %" in _run(nextcloud, {"input": "a fox", "numberOfImages": 1})["userFacingErrorMessage"])
    nextcloud.save_setting("local_model", SDXL_TURBO)  # saved again: still one download
    for _ in range(3):
        assert _run(nextcloud, {"input": "a fox", "numberOfImages": 1})["status"] == FAILED
    assert hub.calls == [SDXL_TURBO]
    assert exapp.server is not None
    with httpx2.Client(base_url=exapp.server.url) as client:
        assert client.get("/readyz").json()["progress"] == 30
    assert "downloading (30 %)" in _form_status(nextcloud)

    exapp.server.loop.call_soon_threadsafe(_release, hub)
    with httpx2.Client(base_url=exapp.server.url) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, 60, "the downloaded model was not loaded")
    task = _run(nextcloud, {"input": "a fox", "numberOfImages": 1, "size": "512x512"})
    assert task["status"] == SUCCESS, task
    assert open_png(nextcloud.file(task["id"], task["output"]["images"][0])).text["Model"] == SDXL_TURBO
    assert hub.calls == [SDXL_TURBO]


def _release(hub: Hub) -> None:
    assert hub.release is not None
    hub.release.set()


@pytest.mark.slow
def test_flux_folder_is_used_as_flux_on_a_cpu_server(exapp: ExAppRunner, tmp_path: Path) -> None:
    folder = save_tiny_flux(tmp_path / "flux")
    loads: list[str] = []
    exapp.backends_factory = real_backends(loads=loads)
    exapp.start(T2I_BACKEND="", T2I_MODEL_PATH=str(folder), COMPUTE_DEVICE="CPU")
    nextcloud = exapp.nextcloud
    nextcloud.register_app()

    task = _run(nextcloud, {"input": "a fox", "numberOfImages": 1, "size": "512x512"}, timeout=120)
    assert task["status"] == SUCCESS, task
    assert open_png(nextcloud.file(task["id"], task["output"]["images"][0])).text["Model"] == FLUX_SCHNELL
    assert loads == [FLUX_SCHNELL]


def test_folder_that_contradicts_the_chosen_model_fails_once_and_loads_nothing(
    exapp: ExAppRunner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = save_tiny_flux(tmp_path / "flux")
    loads: list[str] = []
    exapp.backends_factory = real_backends(loads=loads)
    exapp.start(T2I_BACKEND="local", T2I_MODEL_PATH=str(folder), T2I_LOCAL_MODEL=SDXL_TURBO)
    nextcloud = exapp.nextcloud
    with caplog.at_level(logging.ERROR, logger="text2image_hub"):
        nextcloud.register_app()
        tasks = [_run(nextcloud, {"input": f"x{i}", "numberOfImages": 1}) for i in range(3)]

    assert [task["status"] for task in tasks] == [FAILED] * 3
    admin_message = nextcloud.admin_task(tasks[0]["id"])["errorMessage"]
    assert "holds a FluxPipeline" in admin_message
    assert "local_model" in admin_message
    assert "administrator" in tasks[0]["userFacingErrorMessage"]
    assert loads == [], "the folder is read, never loaded"
    said = [record for record in caplog.records if record.name == "text2image_hub.backends.provisioning"]
    assert len(said) == 1
    assert "holds a FluxPipeline" in said[0].getMessage()


@pytest.mark.parametrize(
    ("environ", "cause"),
    [
        ({}, "token is missing"),
        ({"T2I_BACKEND": "local", "T2I_LOCAL_MODEL": SDXL_TURBO}, "could not be downloaded"),
    ],
)
def test_standalone_without_a_model_answers_with_the_cause_and_what_to_do(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, environ: dict[str, str], cause: str
) -> None:
    settings = load_settings({"APP_PERSISTENT_STORAGE": str(tmp_path), "T2I_API_KEYS": "k", **environ}, FIELD_IDS)
    hub = Hub(fail="ConnectError: [Errno 101] Network is unreachable")
    app = create_app(settings, backends=real_backends(hub))
    with caplog.at_level(logging.WARNING, logger="text2image_hub"), ServerThread(app, lifespan="on") as server:
        wait_until(lambda: any("not ready" in record.getMessage() for record in caplog.records), 10)
        with httpx2.Client(base_url=server.url, headers={"Authorization": "Bearer k"}) as client:
            answer = client.post("/v1/images/generations", json={"prompt": "a fox", "size": "512x512"})

    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "BACKEND_UNAVAILABLE"
    assert cause in error["message"]
    assert "T2I_MODEL_PATH" in error["message"]
    assert "make tiny-model" in error["message"]
    assert "try again in a few minutes" not in error["message"]
    said = [record.getMessage() for record in caplog.records if "not ready" in record.getMessage()]
    assert len(said) == 1
    assert "make tiny-model" in said[0]
