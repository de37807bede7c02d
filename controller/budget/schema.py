"""The ledger's tables and their migrations (schema version in ``tunefleet_ledger_schema``).

Version 1 held study budgets only. Version 2 adds namespace budgets with periods (the GPUBudget),
the namespace and reservation time of every reservation and settlement, and an index to find a
reservation's settlements. Each migration runs once, under a lock, inside one transaction.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

SCHEMA_VERSION = 2
# pg_advisory_xact_lock key: serializes controllers that start at once against an empty database.
MIGRATION_LOCK_KEY = 0x74756E65  # "tune"

metadata = sa.MetaData()

schema_version = sa.Table(
    "tunefleet_ledger_schema", metadata, sa.Column("version", sa.Integer, primary_key=True)
)
budgets = sa.Table(
    "tunefleet_budgets",
    metadata,
    sa.Column("scope", sa.String(320), primary_key=True),  # "study:<key>" or "namespace:<ns>"
    sa.Column("gpu_seconds_limit", sa.BigInteger, nullable=True),
    sa.Column("cpu_seconds_limit", sa.BigInteger, nullable=True),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    # v2: namespace budgets refill each period; a study may be capped within it.
    sa.Column("period", sa.String(16), nullable=True),
    sa.Column("max_gpu_seconds_per_study", sa.BigInteger, nullable=True),
)
reservations = sa.Table(
    "tunefleet_reservations",
    metadata,
    sa.Column("key", sa.String(320), primary_key=True),  # one per trial attempt: idempotent
    sa.Column("study", sa.String(320), nullable=False, index=True),
    sa.Column("trial_number", sa.Integer, nullable=False),
    sa.Column("gpu_seconds", sa.BigInteger, nullable=False),
    sa.Column("cpu_seconds", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),  # decides the budget period it counts in
    sa.Column("released_at", sa.DateTime, nullable=True),
    sa.Column("namespace", sa.String(320), nullable=True, index=True),  # v2
)
settlements = sa.Table(
    "tunefleet_settlements",
    metadata,
    sa.Column("key", sa.String(320), primary_key=True),  # pod UID, or a local attempt key
    sa.Column("reservation_key", sa.String(320), nullable=False, index=True),
    sa.Column("study", sa.String(320), nullable=False, index=True),
    sa.Column("trial_number", sa.Integer, nullable=False),
    sa.Column("gpu_seconds", sa.BigInteger, nullable=False),
    sa.Column("cpu_seconds", sa.BigInteger, nullable=False),
    sa.Column("wall_seconds", sa.Float, nullable=False),
    sa.Column("settled_at", sa.DateTime, nullable=False),
    sa.Column("namespace", sa.String(320), nullable=True, index=True),  # v2
    sa.Column("reserved_at", sa.DateTime, nullable=True),  # v2: its reservation's created_at
)


def _to_v2(conn: Connection) -> None:
    for table, column, kind in (
        ("tunefleet_budgets", "period", "VARCHAR(16)"),
        ("tunefleet_budgets", "max_gpu_seconds_per_study", "BIGINT"),
        ("tunefleet_reservations", "namespace", "VARCHAR(320)"),
        ("tunefleet_settlements", "namespace", "VARCHAR(320)"),
        ("tunefleet_settlements", "reserved_at", "TIMESTAMP"),
    ):
        conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    conn.exec_driver_sql(
        "UPDATE tunefleet_settlements SET reserved_at = (SELECT r.created_at FROM tunefleet_reservations r "
        "WHERE r.key = tunefleet_settlements.reservation_key)"
    )
    added = {("tunefleet_reservations", "namespace"), ("tunefleet_settlements", "namespace"),
             ("tunefleet_settlements", "reservation_key")}
    for indexed in (reservations, settlements):
        for index in indexed.indexes:
            if any((indexed.name, column.name) in added for column in index.columns):
                index.create(conn, checkfirst=True)


# MIGRATIONS[v] upgrades a database at version v - 1 to version v.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {2: _to_v2}


def migrate(conn: Connection) -> int:
    """Create or upgrade the tables inside ``conn``'s transaction; returns the version found.

    Raises:
        RuntimeError: if the database was written by a newer tunefleet than this one.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    existing = sa.inspect(conn).has_table(schema_version.name)
    found = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() if existing else None
    if found is not None and found > SCHEMA_VERSION:
        raise RuntimeError(
            f"the ledger schema is version {found}, newer than this tunefleet understands "
            f"({SCHEMA_VERSION}); upgrade tunefleet"
        )
    if found is None:
        metadata.create_all(conn)
        conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
        return 0
    for version in range(found + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[version](conn)
        conn.execute(schema_version.insert().values(version=version))
    return int(found)
