"""``create_app``: the FastAPI application with its lifespan (worker, HTTP client, backends) and routes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from nc_py_api.ex_app.ui.settings import SettingsForm

from .admin import SENSITIVE_FIELDS, ConfigReader, settings_form
from .api import ApiState, install_api
from .auth import appapi_user
from .backends import BackendSet
from .backoff import Backoff
from .errors import ConfigurationError, NextcloudUnavailableError, Text2ImageError
from .i18n import Languages
from .journal import TaskJournal
from .metrics import Metrics
from .nextcloud import NextcloudGateway, NextcloudLogForwarder
from .registration import Registration
from .service import ImageService
from .settings import Settings
from .status import STANDALONE_HINT, setup_status
from .supervision import Supervisor
from .worker import TaskWorker, WorkerTiming

logger = logging.getLogger(__name__)

BackendFactory = Callable[[Settings], Awaitable[BackendSet]]
WORKER = "task-worker"
ENABLE_RETRY_SECONDS = 30.0
"""How long /enabled retries a transient Nextcloud error (AppAPI waits 60 s for its answer)."""


@dataclass(frozen=True)
class ExAppParts:
    """What exists only when the app runs under Nextcloud."""

    gateway: NextcloudGateway
    worker: TaskWorker


@dataclass(frozen=True)
class Hub:
    """Everything the routes use, built in the lifespan and handed to requests through the lifespan state."""

    settings: Settings
    backends: BackendSet
    service: ImageService
    config: ConfigReader
    exapp: ExAppParts | None
    api: ApiState
    supervisor: Supervisor

    def worker_problem(self) -> str | None:
        """Why the task worker is not doing its job (not running, or not reaching Nextcloud); None when it is."""
        if self.exapp is None:
            return None
        if not self.supervisor.alive(WORKER):
            return "the task worker is not running (it failed and is being restarted; the log has the error)"
        age = self.exapp.worker.last_pass_age()
        limit = 3 * self.settings.poll_interval + 30
        if age is None or age > limit:
            return "the task worker has not reached Nextcloud" + (f" for {age:.0f} s" if age is not None else " yet")
        return None

    def nextcloud(self) -> ExAppParts:
        if self.exapp is None:
            raise HTTPException(status_code=404, detail="not running under Nextcloud")
        return self.exapp


class _State(TypedDict):
    hub: Hub


def get_hub(request: Request) -> Hub:
    hub: Hub = request.state.hub
    return hub


HubDep = Annotated[Hub, Depends(get_hub)]


def require_appapi(request: Request, hub: HubDep) -> str:
    """Dependency for the routes only AppAPI may call: 401 unless the AppAPI headers are valid."""
    user = appapi_user(request.headers, hub.settings.app_id, hub.settings.app_secret_value)
    if user is None:
        raise HTTPException(status_code=401, detail="AppAPI authentication failed")
    return user


async def default_backends(settings: Settings) -> BackendSet:
    from .backends.registry import BackendRegistry  # imported late: remote-only installs never import the local backend

    return BackendRegistry(settings)


def create_app(
    settings: Settings,
    *,
    backends: BackendFactory = default_backends,
    timing: WorkerTiming | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """``clock``: the wall clock that url images and /v1 jobs expire by (tests move their own)."""
    timing = timing or WorkerTiming(poll_interval=settings.poll_interval)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[_State]:
        backend_set = await backends(settings)
        metrics = Metrics()
        service = ImageService(backend_set, settings.app_version, metrics)
        gateway = None if settings.standalone else NextcloudGateway(settings)
        config = ConfigReader(
            gateway.config_values if gateway else None, settings.config_defaults, automatic=settings.automatic_backend
        )
        exapp = None
        if gateway is not None:
            registration = Registration(gateway, functools.partial(_form, settings))
            journal = TaskJournal(settings.persistent_storage)
            languages = Languages(settings.persistent_storage)
            worker = TaskWorker(
                gateway, service, backend_set, config, registration, journal, timing, metrics, languages
            )
            metrics.track_tasks_in_progress(lambda: worker.busy)
            exapp = ExAppParts(gateway, worker)
        api = ApiState.create(settings, metrics, clock=clock)
        supervisor = Supervisor()
        hub = Hub(settings, backend_set, service, config, exapp, api, supervisor)
        supervisor.start("image-sweeper", api.run_sweeper)
        supervisor.start("job-sweeper", api.run_job_sweeper)
        if settings.standalone:
            supervisor.start("warm-up", functools.partial(_warm_up, hub))
        app_logger = logging.getLogger("text2image_hub")
        forwarder = None
        if exapp is not None:
            forwarder = NextcloudLogForwarder(exapp.gateway, asyncio.get_running_loop())
            app_logger.addHandler(forwarder)
            supervisor.start("log-forwarder", forwarder.run)
            supervisor.start(WORKER, exapp.worker.run)
        try:
            yield {"hub": hub}
        finally:
            if exapp is not None:
                await exapp.worker.shutdown()
            await api.jobs.aclose()
            if forwarder is not None:
                app_logger.removeHandler(forwarder)
            await supervisor.stop()
            await backend_set.aclose()
            if exapp is not None:
                await exapp.gateway.aclose()

    app = FastAPI(
        title="Text2Image Hub",
        version=settings.app_version,
        summary="Nextcloud core:text2image provider with an OpenAI-compatible image API",
        lifespan=lifespan,
    )

    @app.get("/heartbeat", include_in_schema=False)
    async def heartbeat() -> dict[str, str]:
        return {"status": "ok"}

    install_api(app)
    if not settings.standalone:
        _add_lifecycle_routes(app)
    return app


def _add_lifecycle_routes(app: FastAPI) -> None:
    appapi = [Depends(require_appapi)]

    @app.post("/init", dependencies=appapi, include_in_schema=False)
    async def init(hub: HubDep, tasks: BackgroundTasks) -> dict[str, Any]:
        tasks.add_task(_initialize, hub, hub.nextcloud().gateway)
        return {}

    @app.put("/enabled", dependencies=appapi, include_in_schema=False)
    async def enabled(enabled: bool, hub: HubDep, request: Request) -> JSONResponse:
        language = request.headers.get("accept-language")
        return JSONResponse({"error": await _set_enabled(hub, enabled, language)})

    @app.post("/trigger", dependencies=appapi, include_in_schema=False)
    async def trigger(providerId: str, hub: HubDep) -> dict[str, Any]:  # AppAPI's query name
        hub.nextcloud().worker.wake()
        return {}


async def _warm_up(hub: Hub) -> None:
    """Standalone: get the configured backend ready (waiting for a download), then say once how things stand and
    what to do. (Under Nextcloud, /init and the worker's passes do this.)"""
    try:
        config = await hub.config.load()
    except Text2ImageError as exc:
        logger.warning("not ready: %s. %s", exc, STANDALONE_HINT)
        return
    await hub.backends.prepare(config, _quietly)
    status = setup_status(config, hub.backends)
    if status.usable:
        logger.info("ready: %s", status.text)
    else:
        logger.warning("not ready: %s. %s", status.text, STANDALONE_HINT)


async def _quietly(_: int) -> None:
    """Download progress nobody is shown (it is logged every few percent)."""


async def _initialize(hub: Hub, gateway: NextcloudGateway) -> None:
    """/init: download the configured local model's weights if they are missing (progress 0..99), then 100.

    Init never reports an error: AppAPI never enables an app whose init failed, so the admin would get no settings
    form to fix the cause (switch to the remote backend, enter a token, point T2I_MODEL_PATH elsewhere). A failed
    download is logged at error level (nextcloud.log), shown by /readyz and the settings form, and named in the
    message tasks fail with.
    """
    last = -1

    async def progress(percent: int) -> None:
        nonlocal last
        if percent != last:
            last = percent
            with contextlib.suppress(NextcloudUnavailableError):
                await gateway.set_init_status(min(percent, 99))

    try:
        config = await hub.config.load()
    except ConfigurationError as exc:
        logger.warning("init: %s (the admin can fix it in the settings form)", exc)
    else:
        await hub.backends.prepare(config, progress)
    try:
        await gateway.set_init_status(100)
    except NextcloudUnavailableError as exc:
        logger.error("could not report the init status to Nextcloud: %s", exc)


async def _set_enabled(hub: Hub, enabled: bool, language: str | None = None) -> str:
    """/enabled: register (or withdraw) the form and the provider. A transient Nextcloud error (a timeout, a
    maintenance window, a registration that collided with another) is retried for up to ``ENABLE_RETRY_SECONDS``
    rather than returned: AppAPI leaves an app whose /enabled failed disabled. ``language``: the Accept-Language
    AppAPI sent (the installation's language, unless the admin chose one)."""
    parts = hub.nextcloud()
    deadline = time.monotonic() + ENABLE_RETRY_SECONDS
    backoff = Backoff(0.5, 5.0)
    while True:
        try:
            if enabled:
                await parts.gateway.ensure_sensitive_keys(SENSITIVE_FIELDS)
                await parts.worker.enable(language)
            else:
                await parts.worker.disable()
            break
        except NextcloudUnavailableError as exc:
            delay = backoff.next()
            if time.monotonic() + delay > deadline:
                logger.error("enabled=%s failed: %s", enabled, exc)
                return str(exc)
            logger.warning("enabled=%s: %s; trying again in %.1f s", enabled, exc, delay)
            await asyncio.sleep(delay)
        except Text2ImageError as exc:
            logger.error("enabled=%s failed: %s", enabled, exc)
            return str(exc)
    logger.info("app %s", "enabled" if enabled else "disabled")
    return ""


def _form(settings: Settings, status: str) -> SettingsForm:
    from .backends.catalog import local_models

    specs = local_models()
    sizes = sorted({size for spec in specs for size in spec.sizes})
    return settings_form(
        tuple(spec.id for spec in specs), tuple(str(size) for size in sizes), settings.config_defaults, status
    )
