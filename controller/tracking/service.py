"""Mirroring studies to MLflow from the study database, on a thread of its own.

The controller and the local runner each hold one :class:`TrackingMirror` and tell it which
studies to mirror (:meth:`TrackingMirror.watch`). Its thread reads each study from the database
every few seconds and sends MLflow what is new: the study's run, a nested run per trial with
its curve while it runs, and, once the study has ended, the export files. Nothing the study
does waits for it. A tracker that is down, or refuses the credentials, only delays the mirror:
the study's :class:`Health` turns bad (the controller shows it as the ``TrackingDegraded``
condition and a metric), passes back off up to ``TUNEFLEET_TRACKING_RETRY_MAX_S``, and the
next pass that gets through sends everything that was missed. HTTP calls have bounded timeouts
(MLflow's ``MLFLOW_HTTP_REQUEST_*`` settings, defaulted here when unset).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.spec.tracking import MlflowTracking, Tracking
from controller.tracking.content import StudyFacts
from controller.tracking.credentials import Credentials, SecretReader, credentials_in_environment
from controller.tracking.passes import MirrorPass, MirrorState
from controller.tracking.records import TrackingRecords, target_key

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

    from controller.budget.ledger import Ledger

log = structlog.get_logger("tunefleet.tracking")
CONDITION = "TrackingDegraded"
INTERVAL_ENV = "TUNEFLEET_TRACKING_INTERVAL_S"
RETRY_MAX_ENV = "TUNEFLEET_TRACKING_RETRY_MAX_S"
DEFAULT_INTERVAL_S = 3.0
DEFAULT_RETRY_MAX_S = 60.0
SECRET_TTL_S = 60.0
# MLflow retries a failed request 7 times over minutes by default; a mirror pass should fail fast
# and come back on its own schedule. Nor should the client print run links on stdout.
CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


@dataclass(frozen=True)
class Health:
    """How mirroring one study goes: ``healthy`` False while the tracker cannot be written."""

    healthy: bool
    reason: str
    message: str

    def condition(self) -> tuple[str, bool, str, str]:
        """(type, status, reason, message) of the Study's ``TrackingDegraded`` condition."""
        return (CONDITION, not self.healthy, self.reason, self.message)


@dataclass
class _Watched:
    key: str  # the Optuna study name (``<namespace>/<name>/<uid>`` on a cluster)
    name: str
    settings: MlflowTracking
    namespace: str | None  # where secretRef lives; None for local runs
    health: Health
    failures: int = 0
    next_attempt: float = 0.0
    complete: bool = False  # the study ended and everything is in MLflow
    gone: bool = False  # unwatched: one last pass, then dropped
    state: MirrorState = field(default_factory=MirrorState)  # what the passes learned
    errors: dict[str, int] = field(default_factory=dict)
    secret: tuple[float, Credentials] | None = None

    @property
    def experiment(self) -> str:
        """As named, else ``<namespace>/<name>`` (a re-created Study adds a parent run to the
        same experiment), else the local study's name."""
        if self.settings.experiment:
            return self.settings.experiment
        return f"{self.namespace}/{self.name}" if self.namespace is not None else self.key


class TrackingMirror:
    """Mirrors the watched studies of one study database; one thread does every MLflow call."""

    def __init__(
        self,
        storage_url: str,
        read_secret: SecretReader | None = None,
        interval_s: float | None = None,
    ) -> None:
        self.storage_url = storage_url
        self.read_secret = read_secret
        self.interval_s = interval_s or float(os.environ.get(INTERVAL_ENV) or DEFAULT_INTERVAL_S)
        self.retry_max_s = float(os.environ.get(RETRY_MAX_ENV) or DEFAULT_RETRY_MAX_S)
        self._studies: dict[str, _Watched] = {}
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._storage: RDBStorage | None = None
        self._ledger: Ledger | None = None
        # Called (namespace, name) from the mirror's thread when a study's health changes, so
        # its TrackingDegraded condition is written now, not at its next periodic reconcile
        # (minutes for a study that has ended).
        self.on_health_change: Callable[[str, str], None] | None = None

    # -- what the controller and the runner call ---------------------------------------------

    def watch(self, key: str, name: str, tracking: Tracking | None, namespace: str | None = None) -> None:
        """Mirror ``key`` per ``tracking.mlflow`` (None: stop mirroring it). Cheap: call it often."""
        settings = tracking.mlflow if tracking is not None else None
        with self._lock:
            current = self._studies.get(key)
            if settings is None:
                if current is not None:
                    del self._studies[key]
                return
            if current is not None and current.settings == settings and not current.gone:
                return
            pending = Health(
                True, "Pending", f"the first pass to MLflow at {settings.trackingUri} is under way"
            )
            self._studies[key] = _Watched(key, name, settings, namespace, pending)
            self._start()
            self._lock.notify_all()

    def unwatch(self, key: str) -> None:
        """The study is gone (deleted): one last pass sends what changed, then it is dropped."""
        with self._lock:
            if key in self._studies:
                self._studies[key].gone = True
                self._studies[key].next_attempt = 0.0
                self._lock.notify_all()

    def health(self, key: str) -> Health | None:
        with self._lock:
            watched = self._studies.get(key)
            return watched.health if watched is not None else None

    def conditions(self, key: str) -> list[tuple[str, bool, str, str]]:
        """The study's tracking condition, if it is mirrored at all."""
        health = self.health(key)
        return [health.condition()] if health is not None else []

    def run_url(self, key: str) -> str | None:
        """Where the study's run is in the MLflow UI, once it exists."""
        with self._lock:
            watched = self._studies.get(key)
            if watched is None or watched.state.parent_run_id is None:
                return None
            uri, state = watched.settings.trackingUri, watched.state
            return f"{uri}/#/experiments/{state.experiment_id}/runs/{state.parent_run_id}"

    def finish(self, key: str, timeout_s: float) -> bool:
        """Mirror now and wait (at most ``timeout_s``) until the ended study is in MLflow whole."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            watched = self._studies.get(key)
            if watched is None:
                return True
            watched.next_attempt = 0.0
            self._lock.notify_all()
            while not watched.complete and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if watched.next_attempt > time.monotonic() + 1:
                    watched.next_attempt = time.monotonic() + 1  # keep trying while someone waits
                self._lock.wait(min(left, 0.5))
            return watched.complete

    def close(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._ledger is not None:
            self._ledger.close()
        if self._storage is not None:
            self._storage.engine.dispose()

    def collector(self) -> Collector:
        """Prometheus metrics of every watched study (register it on the controller's registry)."""
        return _TrackingCollector(self)

    # -- the thread ----------------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:
            for name, value in CLIENT_DEFAULTS.items():
                os.environ.setdefault(name, value)
            self._thread = threading.Thread(target=self._loop, name="tracking-mirror", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                now = time.monotonic()
                due = [
                    w for w in self._studies.values() if (w.gone or not w.complete) and w.next_attempt <= now
                ]
                if not due:
                    upcoming = [w.next_attempt for w in self._studies.values() if w.gone or not w.complete]
                    self._lock.wait(max(0.05, min(upcoming, default=now + self.interval_s) - now))
                    continue
            for watched in due:
                before = watched.health.reason
                self._pass(watched)
                if watched.health.reason != before and watched.namespace and self.on_health_change:
                    self.on_health_change(watched.namespace, watched.name)
                with self._lock:
                    if watched.gone and self._studies.get(watched.key) is watched:
                        del self._studies[watched.key]
                    self._lock.notify_all()

    def _pass(self, watched: _Watched) -> None:
        try:
            facts = self._read(watched)
        except Exception as error:  # noqa: BLE001 - the database is the controller's concern; retry
            log.warning("mirroring could not read the study", study=watched.key, error=repr(error)[:300])
            watched.next_attempt = time.monotonic() + self.interval_s
            return
        if facts is None:  # not created yet
            watched.next_attempt = time.monotonic() + self.interval_s
            return
        try:
            complete = self._mirror(watched, facts)
        except Exception as error:  # noqa: BLE001 - every tracker failure only delays mirroring
            from controller.tracking.mlflow_writer import classify

            problem = classify(error, watched.settings.trackingUri, _credentials_from(watched))
            watched.failures += 1
            watched.errors[problem.reason] = watched.errors.get(problem.reason, 0) + 1
            delay = min(self.retry_max_s, self.interval_s * 2 ** min(watched.failures, 10))
            watched.next_attempt = time.monotonic() + delay
            if watched.health.reason != problem.reason:
                log.warning(
                    "mirroring to MLflow failed",
                    study=watched.key,
                    reason=problem.reason,
                    detail=problem.message,
                    retry_in_s=round(delay, 1),
                )
            watched.health = Health(False, problem.reason, problem.message)
            return
        if not watched.health.healthy:
            log.info("mirroring to MLflow resumed", study=watched.key, tracker=watched.settings.trackingUri)
        watched.failures = 0
        watched.complete = complete
        watched.next_attempt = time.monotonic() + self.interval_s
        watched.health = Health(
            True,
            "Mirrored",
            f"mirrored to MLflow at {watched.settings.trackingUri}, experiment {watched.experiment!r}",
        )

    def _read(self, watched: _Watched) -> StudyFacts | None:
        from controller.analysis.data import metric_names
        from controller.budget.ledger import Ledger
        from controller.studies.record import ATTR_SPEC
        from controller.studies.storage import open_storage
        from trial_worker.trial_reads import read_trials

        if self._storage is None:
            self._storage = open_storage(self.storage_url)
        if self._ledger is None:
            self._ledger = Ledger(self.storage_url)
        storage = self._storage
        try:
            study_id = storage.get_study_id_from_name(watched.key)
        except KeyError:
            return None
        user_attrs = storage.get_study_user_attrs(study_id)
        directions = [d.name.lower() for d in storage.get_study_directions(study_id)]
        spec = user_attrs.get(ATTR_SPEC)
        return StudyFacts(
            key=watched.key,
            name=watched.name,
            user_attrs=user_attrs,
            spec=spec if isinstance(spec, dict) else None,
            metric_names=metric_names(user_attrs, None, len(directions)),
            directions=directions,
            trials=sorted(read_trials(storage.engine, study_id), key=lambda t: t.number),
            totals=self._ledger.totals(watched.key),
            extra_tags=dict(watched.settings.tags),
        )

    def _credentials(self, watched: _Watched) -> Credentials | None:
        from controller.credentials import SecretUnreadable
        from controller.tracking.credentials import read_secret_credentials
        from controller.tracking.mlflow_writer import FIELD, TrackerProblem

        secret = watched.settings.secretRef
        if secret is None or watched.namespace is None or self.read_secret is None:
            return None  # the process's MLFLOW_TRACKING_* environment
        now = time.monotonic()
        if watched.secret is None or now - watched.secret[0] > SECRET_TTL_S:
            try:
                read = read_secret_credentials(self.read_secret, watched.namespace, secret)
            except SecretUnreadable as error:
                watched.secret = None
                hint = " (grant it in the chart's rbac.trackingSecretNames)"
                grant = hint if error.reason == "SecretForbidden" else ""
                raise TrackerProblem(
                    "SecretUnreadable", f"{FIELD}.secretRef: {error.describe()}{grant}"
                ) from None
            watched.secret = (now, read)
        credentials = watched.secret[1]
        if not credentials.usable:
            watched.secret = None
            raise TrackerProblem(
                "SecretUnreadable",
                f"{FIELD}.secretRef: Secret {watched.namespace}/{secret} holds neither "
                "username and password nor token",
            )
        return credentials

    def _mirror(self, watched: _Watched, facts: StudyFacts) -> bool:
        """One pass; returns True once the ended study is in MLflow whole."""
        from controller.tracking.mlflow_writer import MlflowWriter

        settings = watched.settings
        with credentials_in_environment(self._credentials(watched)):
            writer = MlflowWriter(settings.trackingUri, watched.experiment)
            if watched.state.experiment_id is None:
                watched.state.experiment_id = writer.ensure_experiment()
            assert self._storage is not None and self._ledger is not None
            records = TrackingRecords(
                self._storage.engine,
                target_key(settings.trackingUri, watched.experiment),
                watched.key,
                settings.trackingUri,
            )
            return MirrorPass(writer, records, facts, self._ledger, self.storage_url).run(watched.state)


def _credentials_from(watched: _Watched) -> str:
    secret = watched.settings.secretRef
    if secret is not None and watched.namespace is not None:
        return f"Secret {secret!r} in namespace {watched.namespace!r} (secretRef)"
    return "the MLFLOW_TRACKING_* environment"


class _TrackingCollector(Collector):
    def __init__(self, mirror: TrackingMirror) -> None:
        self.mirror = mirror

    def collect(self) -> Iterable[Metric]:
        labels = ["namespace", "study"]
        up = GaugeMetricFamily(
            "tunefleet_tracking_up",
            "1 while the study's last mirroring pass reached its tracker.",
            labels=labels,
        )
        pending = GaugeMetricFamily(
            "tunefleet_tracking_unmirrored_trials",
            "Trials whose latest state is not in the tracker yet.",
            labels=labels,
        )
        failures = CounterMetricFamily(
            "tunefleet_tracking_failures",
            "Mirroring passes that failed, by reason.",
            labels=[*labels, "reason"],
        )
        with self.mirror._lock:
            studies = [
                (w.key, w.health, w.state.unmirrored, dict(w.errors)) for w in self.mirror._studies.values()
            ]
        for key, health, unmirrored, errors in sorted(studies, key=lambda s: s[0]):
            namespace, _, name = key.rpartition("/")
            up.add_metric([namespace, name], 1.0 if health.healthy else 0.0)
            pending.add_metric([namespace, name], unmirrored)
            for reason, count in sorted(errors.items()):
                failures.add_metric([namespace, name, reason], count)
        yield from (up, pending, failures)
