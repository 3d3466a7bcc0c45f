"""Issue 14's one GPU call: the gpu-marked tests, then ``bench/local.py --plan gpu``, all inside one time budget.

``bench/gpu.sh`` installs the carried wheels and runs this. The steps, most important first, each in a child process
with its own deadline (a step that overruns is killed; the next one starts on time):
  1. ``pytest -m gpu tests/test_local.py`` (the CUDA tests: bf16/fp16 loading, real OOM, cancellation);
  2. FLUX.1-schnell 1024², 4 steps: eager (+ the OOM and cancellation checks), compile+fp8, compile, fp8;
  3. SDXL-Turbo 512² (1 and 4 steps, plus a load from disk) and SDXL base 1024² (30 steps), eager;
  4. SDXL's speed-ups, while time is left.
Under ``--out``: results.json (everything), results.md (the tables), rows.jsonl (the bench rows as they came),
pytest.log and bench.log; results.* are rewritten after each step, so a run cut short returns what it measured.

  python bench/gpu.py --out DIR [--device cpu --tiny] [--budget-s 450] [--started EPOCH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from report import markdown

ROOT = Path(__file__).resolve().parents[1]
PYTEST_CAP_S = 100.0
BENCH_GROUPS = (("flux", 290.0), ("sdxl", 100.0), ("sdxl-speedups", 1e9))
"""Each group of ``bench/local.py``'s GPU plan with the most seconds it may take."""
KEEP_FOR_SDXL_S = 85.0
"""What the FLUX group leaves for SDXL's eager figures (less when the budget is short: FLUX comes first)."""
MARGIN_S = 10.0
GRACE_S = 20.0
"""How long past its deadline a step may run (finishing the image in hand) before it is killed."""


def run_step(command: list[str], log: Path, *, timeout: float, env: dict[str, str]) -> dict[str, Any]:
    """Run ``command`` in its own process group, output appended to ``log``; kill the group at ``timeout``."""
    start = time.time()
    with log.open("a", encoding="utf-8") as output:
        output.write(f"\n$ {' '.join(command)}  (timeout {timeout:.0f} s)\n")
        output.flush()
        child = subprocess.Popen(  # noqa: S603 - our own interpreter and scripts
            command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        timed_out = False
        try:
            rc = child.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(child.pid, signal.SIGKILL)
            rc = child.wait()
    return {"rc": rc, "seconds": round(time.time() - start, 1), "timed_out": timed_out}


def pytest_outcomes(log: Path) -> dict[str, Any]:
    text = log.read_text(encoding="utf-8", errors="replace")
    outcomes = re.findall(r"^(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS) (.+)$", text, flags=re.MULTILINE)
    summary = re.findall(r"^=+ (.*(?:passed|failed|skipped|error|no tests ran).*) =+$", text, flags=re.MULTILINE)
    return {"summary": summary[-1] if summary else "", "outcomes": [f"{what} {name}" for what, name in outcomes]}


def read_rows(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # the last line of a killed step
                continue
    return rows


def write_results(out: Path, results: dict[str, Any]) -> None:
    rows = read_rows(out / "rows.jsonl")
    env = next((row for row in rows if row["kind"] == "env"), {})
    results["env"] = env
    results["rows"] = [row for row in rows if row["kind"] != "env"]
    results["elapsed_s"] = round(time.time() - results["started_epoch"], 1)
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    lines = [
        f"# text2image_hub local backend: {results['mode']} ({results['started']})",
        "",
        "Machine: "
        + ", ".join(f"{key} {env[key]}" for key in ("gpu", "gpu_memory_gb", "cuda", "torch", "diffusers") if key in env)
        + f", torchao {env.get('torchao')}, transformers {env.get('transformers')}; "
        + f"{results['elapsed_s']} s of a {results['budget_s']:.0f} s budget.",
        "",
        "| step | rc | seconds | killed at its deadline |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {step['name']} | {'not run: no time left' if step['rc'] is None else step['rc']} | {step['seconds']} "
        f"| {'yes' if step['timed_out'] else 'no'} |"
        for step in results["steps"]
    ]
    pytest = results.get("pytest")
    if pytest:
        lines += ["", f"pytest -m gpu: {pytest['summary'] or 'no summary (see pytest.log)'}", ""]
        lines += [f"- {outcome}" for outcome in pytest["outcomes"]]
    lines += ["", markdown(results["rows"])]
    (out / "results.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes of the same plan (the CPU dry run)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="seconds for everything, from --started")
    parser.add_argument("--started", type=float, default=0.0, help="epoch seconds the run began (bench/gpu.sh)")
    args = parser.parse_args(argv)

    started = args.started or time.time()
    final = started + args.budget_s - MARGIN_S
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "rows.jsonl").unlink(missing_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT / "lib"), str(ROOT)])),
        "PYTHONUNBUFFERED": "1",
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",  # the machine's own pytest plugins stay out; pytest-asyncio is named
    }
    results: dict[str, Any] = {
        "mode": f"{args.device}{' (tiny sizes: a dry run)' if args.tiny else ''}",
        "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "started_epoch": started,
        "budget_s": args.budget_s,
        "steps": [],
    }

    pytest_log = out / "pytest.log"
    command = [sys.executable, "-m", "pytest", "tests/test_local.py", "-m", "gpu", "--noconftest"]
    command += ["-p", "pytest_asyncio.plugin", "-p", "no:cacheprovider", "-rA", "-v"]
    step = run_step(command, pytest_log, timeout=min(PYTEST_CAP_S, final - time.time()), env=env)
    results["steps"].append({"name": "pytest -m gpu", **step})
    results["pytest"] = pytest_outcomes(pytest_log)
    write_results(out, results)
    print(f"pytest -m gpu: rc {step['rc']}, {results['pytest']['summary']}", flush=True)

    for group, cap in BENCH_GROUPS:
        keep = min(KEEP_FOR_SDXL_S, 0.3 * (final - time.time())) if group == "flux" else 0.0
        deadline = min(time.time() + cap, final - keep)
        if deadline - time.time() < 15:
            results["steps"].append({"name": f"bench {group}", "rc": None, "seconds": 0, "timed_out": False})
            continue
        command = [sys.executable, "bench/local.py", "--plan", "gpu", "--group", group, "--device", args.device]
        command += ["--deadline", f"{deadline:.0f}", "--jsonl", str(out / "rows.jsonl")]
        command += ["--tiny"] if args.tiny else []
        step = run_step(command, out / "bench.log", timeout=deadline - time.time() + GRACE_S, env=env)
        results["steps"].append({"name": f"bench {group}", **step})
        write_results(out, results)
        print(f"bench {group}: rc {step['rc']} in {step['seconds']} s", flush=True)

    write_results(out, results)
    print((out / "results.md").read_text(encoding="utf-8"), flush=True)
    failed_checks = [row for row in results["rows"] if row["kind"] == "check" and not row["passed"]]
    return 1 if results["steps"][0]["rc"] not in (0, None) or failed_checks else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
