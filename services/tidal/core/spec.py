"""The job spec: what to train, how, and on how many members.

One frozen, self-validating pydantic model. Every component receives the validated
spec (as JSON on the wire) so all of them agree on every hyperparameter.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from tidal.core.builtin_names import (
    BUILT_IN_DATASETS,
    BUILT_IN_MODELS,
    BUILT_IN_OBJECTIVES,
    USER_CODE,
    builtin_or_user_code,
)
from tidal.core.embeddings.spec import MAX_EMBEDDING_TABLES, EmbeddingTableSpec, unique_table_names
from tidal.core.errors import InvalidArgumentError
from tidal.core.json_depth import json_depth_exceeds, value_depth
from tidal.core.strict_model import StrictModel


class Mode(StrEnum):
    """Consistency mode of a job."""

    SYNC = "sync"  # BSP: every step waits for the gradients of all workers (or all but the backups)
    SSP = "ssp"  # bounded staleness: workers run ahead of the slowest by at most `staleness_bound` clocks
    ASYNC = "async"  # ASGD: every gradient is applied on arrival
    LOCAL_SGD = "local_sgd"  # DiLoCo: `sync_every` local steps, then an outer step on the averaged delta
    AUTO = "auto"  # bounded staleness plus backup workers, both tuned during training from measured timings


# auto, cpu, cuda or cuda:N (core/devices.py resolves it on the worker).
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d{1,3})?)$")


class ModelSpec(StrictModel):
    # A built-in model ("mlp", "cnn") or "package.module:factory".
    name: str = "mlp"
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        return builtin_or_user_code(name, BUILT_IN_MODELS)


class DatasetSpec(StrictModel):
    # A built-in data set: "seattle_weather", "synthetic", the partitioned climate readers
    # "climate_grid" and "climate_stations" (docs/climate.md), the file sources "tabular"
    # (CSV/Parquet) and "arrays" (NPY/NPZ/safetensors), or a user factory
    # "package.module:factory" in an allowed module (core/sources/api.py; TIDAL_MODEL_MODULES).
    name: str = "seattle_weather"
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        return builtin_or_user_code(name, BUILT_IN_DATASETS)


class ScheduleSpec(StrictModel):
    """A learning-rate schedule keyed off the job's progress (core/schedule.py): parameter
    versions on the shards, or the inner steps of the rounds in local SGD."""

    # Linear warm-up over this many versions, from lr/warmup up to lr.
    warmup: int = Field(0, ge=0, le=10_000_000)
    # After the warm-up: constant, cosine or linear down to lr * min_ratio at the job's last
    # version, or times `gamma` every `every` versions.
    decay: Literal["none", "cosine", "linear", "step"] = "none"
    min_ratio: float = Field(0.0, ge=0, le=1)
    every: int = Field(100, ge=1, le=10_000_000)
    gamma: float = Field(0.1, gt=0, le=1)


class OptimizerSpec(StrictModel):
    """A torch.optim optimizer that the shards run on their slice."""

    name: Literal["sgd", "adam", "adamw", "adagrad"] = "sgd"
    lr: float = Field(0.05, gt=0, le=100)
    momentum: float = Field(0.0, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    # None: the learning rate stays `lr` (apart from the async staleness scaling).
    schedule: ScheduleSpec | None = None

    @model_validator(mode="after")
    def _sgd_only_options(self) -> OptimizerSpec:
        if self.name != "sgd" and (self.momentum or self.nesterov):
            raise ValueError(f"momentum and nesterov apply to sgd only, not {self.name}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        return self


class DelaySpec(StrictModel):
    """Extra time added to every step of a worker, drawn from a distribution."""

    distribution: Literal["constant", "exponential", "lognormal"] = "constant"
    # Mean of the added delay, in seconds.
    mean_s: float = Field(0.0, ge=0, le=60)
    # Shape of the log-normal tail (sigma of the underlying normal).
    sigma: float = Field(1.0, gt=0, le=5)


class ConsistencySpec(StrictModel):
    """The parameters of the consistency modes; each applies to one mode (`APPLIES_TO`)."""

    # sync: apply a step once the first num_workers - backup_workers gradients arrived; drop the rest.
    backup_workers: int = Field(0, ge=0)
    # ssp: a worker at clock c trains on a version of at least c - staleness_bound.
    staleness_bound: int = Field(2, ge=0, le=10_000)
    # async: divide the learning rate by the staleness (Zhang et al. 2016).
    staleness_lr: Literal["none", "inverse"] = "none"
    # async: refuse gradients staler than this many versions (counted as rejected "stale").
    max_staleness: int | None = Field(None, ge=0)
    # async: delay compensation (Zheng et al. 2017): g + lambda * g * g * (w_now - w_served).
    compensation: Literal["none", "dc_asgd"] = "none"
    dc_lambda: float = Field(0.04, ge=0, le=100)
    # local_sgd: local steps between synchronisations.
    sync_every: int = Field(8, ge=1, le=100_000)
    # local_sgd: the shards' outer optimizer, SGD with (Nesterov) momentum on the averaged delta.
    outer_lr: float = Field(0.7, gt=0, le=100)
    outer_momentum: float = Field(0.9, ge=0, lt=1)
    outer_nesterov: bool = True
    # auto: most workers the tuner may treat as backups (None: a minority, (num_workers - 1) // 2).
    auto_max_backup_workers: int | None = Field(None, ge=0)
    # auto: highest staleness bound the tuner may pick.
    auto_max_staleness_bound: int = Field(4, ge=0, le=10_000)
    # auto: applied clocks between two decisions.
    auto_window: int = Field(8, ge=1, le=100_000)


APPLIES_TO: dict[str, Mode] = {
    "backup_workers": Mode.SYNC,
    "staleness_bound": Mode.SSP,
    "staleness_lr": Mode.ASYNC,
    "max_staleness": Mode.ASYNC,
    "compensation": Mode.ASYNC,
    "dc_lambda": Mode.ASYNC,
    "sync_every": Mode.LOCAL_SGD,
    "outer_lr": Mode.LOCAL_SGD,
    "outer_momentum": Mode.LOCAL_SGD,
    "outer_nesterov": Mode.LOCAL_SGD,
    "auto_max_backup_workers": Mode.AUTO,
    "auto_max_staleness_bound": Mode.AUTO,
    "auto_window": Mode.AUTO,
}


class CompressionSpec(StrictModel):
    """How gradients (and local-SGD deltas) travel from workers to shards."""

    # fp16 / bf16 halve the bytes on the wire; topk sends the largest `topk_ratio` of each
    # shard's entries (values + int32 positions) and keeps the rest on the worker as error
    # feedback. Parameters travel down as held, except under bf16: rounded to bf16 too.
    codec: Literal["none", "fp16", "bf16", "topk"] = "none"
    topk_ratio: float = Field(0.01, gt=0, le=1)


class CheckpointSpec(StrictModel):
    """How shards started with `--checkpoint-dir` checkpoint this job, and how long the job
    waits for a lost shard to come back from its checkpoint (docs/fault-tolerance.md)."""

    # Write a checkpoint every this many versions (0: not by count).
    every_versions: int = Field(25, ge=0, le=10_000_000)
    # ... or once this many seconds passed since the last one (0: not by time).
    every_s: float = Field(30.0, ge=0, le=86_400)
    # Checkpoints kept per shard; older ones are deleted after each write.
    keep_last: int = Field(3, ge=1, le=1000)
    # Seconds the job waits for a lost shard to be restarted before it fails; workers retry
    # their shard connection, with backoff, as long.
    restart_timeout_s: float = Field(120.0, gt=0, le=86_400)


class StragglerSpec(StrictModel):
    """Makes one worker slow on purpose, for experiments."""

    rank: int = Field(ge=0)
    # Steps take this many times longer: the worker sleeps (slowdown - 1) x its busy time
    # (computation plus exchange with the shards).
    slowdown: float = Field(1.0, ge=1.0, le=1000.0)
    delay: DelaySpec | None = None
    # Every `pause_every` steps, pause for `pause_s` seconds (0: never).
    pause_every: int = Field(0, ge=0)
    pause_s: float = Field(0.0, ge=0, le=3600)
    # The worker process dies abruptly (SIGKILL-like exit) before this step; None: never.
    kill_at_step: int | None = Field(None, ge=0)


class JobSpec(StrictModel):
    """Everything a job needs. Units: seconds for times, samples for batch size."""

    name: str = Field("job", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    model: ModelSpec = Field(default_factory=ModelSpec)
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    mode: Mode = Mode.SYNC
    consistency: ConsistencySpec = Field(default_factory=ConsistencySpec)
    compression: CompressionSpec = Field(default_factory=CompressionSpec)
    # The shards' optimizer; in local_sgd mode the workers' inner optimizer.
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    batch_size: int = Field(32, ge=1, le=65536)
    # Steps per worker. Async applies steps * num_workers updates instead, so every mode
    # processes the same number of samples.
    steps: int = Field(100, ge=1, le=10_000_000)
    num_workers: int = Field(2, ge=1, le=1024)
    num_shards: int = Field(1, ge=1, le=256)
    # Fewest live workers the job survives on: losing a worker below this fails the job.
    min_workers: int = Field(1, ge=1, le=1024)
    # Most workers the job takes: idle workers join it while it runs (elastic), up to this
    # many (None: num_workers, so a lost worker's place can be refilled but the job never grows).
    max_workers: int | None = Field(None, ge=1, le=1024)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    # Evaluate on the validation split every this many versions (0: only at the end).
    eval_every: int = Field(0, ge=0)
    # Longest a worker waits for one shard reply before it declares the step failed.
    step_timeout_s: float = Field(120.0, gt=0, le=3600)
    # Longest the job may wait, pending, for idle shards and workers before it fails with what
    # it waited for (None: it waits until they come).
    schedule_timeout_s: float | None = Field(None, gt=0, le=7 * 24 * 3600)
    stragglers: list[StragglerSpec] = Field(default_factory=list)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    # What the workers minimise and evaluate (core/objectives.py): one of BUILT_IN_OBJECTIVES
    # or "package.module:fn" (a module TIDAL_MODEL_MODULES allows); None: the data set's own.
    objective: str | None = Field(None, max_length=256)
    # Where the workers compute: auto (cuda when the worker has it, else cpu), cpu, cuda or
    # cuda:N. A worker started with --device uses that instead.
    device: str = Field("auto", max_length=16)
    # The forward pass's precision: fp32, or autocast to bf16 or fp16 (fp16 with loss scaling).
    # Parameters and the gradients pushed to the shards stay float32.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Embedding tables held row by row on the shards (docs/embeddings.md); names are unique.
    embeddings: list[EmbeddingTableSpec] = Field(default_factory=list, max_length=MAX_EMBEDDING_TABLES)

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, objective: str | None) -> str | None:
        if objective is None or objective in BUILT_IN_OBJECTIVES or USER_CODE.match(objective):
            return objective
        raise ValueError(f"must be one of {list(BUILT_IN_OBJECTIVES)} or 'package.module:fn', got {objective!r}")

    @field_validator("device")
    @classmethod
    def _device_name(cls, device: str) -> str:
        if not DEVICE_PATTERN.match(device):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {device!r}")
        return device

    @field_validator("stragglers")
    @classmethod
    def _stragglers_in_range(cls, stragglers: list[StragglerSpec], info: ValidationInfo) -> list[StragglerSpec]:
        ranks = [s.rank for s in stragglers]
        num_workers = info.data.get("num_workers")
        for rank in ranks:
            if num_workers is not None and rank >= num_workers:
                raise ValueError(f"rank {rank} >= num_workers {num_workers}")
        if len(set(ranks)) != len(ranks):
            raise ValueError("each rank may appear once")
        return stragglers

    @field_validator("consistency")
    @classmethod
    def _consistency_fits_mode(cls, consistency: ConsistencySpec, info: ValidationInfo) -> ConsistencySpec:
        mode = info.data.get("mode")
        defaults = ConsistencySpec()
        for name in sorted(consistency.model_fields_set):
            # A default value is harmless anywhere (a full spec dumped to JSON carries them all).
            changed = getattr(consistency, name) != getattr(defaults, name)
            if changed and mode is not None and APPLIES_TO[name] != mode:
                raise ValueError(f"{name} applies to mode {APPLIES_TO[name].value}, not {mode.value}")
        return consistency

    @field_validator("embeddings")
    @classmethod
    def _unique_table_names(cls, tables: list[EmbeddingTableSpec]) -> list[EmbeddingTableSpec]:
        return unique_table_names(tables)

    def embedding(self, name: str) -> EmbeddingTableSpec | None:
        return next((t for t in self.embeddings if t.name == name), None)

    @model_validator(mode="after")
    def _backups_leave_a_worker(self) -> JobSpec:
        if self.consistency.backup_workers >= self.num_workers:
            raise ValueError(
                f"consistency.backup_workers {self.consistency.backup_workers} must be < num_workers {self.num_workers}"
            )
        cap = self.consistency.auto_max_backup_workers
        if cap is not None and cap >= self.num_workers:
            raise ValueError(f"consistency.auto_max_backup_workers {cap} must be < num_workers {self.num_workers}")
        return self

    @property
    def max_auto_backups(self) -> int:
        """auto: the most workers the tuner may make backups."""
        cap = self.consistency.auto_max_backup_workers
        return (self.num_workers - 1) // 2 if cap is None else cap

    @model_validator(mode="after")
    def _worker_bounds(self) -> JobSpec:
        if self.min_workers > self.num_workers:
            raise ValueError(f"min_workers {self.min_workers} must be <= num_workers {self.num_workers}")
        if self.max_workers is not None and self.max_workers < self.num_workers:
            raise ValueError(f"max_workers {self.max_workers} must be >= num_workers {self.num_workers}")
        return self

    @property
    def worker_limit(self) -> int:
        """Most workers the job runs with at once (`max_workers`, or `num_workers`)."""
        return self.num_workers if self.max_workers is None else self.max_workers

    @property
    def target_version(self) -> int:
        """Parameter version at which training stops."""
        if self.mode == Mode.ASYNC:
            return self.steps * self.num_workers
        if self.mode == Mode.LOCAL_SGD:
            return -(-self.steps // self.consistency.sync_every)  # outer rounds, rounded up
        return self.steps

    def straggler(self, rank: int) -> StragglerSpec | None:
        return next((s for s in self.stragglers if s.rank == rank), None)

    def to_json(self) -> str:
        return self.model_dump_json()


# A spec is a few hundred bytes; the bound keeps a submitted one from costing the coordinator
# more than a moment to scan, parse and store.
MAX_SPEC_BYTES = 256 << 10
# Deepest nesting of objects and arrays in a spec. Its own structure is 4 deep and model or
# dataset args add a few levels; json and pydantic recurse once per level and raise
# RecursionError near 1,000, so the depth is checked before either runs.
MAX_SPEC_DEPTH = 32


def parse_job_spec(data: str | bytes | dict[str, Any]) -> JobSpec:
    """Validates a spec given as a JSON text or a mapping.

    Raises InvalidArgumentError whose message names every offending field, e.g.
    ``spec.optimizer.lr: Input should be greater than 0``. A text over MAX_SPEC_BYTES or
    nested deeper than MAX_SPEC_DEPTH is refused before it is parsed.
    """
    if isinstance(data, (str, bytes)):
        data = _decode(data)
    elif value_depth(data, MAX_SPEC_DEPTH) > MAX_SPEC_DEPTH:
        raise InvalidArgumentError(f"spec: nested deeper than {MAX_SPEC_DEPTH} levels of objects and arrays")
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"spec: expected a JSON object, got {type(data).__name__}")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidArgumentError(format_validation_error(exc)) from None


def _decode(data: str | bytes) -> Any:
    raw = data.encode(errors="surrogatepass") if isinstance(data, str) else data
    if len(raw) > MAX_SPEC_BYTES:
        raise InvalidArgumentError(f"spec: {len(raw)} bytes, more than the limit of {MAX_SPEC_BYTES}")
    try:
        text = raw.decode() if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"spec: not valid JSON ({exc})") from None
    if json_depth_exceeds(text, MAX_SPEC_DEPTH):
        raise InvalidArgumentError(f"spec: nested deeper than {MAX_SPEC_DEPTH} levels of objects and arrays")
    try:
        return json.loads(text)
    except RecursionError:  # unbalanced, so not JSON, and opening too deep for the scan to tell
        raise InvalidArgumentError(f"spec: not valid JSON (nested deeper than {MAX_SPEC_DEPTH} levels)") from None
    except ValueError as exc:  # JSONDecodeError, or an integer past Python's 4,300-digit limit
        raise InvalidArgumentError(f"spec: not valid JSON ({exc})") from None


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        # List positions as indices: spec.embeddings[1].dim.
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        where = f"spec{where}"
        parts.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
