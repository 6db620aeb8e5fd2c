"""The coordinator runs without torch (~270 MB resident alone): it holds shard maps with dtype
names and plans jobs from the layouts its workers announce (core/layout.py). Checked in a fresh
interpreter, since this one has imported torch long ago."""

from __future__ import annotations

import subprocess
import sys

_LOADED_TORCH = """
import sys
import {module}
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


def _torch_modules_after_importing(module: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _LOADED_TORCH.format(module=module)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_the_coordinator_loads_no_torch() -> None:
    assert _torch_modules_after_importing("tidal.coordinator.main") == "[]"


def test_the_torch_free_domain_modules_load_no_torch() -> None:
    for module in ("tidal.core.shard_map", "tidal.core.snapshot", "tidal.core.job_records", "tidal.core.layout"):
        assert _torch_modules_after_importing(module) == "[]", module


def test_the_probe_sees_torch_where_it_is_loaded() -> None:
    # The check above can fail: the members' serde module does load torch.
    assert "'torch'" in _torch_modules_after_importing("tidal.transport.serde")
