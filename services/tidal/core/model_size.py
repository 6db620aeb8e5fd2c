"""How big a job's model may be, checked without allocating it.

A spec names a model and its arguments; one MLP with a billion-wide layer or four million
layers would take the memory of whoever builds it. Before anything is built:

- the built-in models are sized from their arguments alone (`estimate_builtin`);
- every model, user factories included, is then built on torch's meta device, where
  parameters have shapes but no storage, while a registration hook counts parameters and
  refuses the one that passes a limit (`meta_model`), so a factory is stopped part-way.

A worker does both before it builds the job's model for real (worker/prepare.py), so a
spec that would not fit is refused before the worker allocates it. The limits themselves
(core/layout.py) hold for every job; the coordinator checks them again on the layout the
workers announce.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tidal.core.errors import InvalidArgumentError, TidalError
from tidal.core.layout import MAX_MODEL_PARAMETERS, MAX_MODEL_TENSORS
from tidal.core.model_source import ModelModules
from tidal.core.models import MODELS, build_model

BYTES_PER_PARAMETER = 4  # float32, as shards store them
# The built-in models whose layers come from a list argument, and its default.
_LAYER_LISTS = {"mlp": ("hidden", (64, 64)), "station_mlp": ("hidden", (64, 64)), "cnn": ("channels", (16, 32))}


@dataclass(frozen=True)
class ModelSize:
    parameters: int
    tensors: int

    @property
    def bytes(self) -> int:
        return self.parameters * BYTES_PER_PARAMETER


def check_size(size: ModelSize, where: str) -> None:
    """Raises InvalidArgumentError, naming the field `where`, if `size` passes a limit."""
    if size.tensors > MAX_MODEL_TENSORS:
        raise InvalidArgumentError(
            f"{where}: the model would hold {size.tensors} parameter tensors, "
            f"more than the limit of {MAX_MODEL_TENSORS}"
        )
    if size.parameters > MAX_MODEL_PARAMETERS:
        raise InvalidArgumentError(
            f"{where}: the model would hold {size.parameters} parameters ({size.bytes / 2**30:.1f} GiB as float32), "
            f"more than the limit of {MAX_MODEL_PARAMETERS} ({MAX_MODEL_PARAMETERS * BYTES_PER_PARAMETER >> 30} GiB)"
        )


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def estimate_builtin(
    name: str, args: Mapping[str, Any], input_shape: tuple[int, ...], num_classes: int
) -> ModelSize | None:
    """The size of built-in model `name` from its arguments, or None where the arguments are
    malformed (building reports those) or the model's size needs no list (`grid_forecaster`
    has bounded arguments; the meta build checks it)."""
    if name not in _LAYER_LISTS:
        return None
    key, default = _LAYER_LISTS[name]
    widths = args.get(key, default)
    ok = isinstance(widths, (list, tuple)) and all(isinstance(w, int) and not isinstance(w, bool) for w in widths)
    if not ok or not input_shape or any(w < 1 for w in widths):
        return None
    if name == "cnn":
        return _cnn_size(list(widths), args.get("kernel_size", 3), input_shape, num_classes)
    sizes = [math.prod(input_shape), *widths, num_classes]
    return ModelSize(sum(_linear(a, b) for a, b in itertools.pairwise(sizes)), 2 * (len(sizes) - 1))


def _cnn_size(channels: list[int], kernel: Any, input_shape: tuple[int, ...], num_classes: int) -> ModelSize | None:
    if len(input_shape) != 3 or not isinstance(kernel, int) or kernel < 1:
        return None
    in_ch, height, width = input_shape
    parameters = 0
    for out_ch in channels:
        parameters += in_ch * out_ch * kernel * kernel + out_ch
        in_ch = out_ch
    shrink = 2 ** min(len(channels), 64)
    parameters += _linear(in_ch * (height // shrink) * (width // shrink), num_classes)
    return ModelSize(parameters, 2 * len(channels) + 2)


class _Budget:
    """Counts the parameters registered on this thread while a model is built; raises once a
    limit is passed. The hook is process-wide, so other threads' builds are left alone."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.thread = threading.get_ident()
        self.seen: set[int] = set()
        self.size = ModelSize(0, 0)

    def __call__(self, module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is None or threading.get_ident() != self.thread or id(param) in self.seen:
            return
        self.seen.add(id(param))  # a parameter shared between layers counts once
        self.size = ModelSize(self.size.parameters + param.numel(), self.size.tensors + 1)
        check_size(self.size, self.where)


def meta_model(
    name: str,
    args: Mapping[str, Any],
    input_shape: tuple[int, ...],
    num_classes: int,
    seed: int,
    *,
    model_modules: ModelModules = None,
) -> nn.Module:
    """Model `name` with the shapes and dtypes `build_model` gives it, on the meta device
    (no parameter storage), refused with InvalidArgumentError if it passes a limit. Any
    other failure of the build is the spec's too: an InvalidArgumentError naming the model."""
    if name in _LAYER_LISTS:
        where = f"model.args.{_LAYER_LISTS[name][0]}"
    else:
        where = "model.args" if name in MODELS else f"model.name {name!r}"
    if (size := estimate_builtin(name, args, input_shape, num_classes)) is not None:
        check_size(size, where)
    budget = _Budget(where)
    handle = nn.modules.module.register_module_parameter_registration_hook(budget)
    try:
        with torch.device("meta"):
            model = build_model(name, args, input_shape, num_classes, seed, model_modules=model_modules)
    except TidalError:
        raise
    except Exception as exc:  # a user factory, or arguments no check above foresaw
        raise InvalidArgumentError(f"model.name {name!r}: building it failed: {type(exc).__name__}: {exc}") from exc
    finally:
        handle.remove()
    # Again on the result: a factory may have swallowed the hook's error, or set parameters
    # without registering them.
    params = list(model.parameters())
    check_size(ModelSize(sum(p.numel() for p in params), len(params)), where)
    return model
