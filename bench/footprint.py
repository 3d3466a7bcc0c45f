"""Start-up time and idle footprint of the app in remote-only standalone mode.

Starts ``python -m text2image_hub`` with ``T2I_BACKEND=remote`` and no ``NEXTCLOUD_URL`` (standalone: no task worker,
no Nextcloud), then measures:

- **start-up**: from spawning the process until ``GET /heartbeat`` answers 200 (polled every 10 ms);
- **idle RSS**: resident memory of the process and its children, 3 s after it became ready;
- **torch loaded**: whether ``libtorch`` is mapped into any of those processes (``/proc/<pid>/maps``). A remote-only
  app should never import torch or diffusers: that costs about a second and hundreds of MB.

Run:  ``PYTHONPATH=lib .venv/bin/python bench/footprint.py [--runs 3] [--check]``
With ``--check`` it exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2
import psutil

TARGET_STARTUP_S = 1.5
TARGET_RSS_MB = 150.0
POLL_INTERVAL_S = 0.010
IDLE_WAIT_S = 3.0
STARTUP_TIMEOUT_S = 60.0
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sample:
    startup_s: float
    rss_mb: float
    torch_loaded: bool


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def app_environment(port: int, storage: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"NEXTCLOUD_URL", "HP_SHARED_KEY", "APP_SECRET"} and not key.startswith("T2I_")
    }
    lib = str(REPO / "lib")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [lib, env.get("PYTHONPATH", "")]))
    env.update(
        {
            "APP_HOST": "127.0.0.1",
            "APP_PORT": str(port),
            "APP_ID": "text2image_hub",
            "APP_PERSISTENT_STORAGE": str(storage),
            "T2I_BACKEND": "remote",
            "T2I_LOG_LEVEL": "WARNING",
        }
    )
    return env


def processes(root: psutil.Process) -> list[psutil.Process]:
    return [root, *root.children(recursive=True)]


def rss_mb(root: psutil.Process) -> float:
    total = 0
    for proc in processes(root):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / (1024 * 1024)


def torch_loaded(root: psutil.Process) -> bool:
    for proc in processes(root):
        try:
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if "libtorch" in maps:
            return True
    return False


def wait_until_ready(child: subprocess.Popen[bytes], url: str, started: float) -> float:
    with httpx2.Client(timeout=1.0) as client:
        while True:
            if child.poll() is not None:
                raise RuntimeError(f"the app exited with status {child.returncode} before it answered {url}")
            try:
                if client.get(url).status_code == 200:
                    return time.perf_counter() - started
            except httpx2.TransportError:
                pass
            if time.perf_counter() - started > STARTUP_TIMEOUT_S:
                raise RuntimeError(f"no 200 from {url} within {STARTUP_TIMEOUT_S:.0f} s")
            time.sleep(POLL_INTERVAL_S)


def stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def measure_once(module: str) -> Sample:
    with tempfile.TemporaryDirectory(prefix="t2i-footprint-") as storage:
        return measure_in(module, Path(storage))


def measure_in(module: str, storage: Path) -> Sample:
    port = free_port()
    url = f"http://127.0.0.1:{port}/heartbeat"
    started = time.perf_counter()
    child = subprocess.Popen(  # noqa: S603 - our own interpreter running a module named on our command line
        [sys.executable, "-m", module],
        env=app_environment(port, storage),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        try:
            startup = wait_until_ready(child, url, started)
        except RuntimeError:
            stop(child)
            stderr = child.stderr.read().decode(errors="replace") if child.stderr else ""
            print(stderr[-4000:], file=sys.stderr)
            raise
        time.sleep(IDLE_WAIT_S)
        root = psutil.Process(child.pid)
        return Sample(startup_s=startup, rss_mb=rss_mb(root), torch_loaded=torch_loaded(root))
    finally:
        stop(child)
        if child.stderr:
            child.stderr.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="start the app this many times (default 3)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--module", default="text2image_hub", help="the module to run with -m (default %(default)s)")
    args = parser.parse_args(argv)

    samples = []
    for run in range(1, args.runs + 1):
        try:
            sample = measure_once(args.module)
        except RuntimeError as exc:
            print(f"footprint: {exc}", file=sys.stderr)
            return 2
        samples.append(sample)
        print(
            f"run {run}: start-up {sample.startup_s:.3f} s, idle RSS {sample.rss_mb:.1f} MB, "
            f"torch loaded: {'yes' if sample.torch_loaded else 'no'}"
        )

    startup = statistics.median(s.startup_s for s in samples)
    rss = max(s.rss_mb for s in samples)
    torch = any(s.torch_loaded for s in samples)
    ok_startup = startup <= TARGET_STARTUP_S
    ok_rss = rss <= TARGET_RSS_MB
    print()
    print(f"{'metric':<28}{'measured':>12}{'target':>12}  ok")
    print(f"{'start-up (median)':<28}{startup:>10.3f} s{TARGET_STARTUP_S:>10.1f} s  {'yes' if ok_startup else 'NO'}")
    print(f"{'idle RSS (max, + children)':<28}{rss:>9.1f} MB{TARGET_RSS_MB:>9.0f} MB  {'yes' if ok_rss else 'NO'}")
    print(f"{'torch loaded':<28}{'yes' if torch else 'no':>12}{'no':>12}  {'NO' if torch else 'yes'}")
    print(f"({args.runs} runs, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    if args.check and not (ok_startup and ok_rss and not torch):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
