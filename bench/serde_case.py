"""Tensor <-> wire message cost in one process, without the network: the generated protobuf
path (what tidal used before transport/frames.py) vs the hand-framed path, interleaved."""

from __future__ import annotations

import json
import sys
import time

import torch

from bench.procs import module_cmd, run_all
from bench.results import Row, Settings
from bench.stats import Spread, ratios
from tidal.core.shard_map import ShardMap, TensorInfo, build_shard_map
from tidal.transport import frames, serde
from tidal.v1 import shard_pb2 as shard_pb


def _setup(numel: int) -> tuple[ShardMap, torch.Tensor, torch.Tensor]:
    shard_map = build_shard_map([TensorInfo("w", (numel,), "float32")], 1)
    src = torch.randn(numel)
    return shard_map, src, torch.empty(numel)


def _protobuf(shard_map: ShardMap, src: torch.Tensor, dst: torch.Tensor) -> tuple[float, float]:
    segments = shard_map.segments(0)
    t0 = time.perf_counter()
    groups = list(serde.group_chunks(serde.slice_to_chunks(src, segments, 0)))
    messages = [shard_pb.Params(version=1, chunks=g, last=i == len(groups) - 1) for i, g in enumerate(groups)]
    wire = [shard_pb.ExchangeResponse(params=m).SerializeToString() for m in messages]
    t1 = time.perf_counter()
    assembler = serde.SliceAssembler(segments, 0, dst, "params.chunks")
    for raw in wire:
        assembler.add(shard_pb.ExchangeResponse.FromString(raw).params.chunks)
    assembler.finish()
    return t1 - t0, time.perf_counter() - t1


def _framed(shard_map: ShardMap, src: torch.Tensor, dst: torch.Tensor) -> tuple[float, float]:
    segments = shard_map.segments(0)
    t0 = time.perf_counter()
    groups = list(serde.group_encoded(serde.encoded_chunks(src, segments, 0)))
    wire = [frames.encode_params(1, g, i == len(groups) - 1) for i, g in enumerate(groups)]
    t1 = time.perf_counter()
    assembler = serde.SliceAssembler(segments, 0, dst, "params.chunks")
    for raw in wire:
        assembler.add(frames.decode_response(raw).body.chunks)
    assembler.finish()
    return t1 - t0, time.perf_counter() - t1


def measure(numel: int, reps: int) -> dict[str, list[float]]:
    """Per-repetition milliseconds of each path and direction, interleaved."""
    shard_map, src, dst = _setup(numel)
    out: dict[str, list[float]] = {"protobuf": [], "protobuf_in": [], "framed": [], "framed_in": []}
    for r in range(reps):
        pair = (_protobuf, _framed) if r % 2 == 0 else (_framed, _protobuf)
        for fn in pair:
            name = "protobuf" if fn is _protobuf else "framed"
            encode_s, decode_s = fn(shard_map, src, dst)
            if not torch.equal(src, dst):
                raise RuntimeError(f"{name} path did not round-trip the tensor bit for bit")
            dst.zero_()
            out[name].append(encode_s * 1e3)
            out[name + "_in"].append(decode_s * 1e3)
    return out


def serde_rows(label: str, data: dict[str, list[float]]) -> list[Row]:
    rows = []
    for suffix, what in (("", "tensor -> messages ms"), ("_in", "messages -> tensor ms")):
        a, b = data["framed" + suffix], data["protobuf" + suffix]
        rows.append(
            Row(label, what + " (hand-framed)", Spread.of(a), "generated protobuf path", Spread.of(b), ratios(a, b))
        )
    return rows


def serde_costs(s: Settings, numel: int, env: dict[str, str], name: str) -> list[Row]:
    """Runs `measure` in a fresh process with `env` (allocator settings apply at start)."""
    (data,) = run_all([module_cmd("bench.serde_case", numel, max(3, 2 * s.reps))], env, s.workdir, name, 300)
    return serde_rows(f"serde {numel / 1e6:.0f}M float32 ({4 * numel / 1e6:.0f} MB), one process, {name}", data)


def main() -> None:
    """`python -m bench.serde_case NUMEL REPS`: prints `measure`'s result as one JSON line."""
    torch.set_num_threads(1)
    print(json.dumps(measure(int(sys.argv[1]), int(sys.argv[2]))), flush=True)


if __name__ == "__main__":
    main()
