"""Process entry: settings from the environment, logging, the app, and nc_py_api's ``run_app`` (TCP or HaRP socket).

The environment is read before anything imports nc_py_api, whose import runs ``load_dotenv()`` on a stray ``.env``.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

import PIL.Image

from .imaging import MAX_DECODE_PIXELS
from .settings import Settings, SettingsError, load_settings

logger = logging.getLogger("text2image_hub")

PROBE_PATHS = frozenset({"/heartbeat", "/healthz", "/readyz", "/metrics"})
"""Polled by the container health check, AppAPI and scrapers: not worth an access-log line each."""


class ProbeFilter(logging.Filter):
    """Drops uvicorn's access-log records of ``PROBE_PATHS`` (a 5 s health check is 17,280 lines a day)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        path = str(args[2]) if isinstance(args, tuple) and len(args) >= 3 else ""
        return path.partition("?")[0] not in PROBE_PATHS


def _standalone_api_key(settings: Settings) -> dict[str, str]:
    """Standalone mode: /v1 is open to one generated key, kept in the persistent storage and shown once."""
    if settings.config_defaults.get("api_keys"):
        return {}
    key_file = settings.persistent_storage / "standalone_api_key"
    if key_file.exists():
        sys.stdout.write(f"/v1 API key: stored in {key_file}\n")
        return {"api_keys": key_file.read_text().strip()}
    key = "t2i-" + secrets.token_urlsafe(24)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.touch(mode=0o600)
    key_file.write_text(key)
    sys.stdout.write(f"/v1 API key (shown once, kept in {key_file}): {key}\n")
    return {"api_keys": key}


def main(environ: Mapping[str, str] | None = None) -> None:
    environ = dict(os.environ if environ is None else environ)  # before nc_py_api's import-time load_dotenv()
    from .admin import FIELD_IDS

    try:
        settings = load_settings(environ, FIELD_IDS)
    except SettingsError as exc:
        sys.exit(str(exc))
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("uvicorn.access").addFilter(ProbeFilter())
    PIL.Image.MAX_IMAGE_PIXELS = MAX_DECODE_PIXELS  # Pillow's decompression-bomb guard, at our own bound
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the hub client's download bars on stderr
    if not settings.standalone and settings.app_secret is None:
        sys.exit(
            "APP_SECRET is not set: AppAPI passes it when it deploys the app (or unset NEXTCLOUD_URL to run "
            "standalone)."
        )
    if settings.standalone:
        defaults = {**settings.config_defaults, **_standalone_api_key(settings)}
        settings = settings.model_copy(update={"config_defaults": defaults})
        logger.info("standalone mode (no NEXTCLOUD_URL): /v1 on http://%s:%d", settings.app_host, settings.app_port)

    from nc_py_api.ex_app import run_app

    from .app import create_app
    from .server import uvicorn_options

    os.environ.setdefault("APP_HOST", settings.app_host)
    os.environ.setdefault("APP_PORT", str(settings.app_port))
    Path(settings.persistent_storage).mkdir(parents=True, exist_ok=True)
    run_app(create_app(settings), **uvicorn_options())


if __name__ == "__main__":
    main()
