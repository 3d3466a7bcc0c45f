"""Process entry: settings from the environment, logging, the app, and nc_py_api's ``run_app`` (TCP or HaRP socket)."""

from __future__ import annotations

import logging
import os
import secrets
import sys
from pathlib import Path

from .admin import FIELD_IDS
from .settings import Settings, load_settings

logger = logging.getLogger("text2image_hub")


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


def main() -> None:
    settings = load_settings(field_ids=FIELD_IDS)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
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

    os.environ.setdefault("APP_HOST", settings.app_host)
    os.environ.setdefault("APP_PORT", str(settings.app_port))
    Path(settings.persistent_storage).mkdir(parents=True, exist_ok=True)
    run_app(create_app(settings), log_config=None, timeout_graceful_shutdown=2)  # docker stop: SIGKILL after 10 s


if __name__ == "__main__":
    main()
