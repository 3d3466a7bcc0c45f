"""What is in force and what is missing, in one sentence for the admin: the settings form, the log, ``/readyz`` and
the standalone start-up message all say the same thing.

Nothing here waits on the network or loads anything: the remote side is judged by its configuration (whether
``/readyz`` can reach it is checked there), the local side by where its model stands.
"""

from __future__ import annotations

from dataclasses import dataclass

from .admin import RuntimeConfig
from .backends import MODEL_DOWNLOADING, BackendSet
from .errors import ConfigurationError

STANDALONE_HINT = (
    "To make images: set T2I_MODEL_PATH to a diffusers model folder, run `make tiny-model` for a tiny test model, "
    "or set T2I_BACKEND=remote with T2I_REMOTE_API_KEY (an IONOS AI Model Hub token or another service's key)."
)


@dataclass(frozen=True)
class SetupStatus:
    """``usable``: generation can start now (or once the local model finishes loading). ``code`` is stable."""

    usable: bool
    code: str
    text: str
    percent: int | None = None


def setup_status(config: RuntimeConfig, backends: BackendSet) -> SetupStatus:
    """The configured backend's state: remote configured or not; the local model ready, loading, downloading, …"""
    if config.backend == "remote":
        return _remote_status(config, backends)
    local = _local_status(config, backends)
    if config.backend == "local":
        return local
    remote = _remote_status(config, backends)
    if local.usable:
        return SetupStatus(True, local.code, f"{local.text}; the remote service is the fallback ({remote.text})")
    if remote.usable:
        return SetupStatus(True, remote.code, f"{local.text}; until then tasks run remotely ({remote.text})")
    return SetupStatus(False, local.code, f"{local.text}; and the fallback cannot run: {remote.text}", local.percent)


def _remote_status(config: RuntimeConfig, backends: BackendSet) -> SetupStatus:
    try:
        model = backends.remote(config).model
    except ConfigurationError as exc:
        reason = str(exc).rstrip(".")
        return SetupStatus(False, "REMOTE_NOT_CONFIGURED", f"the remote service is not set up yet: {reason}")
    return SetupStatus(True, "REMOTE_CONFIGURED", f"images are made by the remote service ({model.id})")


def _local_status(config: RuntimeConfig, backends: BackendSet) -> SetupStatus:
    status = backends.local_status(config)
    model = status.model
    if status.state == "ready":
        return SetupStatus(True, "MODEL_READY", f"{model} is loaded on this server")
    if status.state in ("loading", "not_loaded"):
        return SetupStatus(True, "MODEL_LOADING", f"{model} is being loaded on this server")
    if status.state == "downloading":
        percent = status.percent or 0
        return SetupStatus(False, MODEL_DOWNLOADING, f"the weights of {model} are downloading ({percent} %)", percent)
    if status.state in ("waiting", "missing"):
        return SetupStatus(False, MODEL_DOWNLOADING, f"the weights of {model} are about to be downloaded", 0)
    if status.state == "download_failed":
        return SetupStatus(
            False, "MODEL_DOWNLOAD_FAILED", f"the weights of {model} could not be downloaded: {status.reason}"
        )
    return SetupStatus(False, "MODEL_FAILED", f"the local model cannot be used: {status.reason.rstrip('.')}")
