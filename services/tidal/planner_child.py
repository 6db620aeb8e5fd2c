"""The planner child (tidal/planner.py): `python -m tidal.planner_child MEMORY_BYTES`.

Reads job specs, one JSON per line, on stdin, and answers each with one JSON line on stdout:
`{"layout": {"tensors": [...]}}` (the parameters' names, shapes and dtype, planned on torch's
meta device by core/plan.py), or `{"error": CODE, "message": ...}` for a spec that cannot be
planned (planner.EXIT_CODES gives the codes). `"restart": true` asks the parent for a fresh
child: this one holds more than half its memory cap after the plan. Any other failure is a
traceback on stderr and a non-zero exit.

Its configuration is its environment, read once in `main` as a process's start reads it
(cli_common.py): TIDAL_MODEL_MODULES, the packages a model factory may come from, which the
coordinator hands down with the rest of its environment.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any, TextIO

from tidal.core.errors import TidalError
from tidal.core.model_source import ModelModules, allowed_prefixes
from tidal.core.plan import job_tensors
from tidal.core.spec import parse_job_spec
from tidal.planner import EXIT_CODES, layout_to_json


def _keep_stdout_for_the_result() -> TextIO:
    """The answers' stream; stdout (the descriptor too) then goes to stderr, so whatever model
    code prints cannot corrupt an answer."""
    result = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return result


def plan(spec_json: bytes, model_modules: ModelModules) -> dict[str, Any]:
    """The answer to one spec."""
    try:
        tensors = job_tensors(parse_job_spec(spec_json), model_modules=model_modules)
    except TidalError as exc:
        code = next((c for error, c in EXIT_CODES.items() if isinstance(exc, error)), None)
        if code is None:
            raise
        return {"error": code, "message": " ".join(str(exc).split())}
    return {"layout": json.loads(layout_to_json(tensors))}


def _address_space_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        sys.exit("usage: python -m tidal.planner_child MEMORY_BYTES < specs (one JSON per line)")
    # The child's start: like the CLI, it reads its environment here, once.
    model_modules = allowed_prefixes(os.environ)
    result = _keep_stdout_for_the_result()
    # After the imports (they are part of the budget): a build past the cap gets MemoryError.
    limit = int(argv[0])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for line in sys.stdin.buffer:
        answer = plan(line, model_modules)
        gc.collect()
        if _address_space_bytes() > limit // 2:
            answer["restart"] = True
        result.write(json.dumps(answer) + "\n")
        result.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
