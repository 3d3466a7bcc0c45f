"""The seam between the ImageService and the engines that make images.

``ModelInfo`` says everything a model accepts; ``ImageService.resolve`` checks a request against it once, and a
backend takes the ``ResolvedRequest`` as it is (no checks of its own) and returns PIL images.
It reports progress and learns of cancellation through a ``GenerationControl`` that is safe to use from the
backend's own thread: the worker polls ``control.progress`` and calls ``control.cancel()``; the backend writes
progress and calls ``control.raise_if_cancelled()`` between steps.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from ..errors import GenerationCancelledError

if TYPE_CHECKING:
    from PIL.Image import Image

    from ..admin import RuntimeConfig
    from ..imaging import ImageSize

ProgressCallback = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class StepRange:
    minimum: int
    maximum: int
    default: int


MAX_IMAGES = 12
"""The most images one task or /v1 request asks for (Nextcloud's own bound for text2image tasks)."""

MODEL_DOWNLOADING = "MODEL_DOWNLOADING"
"""The error and status code while the local model's weights are downloading (not a failure: wait)."""


@dataclass(frozen=True)
class ModelInfo:
    """What a model accepts and costs: everything ``resolve``, clients and the provider declaration need."""

    id: str
    backend: str
    sizes: tuple[ImageSize, ...]
    default_size: ImageSize
    steps: StepRange | None
    """None: the model takes no ``steps`` (a remote service)."""
    default_guidance: float | None
    supports_negative_prompt: bool
    seconds_per_image: float
    max_guidance: float = 0.0
    """Guidance scales from 0 to this are accepted; 0: the model takes none (guidance-distilled, or remote)."""
    accepts_seed: bool = True
    """Whether a seed reaches the model (remote services mostly take none: then no seed is claimed either)."""
    max_images_per_request: int = MAX_IMAGES
    max_prompt_length: int | None = None
    concurrency: int = 1
    """Images it works on at once: 1 for a GPU; a remote service's burst (what its rate limit lets through)."""
    license: str = ""


ModelState = Literal["ready", "loading", "not_loaded", "downloading", "waiting", "missing", "download_failed", "failed"]


@dataclass(frozen=True)
class LocalModelStatus:
    """Where the configured local model stands. ``percent`` while downloading; ``reason`` when it failed."""

    model: str
    state: ModelState
    percent: int | None = None
    reason: str = ""

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def failed(self) -> bool:
        return self.state in ("failed", "download_failed")


@dataclass(frozen=True)
class ResolvedRequest:
    """One generation checked against its model: ``count`` images of ``size``; ``seeds`` (one per image) exactly
    when the model takes seeds."""

    prompt: str
    size: ImageSize
    count: int
    seeds: tuple[int, ...] | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    style: str | None = None
    """The style its prompt was written in (already applied to ``prompt``), for the PNG metadata."""


@dataclass(frozen=True)
class GeneratedImage:
    image: Image
    seed: int | None


class GenerationControl:
    """Progress and cancellation shared between a running generation and the code waiting for it (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._progress = 0.0
        self._cancelled = threading.Event()

    @property
    def progress(self) -> float:
        """Fraction done, 0.0 to 1.0."""
        with self._lock:
            return self._progress

    def report_progress(self, fraction: float) -> None:
        with self._lock:
            self._progress = min(max(fraction, self._progress), 1.0)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

    def raise_if_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise GenerationCancelledError("generation cancelled by the user")


class Backend(Protocol):
    """An engine that turns a ``ResolvedRequest`` into images."""

    @property
    def name(self) -> str:
        """``local`` or ``remote``: recorded in metadata, logs and metrics."""
        ...

    @property
    def model(self) -> ModelInfo:
        """The model this backend runs now."""
        ...

    async def generate(
        self, request: ResolvedRequest, control: GenerationControl, *, wait_limit: float | None = None
    ) -> list[GeneratedImage]:
        """Make ``request.count`` images, in seed order. Raises ``Text2ImageError`` subclasses only.

        ``wait_limit``: a backend that runs one generation at a time (the GPU) raises ``BackendBusyError`` when it
        cannot start within that many seconds (the fallback then goes remote); others ignore it.
        """
        ...

    async def aclose(self) -> None:
        """Release what the backend holds (GPU memory, threads)."""
        ...


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
