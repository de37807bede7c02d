"""The budget ledger: reserve a trial's worst case before it starts, settle its actual use after.

Integer resource-seconds (GPU-seconds, and CPU-seconds for CPU-hour budgets). Tables live in the
study database (Postgres, or the embedded SQLite file) next to Optuna's. A reservation is refused
when settled + open reservations + the worst case would exceed the limit, checked inside one
transaction that locks the budget row, so the cap holds with several writers and across crashes.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from trial_worker.contract import storage_url_with_password

SCHEMA_VERSION = 1
_metadata = sa.MetaData()

schema_version = sa.Table(
    "tunefleet_ledger_schema", _metadata, sa.Column("version", sa.Integer, primary_key=True)
)
budgets = sa.Table(
    "tunefleet_budgets",
    _metadata,
    sa.Column("scope", sa.String(320), primary_key=True),  # "study:<name>" or "namespace:<ns>"
    sa.Column("gpu_seconds_limit", sa.BigInteger, nullable=True),
    sa.Column("cpu_seconds_limit", sa.BigInteger, nullable=True),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)
reservations = sa.Table(
    "tunefleet_reservations",
    _metadata,
    sa.Column("key", sa.String(320), primary_key=True),  # one per trial attempt: idempotent
    sa.Column("study", sa.String(320), nullable=False, index=True),
    sa.Column("trial_number", sa.Integer, nullable=False),
    sa.Column("gpu_seconds", sa.BigInteger, nullable=False),
    sa.Column("cpu_seconds", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("released_at", sa.DateTime, nullable=True),
)
settlements = sa.Table(
    "tunefleet_settlements",
    _metadata,
    sa.Column("key", sa.String(320), primary_key=True),  # pod UID, or a local attempt key
    sa.Column("reservation_key", sa.String(320), nullable=False),
    sa.Column("study", sa.String(320), nullable=False, index=True),
    sa.Column("trial_number", sa.Integer, nullable=False),
    sa.Column("gpu_seconds", sa.BigInteger, nullable=False),
    sa.Column("cpu_seconds", sa.BigInteger, nullable=False),
    sa.Column("wall_seconds", sa.Float, nullable=False),
    sa.Column("settled_at", sa.DateTime, nullable=False),
)


@dataclass(frozen=True)
class Charge:
    """Resource-seconds: what a trial reserves or is charged."""

    gpu_seconds: int = 0
    cpu_seconds: int = 0

    @classmethod
    def for_run(cls, gpus: int, cpus: float, seconds: float) -> Charge:
        """Allocated resources times wall seconds, rounded up to whole seconds."""
        return cls(gpu_seconds=math.ceil(gpus * seconds), cpu_seconds=math.ceil(cpus * seconds))


@dataclass(frozen=True)
class Totals:
    settled: Charge
    reserved: Charge
    gpu_seconds_limit: int | None
    cpu_seconds_limit: int | None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class Ledger:
    """Reservations and settlements in the study database."""

    def __init__(self, url: str) -> None:
        full_url = storage_url_with_password(url)
        if full_url.startswith("sqlite"):
            self._engine: Engine = sa.create_engine(full_url, connect_args={"timeout": 60})
            _take_write_lock_on_begin(self._engine)
        else:
            self._engine = sa.create_engine(full_url, pool_size=1, max_overflow=2, pool_pre_ping=True)
        self._migrate()

    def close(self) -> None:
        self._engine.dispose()

    def _migrate(self) -> None:
        with self._transaction() as conn:
            _metadata.create_all(conn)
            current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
            if current is None:
                conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
            elif current > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the ledger schema is version {current}, newer than this tunefleet "
                    f"understands ({SCHEMA_VERSION}); upgrade tunefleet"
                )

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self._engine.begin() as conn:
            yield conn

    def set_study_limits(self, study: str, gpu_seconds: int | None, cpu_seconds: int | None) -> None:
        """Create or change the study's limits (a lowered budget applies from the next reserve)."""
        scope = f"study:{study}"
        with self._transaction() as conn:
            updated = conn.execute(
                budgets.update()
                .where(budgets.c.scope == scope)
                .values(gpu_seconds_limit=gpu_seconds, cpu_seconds_limit=cpu_seconds, updated_at=_now())
            ).rowcount
            if not updated:
                conn.execute(
                    budgets.insert().values(
                        scope=scope, gpu_seconds_limit=gpu_seconds, cpu_seconds_limit=cpu_seconds, updated_at=_now()
                    )
                )

    def reserve(self, key: str, study: str, trial_number: int, worst_case: Charge) -> bool:
        """Reserve ``worst_case`` for one trial attempt; False (nothing written) if it does not fit.

        Idempotent: reserving an existing key again returns True.
        """
        with self._transaction() as conn:
            limits = conn.execute(
                sa.select(budgets.c.gpu_seconds_limit, budgets.c.cpu_seconds_limit)
                .where(budgets.c.scope == f"study:{study}")
                .with_for_update()
            ).first()
            if conn.execute(sa.select(reservations.c.key).where(reservations.c.key == key)).first():
                return True
            if limits is not None:
                totals = self._totals(conn, study)
                if not _fits(limits[0], totals.settled.gpu_seconds + totals.reserved.gpu_seconds, worst_case.gpu_seconds):
                    return False
                if not _fits(limits[1], totals.settled.cpu_seconds + totals.reserved.cpu_seconds, worst_case.cpu_seconds):
                    return False
            conn.execute(
                reservations.insert().values(
                    key=key,
                    study=study,
                    trial_number=trial_number,
                    gpu_seconds=worst_case.gpu_seconds,
                    cpu_seconds=worst_case.cpu_seconds,
                    created_at=_now(),
                )
            )
            return True

    def settle(self, key: str, reservation_key: str, actual: Charge, wall_seconds: float) -> Charge:
        """Replace the reservation by the actual use (never more than reserved); idempotent by key.

        Returns what was charged.
        """
        with self._transaction() as conn:
            reservation = conn.execute(
                sa.select(reservations).where(reservations.c.key == reservation_key).with_for_update()
            ).first()
            if reservation is None:
                raise KeyError(f"no reservation {reservation_key!r} to settle")
            existing = conn.execute(sa.select(settlements).where(settlements.c.key == key)).first()
            if existing is not None:
                return Charge(existing.gpu_seconds, existing.cpu_seconds)
            charged = Charge(
                min(actual.gpu_seconds, reservation.gpu_seconds),
                min(actual.cpu_seconds, reservation.cpu_seconds),
            )
            conn.execute(
                settlements.insert().values(
                    key=key,
                    reservation_key=reservation_key,
                    study=reservation.study,
                    trial_number=reservation.trial_number,
                    gpu_seconds=charged.gpu_seconds,
                    cpu_seconds=charged.cpu_seconds,
                    wall_seconds=wall_seconds,
                    settled_at=_now(),
                )
            )
            conn.execute(
                reservations.update().where(reservations.c.key == reservation_key).values(released_at=_now())
            )
            return charged

    def release(self, reservation_key: str) -> None:
        """Drop a reservation whose trial never ran (e.g. its Job could not be created)."""
        with self._transaction() as conn:
            conn.execute(
                reservations.update()
                .where(reservations.c.key == reservation_key, reservations.c.released_at.is_(None))
                .values(released_at=_now())
            )

    def totals(self, study: str) -> Totals:
        with self._transaction() as conn:
            return self._totals(conn, study)

    def _totals(self, conn: Connection, study: str) -> Totals:
        settled = conn.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(settlements.c.gpu_seconds), 0),
                sa.func.coalesce(sa.func.sum(settlements.c.cpu_seconds), 0),
            ).where(settlements.c.study == study)
        ).one()
        reserved = conn.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(reservations.c.gpu_seconds), 0),
                sa.func.coalesce(sa.func.sum(reservations.c.cpu_seconds), 0),
            ).where(reservations.c.study == study, reservations.c.released_at.is_(None))
        ).one()
        limits = conn.execute(
            sa.select(budgets.c.gpu_seconds_limit, budgets.c.cpu_seconds_limit).where(
                budgets.c.scope == f"study:{study}"
            )
        ).first()
        return Totals(
            settled=Charge(int(settled[0]), int(settled[1])),
            reserved=Charge(int(reserved[0]), int(reserved[1])),
            gpu_seconds_limit=limits[0] if limits else None,
            cpu_seconds_limit=limits[1] if limits else None,
        )

    def charges_by_trial(self, study: str) -> dict[int, Charge]:
        """What each trial number was charged in total (all its settlements)."""
        with self._transaction() as conn:
            rows = conn.execute(
                sa.select(
                    settlements.c.trial_number,
                    sa.func.sum(settlements.c.gpu_seconds),
                    sa.func.sum(settlements.c.cpu_seconds),
                )
                .where(settlements.c.study == study)
                .group_by(settlements.c.trial_number)
            ).all()
        return {int(r[0]): Charge(int(r[1]), int(r[2])) for r in rows}

    def open_reservations(self, study: str) -> dict[str, int]:
        """Open reservation keys and their trial numbers."""
        with self._transaction() as conn:
            rows = conn.execute(
                sa.select(reservations.c.key, reservations.c.trial_number).where(
                    reservations.c.study == study, reservations.c.released_at.is_(None)
                )
            ).all()
        return {str(r[0]): int(r[1]) for r in rows}


def _fits(limit: int | None, used: int, more: int) -> bool:
    return limit is None or used + more <= limit


def _take_write_lock_on_begin(engine: Engine) -> None:
    """SQLite: take the write lock when a transaction begins, so check-then-insert is atomic."""

    @sa.event.listens_for(engine, "connect")
    def _autocommit_driver(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin_immediate(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN IMMEDIATE")
