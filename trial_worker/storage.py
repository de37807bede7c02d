"""Attaching to the shared study: the storage connection and the trial the controller asked."""

from __future__ import annotations

import contextlib
import contextvars
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from trial_worker.contract import GATEWAY_SCHEME, GATEWAY_TOKEN_ENV, Assignment, connection_url
from trial_worker.trial_reads import CoreReadStorage

_storages: dict[str, BaseStorage] = {}
# Where the gateway token and CA are read: the process environment (a trial pod's), unless a
# caller that runs several trials in one process gives each its own (``pod_environment``).
_environment: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "tunefleet_pod_environment", default=None
)


@contextlib.contextmanager
def pod_environment(environ: Mapping[str, str]) -> Iterator[None]:
    """Within this block (this thread or task), gateway credentials come from ``environ``."""
    reset = _environment.set(environ)
    try:
        yield
    finally:
        _environment.reset(reset)


def _cache_key(url: str) -> str:
    """What a storage is cached under: the URL it opens, and for the gateway the token too (a
    gateway storage holds one trial's token)."""
    if not url.startswith(GATEWAY_SCHEME + "://"):
        return connection_url(url)
    environ = _environment.get() or os.environ
    return f"{url}#{environ.get(GATEWAY_TOKEN_ENV, '')}"


def open_storage(url: str) -> BaseStorage:
    """One storage per URL per process: a warm worker reuses its connection pool.

    ``tunefleet-gateway://HOST:PORT`` (the cluster) reaches the study through the trial gateway,
    with the token and CA in the pod's environment; no database password is involved.
    """
    if url.startswith(GATEWAY_SCHEME + "://"):
        key = _cache_key(url)
        if key not in _storages:
            from trial_worker.gateway import open_gateway

            _storages[key] = open_gateway(url, _environment.get())
        return _storages[key]
    full_url = _cache_key(url)
    if full_url not in _storages:
        engine_kwargs: dict[str, Any]
        if full_url.startswith("sqlite"):
            # Several local processes share the file; wait for the lock instead of failing.
            engine_kwargs = {"connect_args": {"timeout": 60}}
        else:
            engine_kwargs = {"pool_size": 1, "max_overflow": 1, "pool_pre_ping": True}
        storage = CoreReadStorage(full_url, engine_kwargs=engine_kwargs)  # reads without the ORM
        if full_url.startswith("sqlite"):
            _use_write_ahead_log(storage.engine)
        _storages[full_url] = storage
    return _storages[full_url]


def _use_write_ahead_log(engine: Any) -> None:
    """The runner set the file to WAL; each connection also syncs at checkpoints only."""
    import sqlalchemy

    @sqlalchemy.event.listens_for(engine, "connect")
    def _tune(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    engine.dispose()


_studies: dict[tuple[str, str], optuna.Study] = {}


def _study(url: str, name: str) -> optuna.Study:
    """One Study object per study and process: a warm worker keeps Optuna's trial cache, so each
    trial reads only what changed instead of the whole study."""
    key = (_cache_key(url), name)
    if key not in _studies:
        _studies[key] = optuna.load_study(study_name=name, storage=open_storage(url))
    return _studies[key]


def forget_storage(url: str) -> None:
    """Close and drop the storage (and Study) this context's credentials opened for ``url``: a
    process that ran a trial for a pod it no longer runs holds its token no longer."""
    key = _cache_key(url)
    for study_key in [k for k in _studies if k[0] == key]:
        del _studies[study_key]
    storage = _storages.pop(key, None)
    close = getattr(storage, "close", None)
    if close is not None:
        close()


def load_trial(
    assignment: Assignment, pruner: optuna.pruners.BasePruner
) -> tuple[optuna.Study, optuna.Trial, optuna.trial.TrialState]:
    """The study and the live trial the assignment names, with the trial's current state."""
    study = _study(assignment.storage_url, assignment.study_name)
    study.pruner = pruner
    # Parameters the spec did not declare are sampled in place, reproducibly per trial.
    study.sampler = optuna.samplers.RandomSampler(seed=assignment.seed)
    storage = study._storage
    # Reading the trials through the study registers them with Optuna's storage cache, which
    # suggesting an undeclared parameter needs; later reads (the pruner's) are incremental.
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    mine = next((t for t in running if t.number == assignment.trial_number), None)
    if mine is None:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, assignment.trial_number)
        return study, optuna.Trial(study, trial_id), storage.get_trial(trial_id).state
    return study, optuna.Trial(study, mine._trial_id), mine.state


def claim_trial(assignment: Assignment) -> bool:
    """Take a queued trial: WAITING -> RUNNING, atomically, so Optuna stamps its start time now,
    when it runs. False if it was no longer waiting (the runner failed it meanwhile)."""
    study = _study(assignment.storage_url, assignment.study_name)
    storage = study._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, assignment.trial_number)
    try:
        return storage.set_trial_state_values(trial_id, TrialState.RUNNING)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def with_retries(action: Any, attempts: int = 8, first_delay_s: float = 0.5) -> Any:
    """Call ``action`` until it succeeds, backing off; storage outages are usually brief."""
    delay = first_delay_s
    for attempt in range(attempts):
        try:
            return action()
        except Exception as exc:
            if attempt == attempts - 1 or not _is_transient(exc):
                raise
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
    return None


def _is_transient(exc: Exception) -> bool:
    import sqlalchemy.exc

    if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
        return True
    return _is_transient_rpc(exc)


def _is_transient_rpc(exc: Exception) -> bool:
    """The trial gateway restarting or unreachable (UNAVAILABLE, DEADLINE_EXCEEDED), or shedding
    load (RESOURCE_EXHAUSTED)."""
    if not type(exc).__module__.startswith("grpc"):
        return False
    import grpc

    return isinstance(exc, grpc.RpcError) and exc.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
