"""Opening the study storage (Postgres, or an embedded SQLite file) and the study itself."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage
from optuna.study import StudyDirection

from controller.studies.reading import AskingStorage
from trial_worker.contract import connection_url, normalize_storage_url, redact_url
from trial_worker.trial_reads import CoreReadStorage

DEFAULT_STORAGE_DIR = ".tunefleet"
STORAGE_URL_ENV = "TUNEFLEET_STORAGE_URL"


class StorageUnavailable(Exception):
    """The storage could not be opened; the message names the URL (password hidden) and why."""


def default_storage_url(study_name: str, base_dir: str | Path = DEFAULT_STORAGE_DIR) -> str:
    """The embedded storage for local runs: one SQLite file per study, no server needed."""
    directory = Path(base_dir).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / (study_name + '.db')}"


def resolve_storage_url(explicit: str | None, spec_url: str | None, study_name: str) -> str:
    """The flag wins, then ``TUNEFLEET_STORAGE_URL``, then ``spec.storage.url``, then embedded;
    any PostgreSQL spelling comes back in the driver we ship (``normalize_storage_url``)."""
    url = explicit or os.environ.get(STORAGE_URL_ENV) or spec_url or default_storage_url(study_name)
    return normalize_storage_url(url)


def open_storage(url: str, pool_size: int = 2) -> RDBStorage:
    """An Optuna RDB storage with pooling suited to a long-running controller; it reads trials
    without the ORM (``trial_worker.trial_reads``)."""
    try:
        full_url = connection_url(url)
    except ValueError as exc:
        raise StorageUnavailable(str(exc)) from exc
    engine_kwargs: dict[str, Any]
    if full_url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_size": pool_size, "max_overflow": 2, "pool_pre_ping": True}
    try:
        storage = CoreReadStorage(full_url, engine_kwargs=engine_kwargs)
    except Exception as exc:
        raise StorageUnavailable(f"cannot open storage {redact_url(url)}: {_first_line(exc)}") from exc
    if full_url.startswith("sqlite"):
        use_write_ahead_log(storage.engine)
    return storage


def use_write_ahead_log(engine: sa.engine.Engine) -> None:
    """SQLite shared by local processes: WAL lets readers and a writer proceed together, and
    ``synchronous=NORMAL`` syncs at checkpoints rather than on every commit. A crash of any
    process loses nothing committed; a power cut may lose the last commits, never consistency.
    """

    @sa.event.listens_for(engine, "connect")
    def _tune(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    engine.dispose()  # connections opened while Optuna created its tables get the settings too


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def create_or_load_study(
    storage: RDBStorage,
    name: str,
    directions: list[str],
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Create the study once or load it (``load_if_exists``), so a rerun resumes it.

    The study reads through :class:`~controller.studies.reading.AskingStorage`: its process asks
    the trials, so each ask reads the trials once (``asking.ask_new_trial``).

    Raises ValueError when an existing study has other directions than the spec asks for.
    """
    study = optuna.create_study(
        storage=AskingStorage(storage),
        study_name=name,
        directions=[
            StudyDirection.MAXIMIZE if d == "maximize" else StudyDirection.MINIMIZE for d in directions
        ],
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    stored = [d.name.lower() for d in study.directions]
    if stored != list(directions):
        raise ValueError(
            f"study {name!r} already exists with directions {stored}, but the spec asks for "
            f"{list(directions)}; use another study name"
        )
    return study
