"""The compare spec: one job, the modes to run it in, the seeds, the machines to run it on.

The shared job fields are validated by `tidal.core.spec.parse_job_spec` once per mode, after
the mode's own fields are merged in, so a compare run accepts exactly what `tidal submit`
accepts. Errors name the field in the compare file, e.g. ``compare.modes[1].consistency: ...``
or ``compare.job.optimizer.lr: ...``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from tidal.client import load_spec_file
from tidal.core.errors import InvalidArgumentError
from tidal.core.spec import JobSpec, Mode, parse_job_spec

# Fields a mode sets; the shared `job` block must leave them out.
MODE_FIELDS = ("mode", "consistency", "compression")
# Set by the compare run itself.
RESERVED_JOB_FIELDS = (*MODE_FIELDS, "name")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
# Repeat runs: every mode (and every run with a kill) runs once per seed.
MAX_SEEDS = 32
# The job spec's own range for `seed`.
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ClusterSpec(_Strict):
    """The local cluster's processes; one worker process per entry of `worker_slowdowns`."""

    num_shards: int = Field(2, ge=1, le=16)
    # How many times slower each worker's machine is (tidal worker --slowdown), by rank.
    worker_slowdowns: list[Annotated[float, Field(ge=1.0, le=1000.0)]] = Field(
        default_factory=lambda: [1.0, 1.0], min_length=1, max_length=16
    )


class ModeRun(_Strict):
    """One column of the comparison: a label and the job fields that differ."""

    label: str = Field(min_length=1, max_length=40)
    mode: Mode
    consistency: dict[str, Any] = Field(default_factory=dict)
    compression: dict[str, Any] = Field(default_factory=dict)
    # The mode of every embedding table of the job (docs/embeddings.md); None: as `job` sets them.
    embeddings_mode: Literal["sync", "async"] | None = None


class KillSpec(_Strict):
    """A second run per mode in which the worker of this rank dies before this step."""

    rank: int = Field(ge=0)
    at_step: int = Field(ge=0)
    # Only the modes with these labels get the second run (default: every mode).
    labels: list[str] | None = Field(None, min_length=1)


class CompareSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    # A job spec without mode, consistency, compression and name.
    job: dict[str, Any]
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    # "Time to target" is when a run's validation loss first drops to this value or below.
    target_val_loss: float = Field(gt=0)
    modes: list[ModeRun] = Field(min_length=1, max_length=32)
    kill: KillSpec | None = None
    # Every run is repeated once per seed (the job's `seed`); default: the job's single seed.
    seeds: list[Seed] | None = Field(None, min_length=1, max_length=MAX_SEEDS)
    # Longest wait for one job, in seconds; a job still running then is cancelled.
    job_timeout_s: float = Field(300.0, gt=0, le=3600)
    # Steps of the sync warm-up job that fresh worker processes run first, not reported
    # (default: the job's steps; 0: none).
    warm_up_steps: int | None = Field(None, ge=0, le=10_000_000)

    @field_validator("modes")
    @classmethod
    def _unique_labels(cls, modes: list[ModeRun]) -> list[ModeRun]:
        labels = [m.label for m in modes]
        for i, label in enumerate(labels):
            if label in labels[:i]:
                raise ValueError(f"label {label!r} appears twice (entry {i})")
        return modes

    @field_validator("kill")
    @classmethod
    def _kill_labels_exist(cls, kill: KillSpec | None, info: ValidationInfo) -> KillSpec | None:
        labels = [m.label for m in info.data.get("modes", [])]
        for label in (kill.labels or []) if kill and labels else []:
            if label not in labels:
                raise ValueError(f"labels: {label!r} is not the label of any entry of compare.modes")
        return kill

    def seed_list(self) -> list[int]:
        """The seeds every run is repeated with: `seeds`, else the job's own seed (default 0)."""
        if self.seeds is not None:
            return list(self.seeds)
        seed = self.job.get("seed", 0)
        return [seed if isinstance(seed, int) else 0]  # a bad job seed is reported by parse_job_spec

    def kills(self, label: str) -> bool:
        """Whether the mode with this label gets a second run with a worker killed."""
        return self.kill is not None and (self.kill.labels is None or label in self.kill.labels)


# Top-level keys of a job spec that a compare spec does not have.
_JOB_SPEC_KEYS = frozenset(JobSpec.model_fields) - frozenset(CompareSpec.model_fields)


@dataclass(frozen=True)
class PlannedRun:
    """One job to submit: which mode entry it belongs to and its validated spec."""

    index: int  # position in compare.modes
    label: str
    kill: bool  # the run with a worker killed
    seed: int
    spec: JobSpec
    spec_dict: dict[str, Any]


def load_compare_spec(path: Path) -> CompareSpec:
    """Reads and validates a compare spec (YAML or JSON); raises InvalidArgumentError naming the field."""
    return parse_compare_spec(load_spec_file(path, "compare spec"))


def parse_compare_spec(data: dict[str, Any]) -> CompareSpec:
    if "job" not in data and "modes" not in data and _JOB_SPEC_KEYS & set(data):
        # The likeliest mistake: the job spec itself, given where a compare spec is expected.
        raise InvalidArgumentError(
            "compare: this is a job spec; tidal compare needs a compare spec (name, job, target_val_loss, "
            "modes: see examples/compare/), whose `job` holds the job spec without its mode"
        )
    try:
        spec = CompareSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidArgumentError(_format(exc)) from None
    plan_runs(spec)  # validates every job spec
    return spec


def plan_runs(spec: CompareSpec) -> list[PlannedRun]:
    """Every job of the comparison, seed by seed (in `seeds` order): for each seed the baselines
    first (in `modes` order), then the runs with a kill. A whole comparison per seed comes first,
    so an interrupted study has complete seeds, and slow drift of the machine spreads over modes."""
    for field in RESERVED_JOB_FIELDS:
        if field in spec.job:
            where = "set per entry of compare.modes" if field in MODE_FIELDS else "set from compare.name"
            raise InvalidArgumentError(f"compare.job.{field}: not allowed here ({where})")
    if spec.seeds is not None:
        if "seed" in spec.job:
            raise InvalidArgumentError(
                "compare.job.seed: not allowed together with compare.seeds (each run's seed comes from compare.seeds)"
            )
        for i, seed in enumerate(spec.seeds):
            if seed in spec.seeds[:i]:
                raise InvalidArgumentError(
                    f"compare.seeds[{i}]: seed {seed} appears twice (also entry {spec.seeds.index(seed)})"
                )
    seeds = spec.seed_list()
    return [run for seed in seeds for run in _plan_seed(spec, seed, multi=len(seeds) > 1)]


def _plan_seed(spec: CompareSpec, seed: int, multi: bool) -> list[PlannedRun]:
    workers = len(spec.cluster.worker_slowdowns)
    baselines = [_planned(spec, i, m, kill=False, seed=seed, multi=multi) for i, m in enumerate(spec.modes)]
    first = baselines[0].spec
    if first.num_workers != workers:
        raise InvalidArgumentError(
            f"compare.job.num_workers: {first.num_workers} must equal the {workers} entries of "
            "compare.cluster.worker_slowdowns (one worker process per job worker)"
        )
    if first.num_shards > spec.cluster.num_shards:
        raise InvalidArgumentError(
            f"compare.job.num_shards: {first.num_shards} is more than compare.cluster.num_shards "
            f"{spec.cluster.num_shards}"
        )
    if spec.kill is None:
        return baselines
    if spec.kill.rank >= workers:
        raise InvalidArgumentError(f"compare.kill.rank: {spec.kill.rank} >= num_workers {workers}")
    if spec.kill.at_step >= first.steps:
        raise InvalidArgumentError(
            f"compare.kill.at_step: {spec.kill.at_step} >= steps {first.steps}; the worker would never be killed"
        )
    kills = [
        _planned(spec, i, m, kill=True, seed=seed, multi=multi) for i, m in enumerate(spec.modes) if spec.kills(m.label)
    ]
    return baselines + kills


# Before runs with a kill only their outcome is reported, so a short warm-up does.
SHORT_WARM_UP_STEPS = 10


def warm_up_spec(spec: CompareSpec, short: bool = False) -> dict[str, Any]:
    """A sync job on the same model and data: fresh processes pay their one-off costs (data set
    load, model build, first exchanges and evaluations, the first full garbage collections of
    their heaps) outside the timings of the runs that are compared."""
    data = {k: copy.deepcopy(v) for k, v in spec.job.items() if k != "stragglers"}
    steps = spec.warm_up_steps if spec.warm_up_steps is not None else parse_job_spec(data).steps
    data.update(name="warm-up", mode="sync", steps=min(steps, SHORT_WARM_UP_STEPS) if short else steps)
    parse_job_spec(data)
    return data


def job_name(label: str, kill: bool, seed: int | None = None) -> str:
    """A valid job name from a label: "sync+1 backup" -> "sync-1-backup"; with several seeds the
    seed too: "sync-1-backup-s3" (labels have at most 40 characters: the name fits in 63)."""
    return f"{slug(label)[:40]}{'-kill' if kill else ''}{'' if seed is None else f'-s{seed}'}"


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", label).strip("-._") or "mode"


def _planned(spec: CompareSpec, index: int, entry: ModeRun, kill: bool, seed: int, multi: bool) -> PlannedRun:
    data = copy.deepcopy(spec.job)
    data["name"] = job_name(entry.label, kill, seed if multi else None)
    if spec.seeds is not None:
        data["seed"] = seed
    data["mode"] = entry.mode.value
    if entry.consistency:
        data["consistency"] = copy.deepcopy(entry.consistency)
    if entry.compression:
        data["compression"] = copy.deepcopy(entry.compression)
    if entry.embeddings_mode is not None:
        tables = data.get("embeddings")
        if not isinstance(tables, list) or not tables:
            raise InvalidArgumentError(
                f"compare.modes[{index}].embeddings_mode: compare.job has no embeddings (tables) to set the mode of"
            )
        data["embeddings"] = [
            {**t, "mode": entry.embeddings_mode} if isinstance(t, dict) else t for t in tables
        ]  # a table that is not a mapping is reported by parse_job_spec
    if kill and spec.kill is not None:
        data["stragglers"] = _with_kill(data.get("stragglers"), spec.kill)
    try:
        job = parse_job_spec(data)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(_relocate(str(exc), index)) from None
    return PlannedRun(index, entry.label, kill, job.seed, job, data)


def _with_kill(stragglers: Any, kill: KillSpec) -> Any:
    if not isinstance(stragglers, list):
        return [{"rank": kill.rank, "kill_at_step": kill.at_step}] if stragglers is None else stragglers
    merged = [dict(s) if isinstance(s, dict) else s for s in stragglers]
    for s in merged:
        if isinstance(s, dict) and s.get("rank") == kill.rank:
            s["kill_at_step"] = kill.at_step
            return merged
    return [*merged, {"rank": kill.rank, "kill_at_step": kill.at_step}]


def _relocate(message: str, index: int) -> str:
    """Rewrites parse_job_spec's ``spec.<field>`` into where the field lives in the compare file."""

    def where(match: re.Match[str]) -> str:
        field = match.group(1)
        if field in MODE_FIELDS:
            return f"compare.modes[{index}].{field}"
        if field == "stragglers":
            return "compare.job.stragglers"  # also where compare.kill lands
        return f"compare.job.{field}" if field else f"compare.modes[{index}]"

    return re.sub(r"\bspec(?:\.([A-Za-z_]+))?(?=[.:\[])", where, message)


def _format(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = "compare"
        for p in err["loc"]:
            where += f"[{p}]" if isinstance(p, int) else f".{p}"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
