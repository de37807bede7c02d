"""Prometheus metrics for the controller's ``/metrics``: budgets, trials by state, reconcile time.

Budget figures come from the ledger, which is the truth, so they are published as snapshots
(a collector reads the last values the controller recorded) rather than counted up in memory:
a restarted controller reports the same totals as the one before it.

Example:
    >>> metrics = ControllerMetrics()
    >>> metrics.update_study("team-a", "mlp", used_gpu_seconds=120, reserved_gpu_seconds=60,
    ...                      remaining_gpu_seconds=3420, trials_by_state={"RUNNING": 1})
    >>> b"tunefleet_gpu_seconds_used_total" in metrics.exposition()
    True
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Histogram, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.budget.ledger import Ledger, NamespaceTotals

TRIAL_STATES = ("WAITING", "RUNNING", "COMPLETE", "PRUNED", "FAIL")


@dataclass
class _StudySnapshot:
    used: int
    reserved: int
    remaining: int | None
    trials: dict[str, int] = field(default_factory=dict)


@dataclass
class _NamespaceSnapshot:
    used: int
    reserved: int
    remaining: int
    limit: int


class _BudgetCollector(Collector):
    """Publishes the latest recorded snapshots; thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.studies: dict[tuple[str, str], _StudySnapshot] = {}
        self.namespaces: dict[str, _NamespaceSnapshot] = {}

    def collect(self) -> Iterable[Metric]:
        with self.lock:
            studies = dict(self.studies)
            namespaces = dict(self.namespaces)
        labels = ["namespace", "study"]
        used = CounterMetricFamily(
            "tunefleet_gpu_seconds_used", "GPU-seconds settled by the study's trial pods.", labels=labels
        )
        reserved = GaugeMetricFamily(
            "tunefleet_gpu_seconds_reserved", "GPU-seconds reserved by trials still running.", labels=labels
        )
        remaining = GaugeMetricFamily(
            "tunefleet_gpu_seconds_remaining", "GPU-seconds the study may still reserve.", labels=labels
        )
        trials = GaugeMetricFamily(
            "tunefleet_trials", "Trials of the study by state.", labels=[*labels, "state"]
        )
        for (namespace, study), snap in sorted(studies.items()):
            used.add_metric([namespace, study], snap.used)
            reserved.add_metric([namespace, study], snap.reserved)
            if snap.remaining is not None:
                remaining.add_metric([namespace, study], snap.remaining)
            for state in sorted({*TRIAL_STATES, *snap.trials}):
                trials.add_metric([namespace, study, state], snap.trials.get(state, 0))
        ns_families = {
            name: GaugeMetricFamily(
                f"tunefleet_namespace_gpu_seconds_{name}",
                f"GPU-seconds {text} in the current period of the namespace's GPUBudget.",
                labels=["namespace"],
            )
            for name, text in (
                ("limit", "available"),
                ("used", "settled"),
                ("reserved", "reserved"),
                ("remaining", "remaining"),
            )
        }
        for namespace, ns in sorted(namespaces.items()):
            for name, value in (
                ("limit", ns.limit),
                ("used", ns.used),
                ("reserved", ns.reserved),
                ("remaining", ns.remaining),
            ):
                ns_families[name].add_metric([namespace], value)
        yield from (used, reserved, remaining, trials, *ns_families.values())


class ControllerMetrics:
    """The controller's metrics in their own registry (so tests and two controllers never clash)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._budgets = _BudgetCollector()
        self.registry.register(self._budgets)
        self.reconcile_duration = Histogram(
            "tunefleet_reconcile_duration_seconds",
            "Time one reconcile of a study took.",
            labelnames=["outcome"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=self.registry,
        )

    def update_study(
        self,
        namespace: str,
        study: str,
        used_gpu_seconds: int,
        reserved_gpu_seconds: int,
        remaining_gpu_seconds: int | None,
        trials_by_state: Mapping[str, int] | None = None,
    ) -> None:
        """Record a study's budget (remaining None: no GPU limit) and, optionally, its trial counts."""
        with self._budgets.lock:
            previous = self._budgets.studies.get((namespace, study))
            trials = dict(trials_by_state) if trials_by_state is not None else {}
            if trials_by_state is None and previous is not None:
                trials = previous.trials
            self._budgets.studies[(namespace, study)] = _StudySnapshot(
                used_gpu_seconds, reserved_gpu_seconds, remaining_gpu_seconds, trials
            )

    def update_study_from_ledger(
        self, ledger: Ledger, namespace: str, study: str, trials_by_state: Mapping[str, int] | None = None
    ) -> None:
        """Read the study (key ``<namespace>/<study>``) from the ledger and record it."""
        totals = ledger.totals(f"{namespace}/{study}")
        used, reserved = totals.settled.gpu_seconds, totals.reserved.gpu_seconds
        limit = totals.gpu_seconds_limit
        remaining = None if limit is None else max(0, limit - used - reserved)
        self.update_study(namespace, study, used, reserved, remaining, trials_by_state)

    def update_namespace(self, totals: NamespaceTotals) -> None:
        with self._budgets.lock:
            self._budgets.namespaces[totals.namespace] = _NamespaceSnapshot(
                totals.used, totals.reserved, totals.remaining, totals.gpu_seconds_limit
            )

    def forget_study(self, namespace: str, study: str) -> None:
        """The Study was deleted: stop publishing its series."""
        with self._budgets.lock:
            self._budgets.studies.pop((namespace, study), None)

    def forget_namespace(self, namespace: str) -> None:
        with self._budgets.lock:
            self._budgets.namespaces.pop(namespace, None)

    @contextmanager
    def reconcile_timer(self) -> Iterator[None]:
        """Time a reconcile: ``with metrics.reconcile_timer(): ...`` (outcome ok or error)."""
        began = time.perf_counter()
        outcome = "error"
        try:
            yield
            outcome = "ok"
        finally:
            self.reconcile_duration.labels(outcome=outcome).observe(time.perf_counter() - began)

    def exposition(self) -> bytes:
        """The text a ``GET /metrics`` returns."""
        return generate_latest(self.registry)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``address:port`` from a daemon thread."""
        start_http_server(port, addr=address, registry=self.registry)
