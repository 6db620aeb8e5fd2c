"""A job's parameter layout, as its workers announce it.

Only workers run user code: each builds the job's model from the spec and reports its
parameters' names, shapes and dtypes (in `named_parameters()` order) with a digest of their
initial values. The coordinator plans the shard map from the layout once every worker of the
job reported the same one (`Layout.difference` says how two differ), and holds it to the
size limits first (`check_limits`): the model was allocated by the worker that built it,
never by the coordinator. No torch here: the coordinator runs without it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tidal.core.errors import InvalidArgumentError
from tidal.core.shard_map import DTYPE_NAMES, TensorInfo

# At most this many scalars (1 GiB per float32 copy; shards, workers and checkpoints each
# hold copies) in at most this many tensors (each one an entry of the shard map every
# member receives).
MAX_MODEL_PARAMETERS = 1 << 28
MAX_MODEL_TENSORS = 4096
# The digest's length, in hex digits (BLAKE2b-128).
DIGEST_HEX_DIGITS = 32


@dataclass(frozen=True)
class Layout:
    tensors: tuple[TensorInfo, ...]
    # BLAKE2b-128 of the initial parameters, hex: every worker must start from the same values.
    init_digest: str

    @property
    def parameters(self) -> int:
        return sum(t.numel for t in self.tensors)

    def check(self, where: str = "layout") -> None:
        """Raises InvalidArgumentError, naming `where`, unless this layout can be sharded:
        within the size limits, at least one tensor, names unique, known dtypes."""
        if not self.tensors:
            raise InvalidArgumentError(f"{where}.tensors: the model has no parameters")
        if len(self.tensors) > MAX_MODEL_TENSORS:
            raise InvalidArgumentError(
                f"{where}.tensors: the model holds {len(self.tensors)} parameter tensors, "
                f"more than the limit of {MAX_MODEL_TENSORS}"
            )
        names: set[str] = set()
        for t in self.tensors:
            if not t.name or t.name in names:
                raise InvalidArgumentError(f"{where}.tensors: parameter name {t.name!r} is empty or repeated")
            names.add(t.name)
            if t.dtype not in DTYPE_NAMES:
                raise InvalidArgumentError(f"{where}.tensors[{t.name}].dtype: {t.dtype!r} cannot be sharded")
            if any(d < 0 for d in t.shape):
                raise InvalidArgumentError(f"{where}.tensors[{t.name}].shape: {list(t.shape)} has a negative size")
        if self.parameters > MAX_MODEL_PARAMETERS:
            raise InvalidArgumentError(
                f"{where}: the model holds {self.parameters:,} parameters, more than the limit of "
                f"{MAX_MODEL_PARAMETERS:,} (2^28)"
            )
        if len(self.init_digest) != DIGEST_HEX_DIGITS or any(c not in "0123456789abcdef" for c in self.init_digest):
            raise InvalidArgumentError(f"{where}.init_digest: expected {DIGEST_HEX_DIGITS} lowercase hex digits")

    def difference(self, other: Layout) -> str | None:
        """How `other` differs from this layout, for humans; None if they are the same."""
        if len(self.tensors) != len(other.tensors):
            return f"{len(other.tensors)} parameter tensors instead of {len(self.tensors)}"
        for mine, theirs in zip(self.tensors, other.tensors, strict=True):
            if mine != theirs:
                return (
                    f"parameter {theirs.name!r} {list(theirs.shape)} {theirs.dtype} where the other has "
                    f"{mine.name!r} {list(mine.shape)} {mine.dtype}"
                )
        if self.init_digest != other.init_digest:
            return "different initial parameter values (is the model's initialisation seeded from the spec's seed?)"
        return None
