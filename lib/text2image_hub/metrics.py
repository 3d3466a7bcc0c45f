"""Prometheus metrics, one ``CollectorRegistry`` per app (never the global one), served at ``GET /metrics``.

Every name starts with ``t2i_``. Label values come from small fixed sets (routes are templates, ``source`` is
``task`` or ``api``, ``backend`` is ``local`` or ``remote``, ``code`` is an error code of ``errors.py``), so the
series count stays bounded whatever clients send.

Who records what:

- the HTTP middleware: ``request_finished`` for every request;
- ``ImageService.generate`` (source ``task`` or ``api``): ``generation_started`` and then ``generation_finished`` or
  ``generation_failed``, balanced whatever happens;
- the task worker: ``track_tasks_in_progress`` and ``task_recovered`` (journaled tasks nobody was working on,
  found at start-up, after /enabled or once Nextcloud takes an outcome it could not take before).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    """The app's counters, gauges and histograms, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self._requests = Counter(
            "t2i_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            ("route", "method", "status"),
            registry=registry,
        )
        self._request_seconds = Histogram(
            "t2i_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ("route",),
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        self._images = Counter(
            "t2i_images_generated",
            "Images generated, by backend and source (task: a Nextcloud task; api: /v1).",
            ("backend", "source"),
            registry=registry,
        )
        self._generations = Counter(
            "t2i_generations",
            "Successful generation calls (one call makes one or more images), by backend and source.",
            ("backend", "source"),
            registry=registry,
        )
        self._generation_seconds = Histogram(
            "t2i_generation_duration_seconds",
            "Wall time of one generation call (all its images), by backend and source.",
            ("backend", "source"),
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self._failures = Counter(
            "t2i_generation_failures",
            "Failed generation calls, by source and error code (e.g. GPU_OUT_OF_MEMORY, REMOTE_BUSY).",
            ("source", "code"),
            registry=registry,
        )
        self._in_progress = Gauge(
            "t2i_generations_in_progress",
            "Generation calls running now, by source.",
            ("source",),
            registry=registry,
        )
        self._tasks_in_progress = Gauge(
            "t2i_tasks_in_progress", "Nextcloud tasks this app is working on now.", registry=registry
        )
        self._recovered = Counter(
            "t2i_tasks_recovered",
            "Tasks found in the journal after a restart, by outcome (redone, or failed: too old or given up).",
            ("outcome",),
            registry=registry,
        )
        self._cache = Counter(
            "t2i_api_cache_lookups",
            "Result-cache lookups of /v1/images/generations, by result (hit or miss).",
            ("result",),
            registry=registry,
        )
        self._rate_limited = Counter(
            "t2i_api_rate_limited", "/v1 requests refused by the per-user/per-key limit.", registry=registry
        )
        self._stored_images = Gauge(
            "t2i_api_stored_images", "PNGs kept for response_format=url, as of the last sweep.", registry=registry
        )

    # --- HTTP --------------------------------------------------------------------------------------------------
    def request_finished(self, route: str, method: str, status: int, seconds: float) -> None:
        self._requests.labels(route, method, str(status)).inc()
        self._request_seconds.labels(route).observe(seconds)

    # --- generation ----------------------------------------------------------------------------------------------
    def generation_started(self, source: str) -> None:
        self._in_progress.labels(source).inc()

    def generation_finished(self, source: str, backend: str, images: int, seconds: float) -> None:
        """A generation call succeeded: ``images`` images on ``backend`` in ``seconds``. Ends ``generation_started``."""
        self._in_progress.labels(source).dec()
        self._generations.labels(backend, source).inc()
        self._images.labels(backend, source).inc(images)
        self._generation_seconds.labels(backend, source).observe(seconds)

    def generation_failed(self, source: str, code: str) -> None:
        """A generation call failed with the error code ``code``. Ends ``generation_started``."""
        self._in_progress.labels(source).dec()
        self._failures.labels(source, code).inc()

    # --- the task worker -----------------------------------------------------------------------------------------
    def track_tasks_in_progress(self, count: Callable[[], int]) -> None:
        """Read the number of running tasks from ``count`` at every scrape (e.g. ``lambda: worker.busy``)."""
        self._tasks_in_progress.set_function(lambda: float(count()))

    def task_recovered(self, outcome: str) -> None:
        self._recovered.labels(outcome).inc()

    # --- the /v1 API -----------------------------------------------------------------------------------------------
    def cache_lookup(self, *, hit: bool) -> None:
        self._cache.labels("hit" if hit else "miss").inc()

    def rate_limited(self) -> None:
        self._rate_limited.inc()

    def set_stored_images(self, count: int) -> None:
        self._stored_images.set(count)

    # --- exposition ------------------------------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
