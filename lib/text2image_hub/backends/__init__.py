"""The seam between the ImageService and the engines that make images.

A backend takes a fully resolved ``GenerationRequest`` (size checked, one seed per image) and returns PIL images.
It reports progress and learns of cancellation through a ``GenerationControl`` that is safe to use from the
backend's own thread: the worker polls ``control.progress`` and calls ``control.cancel()``; the backend writes
progress and calls ``control.raise_if_cancelled()`` between steps.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from ..errors import GenerationCancelledError

if TYPE_CHECKING:
    from PIL.Image import Image

    from ..imaging import ImageSize


@dataclass(frozen=True)
class StepRange:
    minimum: int
    maximum: int
    default: int


@dataclass(frozen=True)
class ModelInfo:
    """What a client or the provider declaration needs to know about one usable model."""

    id: str
    backend: str
    sizes: tuple[ImageSize, ...]
    default_size: ImageSize
    steps: StepRange | None
    default_guidance: float | None
    supports_negative_prompt: bool
    max_images_per_request: int
    seconds_per_image: float
    max_prompt_length: int | None = None
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
class GenerationRequest:
    """One fully validated generation: ``len(seeds)`` images of ``size``."""

    prompt: str
    size: ImageSize
    seeds: tuple[int, ...]
    steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None

    @property
    def count(self) -> int:
        return len(self.seeds)


@dataclass(frozen=True)
class GeneratedImage:
    image: Image
    seed: int


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
    """An engine that turns a ``GenerationRequest`` into images."""

    @property
    def name(self) -> str:
        """``local`` or ``remote``: recorded in metadata, logs and metrics."""
        ...

    @property
    def model(self) -> ModelInfo:
        """The model this backend runs now."""
        ...

    async def generate(self, request: GenerationRequest, control: GenerationControl) -> list[GeneratedImage]:
        """Make ``request.count`` images, in seed order. Raises ``Text2ImageError`` subclasses only."""
        ...

    async def aclose(self) -> None:
        """Release what the backend holds (GPU memory, threads)."""
        ...
