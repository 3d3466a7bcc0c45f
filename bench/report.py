"""The bench rows as Markdown tables (no torch: ``bench/gpu.py`` writes them without loading the GPU stack)."""

from __future__ import annotations

from typing import Any


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as Markdown tables: latency and throughput, disk loads, checks, and what was skipped or failed."""
    lines: list[str] = []
    latency = [row for row in rows if row["kind"] == "latency"]
    if latency:
        lines += [
            "Random weights on the real architectures. build s: meta device → target device → initialised (no disk, "
            "not a load time); ready s: LocalBackend.from_pipeline (placement, speed-ups, compile warm-up); latency: "
            "median of n images at batch 1 after a warm-up; peak GB: peak GPU memory allocated; img/s bN: one call "
            "of N images after a warm-up call; warm-up s: those first calls at b1/b2/b4 (a recompile each when "
            "compiled); pixel std: of the last image (0 would mean a blank or NaN image).",
            "",
            "| model | speed-ups | size | steps | build s | ready s | latency s (median) | peak GB "
            "| img/s b1 | b2 | b4 | peak GB b4 | warm-up s b1/b2/b4 | pixel std |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in latency:
            rates = row["images_per_s"]
            peaks = row["peak_gb_batch"]
            cells = [
                row["model"].split("/")[-1],
                row["speedups"],
                row["size"],
                row["steps"],
                row["build_s"],
                row["ready_s"],
                f"{row['latency_s']} (n={row['repeats']})",
                row["peak_gb"] if row["peak_gb"] is not None else "–",
                rates.get("1", "–"),
                rates.get("2", "–"),
                rates.get("4", "–"),
                peaks.get("4") if peaks.get("4") is not None else "–",
                "/".join(str(row["warm_up_s"].get(batch, "–")) for batch in ("1", "2", "4")),
                row["pixel_std"],
            ]
            lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
        lines.append("")
    loads = [row for row in rows if row["kind"] == "disk_load"]
    if loads:
        lines += [
            "| model (from disk) | files | save s | LocalBackend.load s | first image s |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in loads:
            name = row["model"].split("/")[-1] + (" (tiny)" if row["tiny"] else "")
            files = f"{row['files_mb']} MB {row['dtype']}"
            cells = [name, files, row["save_s"], row["load_s"], row["first_image_s"]]
            lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
        lines.append("")
    checks = [row for row in rows if row["kind"] == "check"]
    if checks:
        lines += ["| check | model | result | detail |", "| --- | --- | --- | --- |"]
        for row in checks:
            result = "passed" if row["passed"] else "**FAILED**"
            lines.append(f"| {row['check']} | {row['model'].split('/')[-1]} | {result} | {row['detail']} |")
        lines.append("")
    other = [row for row in rows if row["kind"] in ("skipped", "error")]
    if other:
        lines += ["| not measured | why |", "| --- | --- |"]
        for row in other:
            why = row.get("reason") or row.get("error", "")
            lines.append(f"| {row['name']} | {'skipped: ' if row['kind'] == 'skipped' else 'error: '}{why} |")
        lines.append("")
    return "\n".join(lines)
