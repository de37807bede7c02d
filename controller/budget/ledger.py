"""The budget ledger: reserve a trial's worst case before it starts, settle its actual use after.

Integer resource-seconds (GPU-seconds, and CPU-seconds for CPU-hour budgets). Tables live in the
study database (Postgres, or the embedded SQLite file) next to Optuna's. A reservation is refused
when settled + open reservations + the worst case would exceed a limit, checked inside one
transaction that locks the namespace budget row, then the study row (``SELECT ... FOR UPDATE`` on
Postgres; ``BEGIN IMMEDIATE`` takes SQLite's write lock), so the cap holds with several
controllers writing at once and across crashes: a transaction that dies is rolled back whole.

One :class:`Ledger` may be shared by threads: every method is one transaction on its own pooled
connection.

Provisional reservations let a controller hold a trial's room before the trial exists, so a
reservation lost in a race leaves no Optuna trial behind: reserve under :func:`provisional_key`
(trial number :data:`PROVISIONAL_TRIAL`), ask the trial, then :meth:`Ledger.rekey` it to the
trial's key. The marker is the key: it starts with ``<study key>/provisional/``. They count as
reserved like any other, and :meth:`Ledger.release_provisional` frees those a crash left behind.
"""

from __future__ import annotations

import datetime
import hashlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from controller.budget.accounting import Charge
from controller.budget.periods import Period, as_naive_utc, check_period, next_period_start, period_start
from controller.budget.schema import SCHEMA_VERSION, budgets, migrate, reservations, settlements
from trial_worker.contract import connection_url

__all__ = [
    "PROVISIONAL_TRIAL",
    "SCHEMA_VERSION",
    "Charge",
    "Ledger",
    "NamespaceTotals",
    "Reservation",
    "Totals",
    "is_provisional",
    "provisional_key",
]

# The trial number a provisional reservation carries until it is rekeyed to its trial.
PROVISIONAL_TRIAL = -1
_KEY_LENGTH = 320  # reservations.key is String(320)
_PROVISIONAL = "/provisional/"


def _provisional_prefix(study_key: str) -> str:
    """``<study key>/provisional/``; a study key too long to fit a key is replaced by its digest."""
    prefix = f"{study_key}{_PROVISIONAL}"
    if len(prefix) + 32 <= _KEY_LENGTH:
        return prefix
    return f"sha256:{hashlib.sha256(study_key.encode()).hexdigest()}{_PROVISIONAL}"


def provisional_key(study_key: str) -> str:
    """A fresh key to reserve a trial's worst case under before the trial is asked."""
    return f"{_provisional_prefix(study_key)}{uuid.uuid4().hex}"


def is_provisional(key: str, study_key: str) -> bool:
    """Whether ``key`` is a provisional reservation of ``study_key`` (not yet a trial's)."""
    return key.startswith(_provisional_prefix(study_key))


@dataclass(frozen=True)
class Totals:
    """A study's settled and open-reserved resource-seconds, and its limits (None: unlimited)."""

    settled: Charge
    reserved: Charge
    gpu_seconds_limit: int | None
    cpu_seconds_limit: int | None


@dataclass(frozen=True)
class NamespaceTotals:
    """A namespace's GPU-seconds in the current period of its GPUBudget.

    ``study_used`` and ``study_reserved`` are one study's share, when a study was named.
    """

    namespace: str
    gpu_seconds_limit: int
    period: Period
    period_start: datetime.datetime
    next_period_start: datetime.datetime | None
    used: int
    reserved: int
    max_gpu_seconds_per_study: int | None = None
    study_used: int = 0
    study_reserved: int = 0

    @property
    def remaining(self) -> int:
        return max(0, self.gpu_seconds_limit - self.used - self.reserved)

    @property
    def study_remaining(self) -> int:
        """What the named study may still reserve: the namespace's rest, within its per-study cap."""
        if self.max_gpu_seconds_per_study is None:
            return self.remaining
        own = self.max_gpu_seconds_per_study - self.study_used - self.study_reserved
        return max(0, min(self.remaining, own))


@dataclass(frozen=True)
class Reservation:
    key: str
    study: str
    trial_number: int
    amount: Charge
    namespace: str | None
    created_at: datetime.datetime
    released_at: datetime.datetime | None


# Execution option marking a transaction that only reads: SQLite need not take the write lock.
_READ_ONLY = "tunefleet_read_only"


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def _study_scope(study_key: str) -> str:
    return f"study:{study_key}"


def _namespace_scope(namespace: str) -> str:
    return f"namespace:{namespace}"


def _sum(column: sa.ColumnElement[int], *where: sa.ColumnElement[bool]) -> sa.ScalarSelect[int]:
    table = column.table
    total = sa.select(sa.func.coalesce(sa.func.sum(column), 0)).select_from(table)
    return total.where(*where).scalar_subquery()


class Ledger:
    """Reservations and settlements in the study database.

    Args:
        url: the study storage URL (any PostgreSQL spelling, or ``sqlite:///file``); it is
            opened as ``trial_worker.contract.connection_url`` says, as the worker does.
        pool_size: PostgreSQL connections kept open; a caller that shares the ledger between
            N threads passes N, or every checkout past the pool opens a new connection.
    """

    def __init__(self, url: str, pool_size: int = 2) -> None:
        full_url = connection_url(url)
        if full_url.startswith("sqlite"):
            self._engine: Engine = sa.create_engine(
                full_url, connect_args={"timeout": 120, "check_same_thread": False}
            )
            _take_write_lock_on_begin(self._engine)
        else:
            self._engine = sa.create_engine(
                full_url, pool_size=pool_size, max_overflow=8, pool_pre_ping=True
            )
        with self._transaction() as conn:
            self.migrated_from = migrate(conn)

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, read_only: bool = False) -> Iterator[Connection]:
        """One transaction; on SQLite a writing one holds the write lock from its first statement."""
        with self._engine.connect() as conn:
            if read_only:
                conn.execution_options(**{_READ_ONLY: True})
            with conn.begin():
                yield conn

    # -- limits -------------------------------------------------------------------------------

    def set_study_limits(self, study_key: str, gpu_seconds: int | None, cpu_seconds: int | None) -> None:
        """Create or change a study's limits; a lowered limit applies from the next reserve.

        ``study_key`` is ``<namespace>/<name>`` on the cluster, the study name locally.
        """
        _check_limit("gpu_seconds", gpu_seconds)
        _check_limit("cpu_seconds", cpu_seconds)
        self._upsert_budget(
            _study_scope(study_key), gpu_seconds_limit=gpu_seconds, cpu_seconds_limit=cpu_seconds
        )

    def set_namespace_budget(
        self,
        namespace: str,
        gpu_seconds_limit: int,
        period: str,
        max_gpu_seconds_per_study: int | None,
        now: datetime.datetime | None = None,
    ) -> None:
        """Create or change a namespace's GPUBudget; studies in it draw from it from the next reserve."""
        _check_limit("gpu_seconds_limit", gpu_seconds_limit)
        _check_limit("max_gpu_seconds_per_study", max_gpu_seconds_per_study)
        self._upsert_budget(
            _namespace_scope(namespace),
            gpu_seconds_limit=gpu_seconds_limit,
            period=check_period(period),
            max_gpu_seconds_per_study=max_gpu_seconds_per_study,
            updated_at=as_naive_utc(now) if now is not None else _utcnow(),
        )

    def delete_namespace_budget(self, namespace: str) -> None:
        """The GPUBudget was deleted: its namespace's studies are no longer capped by it."""
        with self._transaction() as conn:
            conn.execute(budgets.delete().where(budgets.c.scope == _namespace_scope(namespace)))

    def _upsert_budget(self, scope: str, **values: object) -> None:
        values.setdefault("updated_at", _utcnow())
        with self._transaction() as conn:
            insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(budgets)
            conn.execute(
                insert.values(scope=scope, **values).on_conflict_do_update(
                    index_elements=[budgets.c.scope], set_=values
                )
            )

    # -- reserve, settle, release -------------------------------------------------------------

    def reserve(
        self,
        key: str,
        study_key: str,
        trial_number: int,
        worst_case: Charge,
        namespace: str | None = None,
        now: datetime.datetime | None = None,
    ) -> bool:
        """Reserve ``worst_case`` for one trial attempt; False (nothing written) if it does not fit.

        Checks the namespace's GPUBudget (this period, and its per-study cap) and the study's own
        limits. Idempotent: reserving an existing key again returns True and changes nothing.
        """
        moment = as_naive_utc(now) if now is not None else _utcnow()
        for _ in range(3):
            try:
                with self._transaction() as conn:
                    return self._reserve(conn, key, study_key, trial_number, worst_case, namespace, moment)
            except IntegrityError:
                # Another writer inserted the same key where no budget row serialized us.
                if self.reservation(key) is not None:
                    return True
        raise RuntimeError(f"could not reserve {key!r}: the key kept conflicting")

    def _reserve(
        self,
        conn: Connection,
        key: str,
        study_key: str,
        trial_number: int,
        worst_case: Charge,
        namespace: str | None,
        now: datetime.datetime,
    ) -> bool:
        # Lock order is fixed (namespace row, then study row) so two controllers cannot deadlock.
        namespace_row = None
        if namespace is not None:
            namespace_row = conn.execute(
                sa.select(budgets).where(budgets.c.scope == _namespace_scope(namespace)).with_for_update()
            ).first()
        study_row = conn.execute(
            sa.select(budgets).where(budgets.c.scope == _study_scope(study_key)).with_for_update()
        ).first()
        if conn.execute(sa.select(reservations.c.key).where(reservations.c.key == key)).first():
            return True
        if study_row is not None:
            totals = self._study_totals(conn, study_key)
            committed = totals.settled + totals.reserved + worst_case
            if not _fits(totals.gpu_seconds_limit, committed.gpu_seconds):
                return False
            if not _fits(totals.cpu_seconds_limit, committed.cpu_seconds):
                return False
        if namespace_row is not None and worst_case.gpu_seconds > 0:
            assert namespace is not None
            spent = self._namespace_totals(conn, namespace, now, study_key)
            if spent is not None and worst_case.gpu_seconds > spent.study_remaining:
                return False
        conn.execute(
            reservations.insert().values(
                key=key,
                study=study_key,
                trial_number=trial_number,
                gpu_seconds=worst_case.gpu_seconds,
                cpu_seconds=worst_case.cpu_seconds,
                created_at=now,
                namespace=namespace,
            )
        )
        return True

    def settle(self, key: str, reservation_key: str, actual: Charge, wall_seconds: float) -> Charge:
        """Charge ``actual`` against a reservation and release it, in one transaction.

        ``key`` is the pod UID (or a local attempt key): settling it again returns the first
        charge and changes nothing. A reservation's settlements never add up to more than it
        reserved, so the charge may be less than ``actual``. Returns what was charged.

        Raises:
            KeyError: if there is no reservation ``reservation_key``.
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
            already = conn.execute(
                sa.select(
                    sa.func.coalesce(sa.func.sum(settlements.c.gpu_seconds), 0),
                    sa.func.coalesce(sa.func.sum(settlements.c.cpu_seconds), 0),
                ).where(settlements.c.reservation_key == reservation_key)
            ).one()
            reserved = Charge(reservation.gpu_seconds, reservation.cpu_seconds)
            charged = actual.capped_by(reserved - Charge(int(already[0]), int(already[1])))
            conn.execute(
                settlements.insert().values(
                    key=key,
                    reservation_key=reservation_key,
                    study=reservation.study,
                    trial_number=reservation.trial_number,
                    gpu_seconds=charged.gpu_seconds,
                    cpu_seconds=charged.cpu_seconds,
                    wall_seconds=float(wall_seconds),
                    settled_at=_utcnow(),
                    namespace=reservation.namespace,
                    reserved_at=reservation.created_at,
                )
            )
            if reservation.released_at is None:
                conn.execute(
                    reservations.update()
                    .where(reservations.c.key == reservation_key)
                    .values(released_at=_utcnow())
                )
            return charged

    def release(self, reservation_key: str) -> None:
        """Drop a reservation whose trial never ran (its Job could not be created, or never got a pod).

        Only call it when no pod of the attempt can exist any more: a pod settled after its
        reservation was released is still charged (up to the reservation), but the released room
        may have been reserved again in between.
        """
        with self._transaction() as conn:
            conn.execute(
                reservations.update()
                .where(reservations.c.key == reservation_key, reservations.c.released_at.is_(None))
                .values(released_at=_utcnow())
            )

    # -- provisional reservations ---------------------------------------------------------------

    def rekey(self, provisional_key: str, key: str, trial_number: int) -> bool:
        """Move an open provisional reservation to its trial's ``key`` and number, in one transaction.

        The amount, study, namespace and ``created_at`` stay, so totals and budget periods count
        it the same. Returns False (nothing written) if the provisional reservation is gone or was
        released (swept after a crash). Idempotent: if ``key`` already exists (a retry), the
        provisional reservation is released and True returned.
        """
        for _ in range(3):
            try:
                with self._transaction() as conn:
                    return self._rekey(conn, provisional_key, key, trial_number)
            except IntegrityError:
                continue  # ``key`` was inserted meanwhile: the next try finds it
        raise RuntimeError(f"could not rekey {provisional_key!r} to {key!r}: the key kept conflicting")

    def _rekey(self, conn: Connection, provisional_key: str, key: str, trial_number: int) -> bool:
        # Locking the provisional row orders us against release_provisional: whichever commits
        # first wins, and the other sees its result.
        provisional = conn.execute(
            sa.select(reservations.c.released_at)
            .where(reservations.c.key == provisional_key)
            .with_for_update()
        ).first()
        if conn.execute(sa.select(reservations.c.key).where(reservations.c.key == key)).first():
            conn.execute(
                reservations.update()
                .where(reservations.c.key == provisional_key, reservations.c.released_at.is_(None))
                .values(released_at=_utcnow())
            )
            return True
        if provisional is None or provisional.released_at is not None:
            return False
        conn.execute(
            reservations.update()
            .where(reservations.c.key == provisional_key)
            .values(key=key, trial_number=trial_number)
        )
        return True

    def release_provisional(self, study_key: str) -> int:
        """Release every open provisional reservation of one study; returns how many.

        Call it when no ask of this study can be in flight: when a controller takes a study
        over, before adopting the trials a crash left without a Job.
        """
        with self._transaction() as conn:
            result = conn.execute(
                reservations.update()
                .where(
                    reservations.c.study == study_key,
                    reservations.c.key.startswith(_provisional_prefix(study_key), autoescape=True),
                    reservations.c.released_at.is_(None),
                )
                .values(released_at=_utcnow())
            )
            return int(result.rowcount)

    # -- reading ------------------------------------------------------------------------------

    def totals(self, study_key: str) -> Totals:
        with self._transaction(read_only=True) as conn:
            return self._study_totals(conn, study_key)

    def _study_totals(self, conn: Connection, study_key: str) -> Totals:
        # One statement, so Postgres reads sums and limits from one snapshot.
        open_reservation = (reservations.c.study == study_key, reservations.c.released_at.is_(None))
        limits = sa.select(budgets).where(budgets.c.scope == _study_scope(study_key)).subquery()
        row = conn.execute(
            sa.select(
                _sum(settlements.c.gpu_seconds, settlements.c.study == study_key),
                _sum(settlements.c.cpu_seconds, settlements.c.study == study_key),
                _sum(reservations.c.gpu_seconds, *open_reservation),
                _sum(reservations.c.cpu_seconds, *open_reservation),
                sa.select(limits.c.gpu_seconds_limit).scalar_subquery(),
                sa.select(limits.c.cpu_seconds_limit).scalar_subquery(),
            )
        ).one()
        return Totals(
            settled=Charge(int(row[0]), int(row[1])),
            reserved=Charge(int(row[2]), int(row[3])),
            gpu_seconds_limit=None if row[4] is None else int(row[4]),
            cpu_seconds_limit=None if row[5] is None else int(row[5]),
        )

    def namespace_totals(
        self, namespace: str, now: datetime.datetime | None = None, study_key: str | None = None
    ) -> NamespaceTotals | None:
        """Used, reserved and remaining GPU-seconds of the namespace's current period.

        None when the namespace has no GPUBudget. A reservation counts in the period it was made
        in, and so does its settlement.
        """
        moment = as_naive_utc(now) if now is not None else _utcnow()
        with self._transaction(read_only=True) as conn:
            return self._namespace_totals(conn, namespace, moment, study_key)

    def _namespace_totals(
        self, conn: Connection, namespace: str, now: datetime.datetime, study_key: str | None
    ) -> NamespaceTotals | None:
        scope = _namespace_scope(namespace)
        budget = conn.execute(sa.select(budgets).where(budgets.c.scope == scope)).first()
        if budget is None or budget.gpu_seconds_limit is None:
            return None
        period = check_period(budget.period or "none")
        start = period_start(period, now)
        end = next_period_start(period, now)
        settled_in = [settlements.c.namespace == namespace, settlements.c.reserved_at >= start]
        reserved_in = [
            reservations.c.namespace == namespace,
            reservations.c.released_at.is_(None),
            reservations.c.created_at >= start,
        ]
        if end is not None:
            settled_in.append(settlements.c.reserved_at < end)
            reserved_in.append(reservations.c.created_at < end)
        study = study_key or ""
        row = conn.execute(
            sa.select(
                _sum(settlements.c.gpu_seconds, *settled_in),
                _sum(reservations.c.gpu_seconds, *reserved_in),
                _sum(settlements.c.gpu_seconds, *settled_in, settlements.c.study == study),
                _sum(reservations.c.gpu_seconds, *reserved_in, reservations.c.study == study),
            )
        ).one()
        return NamespaceTotals(
            namespace=namespace,
            gpu_seconds_limit=int(budget.gpu_seconds_limit),
            period=period,
            period_start=start,
            next_period_start=end,
            used=int(row[0]),
            reserved=int(row[1]),
            max_gpu_seconds_per_study=budget.max_gpu_seconds_per_study,
            study_used=int(row[2]) if study_key else 0,
            study_reserved=int(row[3]) if study_key else 0,
        )

    def charges_by_trial(self, study_key: str) -> dict[int, Charge]:
        """What each trial number was charged in total (all its settlements)."""
        with self._transaction(read_only=True) as conn:
            rows = conn.execute(
                sa.select(
                    settlements.c.trial_number,
                    sa.func.sum(settlements.c.gpu_seconds),
                    sa.func.sum(settlements.c.cpu_seconds),
                )
                .where(settlements.c.study == study_key)
                .group_by(settlements.c.trial_number)
            ).all()
        return {int(r[0]): Charge(int(r[1]), int(r[2])) for r in rows}

    def open_reservations(self, study_key: str) -> dict[str, int]:
        """Open reservation keys and their trial numbers (to settle or release after a restart).

        Provisional reservations are included, with trial number ``PROVISIONAL_TRIAL`` (-1): no
        pod ever runs under them, so a caller that settles by trial releases them.
        """
        with self._transaction(read_only=True) as conn:
            rows = conn.execute(
                sa.select(reservations.c.key, reservations.c.trial_number).where(
                    reservations.c.study == study_key, reservations.c.released_at.is_(None)
                )
            ).all()
        return {str(r[0]): int(r[1]) for r in rows}

    def reservation(self, key: str) -> Reservation | None:
        with self._transaction(read_only=True) as conn:
            row = conn.execute(sa.select(reservations).where(reservations.c.key == key)).first()
        if row is None:
            return None
        return Reservation(
            key=row.key,
            study=row.study,
            trial_number=row.trial_number,
            amount=Charge(row.gpu_seconds, row.cpu_seconds),
            namespace=row.namespace,
            created_at=row.created_at,
            released_at=row.released_at,
        )

    def settlement(self, key: str) -> Charge | None:
        """What pod ``key`` was charged, or None if it was never settled (before a finalizer goes)."""
        with self._transaction(read_only=True) as conn:
            row = conn.execute(
                sa.select(settlements.c.gpu_seconds, settlements.c.cpu_seconds).where(
                    settlements.c.key == key
                )
            ).first()
        return None if row is None else Charge(int(row[0]), int(row[1]))


def _fits(limit: int | None, committed: int) -> bool:
    return limit is None or committed <= limit


def _check_limit(field: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{field}: {value!r} is not a whole number of seconds >= 0")


def _take_write_lock_on_begin(engine: Engine) -> None:
    """SQLite: take the write lock when a transaction begins, so check-then-insert is atomic."""

    @sa.event.listens_for(engine, "connect")
    def _autocommit_driver(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None
        # Same journal settings as the study storage (see controller.studies.storage).
        dbapi_connection.execute("PRAGMA journal_mode=WAL")
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    @sa.event.listens_for(engine, "begin")
    def _begin_immediate(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(_READ_ONLY) else "BEGIN IMMEDIATE")
