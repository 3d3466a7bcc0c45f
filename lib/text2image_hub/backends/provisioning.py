"""The local model's lifecycle: which model, where its weights are, fetching them, loading them, and where it stands.

``LocalModels`` decides the model from the config (``local_model``, the device's default, or what the folder in
``T2I_MODEL_PATH`` holds, read from its ``model_index.json`` before anything is loaded), then gets it onto the device:

- weights missing → one download at a time, in the background (resumable: the hub client continues partial files),
  its progress logged every few percent; a failed download is retried after ``retry_after`` seconds, or at once
  when ``/init`` asks again;
- weights present → one load, shared by everyone who asks meanwhile; a failed load is remembered (and retried after
  ``retry_after``) rather than repeated for every task.

Nothing here ever waits for a download on behalf of a task: ``backend`` raises ``BackendUnavailableError`` saying how
far the download is. ``status`` says where the configured model stands, for ``/readyz``, the settings form and logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ..admin import RuntimeConfig
from ..errors import BackendUnavailableError, ConfigurationError, Text2ImageError
from ..i18n import Message, _
from ..settings import Settings
from . import MODEL_DOWNLOADING, Backend, LocalModelStatus, ModelState, ProgressCallback
from .catalog import LocalModelSpec, default_local_model, local_model, model_for_folder
from .weights import download_weights, folder_classes, weights_dir, weights_present

logger = logging.getLogger(__name__)

Fetcher = Callable[[LocalModelSpec, Path, ProgressCallback], Awaitable[None]]
Loader = Callable[[LocalModelSpec, Path], Awaitable[Backend]]
RETRY_AFTER = 600.0
"""Seconds before a failed download or load is tried again on its own."""
LOG_EVERY_PERCENT = 5
"""The error code of a task or request that came while the model's weights download."""


@dataclass(frozen=True)
class _Failure:
    """A remembered failure, re-raised as a fresh exception each time."""

    error: Text2ImageError
    at: float

    def again(self) -> Text2ImageError:
        error = self.error
        if isinstance(error, ConfigurationError):
            return ConfigurationError(str(error), field=error.field)
        return BackendUnavailableError(str(error), user_message=error.user_text, code=error.code)


def _downloading_message(model_id: str, percent: int) -> Message:
    return _(
        "The image model {model} is still being downloaded to this server ({percent} % done). Please try again later.",
        model=model_id,
        percent=percent,
    )


def _download_failed_message() -> Message:
    return _(
        "Image generation is not available: this server could not download its image model. Please contact your "
        "administrator."
    )


async def load_local_backend(spec: LocalModelSpec, folder: Path, *, device: str, speedups: frozenset[str]) -> Backend:
    """The default ``Loader``: the diffusers pipeline in ``folder`` on ``device``."""
    try:
        from .local import LocalBackend  # torch and diffusers: imported only when a local model is loaded
    except ImportError as exc:
        raise BackendUnavailableError(
            f"The local backend needs packages that are not installed ({exc.name}): install "
            "text2image_hub[local], or choose the remote backend."
        ) from exc
    try:
        return await LocalBackend.load(spec, folder, device=device, speedups=speedups)
    except (OSError, ValueError, RuntimeError) as exc:
        raise BackendUnavailableError(f"could not load {spec.id} from {folder}: {exc}") from exc


def _retrieved(job: asyncio.Task[Backend]) -> None:
    if not job.cancelled():
        job.exception()


class LocalModels:
    """The configured local model, from weights on disk (or the hub) to a loaded backend (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        fetch: Fetcher = download_weights,
        load: Loader | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_after: float = RETRY_AFTER,
    ) -> None:
        self._settings = settings
        self._fetch = fetch
        self._load = load or functools.partial(
            load_local_backend, device=settings.torch_device, speedups=settings.speedups
        )
        self._clock = clock
        self._retry_after = retry_after
        self._specs: dict[str, LocalModelSpec | _Failure] = {}
        self._present: set[Path] = set()
        self._wanted: str | None = None
        self._download: asyncio.Task[None] | None = None
        self._download_id = ""
        self._download_percent = 0
        self._download_listeners: list[ProgressCallback] = []
        self._download_failures: dict[str, _Failure] = {}
        self._loaded: Backend | None = None
        self._loaded_id = ""
        self._loading: asyncio.Task[Backend] | None = None
        self._loading_id = ""
        self._load_failures: dict[str, _Failure] = {}

    # --- which model, and where -------------------------------------------------------------------------------------
    def spec(self, config: RuntimeConfig) -> LocalModelSpec:
        """The model ``config`` asks for; the folder in ``T2I_MODEL_PATH`` decides (once) what it holds."""
        model_path = self._settings.model_path
        if model_path is None:
            if config.local_model:
                return local_model(config.local_model)
            return default_local_model(self._settings.torch_device)
        found = self._specs.get(config.local_model)
        if found is None:
            try:
                found = self._inspect(model_path, config.local_model)
            except ConfigurationError as exc:
                logger.error("the local model cannot be used: %s", exc)
                found = _Failure(exc, self._clock())
            self._specs[config.local_model] = found
        if isinstance(found, _Failure):
            raise found.again()
        return found

    def _inspect(self, folder: Path, chosen: str) -> LocalModelSpec:
        classes = folder_classes(folder)
        if classes is None:
            raise ConfigurationError(
                f"T2I_MODEL_PATH is {folder}, which has no readable model_index.json: point it at a diffusers "
                "model folder (as saved by save_pretrained or downloaded from the Hugging Face Hub).",
                field="model_path",
            )
        spec = model_for_folder(classes.pipeline, classes.scheduler, chosen)
        if not weights_present(folder):
            raise ConfigurationError(
                f"T2I_MODEL_PATH is {folder}, which holds {spec.id} but not all of its components' weights.",
                field="model_path",
            )
        self._present.add(folder)
        logger.info("T2I_MODEL_PATH holds %s (%s)", spec.id, classes.pipeline)
        return spec

    def folder(self, spec: LocalModelSpec) -> Path:
        if self._settings.model_path is not None:
            return self._settings.model_path
        return weights_dir(self._settings.persistent_storage, spec.id)

    def _on_disk(self, folder: Path) -> bool:
        if folder not in self._present and weights_present(folder):
            self._present.add(folder)
        return folder in self._present

    @property
    def loaded(self) -> Backend | None:
        """The loaded backend, whichever model it is (benchmarks and tests)."""
        return self._loaded

    # --- where it stands --------------------------------------------------------------------------------------------
    def status(self, config: RuntimeConfig) -> LocalModelStatus:
        try:
            spec = self.spec(config)
        except ConfigurationError as exc:
            return LocalModelStatus(config.local_model or "local model", "failed", reason=str(exc))
        model = spec.id
        if self._loaded is not None and self._loaded_id == model:
            return LocalModelStatus(model, "ready")
        if self._loading is not None and self._loading_id == model:
            return LocalModelStatus(model, "loading")
        if self._download is not None and self._download_id == model:
            return LocalModelStatus(model, "downloading", percent=self._download_percent)
        failure = self._load_failures.get(model) or self._download_failures.get(model)
        if failure is not None:
            state: ModelState = "failed" if model in self._load_failures else "download_failed"
            return LocalModelStatus(model, state, reason=str(failure.error))
        if self._on_disk(self.folder(spec)):
            return LocalModelStatus(model, "not_loaded")
        if self._download is not None:
            return LocalModelStatus(model, "waiting", reason=f"the download of {self._download_id} runs first")
        return LocalModelStatus(model, "missing")

    # --- getting it onto the device ---------------------------------------------------------------------------------
    async def backend(self, config: RuntimeConfig) -> Backend:
        """The loaded model ``config`` asks for. Starts what is missing; raises while it downloads or after failures."""
        spec = self.spec(config)
        if self._loaded is not None and self._loaded_id == spec.id:
            return self._loaded
        loading = self.provision(config)
        if loading is None:
            raise self._not_loaded(spec)
        return await asyncio.shield(loading)

    def provision(self, config: RuntimeConfig) -> asyncio.Task[Backend] | None:
        """Start whatever ``config``'s model still needs (a download or a load); the load, when one runs."""
        spec = self.spec(config)
        self._wanted = spec.id
        if self._loaded is not None and self._loaded_id == spec.id:
            return None
        if self._loading is not None and self._loading_id == spec.id:
            return self._loading
        failure = self._load_failures.get(spec.id)
        if failure is not None and self._clock() - failure.at < self._retry_after:
            return None
        folder = self.folder(spec)
        if self._on_disk(folder):
            return self._start_load(spec, folder)
        self._start_download(spec, folder, retry=False)
        return None

    async def download(self, config: RuntimeConfig, progress: ProgressCallback) -> None:
        """For ``/init``: fetch ``config``'s weights if they are missing (retrying a failed download at once),
        reporting progress, and wait for the download; a failure is logged and kept, not raised."""
        spec = self.spec(config)
        self._wanted = spec.id
        folder = self.folder(spec)
        if self._on_disk(folder):
            self.provision(config)
            return
        job = self._start_download(spec, folder, retry=True)
        if job is None:  # another model's download runs first
            return
        self._download_listeners.append(progress)
        try:
            await asyncio.shield(job)
        finally:
            with contextlib.suppress(ValueError):
                self._download_listeners.remove(progress)

    def _not_loaded(self, spec: LocalModelSpec) -> Text2ImageError:
        failure = self._load_failures.get(spec.id)
        if failure is not None:
            return failure.again()
        if self._download is not None and self._download_id == spec.id:
            percent = self._download_percent
            return BackendUnavailableError(
                f"the weights of {spec.id} are being downloaded ({percent} %)",
                user_message=_downloading_message(spec.id, percent),
                code=MODEL_DOWNLOADING,
            )
        if self._download is not None:
            return BackendUnavailableError(
                f"the weights of {spec.id} are downloaded after those of {self._download_id}",
                user_message=_downloading_message(spec.id, 0),
                code=MODEL_DOWNLOADING,
            )
        download_failure = self._download_failures.get(spec.id)
        reason = str(download_failure.error) if download_failure else f"the weights of {spec.id} are missing"
        return BackendUnavailableError(reason, user_message=_download_failed_message())

    def _start_download(self, spec: LocalModelSpec, folder: Path, *, retry: bool) -> asyncio.Task[None] | None:
        if self._download is not None:
            return self._download if self._download_id == spec.id else None
        failure = self._download_failures.get(spec.id)
        if failure is not None and not retry and self._clock() - failure.at < self._retry_after:
            return None
        self._download_id, self._download_percent = spec.id, 0
        self._download = asyncio.create_task(self._run_download(spec, folder), name=f"download-{spec.id}")
        return self._download

    async def _run_download(self, spec: LocalModelSpec, folder: Path) -> None:
        logged = -LOG_EVERY_PERCENT
        started = self._clock()

        async def progress(percent: int) -> None:
            nonlocal logged
            self._download_percent = percent
            if percent >= logged + LOG_EVERY_PERCENT:
                logged = percent - percent % LOG_EVERY_PERCENT
                logger.info("downloading the weights of %s: %d %%", spec.id, percent)
            for listener in list(self._download_listeners):
                await listener(percent)

        logger.info("downloading the weights of %s to %s", spec.id, folder)
        try:
            await self._fetch(spec, folder, progress)
        except BackendUnavailableError as exc:
            self._download_failures[spec.id] = _Failure(exc, self._clock())
            logger.error(
                "%s. The app stays enabled; tasks fail until this is fixed (it is retried in %.0f minutes, or at the "
                "next /init): check the server's network and disk, set T2I_MODEL_PATH to a folder with the weights, "
                "or choose the remote backend in the admin settings.",
                exc,
                self._retry_after / 60,
            )
            return
        finally:
            self._download = None
        self._download_failures.pop(spec.id, None)
        self._present.add(folder)
        logger.info("downloaded the weights of %s in %.0f s", spec.id, self._clock() - started)
        if self._wanted == spec.id:
            self._start_load(spec, folder)

    def _start_load(self, spec: LocalModelSpec, folder: Path) -> asyncio.Task[Backend]:
        if self._loading is not None and self._loading_id == spec.id:
            return self._loading
        self._loading_id = spec.id
        self._loading = asyncio.create_task(self._run_load(spec, folder), name=f"load-{spec.id}")
        self._loading.add_done_callback(_retrieved)  # its failure is kept and reported; nobody may be waiting
        return self._loading

    async def _run_load(self, spec: LocalModelSpec, folder: Path) -> Backend:
        previous, self._loaded, self._loaded_id = self._loaded, None, ""
        try:
            if previous is not None:
                await previous.aclose()
            logger.info("loading %s from %s", spec.id, folder)
            backend = await self._load(spec, folder)
        except Text2ImageError as exc:
            self._load_failures[spec.id] = _Failure(exc, self._clock())
            logger.error("could not load %s: %s", spec.id, exc)
            raise
        finally:
            self._loading = None
        self._load_failures.pop(spec.id, None)
        self._loaded, self._loaded_id = backend, spec.id
        return backend

    async def aclose(self) -> None:
        jobs = [job for job in (self._download, self._loading) if job is not None]
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        if self._loaded is not None:
            await self._loaded.aclose()
            self._loaded = None
