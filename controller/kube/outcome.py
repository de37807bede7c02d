"""What a Study shows and leaves behind: its strategy, best trial, Pareto set, ConfigMap and export.

The status fields are built here as plain dicts; :mod:`controller.kube.reconciler` merges them
into the status it writes. When the study ends, the best configuration is the export's
(``controller.export.best_config``): only search trials compete, and where confirmation runs
happened the configuration with the best *mean* wins. So ``status.bestTrial``, the ConfigMap
``<study>-best`` and ``best_config.json`` of the export always agree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from controller.export.best_config import BestConfig
from controller.planner import TrialView
from controller.spec import StudySpec
from controller.strategies import StrategyChoice

PARETO_STATUS_LIMIT = 20  # a Study object must stay small; the export holds the whole set
EXPORT_DONE = ("Written", "Failed")


def strategy_status(choice: StrategyChoice) -> dict[str, Any]:
    """``status.strategy``: the sampler and pruner in use, and why (``auto`` revises them)."""
    document: dict[str, Any] = {
        "sampler": choice.sampler,
        "pruner": choice.pruner,
        "reasons": list(choice.reasons),
    }
    if choice.cost_aware:
        document["costAware"] = True
    if choice.affordable_trials is not None:
        document["affordableTrials"] = choice.affordable_trials
    return document


def _dominates(a: Sequence[float], b: Sequence[float], signs: Sequence[float]) -> bool:
    pairs = [(s * x, s * y) for s, x, y in zip(signs, a, b, strict=True)]
    return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


def pareto_from_views(spec: StudySpec, search: Sequence[TrialView]) -> list[TrialView]:
    """The non-dominated COMPLETE search trials so far, by trial number (while the study runs).

    Constraints are not in a TrialView, so this running view may hold an infeasible trial; the
    final set (from the export) never does.
    """
    signs = [1.0 if m.direction == "minimize" else -1.0 for m in spec.objective.metrics]
    completed = [t for t in search if t.state == "COMPLETE" and t.values]
    front = [
        t
        for t in completed
        if not any(_dominates(o.values or (), t.values or (), signs) for o in completed if o is not t)
    ]
    return sorted(front, key=lambda t: t.number)


def pareto_status_from_views(spec: StudySpec, front: Sequence[TrialView]) -> dict[str, Any]:
    names = spec.objective.metric_names
    entries = [
        {
            "number": t.number,
            "params": dict(t.params),
            "values": dict(zip(names, t.values or (), strict=False)),
        }
        for t in front
    ]
    return _capped(entries)


def pareto_status_from_best(best: BestConfig) -> dict[str, Any] | None:
    if best.pareto is None:
        return None
    entries = [{"number": p.trial, "params": p.params, "values": p.values} for p in best.pareto]
    return _capped(entries)


def _capped(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "size": len(entries),
        "trials": json.loads(json.dumps(entries[:PARETO_STATUS_LIMIT], default=str)),
        "truncated": len(entries) > PARETO_STATUS_LIMIT,
    }


def best_trial_status_from_best(best: BestConfig) -> dict[str, Any] | None:
    """``status.bestTrial`` from the export's best configuration (single objective)."""
    if best.trial is None or best.values is None:
        return None
    status: dict[str, Any] = {
        "number": best.trial,
        "params": json.loads(json.dumps(best.params or {}, default=str)),
        "values": list(best.values.values()),
        "metrics": dict(best.values),
        "chosenBy": best.chosen_by,
    }
    if best.confirmed:
        status["confirmed"] = {
            metric: interval.model_dump(mode="json") for metric, interval in best.confirmed.items()
        }
    return status


def best_config_payload(study_key: str, best: BestConfig | None) -> tuple[dict[str, Any], str] | None:
    """The ConfigMap document (JSON-able) and its YAML text; None before any trial completed."""
    if best is None:
        return None
    document = {"study": study_key, **best.to_document()}
    document = json.loads(json.dumps(document, default=str))
    return document, yaml.safe_dump(document, sort_keys=False)


@dataclass(frozen=True)
class ExportJobState:
    """Where the export Job stands: ``Running``, ``Written`` or ``Failed`` (with a message)."""

    phase: str
    message: str = ""


def export_job_state(job: Mapping[str, Any] | None) -> ExportJobState | None:
    """Read the export Job's conditions (None when it does not exist)."""
    if job is None:
        return None
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return ExportJobState("Written")
        if condition.get("type") == "Failed":
            detail = condition.get("message") or condition.get("reason") or "the export Job failed"
            return ExportJobState("Failed", str(detail))
    return ExportJobState("Running")


def export_status(spec: StudySpec, job_name: str, state: ExportJobState | None) -> dict[str, Any] | None:
    """``status.export``: where the export goes and whether it was written."""
    if spec.export is None:
        return None
    status: dict[str, Any] = {
        "persistentVolumeClaim": spec.export.persistentVolumeClaim,
        "path": spec.export.path,
        "job": job_name,
        "phase": state.phase if state is not None else "Pending",
    }
    if state is not None and state.message:
        status["message"] = state.message
    return status
