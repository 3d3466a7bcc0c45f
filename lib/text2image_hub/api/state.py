"""``ApiState``: what the /v1 routes keep between requests (metrics, url images, jobs, limiter, result cache).

Built once per app in the lifespan and reached through ``hub.api``; nothing here is module-level.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..admin import ConfigReader
from ..backends import BackendSet
from ..metrics import Metrics
from ..service import ImageService
from ..settings import Settings
from .images import ImageStore
from .jobs import JobStore
from .limits import CallerLimiter, ResultCache

IMAGES_FOLDER = "images"


@dataclass(frozen=True)
class ApiState:
    metrics: Metrics
    images: ImageStore
    jobs: JobStore
    limiter: CallerLimiter = field(default_factory=CallerLimiter)
    cache: ResultCache = field(default_factory=ResultCache)
    started: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def create(
        cls, settings: Settings, metrics: Metrics | None = None, *, clock: Callable[[], float] = time.time
    ) -> ApiState:
        """``clock``: the wall clock url images and jobs expire by (tests pass one they can move)."""
        ttl = float(settings.image_ttl)
        images = ImageStore(settings.persistent_storage / IMAGES_FOLDER, ttl, clock=clock)
        return cls(metrics=metrics or Metrics(), images=images, jobs=JobStore(ttl, clock=clock))

    async def run_sweeper(self) -> None:
        """Delete expired url images now and then every TTL/4 (at most every 5 min) until cancelled."""
        interval = min(300.0, max(1.0, self.images.ttl / 4))
        await self.images.sweep_periodically(interval, self.metrics.set_stored_images)

    async def run_job_sweeper(self) -> None:
        """Drop expired jobs every TTL/4 (at most every minute) until cancelled."""
        await self.jobs.sweep_periodically(min(60.0, max(1.0, self.jobs.ttl / 4)))


class ApiHub(Protocol):
    """What the /v1 routes need from the app's ``Hub`` (``app.Hub`` satisfies it)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def backends(self) -> BackendSet: ...

    @property
    def service(self) -> ImageService: ...

    @property
    def config(self) -> ConfigReader: ...

    @property
    def api(self) -> ApiState: ...

    def worker_problem(self) -> str | None: ...
