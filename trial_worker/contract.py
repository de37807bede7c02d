"""The assignment: everything a trial worker needs, sent as JSON in ``TUNEFLEET_ASSIGNMENT``.

This is the only module of ``trial_worker`` that the controller imports. It depends on pydantic
alone, so the worker stays light and the two sides cannot drift apart.
"""

from __future__ import annotations

import os
from enum import IntEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ASSIGNMENT_ENV = "TUNEFLEET_ASSIGNMENT"
DB_PASSWORD_ENV = "TUNEFLEET_DB_PASSWORD"
CONTRACT_VERSION: Literal[1] = 1

PRUNER_NAMES = ("none", "median", "percentile", "hyperband", "asha", "wilcoxon")

# Trial user attributes both sides read and write.
ATTR_SEED = "tunefleet.seed"
ATTR_REASON = "tunefleet.reason"
ATTR_DETAIL = "tunefleet.detail"
ATTR_EXIT_CODE = "tunefleet.exit_code"
ATTR_RETRY_OF = "tunefleet.retry_of"
ATTR_ATTEMPT = "tunefleet.attempt"
ATTR_GPU_SECONDS = "tunefleet.gpu_seconds"
ATTR_CPU_SECONDS = "tunefleet.cpu_seconds"
ATTR_DURATION = "tunefleet.duration_s"
ATTR_KIND = "tunefleet.kind"
ATTR_GPU_MODEL = "tunefleet.gpu_model"  # the GPU model torch saw in the trial, if any
ATTR_QUEUED = "tunefleet.queued"  # WAITING until its warm worker claims it (local prefetch)
ATTR_PINNED_STEPS = "tunefleet.pruner_steps"  # study attr: a trial's step count, for Hyperband/ASHA


class ExitCode(IntEnum):
    """The worker's exit status, one per outcome, so a pod's exit code alone tells what happened.

    The worker also stores the reason on the trial whenever the storage is reachable.
    """

    TOLD = 0  # COMPLETE or PRUNED, stored
    BAD_ASSIGNMENT = 2  # the assignment is missing or malformed
    OBJECTIVE_RAISED = 3  # the objective raised an exception
    INVALID_VALUE = 4  # NaN, inf, None or the wrong number of values
    COMMAND_FAILED = 5  # the command exited non-zero
    NO_METRIC = 6  # the command printed no value for an objective metric
    MAX_DURATION = 7  # maxDuration exceeded
    STORAGE_UNAVAILABLE = 8  # the study storage could not be reached; the trial is retried
    OBJECTIVE_NOT_FOUND = 9  # the python entry could not be imported
    NOT_RUNNING = 10  # the trial was already finished by someone else; nothing was run
    INCOMPLETE = 11  # the trial lacks parameters it needs: refused, nothing was run

    @property
    def reason(self) -> str:
        return _REASONS[self]

    @property
    def is_infrastructure(self) -> bool:
        """Failures of the platform, not of the objective: the same params are retried."""
        return self is ExitCode.STORAGE_UNAVAILABLE


_REASONS = {
    ExitCode.TOLD: "told",
    ExitCode.BAD_ASSIGNMENT: "badAssignment",
    ExitCode.OBJECTIVE_RAISED: "objectiveRaised",
    ExitCode.INVALID_VALUE: "invalidValue",
    ExitCode.COMMAND_FAILED: "commandFailed",
    ExitCode.NO_METRIC: "noMetric",
    ExitCode.MAX_DURATION: "maxDuration",
    ExitCode.STORAGE_UNAVAILABLE: "storageUnavailable",
    ExitCode.OBJECTIVE_NOT_FOUND: "objectiveNotFound",
    ExitCode.NOT_RUNNING: "notRunning",
    ExitCode.INCOMPLETE: "incomplete",
}


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PythonObjective(_Frozen):
    """``module:function`` called with a real ``optuna.Trial``."""

    kind: Literal["python"] = "python"
    entry: str


class CommandObjective(_Frozen):
    """A command with ``{{param}}`` placeholders; metrics are parsed from its stdout."""

    kind: Literal["command"] = "command"
    argv: list[str]


ObjectiveEntry = Annotated[PythonObjective | CommandObjective, Field(discriminator="kind")]


class MetricDirection(_Frozen):
    name: str
    direction: Literal["minimize", "maximize"]


class PrunerConfig(_Frozen):
    """A pruner by name with its constructor settings; every worker builds the same one."""

    name: Literal["none", "median", "percentile", "hyperband", "asha", "wilcoxon"] = "none"
    settings: dict[str, Any] = Field(default_factory=dict)


class Assignment(_Frozen):
    """One trial for one worker.

    ``storage_url`` never carries a password on the cluster: the worker adds the one in
    ``TUNEFLEET_DB_PASSWORD`` (set from a Secret) when the URL has none.
    """

    version: Literal[1] = CONTRACT_VERSION
    storage_url: str
    study_name: str
    trial_number: int = Field(ge=0)
    objective: ObjectiveEntry
    metrics: list[MetricDirection] = Field(min_length=1)
    constraints: list[str] = Field(default_factory=list)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    seed: int = Field(ge=0, le=2**32 - 1)
    max_duration_s: int = Field(gt=0)
    deterministic: bool = False
    workdir: str | None = Field(default=None, description="Where the objective runs.")
    log_path: str | None = Field(
        default=None, description="Local runs: the file that receives this trial's output."
    )
    active_params: list[str] | None = Field(
        default=None,
        description="The declared parameters that apply to this trial: the worker refuses to run "
        "one that lacks any of them. None: every {{placeholder}} of a command needs a value.",
    )
    queued: bool = Field(
        default=False,
        description="The trial waits (WAITING) for this worker, which claims it when it starts, so "
        "its start time is when it ran, not when it was asked.",
    )

    def to_env(self) -> dict[str, str]:
        return {ASSIGNMENT_ENV: self.model_dump_json()}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Assignment:
        env = os.environ if environ is None else environ
        raw = env.get(ASSIGNMENT_ENV)
        if not raw:
            raise ValueError(f"environment variable {ASSIGNMENT_ENV} is not set")
        return cls.model_validate_json(raw)


def storage_url_with_password(url: str, environ: dict[str, str] | None = None) -> str:
    """Add the password from ``TUNEFLEET_DB_PASSWORD`` to a URL that carries none."""
    env = os.environ if environ is None else environ
    password = env.get(DB_PASSWORD_ENV)
    if not password or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    authority, sep, tail = rest.partition("/")
    if "@" not in authority:
        return url
    userinfo, host = authority.rsplit("@", 1)
    if ":" in userinfo:
        return url
    from urllib.parse import quote

    return f"{scheme}://{userinfo}:{quote(password, safe='')}@{host}{sep}{tail}"


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and messages."""
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    authority, sep, tail = rest.partition("/")
    if "@" in authority:
        userinfo, host = authority.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        authority = f"{userinfo}@{host}"
    return f"{scheme}://{authority}{sep}{tail}"


class TrialReport(_Frozen):
    """What a warm worker tells its local runner after each trial (one JSON line)."""

    trial_number: int
    state: Literal["COMPLETE", "PRUNED", "FAIL"]
    exit_code: int
    reason: str | None = None
    duration_s: float
