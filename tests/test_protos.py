"""The checked-in stubs must be exactly what the pinned grpcio-tools makes of protos/."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED_IN = ROOT / "services" / "tidal" / "v1"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = module
    spec.loader.exec_module(module)
    return module


def test_stubs_match_protos(tmp_path: Path) -> None:
    generated = _generator().generate(tmp_path)
    assert generated, "protoc produced nothing"
    fresh = {p.name: p.read_bytes() for p in generated}
    checked_in = {p.name: p.read_bytes() for p in CHECKED_IN.glob("*_pb2*.py*")}
    assert sorted(fresh) == sorted(checked_in), "stub files differ: run `make protos`"
    drifted = [name for name in fresh if fresh[name] != checked_in[name]]
    assert not drifted, f"stale stubs {drifted}: run `make protos` and commit the result"


def test_protos_follow_the_house_rules() -> None:
    for proto in sorted((ROOT / "protos" / "tidal" / "v1").glob("*.proto")):
        text = proto.read_text()
        assert "package tidal.v1;" in text, proto.name
        for line in text.splitlines():
            stripped = line.strip()
            # Every enum's zero value is *_UNSPECIFIED.
            if stripped.endswith("= 0;") and not stripped.startswith("//"):
                assert "_UNSPECIFIED" in stripped, f"{proto.name}: {stripped}"
