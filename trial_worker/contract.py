"""The assignment: everything a trial worker needs, sent as JSON in ``TUNEFLEET_ASSIGNMENT``.

This is the only module of ``trial_worker`` that the controller imports. It depends on pydantic
alone, so the worker stays light and the two sides cannot drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import IntEnum
from typing import Annotated, Any, Literal
from urllib.parse import quote, unquote

from pydantic import BaseModel, ConfigDict, Field

ASSIGNMENT_ENV = "TUNEFLEET_ASSIGNMENT"
DB_PASSWORD_ENV = "TUNEFLEET_DB_PASSWORD"

# The trial gateway (issue 12): on the cluster a trial reaches its study at
# ``tunefleet-gateway://HOST:PORT`` with a per-trial token, never with the database password.
GATEWAY_SCHEME = "tunefleet-gateway"
GATEWAY_TOKEN_ENV = "TUNEFLEET_GATEWAY_TOKEN"
GATEWAY_CA_ENV = "TUNEFLEET_GATEWAY_CA"  # the CA certificate (PEM text) that signed the gateway's
GATEWAY_SERVER_NAME_ENV = "TUNEFLEET_GATEWAY_SERVER_NAME"  # optional: the TLS name to check
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

# Population-based training: where a segment finds its checkpoints on a pod (the volume's mount).
CHECKPOINT_ROOT_ENV = "TUNEFLEET_CHECKPOINT_ROOT"
# Placeholders a command-mode segment may use besides its parameters (also passed as env).
SEGMENT_PLACEHOLDERS = ("checkpoint.load", "checkpoint.save", "segment.start", "segment.end", "member")
# A command that cannot read its checkpoint exits with this code (sysexits' EX_IOERR).
CHECKPOINT_UNREADABLE_EXIT = 74


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
    CHECKPOINT_UNAVAILABLE = 11  # a PBT segment's checkpoint to resume from is missing or unreadable
    CHECKPOINT_NOT_SAVED = 12  # a PBT segment ended without saving its checkpoint
    INCOMPLETE = 13  # the trial lacks parameters it needs: refused, nothing was run

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
    ExitCode.CHECKPOINT_UNAVAILABLE: "checkpointUnavailable",
    ExitCode.CHECKPOINT_NOT_SAVED: "checkpointNotSaved",
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


class SegmentAssignment(_Frozen):
    """A population-based training segment: which steps to train, from which checkpoint, to where.

    ``load`` and ``save`` are directories relative to ``root``; ``root`` None means the directory
    in ``TUNEFLEET_CHECKPOINT_ROOT`` (on a cluster, where the checkpoint volume is mounted).
    """

    member: int = Field(ge=0)
    index: int = Field(ge=0, description="The member's segment count before this one.")
    start_step: int = Field(ge=0)
    end_step: int = Field(ge=1, description="The step after the last one to train.")
    parent: int | None = Field(default=None, description="The member whose checkpoint is loaded.")
    load: str | None = Field(default=None, description="The checkpoint to resume from (None: fresh).")
    save: str
    root: str | None = None


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
    rendezvous: Rendezvous | None = Field(
        default=None,
        description="Local runs of a trial of several nodes: this process's rank and where the "
        "ranks meet. On the cluster the pod's environment says it (Rendezvous.from_env).",
    )
    segment: SegmentAssignment | None = Field(
        default=None, description="Population-based training: the segment this trial trains."
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


# -- the storage URL ---------------------------------------------------------------------------
# Every database connection of tunefleet (controller, worker, export, local runs) opens the URL
# that ``connection_url`` returns, so every spelling of a PostgreSQL URL reaches the driver we
# ship. SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which we do not install.

POSTGRES_DRIVER = "postgresql+psycopg2"
# ``postgres://`` is libpq's and Heroku's spelling; SQLAlchemy refuses it outright.
_POSTGRES_SCHEMES = ("postgresql", "postgres")


class StorageUrlError(ValueError):
    """A storage URL tunefleet cannot open; the message names the URL (password hidden)."""


def normalize_storage_url(url: str) -> str:
    """The URL in the form tunefleet's packages open, the password (if any) kept.

    Any PostgreSQL spelling (``postgresql://``, ``postgres://``, ``postgresql+psycopg://``,
    ``postgresql+asyncpg://``, ...) becomes ``postgresql+psycopg2://``; user and password are
    percent-encoded exactly once, so a password with ``@``, ``/``, ``:`` or ``%`` survives.
    SQLite URLs are returned unchanged.

    Raises:
        StorageUrlError: the URL has no scheme, or a database tunefleet does not ship a driver for.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise StorageUrlError(
            f"storage URL {redact_url(url)!r} has no scheme: use postgresql://USER@HOST:PORT/DB "
            "or sqlite:///PATH"
        )
    dialect = scheme.split("+", 1)[0].lower()
    if dialect == "sqlite":
        return url
    if dialect not in _POSTGRES_SCHEMES:
        raise StorageUrlError(
            f"storage URL {redact_url(url)!r}: database {dialect!r} is not supported; "
            "tunefleet stores studies in PostgreSQL (postgresql://...) or SQLite (sqlite:///...)"
        )
    user, password, location = _split_userinfo(rest)
    if user is None:
        return f"{POSTGRES_DRIVER}://{location}"
    userinfo = quote(unquote(user), safe="")
    if password is not None:
        userinfo += ":" + quote(unquote(password), safe="")
    return f"{POSTGRES_DRIVER}://{userinfo}@{location}"


def connection_url(url: str, environ: Mapping[str, str] | None = None) -> str:
    """The URL to open: normalized, plus the password in ``TUNEFLEET_DB_PASSWORD`` when the URL
    names a user but carries no password (on the cluster the password lives in a Secret)."""
    normalized = normalize_storage_url(url)
    env = os.environ if environ is None else environ
    password = env.get(DB_PASSWORD_ENV)
    if not password or normalized.startswith("sqlite"):
        return normalized
    scheme, _, rest = normalized.partition("://")
    user, inline, location = _split_userinfo(rest)
    if user is None or inline is not None:
        return normalized
    return f"{scheme}://{user}:{quote(password, safe='')}@{location}"


def split_password(url: str) -> tuple[str, str | None]:
    """The URL without its password, and the password (decoded; None when it had none)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0].lower() == "sqlite":
        return url, None
    user, password, location = _split_userinfo(rest)
    if user is None or password is None:
        return url, None
    return f"{scheme}://{user}@{location}", unquote(password)


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0].lower() == "sqlite":
        return url
    user, password, location = _split_userinfo(rest)
    if user is None or password is None:
        return url
    return f"{scheme}://{user}:***@{location}"


def _split_userinfo(rest: str) -> tuple[str | None, str | None, str]:
    """``user[:password]@host...`` -> (user, password, host...), each part as written.

    The user info ends at the *last* ``@``, so a password pasted without percent-encoding still
    parses even when it holds ``@``, ``/``, ``?`` or ``#`` (an ``@`` after the host must be
    encoded instead).
    """
    userinfo, at, location = rest.rpartition("@")
    if not at:
        return None, None, rest
    user, colon, password = userinfo.partition(":")
    return user, (password if colon else None), location


class TrialReport(_Frozen):
    """What a warm worker tells its local runner after each trial (one JSON line)."""

    trial_number: int
    state: Literal["COMPLETE", "PRUNED", "FAIL"]
    exit_code: int
    reason: str | None = None
    duration_s: float


# -- trials that span several nodes ------------------------------------------------------------
# A trial of ``nodes`` pods (or local processes) meets at rank 0's address, the way torchrun and
# torch.distributed's ``env://`` rendezvous expect. Only rank 0 writes to the study.

NODE_RANK_ENV = "TUNEFLEET_NODE_RANK"
NODES_ENV = "TUNEFLEET_NNODES"
DEFAULT_MASTER_PORT = 29500
# The annotation in which an Indexed Job's pod carries its index (each pod's rank is read from it).
JOB_COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


class Rendezvous(_Frozen):
    """Where the ranks of one trial meet, and which rank this process is."""

    nodes: int = Field(ge=1)
    node_rank: int = Field(ge=0)
    master_addr: str = Field(min_length=1)
    master_port: int = Field(default=DEFAULT_MASTER_PORT, gt=0, lt=65536)

    @property
    def leads(self) -> bool:
        """Rank 0: the one voice of the trial in the study."""
        return self.node_rank == 0

    def environment(self) -> dict[str, str]:
        """The variables torch.distributed (``env://``) and torchrun (``PET_*``) read.

        One process per node: ``WORLD_SIZE`` is ``nodes`` and ``RANK`` the node's rank; torchrun
        overrides both for the processes it starts (``--nproc-per-node``).
        """
        static = rendezvous_static_env(self.nodes, self.master_addr, self.master_port)
        return {**static, **rendezvous_rank_env(str(self.node_rank))}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Rendezvous | None:
        """The rendezvous a pod's environment describes (set by its Job), or None for one node."""
        env = os.environ if environ is None else environ
        nodes = env.get(NODES_ENV)
        if nodes is None or int(nodes) <= 1:
            return None
        return cls(
            nodes=int(nodes),
            node_rank=int(env[NODE_RANK_ENV]),
            master_addr=env["MASTER_ADDR"],
            master_port=int(env.get("MASTER_PORT", DEFAULT_MASTER_PORT)),
        )


def rendezvous_static_env(nodes: int, master_addr: str, master_port: int) -> dict[str, str]:
    """What every rank of a trial shares."""
    return {
        NODES_ENV: str(nodes),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "WORLD_SIZE": str(nodes),
        "NNODES": str(nodes),
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "PET_NNODES": str(nodes),
        "PET_MASTER_ADDR": master_addr,
        "PET_MASTER_PORT": str(master_port),
    }


RANK_ENV_NAMES = (NODE_RANK_ENV, "RANK", "NODE_RANK", "PET_NODE_RANK")


def rendezvous_rank_env(rank: str) -> dict[str, str]:
    """What differs per rank (on the cluster each is the pod's completion index)."""
    return dict.fromkeys(RANK_ENV_NAMES, rank)


Assignment.model_rebuild()  # it names Rendezvous, declared after it
