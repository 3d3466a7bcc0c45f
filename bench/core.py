"""Core overheads against the fake Nextcloud with an instant backend.

Prints (median / p90 over the samples):
- trigger latency: user's schedule request starts → the backend starts generating;
- polling latency: a task whose /trigger was lost → the backend starts (bounded by T2I_POLL_INTERVAL, default 5 s);
- per-task overhead: the backend returns one 1024x1024 image → Nextcloud has the task SUCCESSFUL
  (PNG encoding with provenance, upload, report).

Run: .venv/bin/python bench/core.py [--tasks 30] [--poll-tasks 6]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tests.conftest import FAST_TIMING, ExAppRunner
from tests.fake_nextcloud import FakeNextcloud
from tests.instant_backend import InstantBackend, StaticBackends
from text2image_hub.backends import GeneratedImage, GenerationControl, ResolvedRequest


@dataclass
class TimedBackend(InstantBackend):
    started: list[float] = field(default_factory=list)
    returned: list[float] = field(default_factory=list)

    async def generate(
        self, request: ResolvedRequest, control: GenerationControl, *, wait_limit: float | None = None
    ) -> list[GeneratedImage]:
        self.started.append(time.perf_counter())
        images = await super().generate(request, control, wait_limit=wait_limit)
        self.returned.append(time.perf_counter())
        return images


def summary(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    median = statistics.median(ordered)
    return f"{name:<34} median {median * 1000:8.1f} ms   p90 {p90 * 1000:8.1f} ms   (n={len(ordered)})"


def run(tasks: int, poll_tasks: int, poll_interval: float) -> None:
    with tempfile.TemporaryDirectory() as storage, FakeNextcloud(app_secret="bench-secret") as nextcloud:
        runner = ExAppRunner(nextcloud, Path(storage))
        backend = TimedBackend(steps=1)
        runner.backends = StaticBackends(local_backend=backend)
        timing = replace(FAST_TIMING, poll_interval=poll_interval)
        runner.start(timing=timing)
        nextcloud.register_app()

        trigger, overhead = [], []
        for i in range(tasks):
            scheduled = time.perf_counter()
            task_id = nextcloud.schedule({"input": f"bench {i}", "numberOfImages": 1, "size": "1024x1024"})
            nextcloud.wait_for_task(task_id, timeout=30)
            done = time.perf_counter()
            trigger.append(backend.started[-1] - scheduled)
            overhead.append(done - backend.returned[-1])

        polling = []
        app_url = nextcloud.app_url
        for i in range(poll_tasks):
            nextcloud.app_url = "http://127.0.0.1:9"  # the trigger is lost
            scheduled = time.perf_counter()
            task_id = nextcloud.schedule({"input": f"poll {i}", "numberOfImages": 1, "size": "1024x1024"})
            nextcloud.app_url = app_url
            nextcloud.wait_for_task(task_id, timeout=poll_interval * 3)
            polling.append(backend.started[-1] - scheduled)
            time.sleep(poll_interval * (i + 1) / (poll_tasks + 1))  # sample different phases of the poll cycle
        runner.stop()

    print(summary("schedule → generation (trigger)", trigger))
    print(summary(f"schedule → generation (poll {poll_interval:g} s)", polling))
    print(summary("1024² result → SUCCESSFUL", overhead))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--poll-tasks", type=int, default=6)
    parser.add_argument("--poll-interval", type=float, default=5.0)
    args = parser.parse_args()
    run(args.tasks, args.poll_tasks, args.poll_interval)


if __name__ == "__main__":
    main()
