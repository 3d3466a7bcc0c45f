"""``bench/local.py --quick`` (what ``make bench`` runs): the meta-device builders at tiny sizes, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_bench_local_quick_measures_every_model_and_checks_cancellation(tmp_path: Path) -> None:
    rows_file, table_file = tmp_path / "rows.json", tmp_path / "rows.md"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "lib"), str(ROOT)])}

    done = subprocess.run(
        [sys.executable, "bench/local.py", "--quick", "--json", str(rows_file), "--markdown", str(table_file)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(rows_file.read_text(encoding="utf-8"))
    latency = [row for row in rows if row["kind"] == "latency"]
    assert {row["model"] for row in latency} == {
        "black-forest-labs/FLUX.1-schnell",
        "stabilityai/sdxl-turbo",
        "stabilityai/stable-diffusion-xl-base-1.0",
    }
    assert all(row["latency_s"] > 0 and row["pixel_std"] > 0 for row in latency)
    assert "2" in latency[0]["images_per_s"]
    assert len([row for row in rows if row["kind"] == "disk_load"]) == 2
    assert [row["passed"] for row in rows if row["kind"] == "check"] == [True]
    assert not [row for row in rows if row["kind"] == "error"]
    assert done.stdout.count("s/image") == len(latency)
    assert "| FLUX.1-schnell | eager | 64x64 |" in table_file.read_text(encoding="utf-8")
