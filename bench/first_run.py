"""First run on a CPU server: from deployment to the first IONOS image, and the tiny model's time per image.

1. The real app (real backends, ``backend=auto`` on a CPU) against the fake Nextcloud and the IONOS imitation over
   real HTTP: register (heartbeat, init, enabled), the admin saves the token through the settings API, a user
   schedules one 1024² image. Prints the time to "enabled", from the token's save to the SUCCESSFUL task, and in all.
2. ``make tiny-model``'s pipeline (SDXL-Turbo-shaped, random weights) through the real loading code: seconds per
   512² image at one step (median of ``--repeats``).

Run: PYTHONPATH=lib:. .venv/bin/python bench/first_run.py [--runs N] [--repeats N]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from tests.conftest import FAST_TIMING, ROUTES, exapp_settings
from tests.fake_ionos import FakeIonos
from tests.fake_nextcloud import FakeNextcloud
from tests.servers import ServerThread, free_port
from tests.tiny_models import save_tiny_sdxl
from text2image_hub.app import create_app
from text2image_hub.backends import GenerationControl, ResolvedRequest
from text2image_hub.backends.catalog import SDXL_TURBO, local_model
from text2image_hub.backends.local import LocalBackend
from text2image_hub.imaging import ImageSize


def first_ionos_image(storage: Path) -> tuple[float, float]:
    """(deploy → enabled, token saved → first image SUCCESSFUL) in seconds."""
    with FakeIonos() as ionos, FakeNextcloud(app_secret=secrets.token_hex(16), routes=ROUTES) as nextcloud:
        port = free_port()
        settings = exapp_settings(nextcloud, storage, port, COMPUTE_DEVICE="CPU", T2I_REMOTE_BASE_URL=ionos.base_url)
        started = time.perf_counter()
        with ServerThread(create_app(settings, timing=FAST_TIMING), port=port, lifespan="on") as server:
            nextcloud.app_url = server.url
            nextcloud.register_app()
            enabled = time.perf_counter() - started
            saved = time.perf_counter()
            nextcloud.save_setting("remote_api_key", ionos.token)
            task = nextcloud.wait_for_task(nextcloud.schedule({"input": "a lighthouse at dawn", "numberOfImages": 1}))
            first_image = time.perf_counter() - saved
        if task["status"] != "STATUS_SUCCESSFUL":
            raise SystemExit(f"the first task failed: {task}")
        return enabled, first_image


async def tiny_seconds_per_image(folder: Path, repeats: int) -> tuple[float, float]:
    """(load seconds, median seconds per 512² image at one step)."""
    started = time.perf_counter()
    backend = await LocalBackend.load(local_model(SDXL_TURBO), folder, device="cpu")
    load = time.perf_counter() - started
    request = ResolvedRequest(prompt="a fox in the snow", size=ImageSize(512, 512), count=1, seeds=(1,), steps=1)
    await backend.generate(request, GenerationControl())  # warm-up
    times = []
    for seed in range(repeats):
        started = time.perf_counter()
        await backend.generate(ResolvedRequest(request.prompt, request.size, 1, (seed,), steps=1), GenerationControl())
        times.append(time.perf_counter() - started)
    await backend.aclose()
    return load, statistics.median(times)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="first runs to time (each a fresh app and storage)")
    parser.add_argument("--repeats", type=int, default=5, help="timed tiny-model images")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
    with tempfile.TemporaryDirectory(prefix="t2i-first-run-") as scratch:
        rows = [first_ionos_image(Path(scratch) / f"run-{run}") for run in range(args.runs)]
        enabled = statistics.median(row[0] for row in rows)
        first = statistics.median(row[1] for row in rows)
        print(f"CPU server, no configuration, IONOS imitation ({args.runs} runs, medians):")
        print(f"  deploy → enabled (init 100, form and provider registered): {enabled:.3f} s")
        print(f"  token saved → first image SUCCESSFUL: {first:.3f} s")
        print(f"  in all: {enabled + first:.3f} s")
        folder = save_tiny_sdxl(Path(scratch) / "tiny-sdxl", variant="fp16")
        load, per_image = asyncio.run(tiny_seconds_per_image(folder, args.repeats))
        print(f"tiny model (make tiny-model), 512x512, 1 step, CPU: load {load:.2f} s, {per_image:.3f} s per image")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
