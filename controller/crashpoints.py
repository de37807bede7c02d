"""Crash points: a test hook that kills this process at an exact step of a protocol.

``TUNEFLEET_CRASH_AT=<point>`` makes the process (the controller, or ``tunefleet run``) SIGKILL
itself the first time it reaches that point, so a test can stop it between two writes and check
what the next process makes of what was left. Unset in production: each point is then a no-op.

Points, in the order a new trial meets them:
- ``after-provisional``: the worst case reserved under a provisional key, no trial asked;
- ``after-create-trial``: the trial exists (RUNNING), none of its parameters written;
- ``after-param``: its first parameter written, not the others;
- ``before-seed``: every parameter written, not its seed;
- ``after-ask``: the trial complete, its reservation still provisional;
- ``after-reserve``: the reservation the trial's own, its Job not created;
- ``before-settle``: a finished pod's outcome stored, the pod not yet settled;
- ``after-started-posted`` / ``after-finished-posted``: the StudyStarted / StudyFinished Event
  posted, the status that shows it not yet written.
"""

from __future__ import annotations

import os
import signal

import structlog

CRASH_ENV = "TUNEFLEET_CRASH_AT"
CRASH_POINTS = (
    "after-provisional",
    "after-create-trial",
    "after-param",
    "before-seed",
    "after-ask",
    "after-reserve",
    "before-settle",
    "after-started-posted",
    "after-finished-posted",
)

log = structlog.get_logger("tunefleet")


def crash_point(name: str) -> None:
    """SIGKILL this process if ``TUNEFLEET_CRASH_AT`` names ``name`` (a test hook; no-op otherwise)."""
    if os.environ.get(CRASH_ENV) == name:
        log.warning("crash point reached: killing this process", point=name)
        os.kill(os.getpid(), signal.SIGKILL)
