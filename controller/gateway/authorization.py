"""Which Optuna storage call a token may make: a pure decision, given what the call touches.

A trial token may read its own study (everything samplers, pruners and define-by-run read) and
write its own trial while that trial runs. A read-only token (the export's) may read its study.
Everything else is refused: other studies, other trials, study creation and deletion, study
attributes, new trials, listing every study. The server resolves ids to names (``Target``)
before asking; this module does no I/O, so every rule is tested without a database.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from optuna.distributions import json_to_distribution
from optuna.trial import TrialState

from controller.gateway.tokens import TokenClaims


class Access(enum.Enum):
    READ_STUDY = "read"  # reads of one study, named or by id
    WRITE_TRIAL = "write"  # writes to one trial, by id
    NEVER = "never"  # no token may make this call


# Every RPC of Optuna's StorageService (optuna/storages/_grpc/auto_generated/api.proto).
METHOD_ACCESS: dict[str, Access] = {
    "CreateNewStudy": Access.NEVER,
    "DeleteStudy": Access.NEVER,
    "SetStudyUserAttribute": Access.NEVER,
    "SetStudySystemAttribute": Access.NEVER,
    "GetAllStudies": Access.NEVER,
    "CreateNewTrial": Access.NEVER,
    "GetStudyIdFromName": Access.READ_STUDY,
    "GetStudyNameFromId": Access.READ_STUDY,
    "GetStudyDirections": Access.READ_STUDY,
    "GetStudyUserAttributes": Access.READ_STUDY,
    "GetStudySystemAttributes": Access.READ_STUDY,
    "GetTrials": Access.READ_STUDY,
    "GetTrialIdFromStudyIdTrialNumber": Access.READ_STUDY,
    "GetTrial": Access.READ_STUDY,
    "SetTrialParameter": Access.WRITE_TRIAL,
    "SetTrialStateValues": Access.WRITE_TRIAL,
    "SetTrialIntermediateValue": Access.WRITE_TRIAL,
    "SetTrialUserAttribute": Access.WRITE_TRIAL,
    "SetTrialSystemAttribute": Access.WRITE_TRIAL,
}

_NEVER_WHY = {
    "CreateNewStudy": "a token may not create studies",
    "DeleteStudy": "a token may not delete studies",
    "SetStudyUserAttribute": "a token may not change a study's attributes",
    "SetStudySystemAttribute": "a token may not change a study's attributes",
    "GetAllStudies": "a token may not list the studies of other teams",
    "CreateNewTrial": "a token may not create trials (the controller asks them)",
}


@dataclass(frozen=True)
class Target:
    """What one call touches, as the server resolved it from the request.

    ``study`` is the study's name (None when the id names no study); ``trial`` and
    ``trial_state`` are set for calls on one trial (``trial`` None when the id names no trial).
    """

    study: str | None = None
    study_id: int | None = None
    trial_id: int | None = None
    trial: int | None = None
    trial_state: TrialState | None = None
    requested_state: TrialState | None = None  # SetTrialStateValues
    param: tuple[str, float, str] | None = None  # SetTrialParameter: name, internal value, distribution JSON

    def describe(self) -> str:
        parts = []
        if self.study is not None:
            parts.append(f"study {self.study!r}")
        elif self.study_id is not None:
            parts.append(f"study id {self.study_id}")
        if self.trial is not None:
            parts.append(f"trial {self.trial}")
        elif self.trial_id is not None:
            parts.append(f"trial id {self.trial_id}")
        return ", ".join(parts) or "no study"


class CallRefused(Exception):
    """The token may not make this call. ``reason`` is a short label for metrics and logs."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def authorize(claims: TokenClaims, method: str, target: Target) -> None:
    """Return if ``claims`` may make ``method`` on ``target``; raise ``CallRefused`` otherwise."""
    access = METHOD_ACCESS.get(method)
    on = f"{method} on {target.describe()}"
    if access is None:
        raise CallRefused("unknown-method", f"{method} refused: not a storage call the gateway serves")
    if not claims.study.startswith(claims.namespace + "/"):
        raise CallRefused(
            "namespace-mismatch",
            f"{on} refused: the token's study {claims.study!r} is not in its namespace {claims.namespace!r}",
        )
    if access is Access.NEVER:
        raise CallRefused("forbidden-method", f"{on} refused: {_NEVER_WHY[method]}")
    if target.study != claims.study:
        raise CallRefused(
            "other-study", f"{on} refused: the token is for study {claims.study!r} only"
        )
    if access is Access.READ_STUDY:
        return
    if claims.trial is None:
        raise CallRefused("read-only", f"{on} refused: a read-only token writes nothing")
    if target.trial != claims.trial:
        raise CallRefused("other-trial", f"{on} refused: the token may write trial {claims.trial} only")
    if not _writable(target):
        state = target.trial_state.name if target.trial_state is not None else "unknown"
        raise CallRefused("trial-ended", f"{on} refused: the trial is {state}, no longer running")
    if target.param is not None:
        _check_param(on, *target.param)


def _writable(target: Target) -> bool:
    if target.trial_state == TrialState.RUNNING:
        return True
    # A queued trial's worker claims it (WAITING -> RUNNING) before it runs (local prefetch).
    return target.trial_state == TrialState.WAITING and target.requested_state == TrialState.RUNNING


def _check_param(on: str, name: str, value: float, distribution_json: str) -> None:
    """A parameter's value must lie within the distribution it is written with."""
    try:
        distribution = json_to_distribution(distribution_json)
    except (ValueError, KeyError, TypeError):
        raise CallRefused(
            "bad-param", f"{on} refused: parameter {name!r} has no valid distribution"
        ) from None
    if not math.isfinite(value) or not distribution._contains(value):
        raise CallRefused(
            "bad-param", f"{on} refused: parameter {name!r} = {value} lies outside its distribution"
        )
