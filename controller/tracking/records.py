"""Which MLflow run mirrors each trial, and how far: a table in the study database.

One row per (tracker, study, trial number), the study's own run under trial number ``-1``. It
holds the run id, so a restarted controller or a resumed local run finds its runs instead of
creating new ones, and what was sent (the intermediate steps, the single values, tags, status),
so each pass sends only what is new. A row is written after MLflow accepted what it records:
a pass cut short by an outage is sent again, and MLflow keeps one copy of a metric logged twice
with the same step, timestamp and value.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

metadata = sa.MetaData()
tracking_runs = sa.Table(
    "tunefleet_tracking_runs",
    metadata,
    sa.Column("target", sa.String(64), primary_key=True),  # digest of tracking URI + experiment
    sa.Column("study", sa.String(320), primary_key=True),
    sa.Column("trial_number", sa.Integer, primary_key=True),  # -1: the study's own run
    sa.Column("tracking_uri", sa.String(2048), nullable=False),
    sa.Column("experiment_id", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("digest", sa.String(64), nullable=True),  # the content last mirrored whole
    sa.Column("sent", sa.Text, nullable=False),  # JSON: what MLflow holds (see Sent)
    sa.Column("updated_at", sa.DateTime, nullable=False),
)


def target_key(tracking_uri: str, experiment: str) -> str:
    return hashlib.sha256(f"{tracking_uri}\n{experiment}".encode()).hexdigest()[:32]


@dataclass
class Sent:
    """What MLflow already holds for one run."""

    last_step: int | None = None  # intermediate values up to this step are logged
    params: dict[str, str] = field(default_factory=dict)  # a trial's params appear one by one
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    status: str | None = None
    end_ms: int | None = None
    artifacts: list[str] = field(default_factory=list)  # artifact sets uploaded ("spec", "export")

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> Sent:
        raw: dict[str, Any] = json.loads(text) if text else {}
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})


@dataclass
class RunRecord:
    run_id: str
    experiment_id: str
    digest: str | None
    sent: Sent


class TrackingRecords:
    """The rows of one study at one tracker; every method is one short transaction."""

    def __init__(self, engine: Engine, target: str, study: str, tracking_uri: str) -> None:
        self.engine = engine
        self.target = target
        self.study = study
        self.tracking_uri = tracking_uri
        _create_table(engine)

    def load(self) -> dict[int, RunRecord]:
        table = tracking_runs
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    table.c.trial_number, table.c.run_id, table.c.experiment_id, table.c.digest, table.c.sent
                ).where(table.c.target == self.target, table.c.study == self.study)
            ).all()
        return {
            int(r.trial_number): RunRecord(r.run_id, r.experiment_id, r.digest, Sent.from_json(r.sent))
            for r in rows
        }

    def save(self, trial_number: int, record: RunRecord) -> None:
        """Insert or update one row."""
        table = tracking_runs
        values = {
            "tracking_uri": self.tracking_uri,
            "experiment_id": record.experiment_id,
            "run_id": record.run_id,
            "digest": record.digest,
            "sent": record.sent.to_json(),
            "updated_at": datetime.datetime.now(datetime.UTC).replace(tzinfo=None),
        }
        key = (
            (table.c.target == self.target)
            & (table.c.study == self.study)
            & (table.c.trial_number == trial_number)
        )
        with self.engine.begin() as conn:
            if conn.execute(sa.update(table).where(key).values(**values)).rowcount:
                return
            conn.execute(
                sa.insert(table).values(
                    target=self.target, study=self.study, trial_number=trial_number, **values
                )
            )


_created: set[str] = set()


def _create_table(engine: Engine) -> None:
    """Once per database; a second process creating it at the same moment is fine."""
    url = engine.url.render_as_string(hide_password=True)
    if url in _created:
        return
    try:
        metadata.create_all(engine, checkfirst=True)
    except (IntegrityError, OperationalError, ProgrammingError):
        if not sa.inspect(engine).has_table(tracking_runs.name):
            raise
    _created.add(url)
