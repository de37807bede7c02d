"""What a study and each of its trials should look like in MLflow, computed from the study database.

Pure: trials, ledger charges and the study's record in; :class:`RunContent` out. The writer
(:mod:`controller.tracking.mlflow_writer`) sends only what differs from what it sent before, so
everything here is deterministic: the same study gives the same content (and the same metric
timestamps) however often, and whenever, it is mirrored.

MLflow's conventions: the study is a parent run, each trial a nested run (tag
``mlflow.parentRunId``). A trial's run holds its parameters, its final metric values under the
metric names, its intermediate values as the curve ``intermediate/<first metric>`` (one point per
step), its resource use (``tunefleet/gpu_seconds``, ``tunefleet/cpu_seconds``,
``tunefleet/duration_s``), and its state, reason, image digest, node, retry and confirmation
links as ``tunefleet.*`` tags.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from controller.budget.accounting import Charge
from controller.budget.ledger import Totals
from controller.planner import StopReason
from controller.planner.confirmation import ATTR_CONFIRM_OF
from controller.studies.record import (
    ATTR_STARTED_AT,
    ATTR_STOP_REASON,
    ATTR_STRATEGY,
    ATTR_TRIAL_GPU_MODEL,
    ATTR_TRIAL_IMAGE,
    ATTR_TRIAL_IMAGE_DIGEST,
    ATTR_TRIAL_NODE,
)
from trial_worker.contract import (
    ATTR_ATTEMPT,
    ATTR_DETAIL,
    ATTR_DURATION,
    ATTR_KIND,
    ATTR_REASON,
    ATTR_RETRY_OF,
    ATTR_SEED,
)

INTERMEDIATE_PREFIX = "intermediate/"
TAG_STUDY = "tunefleet.study"
TAG_STUDY_ID = "tunefleet.study_id"  # the study key and when it began: one study, not a namesake
TAG_TRIAL = "tunefleet.trial"
TAG_ROLE = "tunefleet.role"  # "study" or "trial"
TAG_RETRY_OF_RUN = "tunefleet.retry_of_run"
TAG_CONFIRM_OF_RUN = "tunefleet.confirm_of_run"
PARENT_TRIAL = -1  # the study's own run in the record table
MAX_PARAM_VALUE = 6000  # MLflow's limit
MAX_TAG_VALUE = 5000

# Optuna state -> MLflow run status. A pruned trial was stopped early on purpose: KILLED.
RUN_STATUS = {
    TrialState.RUNNING: "RUNNING",
    TrialState.WAITING: "SCHEDULED",
    TrialState.COMPLETE: "FINISHED",
    TrialState.PRUNED: "KILLED",
    TrialState.FAIL: "FAILED",
}
TRIAL_TAGS = {  # trial user attribute -> tag
    ATTR_REASON: "tunefleet.reason",
    ATTR_DETAIL: "tunefleet.detail",
    ATTR_SEED: "tunefleet.seed",
    ATTR_ATTEMPT: "tunefleet.attempt",
    ATTR_KIND: "tunefleet.kind",
    ATTR_RETRY_OF: "tunefleet.retry_of",
    ATTR_CONFIRM_OF: "tunefleet.confirm_of",
    ATTR_TRIAL_IMAGE: "tunefleet.image",
    ATTR_TRIAL_IMAGE_DIGEST: "tunefleet.image_digest",
    ATTR_TRIAL_NODE: "tunefleet.node",
    ATTR_TRIAL_GPU_MODEL: "tunefleet.gpu_model",
}


@dataclass(frozen=True)
class Point:
    """One metric value: MLflow keeps (key, value, step, timestamp)."""

    value: float
    step: int
    timestamp_ms: int


@dataclass(frozen=True)
class RunContent:
    """Everything one MLflow run should hold."""

    name: str
    status: str
    start_ms: int | None
    end_ms: int | None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Point] = field(default_factory=dict)  # single values: the latest counts
    curve_key: str | None = None
    curve: tuple[tuple[int, float], ...] = ()  # (step, value), by step
    links: dict[str, int] = field(default_factory=dict)  # tag -> trial number whose run id it names

    @property
    def finished(self) -> bool:
        return self.status not in ("RUNNING", "SCHEDULED")

    def digest(self) -> str:
        """Changes whenever anything the run should show changes."""
        document = {
            "name": self.name,
            "status": self.status,
            "start": self.start_ms,
            "end": self.end_ms,
            "params": self.params,
            "tags": self.tags,
            # Not the timestamps: a study's figures are stamped when read, and only values count.
            "metrics": {k: [p.value, p.step] for k, p in sorted(self.metrics.items())},
            "curve": [self.curve_key, list(self.curve)],
            "links": self.links,
        }
        text = json.dumps(document, sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()


def epoch_ms(moment: datetime.datetime | None) -> int | None:
    """Optuna's naive datetimes are local time; MLflow wants epoch milliseconds."""
    return None if moment is None else int(moment.timestamp() * 1000)


def _text(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def trial_content(
    trial: FrozenTrial,
    metric_names: list[str],
    charge: Charge | None,
    study_key: str,
    extra_tags: Mapping[str, str],
) -> RunContent:
    """The nested run of one trial."""
    start = epoch_ms(trial.datetime_start)
    end = epoch_ms(trial.datetime_complete)
    finished_at = end if end is not None else (start or 0)
    metrics: dict[str, Point] = {}
    for name, value in zip(metric_names, trial.values or [], strict=False):
        number = _finite(value)
        if number is not None:
            metrics[name] = Point(number, 0, finished_at)
    if charge is not None:
        metrics["tunefleet/gpu_seconds"] = Point(float(charge.gpu_seconds), 0, finished_at)
        metrics["tunefleet/cpu_seconds"] = Point(float(charge.cpu_seconds), 0, finished_at)
    duration = _finite(trial.user_attrs.get(ATTR_DURATION))
    if duration is None and start is not None and end is not None:
        duration = (end - start) / 1000
    if duration is not None and trial.state.is_finished():
        metrics["tunefleet/duration_s"] = Point(round(duration, 3), 0, finished_at)
    curve = tuple(
        (int(step), float(value))
        for step, value in sorted(trial.intermediate_values.items())
        if _finite(value) is not None
    )
    tags = {
        **extra_tags,
        TAG_ROLE: "trial",
        TAG_STUDY: study_key,
        TAG_TRIAL: str(trial.number),
        "tunefleet.state": trial.state.name,
    }
    for attr, tag in TRIAL_TAGS.items():
        if trial.user_attrs.get(attr) is not None:
            tags[tag] = _text(trial.user_attrs[attr], MAX_TAG_VALUE)
    links: dict[str, int] = {}
    for attr, tag in ((ATTR_RETRY_OF, TAG_RETRY_OF_RUN), (ATTR_CONFIRM_OF, TAG_CONFIRM_OF_RUN)):
        linked = trial.user_attrs.get(attr)
        if isinstance(linked, int) and linked != trial.number:
            links[tag] = linked
    return RunContent(
        name=f"trial-{trial.number}",
        status=RUN_STATUS.get(trial.state, "RUNNING"),
        start_ms=start,
        end_ms=end if trial.state.is_finished() else None,
        params={name: _text(value, MAX_PARAM_VALUE) for name, value in trial.params.items()},
        tags=tags,
        metrics=metrics,
        curve_key=f"{INTERMEDIATE_PREFIX}{metric_names[0]}" if curve and metric_names else None,
        curve=curve,
        links=links,
    )


@dataclass(frozen=True)
class StudyFacts:
    """What the study's own run is computed from."""

    key: str
    name: str
    user_attrs: dict[str, Any]
    spec: dict[str, Any] | None
    metric_names: list[str]
    directions: list[str]
    trials: list[FrozenTrial]
    totals: Totals | None
    extra_tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def stop_reason(self) -> str | None:
        reason = self.user_attrs.get(ATTR_STOP_REASON)
        return str(reason) if reason is not None else None

    @property
    def identity(self) -> str:
        """The study key and when it began: tells this study from a namesake created later."""
        return f"{self.key}@{self.user_attrs.get(ATTR_STARTED_AT, 'unknown')}"


def study_params(spec: Mapping[str, Any] | None, strategy: Mapping[str, Any]) -> dict[str, str]:
    """The spec's essentials as run parameters (the whole spec is an artifact too)."""
    params: dict[str, str] = {}
    if strategy:
        params["sampler"] = str(strategy.get("sampler"))
        params["pruner"] = str(strategy.get("pruner"))
    if not spec:
        return params
    objective = spec.get("objective") or {}
    params["objective"] = ", ".join(f"{m['name']}:{m['direction']}" for m in objective.get("metrics") or [])
    if objective.get("goal") is not None:
        params["objective.goal"] = str(objective["goal"])
    for key in ("seed",):
        if (spec.get("strategy") or {}).get(key) is not None:
            params[f"strategy.{key}"] = str(spec["strategy"][key])
    params["parallelism"] = str(spec.get("parallelism"))
    for key, value in (spec.get("budget") or {}).items():
        if value is not None:
            params[f"budget.{key}"] = str(value)
    trial = spec.get("trial") or {}
    for key in ("python", "command", "image", "gpus", "cpus", "maxDuration", "maxRetries"):
        if trial.get(key) is not None:
            params[f"trial.{key}"] = _text(trial[key], MAX_PARAM_VALUE)
    for name, param in (spec.get("searchSpace") or {}).items():
        params[f"space.{name}"] = _text({k: v for k, v in param.items() if v is not None}, MAX_PARAM_VALUE)
    return params


def study_content(facts: StudyFacts, now_ms: int) -> RunContent:
    """The study's parent run: spec, strategy and why, budget figures, counts, best, stop reason."""
    strategy = facts.user_attrs.get(ATTR_STRATEGY) or {}
    started = _finite(facts.user_attrs.get(ATTR_STARTED_AT))
    start_ms = int(started * 1000) if started is not None else None
    finished = [t for t in facts.trials if t.state.is_finished()]
    step = len(finished)
    metrics: dict[str, Point] = {}
    counts = {state: 0 for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    for trial in facts.trials:
        if trial.state.name in counts:
            counts[trial.state.name] += 1
    for state, count in counts.items():
        metrics[f"trials/{state.lower()}"] = Point(float(count), step, now_ms)
    if facts.totals is not None:
        settled = facts.totals.settled
        metrics["budget/gpu_seconds_used"] = Point(float(settled.gpu_seconds), step, now_ms)
        metrics["budget/cpu_seconds_used"] = Point(float(settled.cpu_seconds), step, now_ms)
        for name, limit in (
            ("gpu", facts.totals.gpu_seconds_limit),
            ("cpu", facts.totals.cpu_seconds_limit),
        ):
            if limit is not None:
                metrics[f"budget/{name}_seconds_limit"] = Point(float(limit), step, now_ms)
    if len(facts.metric_names) == 1:
        best = _best_value(facts)
        if best is not None:
            metrics[f"best/{facts.metric_names[0]}"] = Point(best, step, now_ms)
    reasons = [str(r) for r in strategy.get("reasons") or []]
    tags = {
        **facts.extra_tags,
        TAG_ROLE: "study",
        TAG_STUDY: facts.key,
        TAG_STUDY_ID: facts.identity,
        "tunefleet.sampler": str(strategy.get("sampler", "")),
        "tunefleet.pruner": str(strategy.get("pruner", "")),
        "tunefleet.strategy_why": _text("; ".join(reasons), MAX_TAG_VALUE),
        "mlflow.note.content": _text(_description(facts, strategy, reasons), MAX_TAG_VALUE),
    }
    reason = facts.stop_reason
    if reason is not None:
        tags["tunefleet.stop_reason"] = reason
    status = "RUNNING"
    if reason is not None:
        status = (
            "KILLED" if reason == StopReason.INTERRUPTED else ("FINISHED" if counts["COMPLETE"] else "FAILED")
        )
    end_ms = max([epoch_ms(t.datetime_complete) or 0 for t in finished], default=0) or now_ms
    return RunContent(
        name=facts.name,
        status=status,
        start_ms=start_ms,
        end_ms=end_ms if reason is not None else None,
        params=study_params(facts.spec, strategy),
        tags=tags,
        metrics=metrics,
    )


def _best_value(facts: StudyFacts) -> float | None:
    search = [
        t
        for t in facts.trials
        if t.state == TrialState.COMPLETE and t.values and ATTR_CONFIRM_OF not in t.user_attrs
    ]
    values = [v for v in (_finite(t.values[0]) for t in search) if v is not None]
    if not values:
        return None
    return max(values) if facts.directions[0] == "maximize" else min(values)


def _description(facts: StudyFacts, strategy: Mapping[str, Any], reasons: list[str]) -> str:
    lines = [
        f"tunefleet study `{facts.key}`: sampler **{strategy.get('sampler', '?')}**, "
        f"pruner **{strategy.get('pruner', '?')}**.",
    ]
    lines += [f"- {reason}" for reason in reasons]
    if facts.stop_reason is not None:
        lines.append(f"\nStopped: **{facts.stop_reason}**.")
    return "\n".join(lines)
