"""GPUBudgets on the cluster: from the custom resource to the ledger, and the ledger back to status.

A namespace's ``GPUBudget`` is mirrored into the ledger (``set_namespace_budget``), where every
reservation of the namespace's studies checks it. The controller learns of GPUBudgets from kopf
event handlers only (no kopf finalizer, daemon or timer on our objects, see docs/controller.md):
:class:`BudgetKeeper` caches the bodies it was shown and, on each :meth:`BudgetKeeper.sync`,
writes changed specs to the ledger and the current period's figures to each GPUBudget's status.

One GPUBudget per namespace counts: if a namespace has several, the oldest (then the first by
name) is the budget and the others say in their status that they are ignored.

Also here: what a Study's ``status.budget`` shows when its namespace has a budget.
"""

from __future__ import annotations

import datetime
import threading
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import ValidationError

from controller.budget.ledger import Ledger, NamespaceTotals, Totals
from controller.budget.metrics import ControllerMetrics
from controller.budget.views import SECONDS_PER_HOUR, gpubudget_status
from controller.kube import status as status_mod
from controller.kube.client import KubeApi
from controller.spec import GPUBudgetSpec

log = structlog.get_logger("tunefleet.controller")
GPUBUDGET_PLURAL = "gpubudgets"
# A study waiting for the next period is still looked at this often (pods ending, edits).
BUDGET_WAITING_RECHECK_S = 300.0

# -- what a Study shows ---------------------------------------------------------------------------


def study_budget_status(totals: Totals, namespace: NamespaceTotals | None) -> dict[str, Any]:
    """Study ``status.budget``: GPU-seconds used and reserved, GPU-hours still reservable, summary.

    ``gpuHoursRemaining`` is the tighter of the study's own limit and what it may still draw from
    its namespace's GPUBudget (this period, within ``maxGpuHoursPerStudy``). The printer column's
    ``summary`` reads ``used/limit`` in GPU-hours ("3.2/40"); the limit is the study's own, else
    its per-study share of the GPUBudget, else the whole GPUBudget.
    """
    used, reserved = totals.settled.gpu_seconds, totals.reserved.gpu_seconds
    limit = totals.gpu_seconds_limit
    shown_limit = limit
    if shown_limit is None and namespace is not None:
        shown_limit = namespace.max_gpu_seconds_per_study or namespace.gpu_seconds_limit
    budget = status_mod.budget_status(
        status_mod.BudgetFigures(
            gpu_seconds_used=used,
            gpu_seconds_reserved=reserved,
            gpu_seconds_limit=shown_limit,
            cpu_seconds_used=totals.settled.cpu_seconds,
            cpu_seconds_reserved=totals.reserved.cpu_seconds,
            cpu_seconds_limit=totals.cpu_seconds_limit,
        )
    )
    budget["gpuSecondsLimit"] = limit
    remaining = study_remaining_seconds(totals, namespace)
    if namespace is not None:
        budget["namespaceBudget"] = {
            "gpuSecondsLimit": namespace.gpu_seconds_limit,
            "gpuSecondsUsed": namespace.used,
            "gpuSecondsReserved": namespace.reserved,
            "period": namespace.period,
        }
    budget["gpuHoursRemaining"] = None if remaining is None else round(remaining / SECONDS_PER_HOUR, 4)
    return budget


def study_remaining_seconds(totals: Totals, namespace: NamespaceTotals | None) -> int | None:
    """GPU-seconds the study may still reserve: its own limit's rest and its namespace's room."""
    limits = []
    if totals.gpu_seconds_limit is not None:
        committed = totals.settled.gpu_seconds + totals.reserved.gpu_seconds
        limits.append(max(0, totals.gpu_seconds_limit - committed))
    if namespace is not None:
        limits.append(namespace.study_remaining)
    return min(limits) if limits else None


def budget_waiting(namespace: NamespaceTotals | None, now: datetime.datetime) -> tuple[str, str, float]:
    """(reason, message, seconds until the refill) for a study whose periodic GPUBudget is empty."""
    refill = namespace.next_period_start if namespace is not None else None
    if namespace is None or refill is None:
        return ("NamespaceBudgetEmpty", "the namespace's GPUBudget has no room for another trial", 0.0)
    naive_now = now.astimezone(datetime.UTC).replace(tzinfo=None) if now.tzinfo else now
    seconds = max(0.0, (refill - naive_now).total_seconds())
    message = (
        f"the namespace's {namespace.period} GPUBudget has no room for another trial; "
        f"it refills at {refill.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    )
    return ("NamespaceBudgetEmpty", message, seconds)


def waiting_requeue(seconds_to_refill: float, resync_s: float) -> float:
    """Requeue a waiting study at the refill, but look again at least every few minutes."""
    return max(resync_s, min(seconds_to_refill + 1.0, BUDGET_WAITING_RECHECK_S))


# -- GPUBudget objects ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Applied:
    name: str
    spec: GPUBudgetSpec


def _age_key(body: dict[str, Any]) -> tuple[str, str]:
    meta = body["metadata"]
    return (str(meta.get("creationTimestamp") or ""), str(meta["name"]))


class BudgetKeeper:
    """Mirrors GPUBudget objects into the ledger and writes their status; thread-safe.

    kopf handlers call :meth:`observe` (cheap, no I/O); the operator calls :meth:`sync` from a
    worker thread, on every change and every resync.
    """

    def __init__(self, kube: KubeApi) -> None:
        self.kube = kube
        self._lock = threading.Lock()
        self._bodies: dict[str, dict[str, dict[str, Any]]] = {}  # namespace -> name -> body
        self._applied: dict[str, _Applied | None] = {}  # what the ledger holds, per namespace
        self._written: dict[tuple[str, str], dict[str, Any]] = {}  # last status per object

    def observe(self, event_type: str | None, body: dict[str, Any]) -> str:
        """Remember a GPUBudget event; returns its namespace."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        with self._lock:
            bodies = self._bodies.setdefault(namespace, {})
            if event_type == "DELETED" or meta.get("deletionTimestamp"):
                bodies.pop(name, None)
                self._written.pop((namespace, name), None)
            else:
                bodies[name] = body
        return namespace

    def namespaces(self) -> list[str]:
        with self._lock:
            return sorted(set(self._bodies) | {ns for ns, a in self._applied.items() if a is not None})

    def sync(
        self, ledger: Ledger, metrics: ControllerMetrics | None, now: datetime.datetime | None = None
    ) -> set[str]:
        """Apply changed GPUBudgets to the ledger and refresh every status.

        Returns the namespaces whose budget changed (their studies should reconcile now).
        """
        moment = now or datetime.datetime.now(datetime.UTC)
        changed: set[str] = set()
        for namespace in self.namespaces():
            try:
                if self._sync_namespace(namespace, ledger, metrics, moment):
                    changed.add(namespace)
            except Exception as error:  # noqa: BLE001 - one namespace's failure must not stop the rest
                log.warning("GPUBudget sync failed", namespace=namespace, error=repr(error)[:300])
        return changed

    def _sync_namespace(
        self, namespace: str, ledger: Ledger, metrics: ControllerMetrics | None, now: datetime.datetime
    ) -> bool:
        with self._lock:
            bodies = sorted(self._bodies.get(namespace, {}).values(), key=_age_key)
        valid: list[tuple[dict[str, Any], GPUBudgetSpec]] = []
        for body in bodies:
            try:
                valid.append((body, GPUBudgetSpec.model_validate(body.get("spec") or {})))
            except ValidationError as error:
                problems = "; ".join(
                    f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
                )
                self._write_status(body, {"message": f"invalid, ignored: {problems}"})
        chosen = _Applied(valid[0][0]["metadata"]["name"], valid[0][1]) if valid else None
        changed = self._apply(namespace, chosen, ledger, now)
        if chosen is None:
            if metrics is not None:
                metrics.forget_namespace(namespace)
            return changed
        totals = ledger.namespace_totals(namespace, now)
        if totals is None:
            return changed
        if metrics is not None:
            metrics.update_namespace(totals)
        for body, _ in valid:
            if body["metadata"]["name"] == chosen.name:
                self._write_status(body, {**gpubudget_status(totals), "message": None})
            else:
                note = f"ignored: GPUBudget {chosen.name!r} is this namespace's budget (the oldest one)"
                self._write_status(body, {"message": note})
        return changed

    def _apply(
        self, namespace: str, chosen: _Applied | None, ledger: Ledger, now: datetime.datetime
    ) -> bool:
        with self._lock:
            before = self._applied.get(namespace, "unknown")
        if before == chosen:
            return False
        if chosen is None:
            ledger.delete_namespace_budget(namespace)
            log.info("GPUBudget removed", namespace=namespace)
            with self._lock:
                self._applied.pop(namespace, None)
                self._bodies.pop(namespace, None)
            return True
        spec = chosen.spec
        per_study = spec.maxGpuHoursPerStudy
        ledger.set_namespace_budget(
            namespace,
            round(spec.gpuHours * SECONDS_PER_HOUR),
            spec.period,
            round(per_study * SECONDS_PER_HOUR) if per_study is not None else None,
            now,
        )
        log.info(
            "GPUBudget applied",
            namespace=namespace,
            name=chosen.name,
            gpu_hours=spec.gpuHours,
            period=spec.period,
            max_gpu_hours_per_study=per_study,
        )
        with self._lock:
            self._applied[namespace] = chosen
        return True

    def _write_status(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            if self._written.get(key) == status:
                return
        self.kube.patch_status(GPUBUDGET_PLURAL, key[0], key[1], status)
        with self._lock:
            self._written[key] = status
