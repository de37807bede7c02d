"""The gateway's Prometheus metrics (served on the HTTP side port's /metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import grpc
from prometheus_client import Counter, Gauge, Histogram

CALLS = Counter(
    "tunefleet_gateway_calls",
    "Storage calls by method and gRPC status code (PERMISSION_DENIED: refused by the token's rules; "
    "RESOURCE_EXHAUSTED: shed).",
    ["method", "code"],
)
CALL_SECONDS = Histogram(
    "tunefleet_gateway_call_seconds",
    "Time to serve a storage call, refusals and shed calls included.",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
REFUSALS = Counter(
    "tunefleet_gateway_refusals",
    "Calls refused, by method and reason (other-study, other-trial, trial-ended, bad-token, ...).",
    ["method", "reason"],
)
IN_FLIGHT = Gauge("tunefleet_gateway_in_flight", "Storage calls being served now.")
STREAMS = Gauge("tunefleet_gateway_streams", "Reports streams open now (one per reporting trial).")


class CallOutcome:
    """The status one call ends with, for ``CALLS``; set ``code`` where the call is refused."""

    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK


@contextlib.contextmanager
def counted(method: str) -> Iterator[CallOutcome]:
    """Count the call in ``CALLS`` (by the code it ended with) and time it in ``CALL_SECONDS``."""
    started = time.perf_counter()
    outcome = CallOutcome()
    try:
        yield outcome
    except asyncio.CancelledError:
        outcome.code = grpc.StatusCode.CANCELLED
        raise
    except Exception:
        if outcome.code == grpc.StatusCode.OK:
            outcome.code = grpc.StatusCode.UNKNOWN
        raise
    finally:
        CALLS.labels(method, outcome.code.name).inc()
        CALL_SECONDS.labels(method).observe(time.perf_counter() - started)
