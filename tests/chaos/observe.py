"""What the invariants read: one snapshot of the emulator's objects and the database, and the
history of every snapshot before it (objects that are gone now were seen then)."""

from __future__ import annotations

import datetime
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.exceptions import StorageInternalError

from controller.budget.ledger import Ledger, NamespaceTotals, Totals
from controller.budget.schema import settlements
from controller.kube.manifests import STUDY_LABEL, TRIAL_LABEL
from tests.chaos.studies import ChaosStudy
from tests.cluster.controller_harness import NAMESPACE, STUDIES
from tests.cluster.emulator import KubeEmulator


@dataclass
class Settlement:
    study: str
    trial_number: int
    gpu_seconds: int
    reservation_key: str


@dataclass
class Snapshot:
    """The cluster and the database at one moment (database fields None while it is away)."""

    at: datetime.datetime
    studies: dict[str, dict[str, Any]]  # name -> Study object (absent if deleted)
    jobs: list[dict[str, Any]]
    pods: list[dict[str, Any]]
    secrets: list[dict[str, Any]]
    trials: dict[str, list[optuna.trial.FrozenTrial]] | None = None  # study name -> trials
    totals: dict[str, Totals] | None = None
    namespace_totals: NamespaceTotals | None = None
    settled: dict[str, Settlement] | None = None  # pod uid -> its settlement

    @property
    def has_database(self) -> bool:
        return self.trials is not None


@dataclass
class History:
    """Every snapshot's objects folded together: what was ever seen, by identity."""

    job_uids: dict[tuple[str, int], set[str]] = field(default_factory=lambda: defaultdict(set))
    last_pods: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid -> last version seen
    finished_states: dict[tuple[str, int], str] = field(default_factory=dict)  # trial -> its end state
    first_ended: dict[str, datetime.datetime] = field(default_factory=dict)  # study -> first seen ended
    started: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))

    def fold(self, snapshot: Snapshot) -> None:
        for job in snapshot.jobs:
            labels = job["metadata"].get("labels") or {}
            if STUDY_LABEL in labels and TRIAL_LABEL in labels:
                key = (labels[STUDY_LABEL], int(labels[TRIAL_LABEL]))
                self.job_uids[key].add(job["metadata"]["uid"])
        for pod in snapshot.pods:
            self.last_pods[pod["metadata"]["uid"]] = pod
        for name, study in snapshot.studies.items():
            if (study.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                self.first_ended.setdefault(name, snapshot.at)


def open_storage(storage_url: str) -> optuna.storages.RDBStorage:
    """The harness's own connection to the study storage: pings, so it survives a restart."""
    return optuna.storages.RDBStorage(storage_url, engine_kwargs={"pool_pre_ping": True, "pool_size": 2})


def take(kube: KubeEmulator, storage: optuna.storages.RDBStorage, studies: list[ChaosStudy],
         ledger: Ledger) -> Snapshot:
    """Read the cluster, then the database; a database that is down leaves its fields None."""
    now = datetime.datetime.now(datetime.UTC)
    objects = {s["metadata"]["name"]: s for s in kube.api.list(STUDIES, NAMESPACE)}
    snapshot = Snapshot(
        at=now,
        studies=objects,
        jobs=kube.api.list("jobs.batch", NAMESPACE, label_selector=STUDY_LABEL),
        pods=kube.api.list("pods", NAMESPACE, label_selector=STUDY_LABEL),
        secrets=kube.api.list("secrets", NAMESPACE),
    )
    try:
        keys = {s.name: study_key(objects.get(s.name), s.key) for s in studies}
        snapshot.trials = {name: _trials(storage, key) for name, key in keys.items()}
        snapshot.totals = {name: ledger.totals(key) for name, key in keys.items()}
        snapshot.namespace_totals = ledger.namespace_totals(NAMESPACE)
        snapshot.settled = _settlements(ledger)
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.DBAPIError, StorageInternalError):
        snapshot.trials = snapshot.totals = snapshot.settled = None
        snapshot.namespace_totals = None
    return snapshot


def study_key(study: dict[str, Any] | None, fallback: str) -> str:
    """The Optuna study name and ledger key the controller gives the object (status.optunaStudy):
    ``<namespace>/<name>``, or with its uid where a re-created Study is a new study."""
    return str(((study or {}).get("status") or {}).get("optunaStudy") or fallback)


def _trials(storage: optuna.storages.RDBStorage, study_name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return []  # not created yet
    return storage.get_all_trials(study_id, deepcopy=False)


def _settlements(ledger: Ledger) -> dict[str, Settlement]:
    query = sa.select(settlements.c.key, settlements.c.study, settlements.c.trial_number,
                      settlements.c.gpu_seconds, settlements.c.reservation_key)
    with ledger.engine.connect() as conn:
        return {str(key): Settlement(str(study), int(number), int(gpu), str(reservation))
                for key, study, number, gpu, reservation in conn.execute(query).all()}


_ACTIVITY = sa.text("""
SELECT a.pid, a.application_name, a.state, a.wait_event_type, a.wait_event,
       date_trunc('second', now() - a.xact_start) AS in_transaction, left(a.query, 160) AS query,
       (SELECT string_agg(l.locktype || ' ' || coalesce(l.relation::regclass::text, '') || ' '
                          || l.mode || CASE WHEN l.granted THEN '' ELSE ' (waiting)' END, ', ')
          FROM pg_locks l WHERE l.pid = a.pid AND l.locktype NOT IN ('virtualxid', 'transactionid')) AS locks
  FROM pg_stat_activity a
 WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
 ORDER BY a.xact_start NULLS LAST
""")


def database_activity(engine: sa.engine.Engine) -> list[str]:
    """Every other session on the run's database: its state, how long its transaction has been
    open, what it waits for and the locks it holds (what to read when a study never ends)."""
    try:
        with engine.connect() as connection:
            rows = connection.execute(_ACTIVITY).all()
    except sa.exc.DBAPIError as error:
        return [f"database activity unavailable: {error}"]
    return [" | ".join(str(value) for value in row) for row in rows]
