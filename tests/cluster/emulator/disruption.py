"""A degraded API server: a share of requests answered 429 or 500, or answered late.

Unlike ``pause()`` (every request fails), a disruption hits some requests and lets the rest
through, as an overloaded or flaky control plane does. The share is drawn from a seeded
``random.Random``, so a chaos schedule replays the same way from its seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .errors import ApiError

KINDS = ("429", "500", "slow")


@dataclass
class Disruption:
    """``kind``: "429" (TooManyRequests, with Retry-After), "500" (InternalError) or "slow"
    (each hit request waits ``delay_s`` before it is served)."""

    kind: str
    share: float = 0.3
    delay_s: float = 0.5
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown disruption {self.kind!r}: expected one of {', '.join(KINDS)}")
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"disruption share must be within [0, 1], not {self.share}")
        self._rng = random.Random(self.seed)

    def hits(self) -> bool:
        return self._rng.random() < self.share

    def error(self) -> ApiError | None:
        """The error a hit request gets (None for "slow": it is served, late)."""
        if self.kind == "429":
            return ApiError(429, "TooManyRequests", "the server has received too many requests "
                            "and has asked us to try again later (emulated)", {"retryAfterSeconds": 1})
        if self.kind == "500":
            return ApiError(500, "InternalError", "an error on the server (\"emulated\") has "
                            "prevented the request from succeeding")
        return None
