"""LocalModels: which model, one download at a time, one load, failures remembered (simulated clock, no network)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.instant_backend import InstantBackend
from text2image_hub.admin import config_from_values
from text2image_hub.backends import Backend
from text2image_hub.backends.catalog import FLUX_SCHNELL, SDXL_BASE, SDXL_TURBO, LocalModelSpec, model_for_folder
from text2image_hub.backends.provisioning import LocalModels, ProgressCallback
from text2image_hub.backends.weights import weights_dir
from text2image_hub.errors import BackendUnavailableError, ConfigurationError
from text2image_hub.settings import load_settings

LOCAL = config_from_values({"backend": "local", "local_model": SDXL_TURBO}, {})


def write_folder(folder: Path, pipeline: str, scheduler: str) -> Path:
    """A folder ``weights_present`` accepts, naming ``pipeline`` and ``scheduler`` in its model index."""
    index = {
        "_class_name": pipeline,
        "scheduler": ["diffusers", scheduler],
        "unet": ["diffusers", "UNet2DConditionModel"],
    }
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text("{}", encoding="utf-8")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text("{}", encoding="utf-8")
    (folder / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    return folder


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Hub:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail = False
        self.gate = asyncio.Event()

    async def fetch(self, spec: LocalModelSpec, target: Path, progress: ProgressCallback) -> None:
        self.calls.append(spec.id)
        await progress(10)
        await self.gate.wait()
        if self.fail:
            raise BackendUnavailableError("Downloading failed: no network")
        write_folder(target, spec.pipeline_class, spec.scheduler_class)
        await progress(99)


class Loads:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail = False

    async def load(self, spec: LocalModelSpec, folder: Path) -> Backend:
        self.calls.append(spec.id)
        await asyncio.sleep(0)
        if self.fail:
            raise BackendUnavailableError(f"could not load {spec.id}: bad file")
        return InstantBackend(model_id=spec.id)


def models(tmp_path: Path, hub: Hub, loads: Loads, clock: Clock, **environ: str) -> LocalModels:
    settings = load_settings({"APP_PERSISTENT_STORAGE": str(tmp_path), **environ})
    return LocalModels(settings, fetch=hub.fetch, load=loads.load, clock=clock, retry_after=600)


async def test_missing_weights_download_once_then_load_once(tmp_path: Path) -> None:
    hub, loads, clock = Hub(), Loads(), Clock()
    local = models(tmp_path, hub, loads, clock)

    for _ in range(3):
        with pytest.raises(BackendUnavailableError) as caught:
            await local.backend(LOCAL)
        await asyncio.sleep(0)
    assert caught.value.code == "MODEL_DOWNLOADING"
    assert "10 % done" in caught.value.user_message
    assert local.status(LOCAL).state == "downloading"
    assert hub.calls == [SDXL_TURBO]

    hub.gate.set()
    backends = await asyncio.gather(*(local.backend(LOCAL) for _ in range(4)), return_exceptions=True)
    while local.status(LOCAL).state != "ready":
        backends = [await local.backend(LOCAL)]
    assert {getattr(backend, "model_id", None) for backend in backends} <= {SDXL_TURBO}
    assert hub.calls == [SDXL_TURBO]
    assert loads.calls == [SDXL_TURBO]
    assert (weights_dir(tmp_path, SDXL_TURBO) / "model_index.json").is_file()


async def test_failed_download_is_retried_after_the_wait_or_at_init(tmp_path: Path) -> None:
    hub, loads, clock = Hub(), Loads(), Clock()
    hub.fail = True
    hub.gate.set()
    local = models(tmp_path, hub, loads, clock)
    progress: list[int] = []

    async def report(percent: int) -> None:
        progress.append(percent)

    await local.download(LOCAL, report)
    assert progress == [10]
    status = local.status(LOCAL)
    assert (status.state, status.reason) == ("download_failed", "Downloading failed: no network")
    for _ in range(3):
        with pytest.raises(BackendUnavailableError, match="no network") as caught:
            await local.backend(LOCAL)
        assert "contact your administrator" in caught.value.user_message
    assert hub.calls == [SDXL_TURBO]

    clock.now += 601
    local.provision(LOCAL)
    await asyncio.sleep(0.01)
    assert hub.calls == [SDXL_TURBO] * 2

    await local.download(LOCAL, report)  # /init: at once
    assert hub.calls == [SDXL_TURBO] * 3


async def test_failed_load_is_remembered_and_not_repeated(tmp_path: Path) -> None:
    hub, loads, clock = Hub(), Loads(), Clock()
    write_folder(weights_dir(tmp_path, SDXL_TURBO), "StableDiffusionXLPipeline", "EulerAncestralDiscreteScheduler")
    loads.fail = True
    local = models(tmp_path, hub, loads, clock)

    for _ in range(3):
        with pytest.raises(BackendUnavailableError, match="bad file"):
            await local.backend(LOCAL)
    assert loads.calls == [SDXL_TURBO]
    assert local.status(LOCAL).state == "failed"

    loads.fail = False
    clock.now += 601
    assert await local.backend(LOCAL) is local.loaded
    assert loads.calls == [SDXL_TURBO] * 2
    assert hub.calls == []


async def test_model_path_is_read_once_before_anything_loads(tmp_path: Path) -> None:
    hub, loads, clock = Hub(), Loads(), Clock()
    folder = write_folder(tmp_path / "mine", "FluxPipeline", "FlowMatchEulerDiscreteScheduler")
    local = models(tmp_path, hub, loads, clock, T2I_MODEL_PATH=str(folder))
    config = config_from_values({"backend": "local"}, {})

    contradicting = config_from_values({"backend": "local", "local_model": SDXL_TURBO}, {})
    assert local.spec(config).id == FLUX_SCHNELL
    with pytest.raises(ConfigurationError) as caught:
        await local.backend(contradicting)
    assert caught.value.field == "local_model"
    assert local.status(contradicting).state == "failed"

    (folder / "model_index.json").unlink()  # read once: the answers stay
    assert local.spec(config).id == FLUX_SCHNELL
    with pytest.raises(ConfigurationError, match="holds a FluxPipeline"):
        local.spec(contradicting)
    await local.backend(config)
    assert loads.calls == [FLUX_SCHNELL]
    assert hub.calls == []


async def test_model_path_without_a_model_index_is_a_configuration_error(tmp_path: Path) -> None:
    local = models(tmp_path, Hub(), Loads(), Clock(), T2I_MODEL_PATH=str(tmp_path / "nothing"))

    with pytest.raises(ConfigurationError, match="no readable model_index") as caught:
        local.spec(LOCAL)
    assert caught.value.field == "model_path"


@pytest.mark.parametrize(
    ("pipeline", "scheduler", "chosen", "expected"),
    [
        ("FluxPipeline", "FlowMatchEulerDiscreteScheduler", "", FLUX_SCHNELL),
        ("StableDiffusionXLPipeline", "EulerAncestralDiscreteScheduler", "", SDXL_TURBO),
        ("StableDiffusionXLPipeline", "EulerDiscreteScheduler", "", SDXL_BASE),
        ("StableDiffusionXLPipeline", "DPMSolverMultistepScheduler", SDXL_BASE, SDXL_BASE),
    ],
)
def test_model_for_folder_matches_the_catalog(pipeline: str, scheduler: str, chosen: str, expected: str) -> None:
    assert model_for_folder(pipeline, scheduler, chosen).id == expected


@pytest.mark.parametrize(
    ("pipeline", "scheduler", "chosen", "field", "words"),
    [
        ("StableDiffusion3Pipeline", "FlowMatchEulerDiscreteScheduler", "", "model_path", "matches no supported"),
        ("StableDiffusionXLPipeline", "DPMSolverMultistepScheduler", "", "model_path", "could be several"),
        ("FluxPipeline", "FlowMatchEulerDiscreteScheduler", SDXL_TURBO, "local_model", "holds a FluxPipeline"),
    ],
)
def test_model_for_folder_refuses_what_it_cannot_tell(
    pipeline: str, scheduler: str, chosen: str, field: str, words: str
) -> None:
    with pytest.raises(ConfigurationError, match=words) as caught:
        model_for_folder(pipeline, scheduler, chosen)
    assert caught.value.field == field
