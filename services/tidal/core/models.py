"""Model construction: built-in architectures and user factories, seeded reproducibly.

``build_model`` gives bit-identical initial parameters for the same (name, args,
input_shape, num_classes, seed) in any process, which the parameter server
relies on to agree with workers about the starting point.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .climate.models import grid_forecaster, station_mlp
from .ctr.model import ctr_mlp
from .errors import InvalidArgumentError
from .model_source import ModelModules, resolve_user_callable

__all__ = ["MODELS", "build_model", "count_parameters"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def _int_list(key: str, value: Any, allow_empty: bool) -> list[int]:
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    ):
        raise InvalidArgumentError(f"model.args.{key} must be a list of positive integers, got {value!r}")
    if not value and not allow_empty:
        raise InvalidArgumentError(f"model.args.{key} must not be empty")
    return list(value)


def _mlp(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: list[int] | tuple[int, ...] = (64, 64),
    activation: str = "relu",
) -> nn.Module:
    """Flatten, then Linear+activation per ``hidden`` width, then a linear head."""
    widths = _int_list("hidden", hidden, allow_empty=True)
    if activation not in _ACTIVATIONS:
        raise InvalidArgumentError(f"model.args.activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = [nn.Flatten()]
    in_features = math.prod(input_shape)
    for width in widths:
        layers += [nn.Linear(in_features, width), _ACTIVATIONS[activation]()]
        in_features = width
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


def _cnn(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    channels: list[int] | tuple[int, ...] = (16, 32),
    kernel_size: int = 3,
) -> nn.Module:
    """Conv-ReLU-MaxPool(2) blocks on (C, H, W) inputs, then a linear head."""
    if len(input_shape) != 3:
        raise InvalidArgumentError(f"model.name 'cnn' needs 3-D inputs (C, H, W), got input_shape {input_shape}")
    widths = _int_list("channels", channels, allow_empty=False)
    # Odd only: 'same' padding is then symmetric and keeps H and W unchanged.
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1 or kernel_size % 2 == 0:
        raise InvalidArgumentError(f"model.args.kernel_size must be a positive odd integer, got {kernel_size!r}")
    in_ch, height, width = input_shape
    # Each block halves H and W; the image must survive every pooling step.
    shrink = 2 ** len(widths)
    if height < shrink or width < shrink:
        raise InvalidArgumentError(
            f"model.args.channels has {len(widths)} blocks, too many for a "
            f"{height}x{width} input (each block halves H and W)"
        )
    layers: list[nn.Module] = []
    for out_ch in widths:
        layers += [
            nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        in_ch = out_ch
    layers += [nn.Flatten(), nn.Linear(in_ch * (height // shrink) * (width // shrink), num_classes)]
    return nn.Sequential(*layers)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "grid_forecaster": grid_forecaster,
    "station_mlp": station_mlp,
    "ctr_mlp": ctr_mlp,
}


def _resolve_factory(name: str, model_modules: ModelModules) -> Callable[..., nn.Module]:
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"model.name must be a non-empty string, got {name!r}")
    if name in MODELS:
        return MODELS[name]
    if ":" not in name:
        raise InvalidArgumentError(
            f"model.name must be one of {sorted(MODELS)} or 'package.module:factory', got {name!r}"
        )
    return resolve_user_callable(name, "model.name", model_modules)


def _check_arg_keys(name: str, factory: Callable[..., nn.Module], args: Mapping[str, Any]) -> None:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return  # builtins/C callables without a signature: let the call decide
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in args:
        if not isinstance(key, str):
            raise InvalidArgumentError(f"model.args keys must be strings, got {key!r}")
        # input_shape/num_classes come from the dataset, never from model.args.
        reserved = key in ("input_shape", "num_classes")
        if reserved or (not takes_kwargs and key not in params):
            raise InvalidArgumentError(f"model.args.{key} is not an argument of model {name!r}")


def build_model(
    name: str,
    args: Mapping[str, Any],
    input_shape: tuple[int, ...],
    num_classes: int,
    seed: int,
    *,
    model_modules: ModelModules = None,
) -> nn.Module:
    """Build model ``name`` with ``args``; the same inputs give bit-identical parameters.
    ``model_modules``: the packages a user factory may come from (core/model_source.py; None:
    any), from the process's configuration."""
    factory = _resolve_factory(name, model_modules)
    if not isinstance(args, Mapping):
        raise InvalidArgumentError(f"model.args must be a mapping, got {type(args).__name__}")
    _check_arg_keys(name, factory, args)
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise InvalidArgumentError(f"input_shape must be positive integers, got {input_shape!r}")
    # Classes of a classifier, or outputs of a regression model (one forecast variable: 1).
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise InvalidArgumentError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    # torch seeds are 64-bit; outside this range manual_seed raises RuntimeError.
    if not isinstance(seed, int) or isinstance(seed, bool) or not -(1 << 63) <= seed < (1 << 64):
        raise InvalidArgumentError(f"seed must be a 64-bit integer, got {seed!r}")

    # Layer init draws from the global CPU RNG; forking it makes init a function of
    # `seed` alone and restores the caller's RNG state afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = factory(input_shape=shape, num_classes=num_classes, **dict(args))
        except InvalidArgumentError:
            raise
        except (TypeError, ValueError) as exc:
            # Bad args for a user factory surface as TypeError/ValueError inside it.
            raise InvalidArgumentError(f"model.name {name!r}: factory failed: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model.name {name!r}: factory returned {type(model).__name__}, not nn.Module")
    # The parameter server stores float32; normalise whatever the factory produced.
    return model.to(torch.float32)


def count_parameters(model: nn.Module) -> int:
    """Total number of scalar parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())
