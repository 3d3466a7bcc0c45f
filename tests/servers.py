"""Serve an ASGI app on 127.0.0.1 from a background thread with its own event loop (tests and benches)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

import uvicorn
from starlette.types import ASGIApp

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _QuickServer(uvicorn.Server):
    """uvicorn's server, noticing ``should_exit`` within 10 ms instead of 100 ms (tests start and stop it a lot)."""

    async def main_loop(self) -> None:
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 8_640_000
            await asyncio.sleep(0.01)
            should_exit = await self.on_tick(counter)


class ServerThread:
    """Serves an ASGI app on 127.0.0.1 from a background thread that runs its own event loop.

    ``pause()`` closes the listening socket (connections are refused) and ``resume()`` listens again on the same
    port. ``call()`` / ``call_async()`` run a coroutine on the server's loop from another thread or loop.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        port: int = 0,
        lifespan: Literal["auto", "on", "off"] = "off",
        name: str = "asgi-server",
    ) -> None:
        self._app = app
        self._port = port
        self._lifespan = lifespan
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._serve_task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError(f"{self._name} is not started")
        return self._loop

    @property
    def started(self) -> bool:
        return self._loop is not None

    @property
    def listening(self) -> bool:
        return self._server is not None

    def in_server_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def start(self) -> ServerThread:
        if self._loop is not None:
            raise RuntimeError(f"{self._name} is already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
        self._thread.start()
        try:
            self.resume()
        except BaseException:
            self._close_loop()
            raise
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            self.pause()
            self.call(self._cancel_leftover_tasks(), timeout=10)
        finally:
            self._close_loop()

    def pause(self) -> None:
        """Stops listening (clients get *connection refused*); the loop keeps running."""
        if self._server is not None:
            self.call(self._stop_serving(), timeout=15)

    def resume(self) -> None:
        """Listens again, on the same port as before."""
        if self._server is None:
            self.call(self._start_serving(), timeout=15)

    def call(self, coro: Coroutine[Any, Any, T], *, timeout: float | None = 120) -> T:
        """Runs ``coro`` on the server's loop and blocks until it is done."""
        if self.in_server_thread():
            coro.close()
            raise RuntimeError("blocking call from the server's own loop would dead-lock; await the coroutine")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    async def call_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs ``coro`` on the server's loop and awaits it from the caller's loop."""
        if self.in_server_thread():
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _listen(self) -> socket.socket:
        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say they are TCP; without it
        # every response waits ~40 ms for a delayed ACK.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self._port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        return sock

    async def _start_serving(self) -> None:
        sock = self._listen()
        config = uvicorn.Config(
            self._app,
            lifespan=self._lifespan,
            log_config=None,
            log_level="warning",
            access_log=False,
            ws="none",
            timeout_graceful_shutdown=1,
        )
        server = _QuickServer(config)
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        deadline = time.monotonic() + 10
        while not server.started:
            if task.done() or time.monotonic() > deadline:
                server.should_exit = True
                await asyncio.gather(task, return_exceptions=True)
                sock.close()
                raise RuntimeError(f"{self._name} did not start")
            await asyncio.sleep(0.002)
        self._server = server
        self._serve_task = task

    async def _stop_serving(self) -> None:
        server, task = self._server, self._serve_task
        self._server = None
        self._serve_task = None
        if server is None or task is None:
            return
        server.should_exit = True
        await task

    async def _cancel_leftover_tasks(self) -> None:
        current = asyncio.current_task()
        leftovers = [t for t in asyncio.all_tasks() if t is not current]
        for leftover in leftovers:
            leftover.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    def _close_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        if thread is not None and thread.is_alive():
            asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(10)
        loop.close()
        self._loop = None
        self._thread = None
