"""ImageService: the one generation path for Nextcloud tasks and the /v1 API.

It finds the model a request names (one lookup), checks the request against what that model accepts (``resolve``,
the only place that does), runs it on the backend the admin's config chooses (local, remote, or local falling back
to remote), and encodes the results as PNGs with provenance metadata. Every generation is counted in the metrics
here, whoever asked for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, replace
from typing import Literal

from .admin import RuntimeConfig
from .backends import MAX_IMAGES, Backend, BackendSet, GenerationControl, ModelInfo, ResolvedRequest
from .errors import (
    BackendBusyError,
    BackendUnavailableError,
    ConfigurationError,
    GenerationError,
    InvalidRequestError,
    Text2ImageError,
)
from .i18n import Message, _
from .imaging import ImageSize, Provenance, encode_png, sizes_text
from .metrics import Metrics
from .styles import find_style, fit

logger = logging.getLogger(__name__)

MAX_SEED = 2**32
OPENAI_MODEL_PREFIXES = ("dall-e-", "gpt-image", "chatgpt-image")
"""OpenAI's model names: clients written for OpenAI (Nextcloud's own among them) send them; they mean our primary."""
Source = Literal["task", "api"]
MAX_TASK_SLOTS = 32


@dataclass(frozen=True)
class ImageRequest:
    """What a caller asks for, before it is checked against a model (``ImageService.resolve`` makes a
    ``ResolvedRequest`` of it). ``model`` None: the primary model."""

    prompt: str
    count: int = 1
    size: ImageSize | None = None
    seeds: tuple[int, ...] | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    model: str | None = None
    watermark: bool = True
    source: Source = "task"
    style: str | None = None
    """A style id (``styles.STYLE_IDS``); None or ``none``: the prompt as written."""


@dataclass(frozen=True)
class RenderedImage:
    png: bytes
    seed: int | None


@dataclass(frozen=True)
class GenerationResult:
    images: tuple[RenderedImage, ...]
    model: str
    backend: str
    size: ImageSize
    seconds: float

    @property
    def seeds(self) -> tuple[int, ...] | None:
        """The images' seeds; None when the model takes none (no seed was used, none is claimed)."""
        seeds = tuple(image.seed for image in self.images if image.seed is not None)
        return seeds if len(seeds) == len(self.images) else None


class ImageService:
    def __init__(self, backends: BackendSet, app_version: str, metrics: Metrics | None = None) -> None:
        self._backends = backends
        self._app_version = app_version
        self._metrics = metrics or Metrics()

    async def models(self, config: RuntimeConfig) -> list[ModelInfo]:
        """The models usable with this config, the primary (the one tasks use) first."""
        found: list[ModelInfo] = []
        if config.backend != "remote":
            with contextlib.suppress(ConfigurationError):
                found.append(self._backends.local_model(config))
        if _remote_in_play(config):
            with contextlib.suppress(ConfigurationError):
                found.append(self._backends.remote(config).model)
        if self._remote_first(config):
            found.reverse()
        return found

    async def primary_model(self, config: RuntimeConfig) -> ModelInfo:
        """The model tasks run on with this config (the provider declares its sizes and runtime); nothing is loaded."""
        return self._backends.remote(config).model if self._remote_first(config) else self._backends.local_model(config)

    def _remote_first(self, config: RuntimeConfig) -> bool:
        """Whether the remote model is the primary: chosen, or the fallback while the local model has failed."""
        return config.backend == "remote" or (
            config.backend == "local_then_remote" and self._backends.local_status(config).failed
        )

    def task_slots(self, config: RuntimeConfig) -> int:
        """How many tasks may be generating at once: one for a GPU; for a remote service, enough to use its whole
        burst (a task makes at least one image), so that its rate limit, not our slots, sets the pace."""
        if config.backend == "local":
            return 1
        try:
            remote = self._backends.remote(config).model
        except ConfigurationError:
            return 1
        return max(4, min(MAX_TASK_SLOTS, remote.concurrency))

    async def generate(
        self, asked: ImageRequest, config: RuntimeConfig, control: GenerationControl | None = None
    ) -> GenerationResult:
        """Make the images ``asked`` for with ``config``'s backend; counted in the metrics by ``asked.source``."""
        self._metrics.generation_started(asked.source)
        failure = "INTERNAL_ERROR"
        result: GenerationResult | None = None
        try:
            result = await self._generate(asked, config, control or GenerationControl())
        except Text2ImageError as exc:
            failure = exc.code
            raise
        except asyncio.CancelledError:
            failure = "CANCELLED"
            raise
        finally:
            if result is None:
                self._metrics.generation_failed(asked.source, failure)
            else:
                self._metrics.generation_finished(asked.source, result.backend, len(result.images), result.seconds)
        return result

    async def _generate(
        self, asked: ImageRequest, config: RuntimeConfig, control: GenerationControl
    ) -> GenerationResult:
        started = time.perf_counter()
        config.prompt_policy().check(asked.prompt)  # before anything is generated or sent anywhere
        named = await self._named_backend(asked.model, config)
        if named is not None:
            result = await self._run(named, asked, config, control)
        elif config.backend == "remote":
            result = await self._run(self._backends.remote(config), asked, config, control)
        elif config.backend == "local":
            result = await self._run(await self._backends.local(config), asked, config, control)
        else:
            result = await self._local_then_remote(asked, config, control)
        seconds = time.perf_counter() - started
        logger.debug(
            "generated %d image(s) %s on %s/%s in %.2f s (%s)",
            len(result.images),
            result.size,
            result.backend,
            result.model,
            seconds,
            asked.source,
        )
        return replace(result, seconds=seconds)

    async def _named_backend(self, name: str | None, config: RuntimeConfig) -> Backend | None:
        """The backend of the model ``name``; None for the primary (no name, or one of OpenAI's).

        An unknown name is a 400 ``MODEL_NOT_FOUND`` (not a 404: OpenAI clients read a 404 as "no image API").
        """
        if name is None or not name.strip():
            return None
        name = name.strip()
        models = await self.models(config)
        for model in models:
            if model.id == name:  # loading it may fail: that error, not "no such model"
                return await self._backends.local(config) if model.backend == "local" else self._backends.remote(config)
        if name.lower().startswith(OPENAI_MODEL_PREFIXES):
            return None
        raise InvalidRequestError(
            unknown_model(name, [model.id for model in models]), code="MODEL_NOT_FOUND", param="model"
        )

    async def _local_then_remote(
        self, asked: ImageRequest, config: RuntimeConfig, control: GenerationControl
    ) -> GenerationResult:
        try:
            local = await self._backends.local(config)
            return await self._run(local, asked, config, control, wait_limit=config.local_wait_limit)
        except BackendBusyError:
            logger.info("the GPU stayed busy for %.0f s: the task runs on the remote backend", config.local_wait_limit)
        except (GenerationError, BackendUnavailableError, ConfigurationError) as exc:
            logger.warning("local backend unavailable or failing (%s): the task runs on the remote backend", exc)
        return await self._run(self._backends.remote(config), asked, config, control)

    async def _run(
        self,
        backend: Backend,
        asked: ImageRequest,
        config: RuntimeConfig,
        control: GenerationControl,
        *,
        wait_limit: float | None = None,
    ) -> GenerationResult:
        request = self.resolve(asked, config, backend.model)
        control.raise_if_cancelled()
        images = await backend.generate(request, control, wait_limit=wait_limit)
        control.raise_if_cancelled()
        prompt = request.prompt if config.include_prompt_in_metadata else None
        watermark = asked.watermark and config.watermark

        def encode_all() -> tuple[RenderedImage, ...]:
            return tuple(
                RenderedImage(
                    encode_png(
                        generated.image,
                        Provenance(
                            backend.model.id,
                            backend.name,
                            generated.seed,
                            request.size,
                            self._app_version,
                            prompt,
                            request.style,
                        ),
                        watermark=watermark,
                    ),
                    generated.seed,
                )
                for generated in images
            )

        rendered = await asyncio.to_thread(encode_all)
        return GenerationResult(rendered, backend.model.id, backend.name, request.size, 0.0)

    def resolve(self, asked: ImageRequest, config: RuntimeConfig, model: ModelInfo) -> ResolvedRequest:
        """Check ``asked`` against everything ``model`` accepts and fill in defaults: the only check there is.

        Bad input is an ``InvalidRequestError`` naming the limit. A parameter the model cannot take is refused with
        ``UNSUPPORTED_PARAMETER`` rather than dropped; only a task's seed is dropped for a model that takes none
        (the provider then does not declare the seed input: a task can carry one only from before a switch).
        """
        size = self._size(asked, config, model)
        # a task's style is dropped when styles are off (the provider then declares none: one from before the switch)
        style = find_style(asked.style, enabled=config.styles) if config.styles or asked.source == "api" else None
        most = min(MAX_IMAGES, model.max_images_per_request)
        if not 1 <= asked.count <= most:
            raise InvalidRequestError(
                _("{model} makes 1 to {most} images per request.", model=model.id, most=most),
                code="INVALID_N",
                param="n",
            )
        _refuse_unsupported(asked, model)
        styled = fit(asked.prompt, asked.negative_prompt, style, model, config.prompt_length_policy)
        if asked.seeds is not None and len(asked.seeds) != asked.count:
            raise InvalidRequestError(_("Give one seed per image."), code="INVALID_SEEDS", param="seeds")
        seeds = None
        if model.accepts_seed:
            seeds = asked.seeds or tuple(secrets.randbelow(MAX_SEED) for _ in range(asked.count))
        return ResolvedRequest(
            prompt=styled.prompt,
            size=size,
            count=asked.count,
            seeds=seeds,
            steps=self._steps(asked, config, model),
            guidance_scale=asked.guidance_scale,
            negative_prompt=styled.negative_prompt,
            style=style.id if style is not None else None,
        )

    def _size(self, asked: ImageRequest, config: RuntimeConfig, model: ModelInfo) -> ImageSize:
        size = asked.size or (config.default_size if config.default_size in model.sizes else None) or model.default_size
        if size not in model.sizes:
            raise InvalidRequestError(
                _(
                    "The size {size} is not supported by {model}. Supported sizes: {sizes}.",
                    size=str(size),
                    model=model.id,
                    sizes=sizes_text(model.sizes),
                ),
                code="INVALID_SIZE",
                param="size",
            )
        return size

    def _steps(self, asked: ImageRequest, config: RuntimeConfig, model: ModelInfo) -> int | None:
        if model.steps is None:
            return None  # checked by _refuse_unsupported; the admin's default steps are for local models
        steps = asked.steps if asked.steps is not None else (config.default_steps or None)
        if steps is None or model.steps.minimum <= steps <= model.steps.maximum:
            return steps
        if asked.steps is not None:
            raise InvalidRequestError(
                _(
                    "{model} takes {low} to {high} steps.",
                    model=model.id,
                    low=model.steps.minimum,
                    high=model.steps.maximum,
                ),
                code="INVALID_STEPS",
                param="steps",
            )
        return None  # the admin default does not fit this model: use the model's own


def _refuse_unsupported(asked: ImageRequest, model: ModelInfo) -> None:
    """Parameters ``model`` cannot take, refused by name (tasks never send them: see ``resolve``)."""
    if asked.steps is not None and model.steps is None:
        raise _unsupported(_("{model} takes no 'steps' (the service decides them).", model=model.id), "steps")
    if asked.guidance_scale is not None and not 0.0 <= asked.guidance_scale <= model.max_guidance:
        if model.max_guidance == 0.0:
            raise _unsupported(_("{model} takes no guidance scale.", model=model.id), "guidance_scale")
        raise InvalidRequestError(
            _("{model} takes a guidance scale from 0 to {high}.", model=model.id, high=f"{model.max_guidance:g}"),
            code="INVALID_GUIDANCE",
            param="guidance_scale",
        )
    if asked.negative_prompt and not model.supports_negative_prompt:
        raise _unsupported(_("{model} does not support a negative prompt.", model=model.id), "negative_prompt")
    if asked.seeds is not None and not model.accepts_seed and asked.source == "api":
        raise _unsupported(
            _("{model} takes no seed: its images cannot be made again from one.", model=model.id), "seed"
        )


def _unsupported(message: Message, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, code="UNSUPPORTED_PARAMETER", param=param)


def unknown_model(name: str, available: list[str]) -> Message:
    """What a caller naming a model we do not serve reads."""
    return _(
        "The model '{name}' does not exist or is not enabled. Available: {models}.",
        name=name[:100],
        models=", ".join(available) or "none",
    )


def _remote_in_play(config: RuntimeConfig) -> bool:
    """The remote backend serves this config only when it is chosen (alone or as the fallback): with ``local``, no
    prompt ever leaves the server, even when a token is saved."""
    return config.backend != "local"
