"""Calls a source factory, built-in or ``"package.module:factory"``, and checks what it returns.

A user factory's module must lie in the operator's allow-list, the same one model code obeys
(``core/model_source.py``, TIDAL_MODEL_MODULES), checked before the import runs its code.
Every failure is an InvalidArgumentError naming ``dataset.name`` or ``dataset.args.<key>``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from tidal.core.errors import InvalidArgumentError
from tidal.core.model_source import ModelModules, resolve_user_callable
from tidal.core.objectives import CROSS_ENTROPY, Objective, ObjectiveKind
from tidal.core.sources.api import SourceData, Split
from tidal.core.sources.batches import fetch, is_stream
from tidal.core.sources.job_data import JobData, SampleSpec

__all__ = ["call_source", "resolve_factory"]

_RESERVED = ("rank", "world_size", "seed")


def resolve_factory(name: str, model_modules: ModelModules) -> Callable[..., Any]:
    """The callable ``name`` ("package.module:factory") names, if its module is allowed."""
    return resolve_user_callable(name, "dataset.name", model_modules)


def _check_arg_keys(name: str, factory: Callable[..., Any], args: Mapping[str, Any]) -> None:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = None  # a callable without a signature: the call decides
    takes_kwargs = params is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in args:
        if key in _RESERVED or (not takes_kwargs and params is not None and key not in params):
            raise InvalidArgumentError(f"dataset.args.{key} is not an argument of dataset {name!r}")


def _call(name: str, factory: Callable[..., Any], args: Mapping[str, Any], seed: int, slot: tuple[int, int]) -> Any:
    _check_arg_keys(name, factory, args)
    # A factory that draws from torch's global RNG is then a function of the seed alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return factory(rank=slot[0], world_size=slot[1], seed=seed, **dict(args))
        except InvalidArgumentError:
            raise
        except Exception as exc:  # any failure of user code is a problem with the spec's source
            raise InvalidArgumentError(
                f"dataset.name {name!r}: the factory failed: {type(exc).__name__}: {exc}"
            ) from exc


def _shape(name: str, field: str, value: Any) -> tuple[int, ...]:
    ok = isinstance(value, (tuple, list)) and bool(value)
    ok = ok and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)
    if not ok:
        raise InvalidArgumentError(
            f"dataset.name {name!r}: {field} must be a non-empty tuple of positive integers, got {value!r}"
        )
    return tuple(value)


def _check_split(name: str, field: str, split: Any) -> Split:
    if is_stream(split):
        return split
    if not (hasattr(split, "__len__") and hasattr(split, "__getitem__")):
        raise InvalidArgumentError(
            f"dataset.name {name!r}: {field} is a {type(split).__name__}, not a map-style torch Dataset "
            "(__len__, __getitem__) or an IterableDataset"
        )
    if field == "train" and len(split) == 0:
        raise InvalidArgumentError(f"dataset.name {name!r}: the training split is empty")
    return split


def _model_outputs(name: str, data: SourceData) -> tuple[int, Objective, SampleSpec]:
    """(outputs the model is built with, the objective, the shape of one y)."""
    classes, shape = data.num_classes, data.output_shape
    if (classes is None) == (shape is None):
        raise InvalidArgumentError(
            f"dataset.name {name!r}: give num_classes (classification) or output_shape (regression), exactly one"
        )
    x_shape = _shape(name, "input_shape", data.input_shape)
    chosen = data.objective
    if chosen is not None and not isinstance(chosen, Objective):
        raise InvalidArgumentError(f"dataset.name {name!r}: objective must be an Objective, got {chosen!r}")
    if classes is not None:
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 2:
            raise InvalidArgumentError(f"dataset.name {name!r}: num_classes must be an integer >= 2, got {classes!r}")
        return classes, chosen or CROSS_ENTROPY, SampleSpec(x_shape, (), classes)
    out = _shape(name, "output_shape", shape)
    # Plain mean squared error unless the source says otherwise; its "accuracy" is 0 (no
    # reference forecast to score against).
    return out[0], chosen or Objective(kind=ObjectiveKind.WEIGHTED_MSE), SampleSpec(x_shape, out, None)


def _probe(name: str, data: JobData) -> None:
    # One sample of each map-style split, so a wrong type or shape fails at load, not mid-run.
    for field, split, spec in (("train", data.train, data.train_spec), ("validation", data.val, data.val_spec)):
        if not is_stream(split) and len(split) > 0:
            fetch(split, torch.zeros(1, dtype=torch.int64), spec, f"dataset.name {name!r}: {field} sample 0")


def call_source(
    name: str, factory: Callable[..., Any], args: Mapping[str, Any], seed: int, rank: int, world_size: int
) -> JobData:
    """Calls ``factory`` for worker ``rank`` of ``world_size`` and checks its `SourceData`."""
    data = _call(name, factory, args, seed, (rank, world_size))
    if not isinstance(data, SourceData):
        raise InvalidArgumentError(f"dataset.name {name!r}: the factory returned {type(data).__name__}, not SourceData")
    train = _check_split(name, "train", data.train)
    val = _check_split(name, "val", data.val)
    outputs, objective, spec = _model_outputs(name, data)
    own = data.own_part or is_stream(train)
    job = JobData(
        name=name,
        train=train,
        val=val,
        input_shape=spec.x_shape,
        num_classes=outputs,
        objective=objective,
        train_spec=spec,
        val_spec=spec,
        part=(rank, world_size) if own else None,
    )
    _probe(name, job)
    return job
