"""Which modules a job spec may load model code from.

A spec's `model.name` may be "package.module:factory", and the spec comes from whoever
submits the job: left open, any importable module would run its import-time code on every
worker. The operator names the packages that hold model code in
TIDAL_MODEL_MODULES (comma-separated; a package allows its submodules). When it is set,
any other module is refused; set but empty, only the built-in models are allowed (what the
compose stack and the Kubernetes manifests set); unset, every importable module is allowed
(local experiments; docs/security.md: set it on shared clusters).

The variable is read once, where a worker builds its configuration (cli_common.py), and the
parsed `ModelModules` is passed down to whatever builds a model. Only workers build models:
the coordinator and the shards never import user code (core/layout.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from tidal.config import SECURITY_ENV
from tidal.core.errors import InvalidArgumentError, PermissionDeniedError

ENV_MODEL_MODULES = SECURITY_ENV["model_modules"]

# The allowed packages; None: unrestricted (the variable unset).
ModelModules = tuple[str, ...] | None


def allowed_prefixes(environ: Mapping[str, str]) -> ModelModules:
    """The configured packages, or None when unrestricted."""
    value = environ.get(ENV_MODEL_MODULES)
    if value is None:
        return None
    return tuple(p.strip() for p in value.split(",") if p.strip())


def check_model_module(module_name: str, prefixes: ModelModules, field: str = "model.name") -> None:
    """Raises PermissionDeniedError unless `module_name` lies in an allowed package; the message
    names the spec's `field` (model.name, dataset.name, objective: one list for all user code)."""
    if prefixes is None:
        return
    if not any(module_name == p or module_name.startswith(f"{p}.") for p in prefixes):
        allowed = ", ".join(prefixes) or "none"
        raise PermissionDeniedError(
            f"{field}: module {module_name!r} is not in {ENV_MODEL_MODULES} (allowed: {allowed})"
        )


def resolve_user_callable(name: str, field: str, prefixes: ModelModules, what: str = "factory") -> Callable[..., Any]:
    """The callable that `name` ("package.module:attr") names, once its module is allowed: a
    model factory, a data source factory or a loss function (`field` names the spec's field in
    every error). The allow-list is checked before the import, which would run the module's code."""
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise InvalidArgumentError(f"{field} must look like 'package.module:{what}', got {name!r}")
    check_model_module(module_name, prefixes, field)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidArgumentError(f"{field} {name!r}: cannot import module {module_name!r}: {exc}") from exc
    found = getattr(module, attr, None)
    if not callable(found):
        raise InvalidArgumentError(f"{field} {name!r}: module {module_name!r} has no callable {attr!r}")
    return found
