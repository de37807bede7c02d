"""The words a Study shows when failed trials stopped it: the verdict, the first failed trial's
stored reason and the tail of its pod's log (see :mod:`controller.planner.failures`)."""

from __future__ import annotations

from typing import Any

import optuna
import structlog

from controller.kube.announcements import condition
from controller.kube.client import KubeApi
from controller.kube.manifests import TRIAL_LABEL, StudyRef, study_selector
from controller.planner import StopReason
from controller.planner.failures import LOG_TAIL_LINES, FailureVerdict, failure_message
from trial_worker.contract import ATTR_DETAIL

log = structlog.get_logger("tunefleet.controller")


def failure_text(
    kube: KubeApi, ref: StudyRef, study: optuna.Study, verdict: FailureVerdict, previous: dict[str, Any]
) -> str:
    """The Failed condition's message: kept from the status once written (its pods may be gone
    by then), else built from the trial's stored detail and its pod's log."""
    shown = condition(previous, "Failed") or {}
    if shown.get("status") == "True" and shown.get("reason") == StopReason.FAILURE_BUDGET:
        return str(shown.get("message") or "")
    detail = None
    for trial in study.get_trials(deepcopy=False):
        if trial.number == verdict.first_failed:
            detail = trial.user_attrs.get(ATTR_DETAIL)
            break
    return failure_message(verdict, detail, _log_tail(kube, ref, verdict.first_failed))


def _log_tail(kube: KubeApi, ref: StudyRef, trial_number: int) -> str | None:
    selector = f"{study_selector(ref.name)},{TRIAL_LABEL}={trial_number}"
    pods = sorted(
        kube.list_pods(ref.namespace, selector), key=lambda p: p["metadata"].get("creationTimestamp") or ""
    )
    for pod in pods:
        text = kube.read_pod_log_tail(ref.namespace, pod["metadata"]["name"], LOG_TAIL_LINES)
        if text:
            return text
    return None
