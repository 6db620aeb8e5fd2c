"""The base of every spec model: frozen, no unknown fields, no inf or nan.

Kept apart from core/spec.py so that the spec blocks in other modules (core/embeddings/spec.py)
share it without importing the job spec, which imports them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
