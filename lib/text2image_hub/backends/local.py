"""The local backend: one diffusers pipeline on one GPU (or the CPU), one generation at a time.

Diffusers pipelines are not thread-safe, and a GPU runs one generation well rather than two badly: every call into
the pipeline (loading included) runs on the backend's single worker thread, behind an asyncio lock, so the event loop
keeps answering while an image is made. Progress comes from the pipeline's step callback; a cancelled generation is
stopped from that callback before the next step (and before the VAE decode). Seeds give one CPU
``torch.Generator`` per image, so the same seed, prompt, size and settings make the same image on the same device.

Loading, placement on the device (offload, dtype) and the opt-in speed-ups (``LOCAL_SPEEDUPS``) are
``placement.py``'s; this module runs generations.

This module imports torch and diffusers: import it only when the local backend is used.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from ..errors import (
    BackendBusyError,
    BackendUnavailableError,
    GenerationCancelledError,
    GenerationError,
    GpuOutOfMemoryError,
)
from ..imaging import ImageSize
from . import GeneratedImage, GenerationControl, ModelInfo, ResolvedRequest
from .catalog import LocalModelSpec, check_speedups
from .placement import GIB, adopt_pipeline, check_fp8, load_pipeline, resolve_device, route_library_logging

logger = logging.getLogger(__name__)

MAX_BATCH = 4
"""At most this many images share one pipeline call (batching gains little beyond, and delays the first image)."""
TILING_PIXELS = 1024 * 1024
"""Above this many pixels the VAE decodes in tiles, which bounds its memory."""
_DENOISE_SHARE = 0.97
"""The part of the progress bar the denoising steps fill; the VAE decode fills the rest."""
_MEMORY_HEADROOM = 0.9


class _Interrupted(Exception):
    """Raised from the step callback to leave a cancelled pipeline call at once."""


class LocalBackend:
    """A loaded diffusers pipeline behind the ``Backend`` protocol. Build it with ``await LocalBackend.load(...)``."""

    def __init__(
        self,
        spec: LocalModelSpec,
        pipe: Any,
        device: torch.device,
        executor: ThreadPoolExecutor,
        *,
        offloaded: bool,
        max_batch: int | None,
    ) -> None:
        self._spec = spec
        self._pipe = pipe
        self._device = device
        self._executor = executor
        self._offloaded = offloaded
        self._max_batch = max_batch
        self._lock = asyncio.Lock()
        self._tiling = False
        self._closed = False

    @classmethod
    async def load(
        cls,
        spec: LocalModelSpec,
        model_dir: Path,
        *,
        device: str = "auto",
        speedups: frozenset[str] = frozenset(),
        max_batch: int | None = None,
    ) -> LocalBackend:
        """Load ``spec``'s pipeline from ``model_dir`` (no network) onto ``device``.

        ``max_batch`` caps how many images share one pipeline call; ``None`` decides from free GPU memory (and
        makes images one by one on the CPU, where batching gains nothing).
        """
        return await cls._start(
            spec, device, speedups, max_batch, lambda target, chosen: load_pipeline(spec, model_dir, target, chosen)
        )

    @classmethod
    async def from_pipeline(
        cls,
        spec: LocalModelSpec,
        pipe: Any,
        *,
        device: str = "auto",
        speedups: frozenset[str] = frozenset(),
        max_batch: int | None = None,
    ) -> LocalBackend:
        """Like ``load``, for a pipeline already built in memory (``bench/local.py`` builds random weights on the
        GPU rather than reading 33 GB from disk). It goes through the same dtype cast, placement (offload), speed-ups
        and compile warm-up; weights already on ``device`` stay there.
        """
        return await cls._start(
            spec, device, speedups, max_batch, lambda target, chosen: adopt_pipeline(pipe, spec, target, chosen)
        )

    @classmethod
    async def _start(
        cls,
        spec: LocalModelSpec,
        device: str,
        speedups: frozenset[str],
        max_batch: int | None,
        prepare: Callable[[torch.device, frozenset[str]], tuple[Any, bool]],
    ) -> LocalBackend:
        route_library_logging()
        chosen = check_speedups(speedups)
        target = resolve_device(device)
        if "fp8" in chosen:
            check_fp8(target)
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="t2i-local")
        loop = asyncio.get_running_loop()
        try:
            pipe, offloaded = await loop.run_in_executor(executor, prepare, target, chosen)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        backend = cls(spec, pipe, target, executor, offloaded=offloaded, max_batch=max_batch)
        if "compile" in chosen:
            start = time.perf_counter()
            request = ResolvedRequest(prompt="warm-up", size=spec.default_size, count=1, seeds=(0,))
            await backend.generate(request, GenerationControl())
            logger.info("Compiled %s in %.1f s", spec.id, time.perf_counter() - start)
        return backend

    @property
    def name(self) -> str:
        return "local"

    @property
    def model(self) -> ModelInfo:
        return self._spec.model_info(self._device.type)

    @property
    def spec(self) -> LocalModelSpec:
        return self._spec

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def offloaded(self) -> bool:
        """Whether model CPU offload is on (the GPU had too little free memory for the whole pipeline)."""
        return self._offloaded

    @property
    def pipeline(self) -> Any:
        """The diffusers pipeline (for benchmarks and tests; call it only through ``generate``)."""
        return self._pipe

    async def generate(
        self, request: ResolvedRequest, control: GenerationControl, *, wait_limit: float | None = None
    ) -> list[GeneratedImage]:
        """One generation at a time, on the backend's thread; ``wait_limit``: ``BackendBusyError`` when the GPU does
        not become free within that many seconds (the fallback to the remote service uses it)."""
        try:
            await asyncio.wait_for(self._lock.acquire(), wait_limit)
        except TimeoutError as exc:
            raise BackendBusyError(f"the GPU stayed busy for more than {wait_limit:.0f} s") from exc
        try:
            if self._closed:
                raise BackendUnavailableError("The local backend is closed.")
            control.raise_if_cancelled()
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self._executor, self._generate, request, control)
            try:
                return await future
            except asyncio.CancelledError:
                control.cancel()  # nobody waits for these images any more: stop the thread at the next step
                raise
        finally:
            self._lock.release()

    async def aclose(self) -> None:
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            await asyncio.get_running_loop().run_in_executor(self._executor, self._release)
            await asyncio.to_thread(self._executor.shutdown)

    def _release(self) -> None:
        self._pipe = None
        self._free_memory()

    def _batch_size(self, request: ResolvedRequest) -> int:
        """How many images one pipeline call makes: as many as free GPU memory holds, up to ``MAX_BATCH``."""
        if self._max_batch is not None:
            return min(self._max_batch, request.count)
        if self._device.type != "cuda" or self._offloaded:
            return 1
        free, _total = torch.cuda.mem_get_info(self._device)
        per_image = self._spec.image_memory_gb * GIB * request.size.pixels / self._spec.default_size.pixels
        fits = int(free * _MEMORY_HEADROOM // per_image)
        return max(1, min(request.count, MAX_BATCH, fits))

    def _set_vae_tiling(self, size: ImageSize) -> None:
        wanted = self._offloaded or size.pixels > TILING_PIXELS
        if wanted != self._tiling:
            if wanted:
                self._pipe.vae.enable_tiling()
            else:
                self._pipe.vae.disable_tiling()
            self._tiling = wanted

    def _free_memory(self) -> None:
        gc.collect()
        if self._device.type == "cuda":
            torch.cuda.empty_cache()

    def _generate(self, request: ResolvedRequest, control: GenerationControl) -> list[GeneratedImage]:
        """Runs on the worker thread."""
        if request.seeds is None:  # resolve gives a seed per image to every model that takes seeds, as this one does
            raise GenerationError(f"internal: a generation with {self._spec.id} came without seeds")
        start = time.perf_counter()
        steps = request.steps if request.steps is not None else self._spec.steps.default
        guidance = request.guidance_scale if request.guidance_scale is not None else self._spec.default_guidance
        self._set_vae_tiling(request.size)
        batch = self._batch_size(request)
        images: list[GeneratedImage] = []
        while len(images) < request.count:
            control.raise_if_cancelled()
            seeds = request.seeds[len(images) : len(images) + batch]
            try:
                made = self._call_pipeline(request, seeds, steps, guidance, control, done=len(images))
            except torch.cuda.OutOfMemoryError as exc:
                self._free_memory()
                if batch > 1:
                    logger.warning("Out of GPU memory at %d images of %s; going on one by one", batch, request.size)
                    batch = 1
                    continue
                raise GpuOutOfMemoryError(
                    f"The GPU ran out of memory making a {request.size} image with {self._spec.id} on {self._device}."
                ) from exc
            images.extend(GeneratedImage(image=image, seed=seed) for image, seed in zip(made, seeds, strict=True))
            control.report_progress(len(images) / request.count)
        logger.debug(
            "Made %d image(s) of %s in %d step(s), batch %d, in %.2f s",
            request.count,
            request.size,
            steps,
            batch,
            time.perf_counter() - start,
        )
        return images

    def _call_pipeline(
        self,
        request: ResolvedRequest,
        seeds: tuple[int, ...],
        steps: int,
        guidance: float,
        control: GenerationControl,
        *,
        done: int,
    ) -> list[Any]:
        total_steps = request.count * steps

        def on_step_end(_pipe: Any, step: int, _timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            finished = done * steps + (step + 1) * len(seeds)
            control.report_progress(_DENOISE_SHARE * finished / total_steps)
            if control.cancelled:
                raise _Interrupted
            return callback_kwargs

        kwargs: dict[str, Any] = {
            "prompt": request.prompt,
            "height": request.size.height,
            "width": request.size.width,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "num_images_per_prompt": len(seeds),
            "generator": [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds],
            "output_type": "pil",
            "callback_on_step_end": on_step_end,
        }
        if self._spec.max_sequence_length is not None:
            kwargs["max_sequence_length"] = self._spec.max_sequence_length
        if request.negative_prompt:
            kwargs["negative_prompt"] = request.negative_prompt
        try:
            output = self._pipe(**kwargs)
        except _Interrupted as exc:
            self._pipe.maybe_free_model_hooks()
            raise GenerationCancelledError("generation cancelled by the user") from exc
        except torch.cuda.OutOfMemoryError:
            raise
        except (RuntimeError, ValueError) as exc:
            raise GenerationError(f"{self._spec.id} failed to make the image: {exc}") from exc
        return list(output.images)
