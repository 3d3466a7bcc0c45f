"""A misbehaving remote service, measured: how long a task takes to fail per fault, and what a bomb costs in memory.

The real app (remote backend, ``T2I_REMOTE_DEADLINE``) against the fake Nextcloud and the IONOS imitation with its
fault modes; one task per fault. Prints seconds from scheduling to FAILED, the user's message, the requests the
service received (1 = nothing sent twice), and the process's RSS before and after a 4-image decompression bomb.

Run: PYTHONPATH=lib:. .venv/bin/python bench/faults.py [--deadline 30]
"""

from __future__ import annotations

import argparse
import gc
import secrets
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tests.conftest import FAST_TIMING, ROUTES, exapp_settings
from tests.fake_ionos import FakeIonos
from tests.fake_nextcloud import FakeNextcloud
from tests.servers import ServerThread, free_port
from text2image_hub.app import create_app

FAULTS = ("trickle", "late", "bomb", "echo_token", "refuse_prompt")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deadline", type=float, default=30.0, help="remote_deadline in seconds (IONOS's default)")
    args = parser.parse_args(argv)
    process = psutil.Process()
    with (
        tempfile.TemporaryDirectory(prefix="t2i-faults-") as storage,
        FakeIonos() as ionos,
        FakeNextcloud(app_secret=secrets.token_hex(16), routes=ROUTES) as nextcloud,
    ):
        port = free_port()
        settings = exapp_settings(
            nextcloud,
            Path(storage),
            port,
            T2I_BACKEND="remote",
            T2I_REMOTE_BASE_URL=ionos.base_url,
            T2I_REMOTE_API_KEY=ionos.token,
            T2I_REMOTE_DEADLINE=str(args.deadline),
        )
        with ServerThread(create_app(settings, timing=FAST_TIMING), port=port, lifespan="on") as server:
            nextcloud.app_url = server.url
            nextcloud.register_app()
            print(f"remote_deadline {args.deadline:g} s")
            for fault in FAULTS:
                images = 4 if fault == "bomb" else 1
                if fault == "late":
                    ionos.hang_next(10 * args.deadline)
                else:  # a 5xx is retried: the echo comes back on every attempt
                    ionos.fault_next(fault, 4 if fault == "echo_token" else images)
                requests = ionos.stats().requests
                gc.collect()
                before = process.memory_info().rss
                started = time.monotonic()
                task_id = nextcloud.schedule({"input": "a lighthouse", "numberOfImages": images})
                task = nextcloud.wait_for_task(task_id, timeout=20 * args.deadline)
                seconds = time.monotonic() - started
                ionos.clear_faults()  # a generation that failed at its first image left some unused
                gc.collect()
                grown = (process.memory_info().rss - before) / 1024**2
                sent = ionos.stats().requests - requests
                print(
                    f"  {fault:13} {task['status'].removeprefix('STATUS_')} after {seconds:6.2f} s, {sent} request(s), "
                    f"RSS {grown:+.1f} MB: {task['userFacingErrorMessage']}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
