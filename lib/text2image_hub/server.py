"""How the app's port is served: uvicorn with deadlines on slow clients.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but waits for ever for a request's head: a
client sending one header byte at a time (slowloris) holds a connection and a file descriptor for good. The h11
protocol here closes a connection whose request head has not fully arrived ``HEAD_TIMEOUT`` seconds after its
first byte (or after the connection opened); request bodies are bounded in size and time by ``api/body.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_TIMEOUT = 10.0
KEEP_ALIVE_TIMEOUT = 5.0
GRACEFUL_SHUTDOWN_TIMEOUT = 2.0
"""Seconds open requests get on shutdown (docker stop kills 10 s after SIGTERM; the worker takes 5 s more)."""


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head is not in within ``head_timeout`` seconds."""

    head_timeout = HEAD_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # as uvicorn's
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._between_requests() and self._head_deadline is None:
            self._arm()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        if not self._between_requests():
            self._disarm()  # the head is in: the request runs

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        self._head_deadline = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self._between_requests() and not self.transport.is_closing():
            self.transport.close()


def uvicorn_options() -> dict[str, Any]:
    """What ``__main__`` passes to uvicorn (through nc_py_api's ``run_app``)."""
    return {
        "http": GuardedH11Protocol,
        "timeout_keep_alive": KEEP_ALIVE_TIMEOUT,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_TIMEOUT,
        "log_config": None,
    }
