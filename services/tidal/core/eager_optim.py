"""torch.optim without its torch.compile wrappers, for processes that never compile.

torch.optim wraps `Optimizer.add_param_group` (which every constructor calls), `step`,
`state_dict` and `load_state_dict` so that torch.compile can trace or skip them. Outside
torch.compile the wrappers do nothing but, on their first call, import torch._dynamo, and
with it sympy and mpmath: about 800 modules and 75 MB resident in a process that never
compiles (measured with torch 2.13; bench/NOTES.md "Shard memory"). The functions here run
the methods' own bodies (`inspect.unwrap`), as the wrappers do outside torch.compile: the
step with gradients off (the wrapper's `differentiable=False`), the others as they are. The
results are the optimizer's, bit for bit (tests/unit/test_eager_optim.py). A step with hooks
registered goes through the wrapped `step`, which runs them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch.optim import optimizer as torch_optimizer

Optimizer = torch.optim.Optimizer

_ADD_PARAM_GROUP = inspect.unwrap(Optimizer.add_param_group)
_STATE_DICT = inspect.unwrap(Optimizer.state_dict)
_LOAD_STATE_DICT = inspect.unwrap(Optimizer.load_state_dict)


def build(cls: type[Optimizer], params: list[torch.Tensor], **options: Any) -> Optimizer:
    """`cls(params, **options)`, whose constructor adds its parameter group unwrapped."""
    optimizer = cls.__new__(cls)
    # The constructor calls `self.add_param_group`: an instance attribute wins over the class's.
    optimizer.add_param_group = _ADD_PARAM_GROUP.__get__(optimizer)  # type: ignore[method-assign]
    try:
        cls.__init__(optimizer, params, **options)
    finally:
        del optimizer.add_param_group
    return optimizer


def _hooked(optimizer: Optimizer) -> bool:
    return bool(
        optimizer._optimizer_step_pre_hooks
        or optimizer._optimizer_step_post_hooks
        or torch_optimizer._global_optimizer_pre_hooks
        or torch_optimizer._global_optimizer_post_hooks
    )


def _step_body(optimizer: Optimizer) -> Callable[[Optimizer], Any]:
    return inspect.unwrap(type(optimizer).step)


def step(optimizer: Optimizer) -> None:
    """`optimizer.step()` (no closure)."""
    if optimizer.defaults.get("differentiable") or _hooked(optimizer):
        optimizer.step()
        return
    with torch.no_grad():
        _step_body(optimizer)(optimizer)


def state_dict(optimizer: Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()`."""
    return _STATE_DICT(optimizer)


def load_state_dict(optimizer: Optimizer, saved: dict[str, Any]) -> None:
    """`optimizer.load_state_dict(saved)`."""
    _LOAD_STATE_DICT(optimizer, saved)
