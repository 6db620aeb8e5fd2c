"""What a case hands the report: rows of tidal vs its alternative, with the goal."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from pathlib import Path

from bench.machine_load import CaseLoad
from bench.stats import Spread

_OPS = {">=": operator.ge, "<=": operator.le, "<": operator.lt, ">": operator.gt}


@dataclass(frozen=True)
class Goal:
    op: str
    value: float

    def met(self, x: float) -> bool:
        return _OPS[self.op](x, self.value)

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


@dataclass
class Row:
    case: str
    metric: str
    tidal: Spread
    baseline_name: str = ""
    baseline: Spread | None = None
    # tidal / baseline, per interleaved pair.
    ratio: Spread | None = None
    goal: Goal | None = None
    note: str = ""
    digits: int = 1
    # The machine's load around the case that measured this row (None: not measured).
    machine: CaseLoad | None = None

    @property
    def met(self) -> bool | None:
        if self.goal is None:
            return None
        figure = self.ratio.median if self.ratio is not None else self.tidal.median
        return self.goal.met(figure)


@dataclass
class Settings:
    quick: bool
    reps: int
    workdir: Path
