"""The controller's Prometheus metrics and the budget figures shown in status."""

from __future__ import annotations

import datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.budget.accounting import Charge
from controller.budget.ledger import NamespaceTotals, Totals
from controller.budget.metrics import ControllerMetrics
from controller.budget.views import gpubudget_status, namespace_budget_view, study_budget_view, study_status


def samples(metrics: ControllerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_study_budget_and_trial_counts_are_published() -> None:
    metrics = ControllerMetrics()
    metrics.update_study("team-a", "mlp", 7200, 3630, 3570, {"RUNNING": 1, "COMPLETE": 2})
    found = samples(metrics)
    labels = (("namespace", "team-a"), ("study", "mlp"))
    assert found[("tunefleet_gpu_seconds_used_total", labels)] == 7200
    assert found[("tunefleet_gpu_seconds_reserved", labels)] == 3630
    assert found[("tunefleet_gpu_seconds_remaining", labels)] == 3570
    assert found[("tunefleet_trials", tuple(sorted((*labels, ("state", "COMPLETE")))))] == 2
    assert found[("tunefleet_trials", tuple(sorted((*labels, ("state", "PRUNED")))))] == 0


def test_a_study_without_a_gpu_limit_has_no_remaining_series_and_forgotten_studies_vanish() -> None:
    metrics = ControllerMetrics()
    metrics.update_study("team-a", "free", 10, 0, None)
    assert not any(name == "tunefleet_gpu_seconds_remaining" for name, _ in samples(metrics))
    metrics.forget_study("team-a", "free")
    assert not any(name == "tunefleet_gpu_seconds_used_total" for name, _ in samples(metrics))


def test_namespace_budgets_are_published() -> None:
    metrics = ControllerMetrics()
    metrics.update_namespace(
        NamespaceTotals("team-a", 36000, "daily", datetime.datetime(2026, 3, 4), None, 1000, 500)
    )
    found = samples(metrics)
    assert found[("tunefleet_namespace_gpu_seconds_remaining", (("namespace", "team-a"),))] == 34500


def test_reconcile_durations_are_counted_by_outcome() -> None:
    metrics = ControllerMetrics()
    with metrics.reconcile_timer():
        pass
    with pytest.raises(RuntimeError), metrics.reconcile_timer():
        raise RuntimeError("boom")
    found = samples(metrics)
    assert found[("tunefleet_reconcile_duration_seconds_count", (("outcome", "ok"),))] == 1
    assert found[("tunefleet_reconcile_duration_seconds_count", (("outcome", "error"),))] == 1


def test_two_controllers_in_one_process_do_not_clash() -> None:
    ControllerMetrics()
    ControllerMetrics()  # each has its own registry: no "Duplicated timeseries" error


def test_study_status_shows_used_reserved_and_remaining() -> None:
    totals = Totals(
        settled=Charge(5400, 0), reserved=Charge(3600, 0), gpu_seconds_limit=36000, cpu_seconds_limit=None
    )
    status = study_status(totals)
    assert status["gpuSecondsUsed"] == 5400 and status["gpuSecondsReserved"] == 3600
    assert status["gpuHoursRemaining"] == 7.5 and status["summary"] == "1.50/10.00"


def test_gpubudget_status_in_hours() -> None:
    totals = NamespaceTotals(
        "team-a",
        7200,
        "monthly",
        datetime.datetime(2026, 3, 1),
        datetime.datetime(2026, 4, 1),
        used=1800,
        reserved=3600,
    )
    assert gpubudget_status(totals) == {
        "used": 0.5,
        "reserved": 1.0,
        "remaining": 0.5,
        "periodStart": "2026-03-01T00:00:00Z",
    }


def test_the_per_study_cap_narrows_what_the_planner_sees() -> None:
    totals = NamespaceTotals(
        "team-a",
        10_000,
        "weekly",
        datetime.datetime(2026, 3, 2),
        datetime.datetime(2026, 3, 9),
        used=1000,
        reserved=0,
        max_gpu_seconds_per_study=500,
        study_used=200,
    )
    view = namespace_budget_view(totals, Charge(gpu_seconds=100))
    assert view is not None and view.affordable == 3 and view.refills
    assert namespace_budget_view(totals, Charge(cpu_seconds=100)) is None  # CPU-only trials draw no GPUs


def test_the_study_view_uses_the_tighter_resource_and_ignores_unused_ones() -> None:
    totals = Totals(
        settled=Charge(0, 50), reserved=Charge(0, 0), gpu_seconds_limit=100, cpu_seconds_limit=100
    )
    view = study_budget_view(totals, Charge(gpu_seconds=0, cpu_seconds=20))
    assert view is not None and view.affordable == 2
