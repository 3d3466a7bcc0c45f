"""A test backend that makes solid-colour images at once, and a BackendSet serving it (lives in tests/, not lib/)."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

from PIL import Image

from text2image_hub.admin import RuntimeConfig
from text2image_hub.backends import (
    Backend,
    GeneratedImage,
    GenerationControl,
    LocalModelStatus,
    ModelInfo,
    ProgressCallback,
    ResolvedRequest,
    StepRange,
)
from text2image_hub.errors import BackendUnavailableError, ConfigurationError, Text2ImageError
from text2image_hub.imaging import ImageSize

SIZES = (ImageSize(256, 256), ImageSize(512, 512), ImageSize(1024, 1024), ImageSize(1024, 768))


def instant_model(
    backend: str = "local", model_id: str = "test/instant", sizes: tuple[ImageSize, ...] = SIZES
) -> ModelInfo:
    """A local model takes steps, guidance, a negative prompt and seeds; a remote one, like IONOS's, none of them."""
    local = backend == "local"
    return ModelInfo(
        id=model_id,
        backend=backend,
        sizes=sizes,
        default_size=ImageSize(512, 512),
        steps=StepRange(1, 8, 4) if local else None,
        default_guidance=0.0 if local else None,
        supports_negative_prompt=local,
        seconds_per_image=1.0,
        max_guidance=10.0 if local else 0.0,
        accepts_seed=local,
        concurrency=1 if local else 20,
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
    calls: list[ResolvedRequest] = field(default_factory=list)
    steps_run: int = 0

    @property
    def name(self) -> str:
        return self.backend_name

    @property
    def model(self) -> ModelInfo:
        return instant_model(self.backend_name, self.model_id, self.sizes)

    async def generate(
        self, request: ResolvedRequest, control: GenerationControl, *, wait_limit: float | None = None
    ) -> list[GeneratedImage]:
        self.calls.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        for step in range(self.steps):
            control.raise_if_cancelled()
            if self.step_seconds:
                await asyncio.sleep(self.step_seconds)
            self.steps_run += 1
            control.report_progress((step + 1) / self.steps)
        seeds = request.seeds or (None,) * request.count
        return [
            GeneratedImage(_solid(request.prompt, seed or index, request.size), seed)
            for index, seed in enumerate(seeds)
        ]

    async def aclose(self) -> None:
        return None


def _solid(prompt: str, seed: int, size: ImageSize) -> Image.Image:
    digest = hashlib.sha256(f"{prompt}|{seed}".encode()).digest()
    return Image.new("RGB", (size.width, size.height), (digest[0], digest[1], digest[2]))


@dataclass
class StaticBackends:
    """A BackendSet with fixed local and remote backends (either may be None: "this server has none")."""

    local_backend: Backend | None = field(default_factory=InstantBackend)
    remote_backend: Backend | None = None
    prepared: list[RuntimeConfig] = field(default_factory=list)

    def local_model(self, config: RuntimeConfig) -> ModelInfo:
        if self.local_backend is None:
            raise ConfigurationError("no local model in this test", field="local_model")
        return self.local_backend.model

    async def local(self, config: RuntimeConfig) -> Backend:
        if self.local_backend is None:
            raise BackendUnavailableError("no local model in this test")
        return self.local_backend

    def local_status(self, config: RuntimeConfig) -> LocalModelStatus:
        if self.local_backend is None:
            return LocalModelStatus("none", "failed", reason="no local model in this test")
        return LocalModelStatus(self.local_backend.model.id, "ready")

    def remote(self, config: RuntimeConfig) -> Backend:
        if self.remote_backend is None:
            raise ConfigurationError("no remote backend in this test", field="remote_api_key")
        return self.remote_backend

    async def prepare(self, config: RuntimeConfig, progress: ProgressCallback | None = None) -> None:
        self.prepared.append(config)
        if progress is not None:
            for percent in (10, 50, 90):
                await progress(percent)

    async def ready(self, config: RuntimeConfig) -> bool:
        return True

    async def aclose(self) -> None:
        return None
