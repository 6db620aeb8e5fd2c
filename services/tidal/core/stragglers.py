"""Slowness on purpose: how long a straggling worker waits after each computation."""

from __future__ import annotations

import math
import random

from tidal.core.spec import DelaySpec


class StragglerProfile:
    """`slowdown` simulates a machine and link that many times slower: after computing,
    the worker sleeps (slowdown - 1) times its busy time (this step's computation plus
    its previous exchange with the shards). `delay` adds a random pause per step."""

    def __init__(self, slowdown: float = 1.0, delay: DelaySpec | None = None, seed: int = 0) -> None:
        self.slowdown = slowdown
        self.delay = delay
        self._rng = random.Random(seed)

    def extra_seconds(self, busy_s: float) -> float:
        extra = (self.slowdown - 1.0) * busy_s
        if self.delay is not None and self.delay.mean_s > 0:
            extra += self._draw(self.delay)
        return extra

    def _draw(self, delay: DelaySpec) -> float:
        if delay.distribution == "constant":
            return delay.mean_s
        if delay.distribution == "exponential":
            return self._rng.expovariate(1.0 / delay.mean_s)
        # Log-normal with the requested mean: E[X] = exp(mu + sigma^2 / 2).
        mu = math.log(delay.mean_s) - delay.sigma**2 / 2
        return self._rng.lognormvariate(mu, delay.sigma)
