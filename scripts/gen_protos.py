"""Regenerates the checked-in gRPC stubs from protos/ (run after editing a .proto).

python scripts/gen_protos.py            # writes services/tidal/v1/*_pb2*.py
python scripts/gen_protos.py OUT_DIR    # writes OUT_DIR/tidal/v1/... (the drift test)
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def generate(out_dir: Path) -> list[Path]:
    protos = sorted(PROTOS.glob("tidal/v1/*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(PROTOS)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_dir / "tidal" / "v1").glob("*_pb2*.py*"))


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "services"
    for path in generate(target):
        print(path)
