"""Throughput and latency of ``POST /v1/images/generations`` with the instant backend (the HTTP + API overhead).

Starts the app standalone in a child process (uvicorn, one worker, the instant test backend that makes solid-colour
images at once) and drives it from this process with ``concurrency`` keep-alive connections for ``duration``
seconds. Every request is a fresh 512x512 image (no seed, so never a cache hit) answered as ``b64_json``: it
includes auth, validation, the shared ImageService (GPU lock, PNG encoding with metadata and the visible mark),
base64 and JSON. Reports requests/s and p50/p90/p99 latency; ``--format url`` measures the url-image store instead.

Targets (2 cores, client and server on the same machine): at least 200 requests/s and p99 at most 50 ms.

Run:  ``PYTHONPATH=lib:. .venv/bin/python bench/api.py [--duration 10] [--concurrency 4] [--check]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2
import psutil

TARGET_RPS = 200.0
TARGET_P99_MS = 50.0
STARTUP_TIMEOUT_S = 60.0
KEY = "bench-key"
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Figures:
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    client_cpu: float  # cores the load generator itself used
    server_cpu: float  # cores the app used

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def serve(port: int, storage: str, watermark: str) -> None:
    """The child process: the app with the instant backend on 127.0.0.1:port."""
    import uvicorn

    from tests.instant_backend import StaticBackends
    from text2image_hub.admin import FIELD_IDS
    from text2image_hub.app import create_app
    from text2image_hub.settings import Settings, load_settings

    # the instant backend stands in for the local one ("auto" would choose the remote service on a CPU box)
    environ = {
        "APP_PERSISTENT_STORAGE": storage,
        "T2I_API_KEYS": KEY,
        "T2I_WATERMARK": watermark,
        "T2I_BACKEND": "local",
    }
    settings = load_settings(environ, FIELD_IDS)

    async def backends(_: Settings) -> StaticBackends:
        return StaticBackends()

    uvicorn.run(
        create_app(settings, backends=backends), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_ready(url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    async with httpx2.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError(f"the app at {url} did not start")


async def drive(
    url: str, server: psutil.Process, *, duration: float, concurrency: int, response_format: str, size: str
) -> Figures:
    body = {"prompt": "a benchmark", "size": size, "response_format": response_format}
    headers = {"Authorization": f"Bearer {KEY}"}
    latencies: list[float] = []
    errors = 0
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=30) as client:
        for _ in range(20):  # warm-up: connections, imports, first PNG encodes
            await client.post("/v1/images/generations", json=body)
        end = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < end:
                started = time.perf_counter()
                response = await client.post("/v1/images/generations", json=body)
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    errors += 1

        started, cpu_started, server_started = time.perf_counter(), time.process_time(), _cpu(server)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        cpu, server_cpu = time.process_time() - cpu_started, _cpu(server) - server_started
    return Figures(len(latencies), errors, seconds, latencies, cpu / seconds, server_cpu / seconds)


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--format", dest="response_format", choices=("b64_json", "url"), default="b64_json")
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--no-watermark", action="store_true", help="admin setting watermark=false (no visible mark to composite)"
    )
    parser.add_argument("--serve", nargs=3, metavar=("PORT", "STORAGE", "WATERMARK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1], args.serve[2])
        return 0

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "lib"), str(REPO)])}
    with tempfile.TemporaryDirectory() as storage:
        server = subprocess.Popen(  # noqa: S603  # our own interpreter and script
            [sys.executable, __file__, "--serve", str(port), storage, str(not args.no_watermark).lower()], env=env
        )
        try:
            asyncio.run(wait_ready(url))
            figures = asyncio.run(
                drive(
                    url,
                    psutil.Process(server.pid),
                    duration=args.duration,
                    concurrency=args.concurrency,
                    response_format=args.response_format,
                    size=args.size,
                )
            )
        finally:
            server.terminate()
            server.wait(timeout=30)

    p50, p90, p99 = (figures.percentile(q) for q in (0.50, 0.90, 0.99))
    print(
        f"POST /v1/images/generations {args.size} {args.response_format}, concurrency {args.concurrency}, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"  requests: {figures.requests} in {figures.seconds:.1f} s, errors: {figures.errors}")
    print(f"  throughput: {figures.rps:.0f} req/s (target >= {TARGET_RPS:.0f})")
    print(
        f"  latency: p50 {p50:.1f} ms, p90 {p90:.1f} ms, p99 {p99:.1f} ms (target p99 <= {TARGET_P99_MS:.0f}), "
        f"mean {statistics.fmean(figures.latencies_ms):.1f} ms"
    )
    met = figures.errors == 0 and figures.rps >= TARGET_RPS and p99 <= TARGET_P99_MS
    print(f"  CPU: app {figures.server_cpu:.2f} cores, load generator {figures.client_cpu:.2f} cores")
    print(f"  targets {'met' if met else 'MISSED'}")
    return 1 if args.check and not met else 0


if __name__ == "__main__":
    sys.exit(main())
