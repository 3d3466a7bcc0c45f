"""The local backend on tiny random-weight FLUX and SDXL pipelines, loaded from disk by the real loading code."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.tiny_models import (
    save_tiny_flux,
    save_tiny_sdxl,
    tiny_flux_pipeline,
    tiny_flux_spec,
    tiny_sdxl_spec,
)
from text2image_hub.backends import GeneratedImage, GenerationControl, ResolvedRequest
from text2image_hub.backends.local import LocalBackend
from text2image_hub.backends.placement import resolve_device
from text2image_hub.errors import (
    BackendUnavailableError,
    ConfigurationError,
    GenerationCancelledError,
    GpuOutOfMemoryError,
)
from text2image_hub.imaging import ImageSize

pytestmark = [
    pytest.mark.slow,
    # diffusers' Euler schedulers call np.array() on a torch tensor, which numpy 2 deprecates (harmless).
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
    # diffusers' SDXL pipeline calls its own deprecated upcast_vae() for an fp16 VAE with force_upcast (CUDA only)
    pytest.mark.filterwarnings("ignore:`upcast_vae` is deprecated:FutureWarning"),
]

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-pipelines")
    return {"flux": save_tiny_flux(root / "flux"), "sdxl": save_tiny_sdxl(root / "sdxl")}


@pytest.fixture
async def flux(tiny_dirs: dict[str, Path]):
    backend = await LocalBackend.load(tiny_flux_spec(), tiny_dirs["flux"], device="cpu")
    yield backend
    await backend.aclose()


@pytest.fixture
async def sdxl(tiny_dirs: dict[str, Path]):
    backend = await LocalBackend.load(tiny_sdxl_spec(), tiny_dirs["sdxl"], device="cpu")
    yield backend
    await backend.aclose()


TINY_SPECS = {"flux": tiny_flux_spec, "sdxl": tiny_sdxl_spec}


@pytest.fixture(params=["flux", "sdxl"])
async def backend(request: pytest.FixtureRequest, tiny_dirs: dict[str, Path]):
    """Each tiny pipeline in turn."""
    loaded = await LocalBackend.load(TINY_SPECS[request.param](), tiny_dirs[request.param], device="cpu")
    yield loaded
    await loaded.aclose()


class RecordingControl(GenerationControl):
    """Records every progress report; optionally cancels itself at the first one (from the pipeline's thread)."""

    def __init__(self, *, cancel_at_first_step: bool = False) -> None:
        super().__init__()
        self.reports: list[float] = []
        self._cancel_at_first_step = cancel_at_first_step

    def report_progress(self, fraction: float) -> None:
        self.reports.append(fraction)
        if self._cancel_at_first_step:
            self.cancel()
        super().report_progress(fraction)


def pixels(image: GeneratedImage) -> np.ndarray:
    return np.asarray(image.image.convert("RGB"), dtype=np.int16)


def count_denoiser_calls(backend: LocalBackend) -> list[int]:
    calls: list[int] = []
    denoiser = getattr(backend.pipeline, backend.spec.denoiser)
    denoiser.register_forward_pre_hook(lambda _module, _args: calls.append(1))
    return calls


async def test_generate_returns_png_able_images_of_requested_size(backend: LocalBackend) -> None:
    size = backend.spec.sizes[-1]  # not square: catches a swapped width and height
    assert size.width != size.height
    images = await backend.generate(
        ResolvedRequest(prompt="a red fox", size=size, count=2, seeds=(3, 4)), GenerationControl()
    )

    assert [image.seed for image in images] == [3, 4]
    for image in images:
        assert image.image.size == (size.width, size.height)
        buffer = io.BytesIO()
        image.image.save(buffer, format="PNG")
        with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
            assert decoded.size == (size.width, size.height)


async def test_generate_same_seed_gives_same_pixels(backend: LocalBackend) -> None:
    size = backend.spec.default_size

    first = await backend.generate(
        ResolvedRequest(prompt="a lighthouse", size=size, count=1, seeds=(7,)), GenerationControl()
    )
    again = await backend.generate(
        ResolvedRequest(prompt="a lighthouse", size=size, count=1, seeds=(7,)), GenerationControl()
    )
    other = await backend.generate(
        ResolvedRequest(prompt="a lighthouse", size=size, count=1, seeds=(8,)), GenerationControl()
    )

    assert np.array_equal(pixels(first[0]), pixels(again[0]))
    assert not np.array_equal(pixels(first[0]), pixels(other[0]))


async def test_generate_batch_matches_one_by_one(tiny_dirs: dict[str, Path]) -> None:
    batched = await LocalBackend.load(tiny_sdxl_spec(), tiny_dirs["sdxl"], device="cpu", max_batch=2)
    single = await LocalBackend.load(tiny_sdxl_spec(), tiny_dirs["sdxl"], device="cpu", max_batch=1)
    try:
        calls = count_denoiser_calls(batched)
        request = ResolvedRequest(prompt="a boat", size=ImageSize(32, 32), count=3, seeds=(1, 2, 3), steps=2)
        together = await batched.generate(request, GenerationControl())
        apart = await single.generate(request, GenerationControl())
    finally:
        await batched.aclose()
        await single.aclose()

    assert len(calls) == 4  # 2 steps for the batch of seeds 1 and 2, then 2 for seed 3
    assert [image.seed for image in together] == [1, 2, 3]
    for mine, theirs in zip(together, apart, strict=True):
        assert np.abs(pixels(mine) - pixels(theirs)).max() <= 2


async def test_generate_reports_progress_per_step_up_to_one(flux: LocalBackend) -> None:
    control = RecordingControl()
    request = ResolvedRequest(prompt="a cat", size=ImageSize(32, 32), count=2, seeds=(1, 2), steps=3)

    await flux.generate(request, control)

    assert len(control.reports) >= 6  # three steps for each of two images
    assert control.reports == sorted(control.reports)
    assert 0 < control.reports[0] < 0.5
    assert control.progress == 1.0


async def test_generate_cancelled_at_first_step_stops_there(backend: LocalBackend) -> None:
    calls = count_denoiser_calls(backend)
    control = RecordingControl(cancel_at_first_step=True)
    generation = ResolvedRequest(prompt="a cat", size=backend.spec.default_size, count=2, seeds=(1, 2), steps=4)

    with pytest.raises(GenerationCancelledError):
        await backend.generate(generation, control)

    assert len(calls) == 1
    assert len(control.reports) == 1


async def test_generate_cancelled_before_start_runs_nothing(flux: LocalBackend) -> None:
    calls = count_denoiser_calls(flux)
    control = GenerationControl()
    control.cancel()

    with pytest.raises(GenerationCancelledError):
        await flux.generate(ResolvedRequest(prompt="a cat", size=ImageSize(32, 32), count=1, seeds=(1,)), control)

    assert calls == []


def fail_first_call_with_oom(monkeypatch: pytest.MonkeyPatch, backend: LocalBackend, failures: int = 1) -> list[int]:
    """Make the pipeline's next ``failures`` calls raise CUDA's out-of-memory error; return the batch sizes seen."""
    pipeline_class = type(backend.pipeline)
    original = pipeline_class.__call__
    batches: list[int] = []

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        batches.append(kwargs["num_images_per_prompt"])
        if len(batches) <= failures:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pipeline_class, "__call__", call)
    return batches


async def test_generate_out_of_memory_becomes_gpu_error_and_pipeline_recovers(
    monkeypatch: pytest.MonkeyPatch, flux: LocalBackend
) -> None:
    fail_first_call_with_oom(monkeypatch, flux)
    request = ResolvedRequest(prompt="a cat", size=ImageSize(32, 32), count=1, seeds=(1,))

    with pytest.raises(GpuOutOfMemoryError) as caught:
        await flux.generate(request, GenerationControl())
    images = await flux.generate(request, GenerationControl())

    assert caught.value.code == "GPU_OUT_OF_MEMORY"
    assert isinstance(caught.value.__cause__, torch.cuda.OutOfMemoryError)
    assert len(images) == 1


async def test_generate_out_of_memory_in_a_batch_goes_on_one_by_one(
    monkeypatch: pytest.MonkeyPatch, tiny_dirs: dict[str, Path]
) -> None:
    backend = await LocalBackend.load(tiny_flux_spec(), tiny_dirs["flux"], device="cpu", max_batch=2)
    try:
        batches = fail_first_call_with_oom(monkeypatch, backend)
        images = await backend.generate(
            ResolvedRequest(prompt="a cat", size=ImageSize(32, 32), count=2, seeds=(1, 2)), GenerationControl()
        )
    finally:
        await backend.aclose()

    assert batches == [2, 1, 1]
    assert [image.seed for image in images] == [1, 2]


async def test_generate_keeps_event_loop_responsive(sdxl: LocalBackend) -> None:
    def heavy(_module: Any, _args: Any) -> None:
        # stands in for a real model's step: torch releases the GIL while it computes, as on a GPU; 50 ms of it per
        # step whatever the machine's speed, so that the generation lasts long enough to measure
        matrix = torch.rand(384, 384)
        until = time.perf_counter() + 0.05
        while time.perf_counter() < until:
            matrix = torch.tanh(matrix @ matrix)

    sdxl.pipeline.unet.register_forward_pre_hook(heavy)
    worst = 0.0
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst, ticks
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            worst = max(worst, time.perf_counter() - before - 0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    start = time.perf_counter()
    await sdxl.generate(
        ResolvedRequest(prompt="a cat", size=ImageSize(64, 32), count=2, seeds=(1, 2), steps=8), GenerationControl()
    )
    elapsed = time.perf_counter() - start
    done.set()
    await ticking

    assert elapsed > 0.3, "the generation must be long enough for the measurement to mean something"
    assert ticks >= 10
    # Were the pipeline run on the event loop, the ticker would not tick while it runs: its worst delay would be
    # about the whole generation. A quarter of the generation's time still fails that, and scales with the
    # machine's speed and load, which slow the generation down too; a fixed 0.1 s failed on a loaded 2-core box.
    assert worst < elapsed / 4, (worst, elapsed)


async def test_generate_negative_prompt_changes_sdxl_image(sdxl: LocalBackend) -> None:
    plain = ResolvedRequest(prompt="a cat", size=ImageSize(32, 32), count=1, seeds=(5,))
    negative = dataclasses.replace(plain, negative_prompt="blurry, dark")

    without = await sdxl.generate(plain, GenerationControl())
    with_negative = await sdxl.generate(negative, GenerationControl())

    assert not np.array_equal(pixels(without[0]), pixels(with_negative[0]))


async def test_generate_after_close_is_unavailable(tiny_dirs: dict[str, Path]) -> None:
    backend = await LocalBackend.load(tiny_flux_spec(), tiny_dirs["flux"], device="cpu")
    await backend.aclose()

    with pytest.raises(BackendUnavailableError):
        await backend.generate(
            ResolvedRequest(prompt="a cat", size=ImageSize(32, 32), count=1, seeds=(1,)), GenerationControl()
        )


async def test_model_describes_the_spec_on_cpu(flux: LocalBackend) -> None:
    assert flux.name == "local"
    assert flux.model.id == "black-forest-labs/FLUX.1-schnell"
    assert flux.model.backend == "local"
    assert flux.model.sizes == tiny_flux_spec().sizes
    assert flux.model.seconds_per_image == tiny_flux_spec().seconds_per_image_cpu
    assert flux.device == "cpu"
    assert not flux.offloaded


async def test_load_runs_fp32_on_cpu(flux: LocalBackend) -> None:
    assert flux.pipeline.transformer.dtype == torch.float32
    assert flux.pipeline.transformer.device.type == "cpu"


@pytest.mark.parametrize("speedups", [frozenset({"fuse_qkv"}), frozenset({"channels_last", "fuse_qkv"})])
async def test_load_with_speedups_still_generates(tiny_dirs: dict[str, Path], speedups: frozenset[str]) -> None:
    backend = await LocalBackend.load(tiny_sdxl_spec(), tiny_dirs["sdxl"], device="cpu", speedups=speedups)
    try:
        images = await backend.generate(
            ResolvedRequest(prompt="a cat", size=ImageSize(32, 32), count=1, seeds=(1,)), GenerationControl()
        )
    finally:
        await backend.aclose()

    assert images[0].image.size == (32, 32)


async def test_load_reads_the_hub_variant_files(tmp_path: Path) -> None:
    folder = save_tiny_sdxl(tmp_path / "sdxl-fp16", variant="fp16")
    assert (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()

    backend = await LocalBackend.load(tiny_sdxl_spec(), folder, device="cpu")
    try:
        images = await backend.generate(
            ResolvedRequest(prompt="a cat", size=ImageSize(32, 32), count=1, seeds=(1,)), GenerationControl()
        )
    finally:
        await backend.aclose()

    assert images[0].image.size == (32, 32)


async def test_load_unknown_speedup_is_configuration_error(tiny_dirs: dict[str, Path]) -> None:
    with pytest.raises(ConfigurationError) as caught:
        await LocalBackend.load(tiny_flux_spec(), tiny_dirs["flux"], device="cpu", speedups=frozenset({"warp"}))

    assert caught.value.field == "local_speedups"


async def test_load_fp8_on_cpu_is_configuration_error(tiny_dirs: dict[str, Path]) -> None:
    with pytest.raises(ConfigurationError) as caught:
        await LocalBackend.load(tiny_flux_spec(), tiny_dirs["flux"], device="cpu", speedups=frozenset({"fp8"}))

    assert caught.value.field == "local_speedups"


async def test_load_other_pipeline_than_spec_is_configuration_error(tiny_dirs: dict[str, Path]) -> None:
    with pytest.raises(ConfigurationError) as caught:
        await LocalBackend.load(tiny_sdxl_spec(), tiny_dirs["flux"], device="cpu")

    assert caught.value.field == "local_model"


async def test_load_missing_weights_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError):
        await LocalBackend.load(tiny_flux_spec(), tmp_path / "nothing-here", device="cpu")


async def test_from_pipeline_makes_the_same_images_as_load(tiny_dirs: dict[str, Path], flux: LocalBackend) -> None:
    in_memory = await LocalBackend.from_pipeline(tiny_flux_spec(), tiny_flux_pipeline(), device="cpu")
    try:
        request = ResolvedRequest(prompt="a lighthouse", size=ImageSize(48, 32), count=1, seeds=(7,))
        mine = await in_memory.generate(request, GenerationControl())
        loaded = await flux.generate(request, GenerationControl())
    finally:
        await in_memory.aclose()

    assert np.array_equal(pixels(mine[0]), pixels(loaded[0]))


async def test_from_pipeline_other_pipeline_than_spec_is_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as caught:
        await LocalBackend.from_pipeline(tiny_sdxl_spec(), tiny_flux_pipeline(), device="cpu")

    assert caught.value.field == "local_model"


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "mps"])
def test_resolve_device_unknown_is_configuration_error(device: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve_device(device)

    assert caught.value.field == "compute_device"


def test_resolve_device_auto_picks_cuda_when_available() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"

    assert resolve_device("auto").type == expected
    assert resolve_device("CPU").type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is missing")
def test_resolve_device_cuda_without_gpu_is_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="sees no CUDA GPU"):
        resolve_device("cuda")


@pytest.mark.gpu
@needs_cuda
async def test_load_on_cuda_uses_bf16_for_flux_and_generates(tiny_dirs: dict[str, Path]) -> None:
    backend = await LocalBackend.load(tiny_flux_spec(), tiny_dirs["flux"], device="cuda")
    try:
        assert backend.pipeline.transformer.dtype == torch.bfloat16
        assert backend.pipeline.transformer.device.type == "cuda"
        request = ResolvedRequest(prompt="a cat", size=ImageSize(48, 32), count=2, seeds=(1, 2))
        images = await backend.generate(request, GenerationControl())
        again = await backend.generate(request, GenerationControl())
    finally:
        await backend.aclose()

    assert backend.pipeline is None  # released by aclose
    assert [image.image.size for image in images] == [(48, 32), (48, 32)]
    assert np.array_equal(pixels(images[0]), pixels(again[0]))
    assert not np.array_equal(pixels(images[0]), pixels(images[1]))


@pytest.mark.gpu
@needs_cuda
async def test_load_on_cuda_uses_fp16_for_sdxl(tiny_dirs: dict[str, Path]) -> None:
    backend = await LocalBackend.load(tiny_sdxl_spec(), tiny_dirs["sdxl"], device="cuda")
    try:
        assert backend.pipeline.unet.dtype == torch.float16
        assert backend.pipeline.unet.device.type == "cuda"
        images = await backend.generate(
            ResolvedRequest(prompt="a cat", size=ImageSize(64, 32), count=3, seeds=(1, 2, 3)), GenerationControl()
        )
    finally:
        await backend.aclose()

    assert [image.image.size for image in images] == [(64, 32)] * 3


@pytest.mark.gpu
@needs_cuda
async def test_generate_real_cuda_out_of_memory_becomes_gpu_error(tiny_dirs: dict[str, Path]) -> None:
    huge = ImageSize(16384, 16384)  # a 4 GB activation in the UNet's first block, over the cap set below
    spec = dataclasses.replace(tiny_sdxl_spec(), sizes=(*tiny_sdxl_spec().sizes, huge))
    backend = await LocalBackend.load(spec, tiny_dirs["sdxl"], device="cuda")
    device = torch.device(backend.device)
    try:
        torch.cuda.set_per_process_memory_fraction(0.03, device)
        try:
            with pytest.raises(GpuOutOfMemoryError):
                await backend.generate(
                    ResolvedRequest(prompt="a cat", size=huge, count=1, seeds=(1,), steps=1), GenerationControl()
                )
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
        images = await backend.generate(
            ResolvedRequest(prompt="a cat", size=ImageSize(32, 32), count=1, seeds=(1,)), GenerationControl()
        )
    finally:
        await backend.aclose()

    assert len(images) == 1


@pytest.mark.gpu
@needs_cuda
async def test_generate_real_cuda_out_of_memory_in_a_batch_gives_user_message_and_next_works(
    tiny_dirs: dict[str, Path],
) -> None:
    huge = ImageSize(4096, 4096)  # 4M tokens: a 256 MB activation in the first layer, over the cap set below
    spec = dataclasses.replace(tiny_flux_spec(), sizes=(*tiny_flux_spec().sizes, huge))
    backend = await LocalBackend.load(spec, tiny_dirs["flux"], device="cuda", max_batch=4)
    device = torch.device(backend.device)
    try:
        assert not backend.offloaded
        torch.cuda.empty_cache()
        cap = (torch.cuda.memory_reserved(device) + 128 * 1024**2) / torch.cuda.get_device_properties(
            device
        ).total_memory
        torch.cuda.set_per_process_memory_fraction(cap, device)
        try:
            with pytest.raises(GpuOutOfMemoryError) as caught:
                await backend.generate(
                    ResolvedRequest(prompt="a cat", size=huge, count=8, seeds=tuple(range(8)), steps=1),
                    GenerationControl(),
                )
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
        images = await backend.generate(
            ResolvedRequest(prompt="a cat", size=ImageSize(48, 32), count=2, seeds=(1, 2)), GenerationControl()
        )
    finally:
        await backend.aclose()

    assert caught.value.user_message.startswith("Image too large for this server's GPU")
    assert isinstance(caught.value.__cause__, torch.cuda.OutOfMemoryError)
    assert [image.image.size for image in images] == [(48, 32), (48, 32)]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])])
async def test_generate_cancelled_mid_run_stops_within_one_step(tiny_dirs: dict[str, Path], device: str) -> None:
    backend = await LocalBackend.load(tiny_flux_spec(), tiny_dirs["flux"], device=device)
    starts: list[float] = []
    first_step = threading.Event()

    def slow_step(_module: Any, _args: Any) -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        time.sleep(0.05)  # a real model's step: long enough for the cancellation to land mid-run
        starts.append(time.perf_counter())
        first_step.set()

    backend.pipeline.transformer.register_forward_pre_hook(slow_step)
    control = GenerationControl()
    request = ResolvedRequest(prompt="a cat", size=ImageSize(32, 32), count=1, seeds=(1,), steps=8)
    try:
        generation = asyncio.ensure_future(backend.generate(request, control))
        assert await asyncio.to_thread(first_step.wait, 10)
        await asyncio.sleep(0.08)  # into the second step
        cancelled_at = time.perf_counter()
        control.cancel()
        with pytest.raises(GenerationCancelledError):
            await generation
        stopped_at = time.perf_counter()
        images = await backend.generate(dataclasses.replace(request, steps=1), GenerationControl())
    finally:
        await backend.aclose()

    assert 1 <= len([start for start in starts if start < cancelled_at]) < 8
    assert len([start for start in starts if cancelled_at < start < stopped_at]) <= 1
    assert stopped_at - cancelled_at < 0.5
    assert len(images) == 1
