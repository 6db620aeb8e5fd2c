"""Real components for the metrics tests: present in CI, skipped with a reason elsewhere."""

from __future__ import annotations

import os
import shutil

import pytest


def require_binary(name: str) -> str:
    """The path of a real component; a missing one fails CI and skips a local run."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (Debian package 'prometheus'; make test and .ci/run install it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
