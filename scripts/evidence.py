"""The sync-vs-async study behind docs/evidence.md: every compare spec in examples/evidence/,
run with `tidal compare` into docs/evidence/<spec>/, then one summary of all of them.

    python scripts/evidence.py                     # everything: data, every study, the summary
    python scripts/evidence.py --only ssp,faults   # some studies (the summary covers all found)
    python scripts/evidence.py --summary-only      # rewrite docs/evidence/summary.md from the runs
    python scripts/evidence.py --advise-only       # the tidal advise check again, then the summary
    python scripts/evidence.py --quick --out DIR   # a few steps, two seeds: proves the pipeline only

Each study resumes where it stopped (tidal compare keeps every finished run), so the command can
be interrupted and run again. The data set is generated once, deterministically, if missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tidal.core.spec import APPLIES_TO, ConsistencySpec

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "examples" / "evidence"
DATA = Path("data/evidence/t2m.nc")  # relative: the specs name it so, run from the repository root
SYNTH_ARGS = ["--steps", "2000", "--val-steps", "64"]
# --quick: enough steps for a few evaluations and a kill, two seeds, a shorter field of its own.
QUICK_STEPS, QUICK_EVAL_EVERY, QUICK_KILL_AT = 12, 4, 6
QUICK_SYNTH_ARGS = ["--steps", "200", "--val-steps", "64"]
# The share of a run's versions, at the end, over which "tail loss" averages the evaluations:
# one evaluation is noisy under async, the mean of the last quarter much less so.
TAIL_SHARE = 0.25


def tidal(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tidal", *args], cwd=ROOT, check=True)


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def quick_spec(spec: dict[str, Any], data: Path) -> dict[str, Any]:
    """The same study, a few steps long, with (at most) two seeds, on the field at `data`."""
    spec = dict(spec, seeds=(spec.get("seeds") or [0, 1])[:2], warm_up_steps=0)
    dataset = dict(spec["job"]["dataset"], args=dict(spec["job"]["dataset"]["args"], path=str(data)))
    spec["job"] = dict(spec["job"], steps=QUICK_STEPS, eval_every=QUICK_EVAL_EVERY, dataset=dataset)
    if spec.get("kill"):
        spec["kill"] = dict(spec["kill"], at_step=QUICK_KILL_AT)
    return spec


def ensure_data(out: Path, quick: bool) -> None:
    """The field the studies train on (--quick: a shorter one of its own), written if missing."""
    data = quick_data(out) if quick else ROOT / DATA
    if not data.exists():
        tidal("climate", "synth", str(data), *(QUICK_SYNTH_ARGS if quick else SYNTH_ARGS))


def run_studies(names: list[str], out: Path, quick: bool) -> None:
    ensure_data(out, quick)
    for name in names:
        spec_path = SPECS / f"{name}.yaml"
        if quick:
            spec_path = out / "specs" / f"{name}.yaml"
            spec_path.parent.mkdir(parents=True, exist_ok=True)
            spec_path.write_text(yaml.safe_dump(study_spec(name, out, quick), sort_keys=False))
        # Paths as the report will print them: relative to the repository when inside it.
        tidal("compare", _shown(spec_path), "--out", _shown(out / name))


# --- tidal advise, checked against the studies ------------------------------------------

# Each scenario of issue 19's check, and the study whose job (workers, stragglers) it probes.
ADVISE_SCENARIOS = {
    "uniform workers": "scale-4",
    "one persistent straggler": "backup-workers",
    "transient jitter": "ssp",
    "a worker killed": "faults",
}
ADVISE_PROBE_STEPS = "30"


def study_spec(name: str, out: Path, quick: bool) -> dict[str, Any]:
    """A study's compare spec, as --quick runs it when `quick`."""
    spec = yaml.safe_load((SPECS / f"{name}.yaml").read_text())
    return quick_spec(spec, quick_data(out)) if quick else spec


def quick_data(out: Path) -> Path:
    return (out / "t2m.nc").resolve()


def run_advice(out: Path, quick: bool) -> None:
    """`tidal advise --json` on each scenario's job, saved as out/advise/<study>.json."""
    ensure_data(out, quick)
    folder = out / "advise"
    folder.mkdir(parents=True, exist_ok=True)
    for study in ADVISE_SCENARIOS.values():
        spec = study_spec(study, out, quick)
        job_file = folder / f"{study}.job.yaml"
        job_file.write_text(yaml.safe_dump(dict(spec["job"], name=f"advise-{study}", mode="sync"), sort_keys=False))
        slowdowns = ",".join(str(s) for s in spec["cluster"]["worker_slowdowns"])
        steps = "5" if quick else ADVISE_PROBE_STEPS
        cmd = [sys.executable, "-m", "tidal", "advise", str(job_file), "--slowdowns", slowdowns, "--json"]
        answer = subprocess.run([*cmd, "--probe-steps", steps], cwd=ROOT, check=True, capture_output=True, text=True)
        (folder / f"{study}.json").write_text(answer.stdout)


# --- the summary -------------------------------------------------------------------------


def _spread(values: list[float], fmt: str, scale: float = 1.0) -> str:
    if not values:
        return "-"
    values = [v * scale for v in values]
    # The median: a run that diverged would make a mean say nothing of the others.
    middle = format(statistics.median(values), fmt)
    if len(values) == 1:
        return middle
    return f"{middle} ({format(min(values), fmt)} to {format(max(values), fmt)})"


def tail_loss(run: dict[str, Any]) -> float | None:
    """Mean validation loss of the evaluations in the last quarter of the run's versions."""
    evals = run.get("evals") or []
    if not evals:
        return None
    last = max(e["version"] for e in evals)
    tail = [e["val_loss"] for e in evals if e["version"] >= (1 - TAIL_SHARE) * last]
    return statistics.fmean(tail)


def study_rows(results: dict[str, Any]) -> list[str]:
    """One markdown row per mode: means over the seeds, (min-max) when there are several."""
    rows = []
    for mode in results["modes"]:
        runs = [r["baseline"] for r in mode["runs"] if r.get("baseline") and r["baseline"]["state"] == "succeeded"]
        kills = [r["kill"] for r in mode["runs"] if r.get("kill")]
        times = [r["target"]["elapsed_s"] for r in runs if r.get("target")]
        reached = f"{len(times)} of {len(runs)}"
        cells = [
            mode["label"],
            str(len(runs)),
            f"{_spread(times, '.1f')} [{reached}]",
            _spread([r["final_val_loss"] for r in runs if r.get("final_val_loss") is not None], ".3g", 1e4),
            _spread([t for r in runs if (t := tail_loss(r)) is not None], ".3g", 1e4),
            _spread([r["samples_per_s"] for r in runs if r.get("samples_per_s")], ".0f"),
            _spread([r["wall_s"] for r in runs], ".1f"),
            _spread([r["staleness_mean"] for r in runs if r.get("staleness_mean") is not None], ".2f"),
            _spread([r["wire_bytes"] / 2**20 for r in runs if r.get("wire_bytes") is not None], ".0f"),
        ]
        if kills:
            pairs = [(r["kill"], r["baseline"]) for r in mode["runs"] if r.get("kill") and r.get("baseline")]
            lost = [k["wall_s"] - b["wall_s"] for k, b in pairs]  # the same seed with and without
            final = [k["final_val_loss"] for k in kills if k.get("final_val_loss") is not None]
            cells.append(f"{_spread(lost, '+.1f')} s; {_spread(final, '.3g', 1e4)}")
        rows.append("| " + " | ".join(cells) + " |")
    return rows


HEADER = (
    "| mode | runs | time to target (s) [reached] | final val loss (1e-4) | tail val loss (1e-4) "
    "| samples/s | wall (s) | staleness mean | MiB on the wire |"
)


def fastest(results: dict[str, Any], kill: bool) -> tuple[float, dict[str, Any]] | None:
    """The mode entry with the lowest mean time to target among those that reached it with
    every seed (in the runs with the kill, if `kill`), and that mean."""
    best = None
    for mode in results["modes"]:
        runs = [r["kill" if kill else "baseline"] for r in mode["runs"] if r.get("kill" if kill else "baseline")]
        times = [r["target"]["elapsed_s"] for r in runs if r.get("target")]
        if runs and len(times) == len(runs) and (best is None or statistics.fmean(times) < best[0]):
            best = (statistics.fmean(times), mode)
    return best


def _settings(mode: str, consistency: dict[str, Any]) -> str:
    return mode + "".join(f", {k}={v}" for k, v in sorted(consistency.items()))


def advice_rows(out: Path) -> list[str]:
    rows = []
    for scenario, study in ADVISE_SCENARIOS.items():
        answer_path, results_path = out / "advise" / f"{study}.json", out / study / "results.json"
        if not answer_path.exists() or not results_path.exists():
            continue
        recommended = json.loads(answer_path.read_text())["recommendation"]
        best = fastest(json.loads(results_path.read_text()), kill=study == "faults")
        if best is None:
            measured, agrees = "no mode reached the target with every seed", "-"
        else:
            seconds, mode = best
            spec = mode["job_spec"]
            measured = f"{mode['label']} ({_settings(spec['mode'], _varied(spec))}), {seconds:.1f} s"
            same = _family(recommended["mode"], recommended.get("consistency", {})) == _family(
                spec["mode"], _varied(spec)
            )
            agrees = "yes" if same else "**no**"
        advice = _settings(recommended["mode"], recommended.get("consistency", {}))
        links = f"[{study}]({study}/report.md) | {advice} ([json](advise/{study}.json))"
        rows.append(f"| {scenario} | {links} | {measured} | {agrees} |")
    return rows


def _family(mode: str, consistency: dict[str, Any]) -> str:
    """What kind of choice a mode entry is: plain sync (SSP with bound 0 is sync), sync with
    backup workers, SSP with a bound, async, local SGD, auto. Advice agrees with a measurement
    when they choose the same kind; their parameters are shown side by side."""
    if mode == "ssp" and consistency.get("staleness_bound") == 0:
        return "sync"
    if mode == "sync" and consistency.get("backup_workers"):
        return "sync with backup workers"
    return mode


def _varied(job_spec: dict[str, Any]) -> dict[str, Any]:
    """The consistency fields of the entry's own mode that differ from their defaults: what
    the study's mode entry set (the job spec in results.json holds every field)."""
    defaults = ConsistencySpec().model_dump()
    consistency = job_spec.get("consistency") or {}
    return {k: v for k, v in consistency.items() if APPLIES_TO.get(k) == job_spec["mode"] and v != defaults.get(k)}


def summary(out: Path) -> str:
    parts = [
        "# The study's figures, one table per study",
        "",
        "Written by `python scripts/evidence.py --summary-only` from docs/evidence/*/results.json;"
        " read docs/evidence.md for what they show. Medians over the seeds (a diverged run would make"
        " a mean say nothing of the others), (min to max) with two or more; losses in units of 1e-4;"
        " *tail val loss* is the mean of the evaluations in the last quarter of a run's versions"
        " (one evaluation is noisy under async); times to target count the runs that reached it.",
        "",
    ]
    for results_path in sorted(out.glob("*/results.json")):
        results = json.loads(results_path.read_text())
        name = results_path.parent.name
        kill = any(r.get("kill") for m in results["modes"] for r in m["runs"])
        header = HEADER + (" with rank killed: time lost; final val loss (1e-4) |" if kill else "")
        cols = header.count("|") - 1
        parts += [
            f"## {name}",
            "",
            f"`{results['command']}`, runs at {', '.join(results.get('run_codes') or [results['code']])},"
            f" report written {results['generated_at'][:16]} UTC, seeds {results['seeds']},"
            f" target val loss {results['target_val_loss']}. Report: [{name}/report.md]({name}/report.md).",
            "",
            header,
            "|" + " :-- |" + " --: |" * (cols - 1),
            *study_rows(results),
            "",
        ]
    advice = advice_rows(out)
    if advice:
        parts += [
            "## tidal advise against the measurements",
            "",
            "`tidal advise` (30 steps async, then the same in sync) on each scenario's job, against the mode entry"
            " that reached the target fastest on average with every seed (in the runs with the kill,"
            " for a worker killed). *agrees*: the same mode.",
            "",
            "| scenario | study | advise recommends | fastest to target, measured | agrees |",
            "| :-- | :-- | :-- | :-- | :-- |",
            *advice,
            "",
        ]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated study names (spec file stems)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "evidence")
    parser.add_argument("--quick", action="store_true", help="a few steps and two seeds per study")
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument("--advise", action="store_true", help="with --only: run the advise check too")
    parser.add_argument("--advise-only", action="store_true", help="only the advise check (and the summary)")
    args = parser.parse_args()
    known = sorted(p.stem for p in SPECS.glob("*.yaml"))
    names = args.only.split(",") if args.only else known
    for name in names:
        if name not in known:
            parser.error(f"--only: no study {name!r} (known: {', '.join(known)})")
    if args.advise_only:
        run_advice(args.out, args.quick)
    elif not args.summary_only:
        run_studies(names, args.out, args.quick)
        if not args.only or args.advise:
            run_advice(args.out, args.quick)
    (args.out / "summary.md").write_text(summary(args.out))
    print(f"wrote {args.out / 'summary.md'}")


if __name__ == "__main__":
    main()
