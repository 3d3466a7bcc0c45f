"""PNGs kept for ``response_format=url``: files under ``<persistent storage>/images`` named by unguessable ids.

An id is ``secrets.token_urlsafe(32)`` (256 random bits) and is the only capability needed to read the image:
``GET /v1/images/{id}`` takes no authentication, so a URL can be handed to a browser or another service. An
image lives ``ttl`` seconds from its file's modification time; reading an expired one deletes it and answers 404,
and ``sweep`` (run periodically and at start-up) deletes every expired file, including those left by an earlier
process. Files are written under a temporary name and renamed, so a reader never sees half an image.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from starlette.datastructures import Headers

from ..errors import NotFoundError
from ..settings import Settings

logger = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9_-]{32,64}$")
_HOST = re.compile(r"^[A-Za-z0-9.\-\[\]:]{1,255}$")
_SUFFIX = ".png"


class ImageStore:
    def __init__(self, folder: Path, ttl: float, *, clock: Callable[[], float] = time.time) -> None:
        self._folder = folder
        self._ttl = ttl
        self._clock = clock

    @property
    def ttl(self) -> float:
        return self._ttl

    async def put(self, png: bytes) -> str:
        """Keep ``png``; returns its id."""
        image_id = secrets.token_urlsafe(32)
        await asyncio.to_thread(self._write, image_id, png)
        return image_id

    async def get(self, image_id: str) -> tuple[bytes, float]:
        """The PNG and its remaining seconds; ``NotFoundError`` when unknown or expired (an expired file is deleted)."""
        if not _ID.match(image_id):
            raise _not_found()
        found = await asyncio.to_thread(self._read, image_id)
        if found is None:
            raise _not_found()
        return found

    async def sweep(self) -> tuple[int, int]:
        """Delete expired images; returns (deleted, kept)."""
        return await asyncio.to_thread(self._sweep)

    async def sweep_periodically(self, interval: float, on_sweep: Callable[[int], None] | None = None) -> None:
        """Sweep now and then every ``interval`` seconds until cancelled; ``on_sweep`` gets the count kept."""
        while True:
            try:
                deleted, kept = await self.sweep()
            except OSError as exc:
                logger.warning("could not sweep expired images in %s: %s", self._folder, exc)
            else:
                if deleted:
                    logger.info("deleted %d expired image(s)", deleted)
                if on_sweep is not None:
                    on_sweep(kept)
            await asyncio.sleep(interval)

    # --- blocking parts, run in a thread ---------------------------------------------------------------------------
    def _path(self, image_id: str) -> Path:
        return self._folder / f"{image_id}{_SUFFIX}"

    def _write(self, image_id: str, png: bytes) -> None:
        self._folder.mkdir(parents=True, exist_ok=True)
        final = self._path(image_id)
        partial = final.with_suffix(".part")
        partial.write_bytes(png)
        os.replace(partial, final)

    def _read(self, image_id: str) -> tuple[bytes, float] | None:
        path = self._path(image_id)
        try:
            age = self._clock() - path.stat().st_mtime
            if age > self._ttl:
                path.unlink(missing_ok=True)
                return None
            return path.read_bytes(), self._ttl - age
        except FileNotFoundError:
            return None

    def _sweep(self) -> tuple[int, int]:
        if not self._folder.is_dir():
            return 0, 0
        now = self._clock()
        deleted = kept = 0
        for entry in os.scandir(self._folder):
            if not entry.is_file() or not entry.name.endswith((_SUFFIX, ".part")):
                continue
            with contextlib.suppress(FileNotFoundError):
                if now - entry.stat().st_mtime > self._ttl:
                    os.unlink(entry.path)
                    deleted += 1
                else:
                    kept += 1
        return deleted, kept


def _not_found() -> NotFoundError:
    return NotFoundError(
        "This image does not exist or has expired: images are kept for a limited time; generate it again.",
        code="IMAGE_NOT_FOUND",
        param="image_id",
    )


def public_base_url(headers: Headers, scheme: str, root_path: str, settings: Settings, *, via_nextcloud: bool) -> str:
    """Where a client reaches this app's /v1, for absolute image URLs.

    Through Nextcloud's AppAPI proxy the ``Host`` we receive is our own address, not the one the client used, so
    the URL is built from ``NEXTCLOUD_URL`` plus ``/index.php/apps/app_api/proxy/<appid>``; an ``X-Forwarded-Host``
    / ``X-Forwarded-Proto`` that a reverse proxy in front of Nextcloud added (AppAPI passes them on) wins over
    NEXTCLOUD_URL's host and scheme. Called directly, the request's own ``Host`` (or ``X-Forwarded-Host``) and
    scheme (or ``X-Forwarded-Proto``) are used.
    """
    forwarded_proto = _first(headers.get("x-forwarded-proto"))
    proto = forwarded_proto if forwarded_proto in ("http", "https") else None
    forwarded_host = _first(headers.get("x-forwarded-host"))
    host = forwarded_host if forwarded_host and _HOST.match(forwarded_host) else None
    if via_nextcloud:
        nextcloud = urlsplit(settings.nextcloud_url or "")
        base = f"{proto or nextcloud.scheme or 'http'}://{host or nextcloud.netloc}{nextcloud.path.rstrip('/')}"
        return f"{base}{settings.proxy_path}"
    own_host = headers.get("host", "")
    if host is None:
        host = own_host if _HOST.match(own_host) else f"{settings.app_host}:{settings.app_port}"
    return f"{proto or scheme}://{host}{root_path.rstrip('/')}"


def _first(value: str | None) -> str | None:
    if not value:
        return None
    return value.split(",")[0].strip().lower() or None
