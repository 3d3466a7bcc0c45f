"""The journal of tasks in hand: one small JSON file per task under ``<APP_PERSISTENT_STORAGE>/journal``.

Nextcloud never times out a RUNNING task, and it sends no ``/trigger`` while one is RUNNING: a task this process
loses (a kill, an OOM, a node crash) would stay RUNNING for ever and slow every later task to the poll interval. So a
task is written here as soon as it is claimed and removed once Nextcloud has taken its result; on start-up every
entry is finished (generated again and delivered, or reported FAILED).

An entry holds what is needed to do the task again — its input, prompt included — and is deleted with the task's
end. Files are written under a temporary name and renamed (a reader never sees half an entry), readable by the
app's user only. Blocking file I/O runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FOLDER = "journal"


@dataclass(frozen=True)
class JournalEntry:
    """A task in hand. ``attempts`` counts the generations started for it (a task that kills the process each time
    is given up); ``failure`` is an outcome still to be reported (admin message, user message; "" for the default)."""

    task_id: int
    input: dict[str, Any] = field(repr=False)  # holds the prompt: not for logs
    include_watermark: bool = True
    claimed_at: float = 0.0  # wall-clock time
    user_id: str | None = None
    language: str = ""  # the user's, for their messages, once known ("" for the installation's)
    attempts: int = 0
    failure: tuple[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # the failure tuple is written as a JSON list

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JournalEntry:
        failure = data.get("failure")
        return cls(
            task_id=int(data["task_id"]),
            input=dict(data.get("input") or {}),
            include_watermark=bool(data.get("include_watermark", True)),
            claimed_at=float(data.get("claimed_at") or 0.0),
            user_id=str(data["user_id"]) if data.get("user_id") else None,
            language=str(data.get("language") or ""),
            attempts=int(data.get("attempts") or 0),
            failure=(str(failure[0]), str(failure[1])) if isinstance(failure, list) and len(failure) == 2 else None,
        )


class TaskJournal:
    def __init__(self, storage: Path, *, clock: Callable[[], float] = time.time) -> None:
        self._folder = storage / FOLDER
        self._clock = clock

    def new_entry(
        self, task_id: int, task_input: dict[str, Any], include_watermark: bool, user_id: str | None = None
    ) -> JournalEntry:
        return JournalEntry(task_id, task_input, include_watermark, claimed_at=self._clock(), user_id=user_id)

    def age(self, entry: JournalEntry) -> float:
        return self._clock() - entry.claimed_at

    async def write(self, entry: JournalEntry) -> None:
        await asyncio.to_thread(self._write, entry)

    async def started(self, entry: JournalEntry, language: str) -> JournalEntry:
        """Count one more generation of ``entry``, in its user's ``language`` (written before it starts)."""
        updated = replace(entry, attempts=entry.attempts + 1, language=language)
        await self.write(updated)
        return updated

    async def remove(self, task_id: int) -> None:
        await asyncio.to_thread(self._remove, task_id)

    async def entries(self) -> list[JournalEntry]:
        """Every entry, oldest claim first. An unreadable entry is logged and comes back as a failure to report
        (its task is RUNNING in Nextcloud); other unreadable files are removed."""
        return await asyncio.to_thread(self._read_all)

    # --- blocking parts, run in a thread ---------------------------------------------------------------------------
    def _path(self, task_id: int) -> Path:
        return self._folder / f"{task_id}.json"

    def _write(self, entry: JournalEntry) -> None:
        self._folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = self._path(entry.task_id)
        partial = final.with_suffix(".part")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(entry.to_json(), file)
        os.replace(partial, final)

    def _remove(self, task_id: int) -> None:
        self._path(task_id).unlink(missing_ok=True)

    def _read_all(self) -> list[JournalEntry]:
        if not self._folder.is_dir():
            return []
        found: list[JournalEntry] = []
        for path in sorted(self._folder.glob("*.json")):
            try:
                found.append(JournalEntry.from_json(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                if path.stem.isdigit():  # the task is still RUNNING in Nextcloud: it must end
                    logger.error("the journal entry %s is unreadable (%s): its task is reported failed", path.name, exc)
                    found.append(JournalEntry(int(path.stem), {}, failure=(f"journal entry unreadable: {exc}", "")))
                else:
                    logger.error("the journal file %s is unreadable (%s): removed", path.name, exc)
                    with contextlib.suppress(OSError):
                        path.unlink()
        for partial in self._folder.glob("*.part"):  # a write the process did not finish
            with contextlib.suppress(OSError):
                partial.unlink()
        return sorted(found, key=lambda entry: entry.claimed_at)
