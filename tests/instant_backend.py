"""A test backend that makes solid-colour images at once, and a BackendSet serving it (lives in tests/, not lib/)."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

from PIL import Image

from text2image_hub.admin import RuntimeConfig
from text2image_hub.backends import Backend, GeneratedImage, GenerationControl, GenerationRequest, ModelInfo, StepRange
from text2image_hub.errors import BackendUnavailableError, Text2ImageError
from text2image_hub.imaging import ImageSize
from text2image_hub.service import ProgressCallback

SIZES = (ImageSize(256, 256), ImageSize(512, 512), ImageSize(1024, 1024), ImageSize(1024, 768))


def instant_model(
    backend: str = "local", model_id: str = "test/instant", sizes: tuple[ImageSize, ...] = SIZES
) -> ModelInfo:
    return ModelInfo(
        id=model_id,
        backend=backend,
        sizes=sizes,
        default_size=ImageSize(512, 512),
        steps=StepRange(1, 8, 4),
        default_guidance=0.0,
        supports_negative_prompt=backend == "local",
        max_images_per_request=12,
        seconds_per_image=1.0,
    )


@dataclass
class InstantBackend:
    """Solid colours from prompt + seed, in ``steps`` steps of ``step_seconds``; ``fail_with`` raises on every call."""

    backend_name: str = "local"
    model_id: str = "test/instant"
    steps: int = 4
    step_seconds: float = 0.0
    fail_with: Text2ImageError | Exception | None = None
    sizes: tuple[ImageSize, ...] = SIZES
    calls: list[GenerationRequest] = field(default_factory=list)
    steps_run: int = 0

    @property
    def name(self) -> str:
        return self.backend_name

    @property
    def model(self) -> ModelInfo:
        return instant_model(self.backend_name, self.model_id, self.sizes)

    async def generate(self, request: GenerationRequest, control: GenerationControl) -> list[GeneratedImage]:
        self.calls.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        for step in range(self.steps):
            control.raise_if_cancelled()
            if self.step_seconds:
                await asyncio.sleep(self.step_seconds)
            self.steps_run += 1
            control.report_progress((step + 1) / self.steps)
        return [GeneratedImage(_solid(request.prompt, seed, request.size), seed) for seed in request.seeds]

    async def aclose(self) -> None:
        return None


def _solid(prompt: str, seed: int, size: ImageSize) -> Image.Image:
    digest = hashlib.sha256(f"{prompt}|{seed}".encode()).digest()
    return Image.new("RGB", (size.width, size.height), (digest[0], digest[1], digest[2]))


@dataclass
class StaticBackends:
    """A BackendSet with fixed local and remote backends (either may be None)."""

    local_backend: Backend | None = field(default_factory=InstantBackend)
    remote_backend: Backend | None = None
    prepared: list[RuntimeConfig] = field(default_factory=list)

    async def local(self, config: RuntimeConfig) -> Backend | None:
        return self.local_backend

    def remote(self, config: RuntimeConfig) -> Backend:
        if self.remote_backend is None:
            raise BackendUnavailableError("no remote backend in this test")
        return self.remote_backend

    async def prepare(self, config: RuntimeConfig, progress: ProgressCallback, *, download: bool) -> None:
        self.prepared.append(config)
        for percent in (10, 50, 90):
            await progress(percent)

    async def ready(self, config: RuntimeConfig) -> bool:
        return True

    async def aclose(self) -> None:
        return None
