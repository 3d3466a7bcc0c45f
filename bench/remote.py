"""How close the remote backend's rate limiting comes to the best a token bucket allows, against the IONOS imitation.

N tasks (default 60) of 1–4 images each go through ``RemoteBackend.generate`` concurrently, as the task worker would
run them, against ``tests.fake_ionos.FakeIonos`` enforcing IONOS's limits (10 images/min, bursts of 20,
5 requests/s) with time sped up (``--time-scale 60``: one real second is one simulated minute). The client uses the
production HTTP client (``remote_http_client``) and retry policy, with the IONOS preset's limits time-scaled alike.

The optimum is what a perfect token bucket allows: the whole burst at once, then one image per ``60 /
images_per_minute`` seconds (and no faster than the request rate), plus one service latency for the last image.
It prints the makespan, that optimum, their ratio, the 429s the server answered and the tasks that failed.

Run:  ``PYTHONPATH=lib:. .venv/bin/python bench/remote.py [--tasks 60] [--time-scale 60] [--slots 0] [--check]``
With ``--check`` it exits 1 unless ratio ≤ 1.05 and no task failed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from dataclasses import dataclass

from tests.fake_ionos import FakeIonos, ionos_account
from text2image_hub.backends import GenerationControl, ResolvedRequest
from text2image_hub.backends.remote import RemoteBackend, remote_http_client
from text2image_hub.errors import Text2ImageError
from text2image_hub.imaging import ImageSize

TARGET_RATIO = 1.05


@dataclass(frozen=True)
class Outcome:
    images: int
    finished: float  # seconds since start
    error: str | None


async def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    counts = [rng.randint(1, 4) for _ in range(args.tasks)]
    size = ImageSize.parse(args.size)
    with FakeIonos(time_scale=args.time_scale, latency=args.latency) as fake:
        async with remote_http_client() as http:
            backend = RemoteBackend(ionos_account(fake), http)
            slots = asyncio.Semaphore(args.slots or len(counts))

            async def task(index: int, count: int) -> Outcome:
                request = ResolvedRequest(prompt=f"bench task {index}: a lighthouse at dawn", size=size, count=count)
                async with slots:
                    try:
                        images = await backend.generate(request, GenerationControl())
                    except Text2ImageError as exc:
                        return Outcome(0, time.monotonic() - started, f"{type(exc).__name__}: {exc}")
                return Outcome(len(images), time.monotonic() - started, None)

            fake.reset_clock()
            started = time.monotonic()
            outcomes = await asyncio.gather(*(task(index, count) for index, count in enumerate(counts)))
            makespan = time.monotonic() - started
        stats = fake.stats()

    total = sum(counts)
    image_rate = fake.images_per_minute / 60 * args.time_scale  # images per real second
    request_rate = fake.requests_per_second * args.time_scale
    optimum = max((total - fake.burst) / image_rate, (total - fake.requests_per_second) / request_rate, 0.0)
    optimum += args.latency / args.time_scale
    ratio = makespan / optimum
    failed = [outcome for outcome in outcomes if outcome.error is not None]
    finish_times = [outcome.finished for outcome in outcomes]

    print(f"tasks: {len(counts)}  images: {total}  size: {size}  slots: {args.slots or 'all'}")
    print(
        f"limits: {fake.images_per_minute:g} images/min, burst {fake.burst}, {fake.requests_per_second:g} requests/s;"
        f" time scale {args.time_scale:g} (1 real s = {args.time_scale:g} simulated s);"
        f" latency {args.latency:g} simulated s/image"
    )
    print(f"makespan: {makespan:.3f} s real = {makespan * args.time_scale / 60:.2f} simulated min")
    print(f"optimum:  {optimum:.3f} s real = {optimum * args.time_scale / 60:.2f} simulated min")
    print(f"ratio:    {ratio:.4f}  (target <= {TARGET_RATIO})")
    print(
        f"server: {stats.requests} requests, {stats.images} images, {stats.rate_limited} answered 429,"
        f" {stats.server_errors} answered 5xx"
    )
    print(f"failed tasks: {len(failed)}")
    print(f"task finish time: median {statistics.median(finish_times):.3f} s, max {max(finish_times):.3f} s real")
    for outcome in failed[:5]:
        print(f"  failure: {outcome.error}")
    if args.check and (ratio > TARGET_RATIO or failed or stats.images != total):
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=60)
    parser.add_argument("--time-scale", type=float, default=60.0)
    parser.add_argument("--latency", type=float, default=2.0, help="simulated seconds the service takes per image")
    parser.add_argument("--size", default="1024x1024")
    parser.add_argument("--slots", type=int, default=0, help="tasks run at once (0: all, like a drained queue)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--check", action="store_true", help=f"exit 1 unless ratio <= {TARGET_RATIO} and 0 failed")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
