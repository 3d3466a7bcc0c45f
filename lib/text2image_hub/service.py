"""ImageService: the one generation path for Nextcloud tasks and the /v1 API.

It resolves a ``GenerationSpec`` against the active model (size, steps, prompt length, seeds), chooses the backend
from the admin's config (local, remote, or local falling back to remote), lets one local job use the GPU at a time,
and encodes the results as PNGs with provenance metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from .admin import RuntimeConfig
from .backends import Backend, GenerationControl, GenerationRequest, LocalModelStatus, ModelInfo
from .errors import (
    BackendUnavailableError,
    ConfigurationError,
    GenerationError,
    InvalidRequestError,
    NotFoundError,
    Text2ImageError,
)
from .imaging import ImageSize, Provenance, encode_png, sizes_text
from .metrics import Metrics

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int], Awaitable[None]]
MAX_SEED = 2**32


@dataclass(frozen=True)
class GenerationSpec:
    """What a caller asks for, before it is resolved against a model."""

    prompt: str
    count: int = 1
    size: ImageSize | None = None
    seeds: tuple[int, ...] | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    model: str | None = None
    watermark: bool = True
    source: str = "task"


@dataclass(frozen=True)
class RenderedImage:
    png: bytes
    seed: int


@dataclass(frozen=True)
class GenerationResult:
    images: tuple[RenderedImage, ...]
    model: str
    backend: str
    size: ImageSize
    seconds: float

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(image.seed for image in self.images)


class BackendSet(Protocol):
    """Where the service gets its backends: the configured local model and the remote one for the current config."""

    def local_model(self, config: RuntimeConfig) -> ModelInfo:
        """The configured local model, loaded or not; ``ConfigurationError`` when the config or folder is wrong."""
        ...

    async def local(self, config: RuntimeConfig) -> Backend:
        """The loaded local backend; ``BackendUnavailableError`` (downloading, failed) or ``ConfigurationError``."""
        ...

    def local_status(self, config: RuntimeConfig) -> LocalModelStatus:
        """Where the configured local model stands (downloading, loading, ready, failed, …)."""
        ...

    def remote(self, config: RuntimeConfig) -> Backend:
        """The remote backend for the configured account (shared limits); raises ``ConfigurationError``."""
        ...

    async def prepare(self, config: RuntimeConfig, progress: ProgressCallback | None = None) -> None:
        """Start what the configured local model needs; with ``progress`` (``/init``) wait for its download.

        Never raises for a failed download or load: those are kept and reported by ``local_status``.
        """
        ...

    async def ready(self, config: RuntimeConfig) -> bool:
        """Whether the configured backend can take work now (the local model loaded, the remote service answering)."""
        ...

    async def aclose(self) -> None: ...


class ImageService:
    def __init__(self, backends: BackendSet, app_version: str, metrics: Metrics | None = None) -> None:
        self._backends = backends
        self._app_version = app_version
        self._metrics = metrics or Metrics()
        self._gpu = asyncio.Lock()

    @property
    def backends(self) -> BackendSet:
        return self._backends

    async def models(self, config: RuntimeConfig) -> list[ModelInfo]:
        """The models usable with this config, the primary (the one tasks use) first."""
        found: list[ModelInfo] = []
        if config.backend != "remote":
            with contextlib.suppress(ConfigurationError):
                found.append(self._backends.local_model(config))
        if _remote_in_play(config):
            with contextlib.suppress(ConfigurationError):
                found.append(self._backends.remote(config).model)
        if config.backend == "local_then_remote" and self._backends.local_status(config).failed:
            found.reverse()  # the remote model is the one that works now
        return found

    async def primary_model(self, config: RuntimeConfig) -> ModelInfo:
        """The model tasks run on with this config (the provider declares its sizes and runtime); nothing is loaded."""
        if config.backend == "remote":
            return self._backends.remote(config).model
        if config.backend == "local_then_remote" and self._backends.local_status(config).failed:
            return self._backends.remote(config).model
        return self._backends.local_model(config)

    def task_slots(self, config: RuntimeConfig) -> int:
        """How many tasks may run at once: one for a GPU, several for a rate-limited remote service."""
        return 1 if config.backend == "local" else 4

    async def generate(
        self, spec: GenerationSpec, config: RuntimeConfig, control: GenerationControl | None = None
    ) -> GenerationResult:
        """Make the images ``spec`` asks for with ``config``'s backend; counted in the metrics by ``spec.source``."""
        self._metrics.generation_started(spec.source)
        failure = "INTERNAL_ERROR"
        result: GenerationResult | None = None
        try:
            result = await self._generate(spec, config, control or GenerationControl())
        except Text2ImageError as exc:
            failure = exc.code
            raise
        except asyncio.CancelledError:
            failure = "CANCELLED"
            raise
        finally:
            if result is None:
                self._metrics.generation_failed(spec.source, failure)
            else:
                self._metrics.generation_finished(spec.source, result.backend, len(result.images), result.seconds)
        return result

    async def _generate(
        self, spec: GenerationSpec, config: RuntimeConfig, control: GenerationControl
    ) -> GenerationResult:
        started = time.perf_counter()
        if spec.model is not None:
            backend, use_gpu_lock = await self._backend_for_model(spec.model, config)
            result = await self._run(backend, spec, config, control, gpu=use_gpu_lock)
        elif config.backend == "remote":
            result = await self._run(self._backends.remote(config), spec, config, control, gpu=False)
        elif config.backend == "local":
            result = await self._run(await self._backends.local(config), spec, config, control, gpu=True)
        else:
            result = await self._local_then_remote(spec, config, control)
        seconds = time.perf_counter() - started
        logger.debug(
            "generated %d image(s) %s on %s/%s in %.2f s (%s)",
            len(result.images),
            result.size,
            result.backend,
            result.model,
            seconds,
            spec.source,
        )
        return replace(result, seconds=seconds)

    async def _backend_for_model(self, model_id: str, config: RuntimeConfig) -> tuple[Backend, bool]:
        if config.backend != "remote":
            with contextlib.suppress(ConfigurationError):
                if self._backends.local_model(config).id == model_id:
                    return await self._backends.local(config), True
        if _remote_in_play(config):
            remote = self._backends.remote(config)
            if remote.model.id == model_id:
                return remote, False
        raise NotFoundError(
            f"The model '{model_id[:100]}' does not exist or is not enabled.", code="MODEL_NOT_FOUND", param="model"
        )

    async def _local_then_remote(
        self, spec: GenerationSpec, config: RuntimeConfig, control: GenerationControl
    ) -> GenerationResult:
        try:
            local = await self._backends.local(config)
        except (BackendUnavailableError, ConfigurationError) as exc:
            logger.warning("local model unavailable (%s): the task runs on the remote backend", exc)
            return await self._run(self._backends.remote(config), spec, config, control, gpu=False)
        try:
            await asyncio.wait_for(self._gpu.acquire(), timeout=config.local_wait_limit)
        except TimeoutError:
            logger.warning(
                "local GPU busy for more than %.0f s: the task runs on the remote backend", config.local_wait_limit
            )
            return await self._run(self._backends.remote(config), spec, config, control, gpu=False)
        try:
            return await self._run(local, spec, config, control, gpu=False)
        except (GenerationError, BackendUnavailableError) as exc:
            logger.warning("local backend failed (%s): the task runs on the remote backend", exc)
        finally:
            self._gpu.release()
        return await self._run(self._backends.remote(config), spec, config, control, gpu=False)

    async def _run(
        self, backend: Backend, spec: GenerationSpec, config: RuntimeConfig, control: GenerationControl, *, gpu: bool
    ) -> GenerationResult:
        request = self.resolve(spec, config, backend.model)
        control.raise_if_cancelled()
        if gpu:
            async with self._gpu:
                images = await backend.generate(request, control)
        else:
            images = await backend.generate(request, control)
        control.raise_if_cancelled()
        prompt = request.prompt if config.include_prompt_in_metadata else None
        watermark = spec.watermark and config.watermark

        def encode_all() -> tuple[RenderedImage, ...]:
            return tuple(
                RenderedImage(
                    encode_png(
                        generated.image,
                        Provenance(
                            backend.model.id, backend.name, generated.seed, request.size, self._app_version, prompt
                        ),
                        watermark=watermark,
                    ),
                    generated.seed,
                )
                for generated in images
            )

        rendered = await asyncio.to_thread(encode_all)
        return GenerationResult(rendered, backend.model.id, backend.name, request.size, 0.0)

    def resolve(self, spec: GenerationSpec, config: RuntimeConfig, model: ModelInfo) -> GenerationRequest:
        """Check ``spec`` against ``model`` and fill in defaults; bad input is an ``InvalidRequestError``."""
        size = spec.size or (config.default_size if config.default_size in model.sizes else None) or model.default_size
        if size not in model.sizes:
            raise InvalidRequestError(
                f"The size {size} is not supported by {model.id}. Supported sizes: {sizes_text(model.sizes)}.",
                code="INVALID_SIZE",
                param="size",
            )
        prompt = spec.prompt
        if model.max_prompt_length is not None and len(prompt) > model.max_prompt_length:
            if config.prompt_length_policy == "reject":
                raise InvalidRequestError(
                    f"The prompt is {len(prompt)} characters long; {model.id} accepts at most "
                    f"{model.max_prompt_length}. Please shorten it.",
                    code="PROMPT_TOO_LONG",
                    param="prompt",
                )
            prompt = prompt[: model.max_prompt_length]
        steps = spec.steps if spec.steps is not None else (config.default_steps or None)
        if steps is not None and model.steps is not None and not model.steps.minimum <= steps <= model.steps.maximum:
            if spec.steps is not None:
                raise InvalidRequestError(
                    f"{model.id} takes {model.steps.minimum} to {model.steps.maximum} steps.",
                    code="INVALID_STEPS",
                    param="steps",
                )
            steps = None  # the admin default does not fit this model: use the model's own
        if spec.negative_prompt and not model.supports_negative_prompt:
            raise InvalidRequestError(
                f"{model.id} does not support a negative prompt.", code="UNSUPPORTED_PARAMETER", param="negative_prompt"
            )
        if spec.seeds is not None and len(spec.seeds) != spec.count:
            raise InvalidRequestError("Give one seed per image.", code="INVALID_SEEDS", param="seeds")
        seeds = spec.seeds if spec.seeds is not None else tuple(secrets.randbelow(MAX_SEED) for _ in range(spec.count))
        return GenerationRequest(
            prompt=prompt,
            size=size,
            seeds=seeds,
            steps=steps,
            guidance_scale=spec.guidance_scale,
            negative_prompt=spec.negative_prompt or None,
        )


def _remote_in_play(config: RuntimeConfig) -> bool:
    """The remote backend serves this config only when it is chosen (alone or as the fallback): with ``local``, no
    prompt ever leaves the server, even when a token is saved."""
    return config.backend != "local"
