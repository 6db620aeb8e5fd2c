"""The contract a data source fulfils: what a factory is called with and what it returns.

A job's ``dataset.name`` may be ``"package.module:factory"``. Every worker then calls
``factory(rank=..., world_size=..., seed=..., **dataset.args)`` and gets a `SourceData`:

* ``train`` and ``val`` are torch data sets. Map-style (``__len__``, ``__getitem__(i) -> (x, y)``,
  optionally ``__getitems__(indices)`` returning either a list of ``(x, y)`` samples, as torch's
  DataLoader expects, or one ``(x, y)`` pair of batched tensors) or an ``IterableDataset``
  yielding ``(x, y)`` samples.
* A map-style ``train`` is, by default, the whole training set: tidal takes this worker's
  seeded share of its indices and visits them in a seeded order (``core/datasets.py``
  ``partition_indices``/``batch_indices``), so the batches are a pure function of (seed, step)
  and a single process can fetch exactly the batches every worker used. With
  ``own_part=True`` it holds only worker ``rank`` of ``world_size``'s part and tidal uses all
  of it. An iterable ``train`` always holds the worker's own part; batch ``step`` is the
  ``step``-th run of ``batch_size`` samples of its stream (restarted at its end).
* ``input_shape`` is the shape of one ``x`` (without the batch dimension), what the model is
  built for. Give ``num_classes`` for classification (``y``: an integer class id in
  ``[0, num_classes)``) or ``output_shape`` for regression (``y``: a float tensor of that shape;
  the model is built with ``output_shape[0]`` outputs and trained on the mean squared error).
  ``objective`` may name another default (a `tidal.core.objectives.Objective`, e.g.
  bce_with_logits with ``auc=True`` for 0/1 targets); the job's ``objective`` still overrides it.

Every ``x`` is converted to float32; a sample or batch with NaN or infinity, or of another
shape than declared, is refused with an InvalidArgumentError naming ``dataset.name``.

On a worker, ``train`` is read from one background thread (the next batch is prepared while a
step runs) and ``val`` from the evaluation's thread, one call at a time each: two splits that
share a file handle must guard it themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch.utils.data import IterableDataset

from tidal.core.objectives import Objective

__all__ = ["MapSource", "SourceData", "SourceFactory", "Split"]


@runtime_checkable
class MapSource(Protocol):
    """A map-style data set: ``len`` samples, each an ``(x, y)`` pair."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Any, Any]: ...


# A split is map-style or a stream of samples.
Split = MapSource | IterableDataset


@dataclass(frozen=True)
class SourceData:
    """What a source factory returns (see the module docstring)."""

    train: Split
    val: Split
    input_shape: tuple[int, ...]
    num_classes: int | None = None
    output_shape: tuple[int, ...] | None = None
    # A map-style train split that holds only this worker's part (the factory read only that).
    own_part: bool = False
    # The objective jobs train with unless their spec names one (None: cross-entropy or MSE).
    objective: Objective | None = None


class SourceFactory(Protocol):
    """``dataset.name: "package.module:factory"``: called on every worker with its slot and the
    job's seed, plus ``dataset.args`` as keyword arguments."""

    def __call__(self, *, rank: int, world_size: int, seed: int, **args: Any) -> SourceData: ...
