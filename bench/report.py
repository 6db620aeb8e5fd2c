"""bench/RESULTS.md: where, when and how it was measured, every row, and the goals."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from collections.abc import Sequence
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

from bench.machine_load import Policy
from bench.results import Row


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / (1 << 20)
    return float("nan")


@functools.cache  # read once, at the first write: later writes see RESULTS.md itself changed
def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        status = ["git", "status", "--porcelain", "--untracked-files=no"]
        dirty = subprocess.run(status, capture_output=True, text=True, check=True)
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# The 1-min load average before the case and after it (the case's own processes, mostly), and the
# share of CPU time stolen by the hypervisor during it.
LOAD_COLUMN = "load before, after; steal"


def environment(command: str, started: datetime, load_before: tuple[float, ...], elapsed_s: float) -> list[str]:
    load_after = os.getloadavg()
    versions = ", ".join(f"{p} {version(p)}" for p in ("torch", "grpcio", "protobuf", "numpy"))
    return [
        f"- **Command**: `{command}`",
        f"- **Date**: {started.strftime('%Y-%m-%d %H:%M UTC')}, {elapsed_s / 60:.1f} min",
        f"- **Machine**: {platform.system()} {platform.release()}, {_cpu_model()}, {os.cpu_count()} CPUs, "
        f"{_memory_gib():.0f} GiB RAM",
        f"- **Load**: 1/5/15-min load average {'/'.join(f'{x:.1f}' for x in load_before)} before the run, "
        f"{'/'.join(f'{x:.1f}' for x in load_after)} after (CPUs are {os.cpu_count()}); each case's in the "
        f"column `{LOAD_COLUMN}` (the load after a case is mostly its own processes')",
        f"- **Versions**: Python {platform.python_version()}, {versions}; tidal at {_commit()}",
    ]


def policy_lines(policy: Policy, quick: bool, busy: Sequence[str], refused: Sequence[str]) -> list[str]:
    if quick:
        then = "measures it anyway and marks its figures busy (--quick never refuses: CI machines are shared)"
    elif policy.allow_busy:
        then = "measures it anyway and marks its figures busy (--allow-busy)"
    else:
        then = "refuses it (a case whose steal was over the limit during it is kept, marked busy)"
    verdict = "every case ran on a quiet machine"
    if busy or refused:
        verdict = ". ".join(
            part for part in (
                f"busy, figures marked: {'; '.join(busy)}" if busy else "",
                f"refused: {'; '.join(refused)}" if refused else "",
            ) if part
        )  # fmt: skip
    return [
        f"- **Quiet machine**: a case counts as busy when the 1-min load average before it is >= {policy.max_load:g} "
        f"(--max-load) or more than {policy.max_steal * 100:g}% of the CPU time is stolen before or during it "
        f"(--max-steal); before each case the run waits up to {policy.settle_s:g} s (--settle-s) for a busy "
        f"machine to become quiet, then {then}. This run: {verdict}",
        "- **Re-run**: `python -m bench` on a quiet machine rewrites bench/RESULTS.md (about 22 minutes of "
        "measuring on 2 idle CPUs, plus the waits); it refuses to start on a busy one and changes nothing",
    ]


def _cell(row: Row) -> tuple[str, str, str, str, str]:
    baseline = row.baseline.fmt(row.digits) if row.baseline is not None else ""
    ratio = row.ratio.fmt(2) if row.ratio is not None else ""
    goal = str(row.goal) if row.goal is not None else ""
    met = {None: "", True: "**met**", False: "not met"}[row.met]
    load = row.machine.cell() if row.machine is not None else ""
    return baseline, ratio, goal, met, load


def table(rows: Sequence[Row]) -> list[str]:
    lines = [
        f"| case | metric | tidal | compared with | their figure | ratio | goal | | {LOAD_COLUMN} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        baseline, ratio, goal, met, load = _cell(row)
        lines.append(
            f"| {row.case} | {row.metric} | {row.tidal.fmt(row.digits)} | {row.baseline_name} | {baseline} | "
            f"{ratio} | {goal} | {met} | {load} |"
        )
    notes = [f"- {row.case}, {row.metric}: {row.note}" for row in rows if row.note]
    return lines + (["", *notes] if notes else [])


def goals(rows: Sequence[Row]) -> list[str]:
    lines = [f"| goal | measured (median, min-max over repetitions) | | {LOAD_COLUMN} |", "|---|---|---|---|"]
    for row in rows:
        if row.goal is None:
            continue
        figure = row.ratio if row.ratio is not None else row.tidal
        what = " ratio" if row.ratio is not None else ""
        digits = 2 if row.ratio is not None else max(2, row.digits)  # an AUC difference needs 3
        load = row.machine.cell() if row.machine is not None else ""
        lines.append(
            f"| {row.case}: {row.metric}{what} {row.goal} | {figure.fmt(digits)} | "
            f"{'**met**' if row.met else 'not met'} | {load} |"
        )
    return lines


def write(path: Path, header: list[str], sections: list[tuple[str, list[Row], str]], extra: list[str]) -> None:
    all_rows = [r for _, rows, _ in sections for r in rows]
    out = ["# tidal benchmark results", "", *header, "", "## Goals", "", *goals(all_rows), ""]
    for title, rows, intro in sections:
        if not rows:
            continue
        out += [f"## {title}", "", *([intro, ""] if intro else []), *table(rows), ""]
    out += extra
    path.write_text("\n".join(out).rstrip() + "\n")
