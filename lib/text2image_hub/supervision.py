"""Supervised background work: the task worker, the log forwarder, the url-image and job sweepers, the standalone
warm-up.

An exception inside a background task is otherwise silent until shutdown awaits it, and the app looks healthy
while, say, no task is ever claimed again. Each loop runs as a task whose end is watched: one that dies of an
exception is logged with its traceback at error level (so it reaches nextcloud.log) and started again after a
back-off (1 s, doubling to a minute; reset after a minute of running). A loop that returns is done. Nothing is
caught here: the exception is read from the finished task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from .backoff import Backoff

logger = logging.getLogger(__name__)

LoopFactory = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class _Loop:
    factory: LoopFactory
    backoff: Backoff
    task: asyncio.Task[None] | None = None
    started: float = 0.0
    restarts: int = 0


class Supervisor:
    def __init__(self, *, backoff_initial: float = 1.0, backoff_max: float = 60.0) -> None:
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._loops: dict[str, _Loop] = {}
        self._stopping = False

    def start(self, name: str, factory: LoopFactory) -> None:
        """Run ``factory()`` as the loop ``name``, restarted whenever it dies of an exception."""
        self._loops[name] = _Loop(factory, Backoff(self._backoff_initial, self._backoff_max))
        self._spawn(name)

    def alive(self, name: str) -> bool:
        """Whether the loop ``name`` runs now (False while it waits to be restarted, or after it ended)."""
        loop = self._loops.get(name)
        return loop is not None and loop.task is not None and not loop.task.done()

    def restarts(self, name: str) -> int:
        loop = self._loops.get(name)
        return loop.restarts if loop is not None else 0

    def _spawn(self, name: str) -> None:
        loop = self._loops[name]
        if self._stopping:
            return
        loop.started = time.monotonic()
        loop.task = asyncio.create_task(loop.factory(), name=name)
        loop.task.add_done_callback(lambda task: self._ended(name, task))

    def _ended(self, name: str, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopping:
            return
        error = task.exception()
        if error is None:
            return
        loop = self._loops[name]
        if time.monotonic() - loop.started > self._backoff_max:
            loop.backoff.reset()  # it ran a good while: a fresh failure, not a crash loop
        delay = loop.backoff.next()
        loop.restarts += 1
        logger.error("background task %s failed; restarting it in %.0f s", name, delay, exc_info=error)
        asyncio.get_running_loop().call_later(delay, self._spawn, name)

    async def stop(self) -> None:
        """Cancel every loop and wait for them to end."""
        self._stopping = True
        tasks = [loop.task for loop in self._loops.values() if loop.task is not None and not loop.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
