"""The watch-fed index of trial pods and Jobs: what a reconcile sees without listing, by value."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from controller.kube.cache import LIST_RESYNC_ENV, ClusterIndex, full_resync_seconds, study_of_selector
from controller.kube.manifests import ACCOUNTING_FINALIZER, STUDY_LABEL, TRIAL_LABEL, study_selector
from controller.kube.observe import observe_cluster

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
NS = "team-a"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _labels(trial: int, study: str = "s") -> dict[str, str]:
    return {STUDY_LABEL: study, TRIAL_LABEL: str(trial)}


def _pod(trial: int, phase: str, version: int, uid: str | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"s-t{trial}-pod",
            "namespace": NS,
            "uid": uid or f"uid-{trial}",
            "resourceVersion": str(version),
            "labels": _labels(trial),
            "finalizers": [ACCOUNTING_FINALIZER],
        },
        "status": {"phase": phase},
    }


def _job(trial: int, version: int | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"s-t{trial}", "namespace": NS, "labels": _labels(trial)}
    if version is not None:
        meta["resourceVersion"] = str(version)
    return {"metadata": meta, "spec": {}}


def _listed(items: list[dict[str, Any]], version: int) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": str(version)}, "items": items}


def _primed(clock: Clock | None = None) -> ClusterIndex:
    index = ClusterIndex(full_resync_s=60.0, clock=clock or Clock())
    index.listed(NS, "s", "pods", _listed([], 1))
    index.listed(NS, "s", "jobs", _listed([], 1))
    return index


def _phases(index: ClusterIndex) -> dict[str, str]:
    return {p["metadata"]["uid"]: p["status"]["phase"] for p in index.pods(NS, "s") or []}


def test_a_study_never_listed_must_be_listed_first() -> None:
    index = ClusterIndex(full_resync_s=60.0, clock=Clock())
    index.pod_event("ADDED", _pod(0, "Pending", 5))
    assert index.pods(NS, "s") is None
    assert index.jobs(NS, "s") is None


def test_pod_events_after_a_list_are_what_the_next_read_returns() -> None:
    index = _primed()
    index.pod_event("ADDED", _pod(0, "Pending", 5))
    index.pod_event("MODIFIED", _pod(0, "Running", 6))
    index.pod_event("ADDED", _pod(1, "Pending", 7))
    assert _phases(index) == {"uid-0": "Running", "uid-1": "Pending"}
    index.pod_event("DELETED", _pod(1, "Pending", 8))
    assert _phases(index) == {"uid-0": "Running"}


def test_pods_of_other_studies_and_namespaces_stay_apart() -> None:
    index = _primed()
    other = _pod(0, "Running", 5, uid="other")
    other["metadata"]["labels"] = _labels(0, study="t")
    index.pod_event("ADDED", other)
    elsewhere = _pod(0, "Running", 6, uid="elsewhere")
    elsewhere["metadata"]["namespace"] = "team-b"
    index.pod_event("ADDED", elsewhere)
    assert _phases(index) == {}


def test_a_list_older_than_an_event_does_not_undo_the_event() -> None:
    index = _primed()
    index.pod_event("MODIFIED", _pod(0, "Succeeded", 9))
    merged = index.listed(NS, "s", "pods", _listed([_pod(0, "Running", 6)], 7))
    assert [p["status"]["phase"] for p in merged] == ["Succeeded"]


def test_a_pod_deleted_while_the_list_was_in_flight_is_not_brought_back() -> None:
    index = _primed()
    index.pod_event("ADDED", _pod(0, "Running", 5))
    index.pod_event("DELETED", _pod(0, "Running", 9))
    index.listed(NS, "s", "pods", _listed([_pod(0, "Running", 5)], 8))
    assert _phases(index) == {}


def test_a_list_drops_pods_the_watch_missed_but_keeps_newer_ones() -> None:
    index = _primed()
    index.pod_event("ADDED", _pod(0, "Running", 5))  # deleted while the watch was down
    index.pod_event("ADDED", _pod(1, "Pending", 12))  # created after the list's snapshot
    index.listed(NS, "s", "pods", _listed([_pod(2, "Running", 7)], 10))
    assert _phases(index) == {"uid-1": "Pending", "uid-2": "Running"}


def test_the_index_is_listed_again_after_the_full_resync_period() -> None:
    clock = Clock()
    index = _primed(clock)
    clock.now += 59.0
    assert index.pods(NS, "s") == []
    clock.now += 1.0
    assert index.pods(NS, "s") is None
    assert index.jobs(NS, "s") is None


def test_a_created_job_keeps_its_trial_live_until_its_pod_appears() -> None:
    index = _primed()
    index.job_created(NS, _job(3, version=20))
    view = observe_cluster(index.jobs(NS, "s") or [], index.pods(NS, "s") or [], NOW)
    assert view.live == frozenset({3})


def test_a_deleted_job_no_longer_counts() -> None:
    index = _primed()
    index.job_created(NS, _job(3, version=20))
    index.job_deleted(NS, "s-t3")
    assert index.jobs(NS, "s") == []


def test_a_job_whose_pod_finished_and_vanished_is_not_awaiting_a_pod() -> None:
    index = _primed()
    index.job_created(NS, _job(3, version=20))
    index.pod_event("MODIFIED", _pod(3, "Succeeded", 21))
    index.pod_event("DELETED", _pod(3, "Succeeded", 22))
    view = observe_cluster(index.jobs(NS, "s") or [], index.pods(NS, "s") or [], NOW)
    assert view.live == frozenset()


def test_a_job_whose_running_pod_was_force_deleted_does_not_hold_its_trial_live() -> None:
    """A node lost mid-trial: the pod goes without a final phase. Its Job has counted it (the
    job-tracking finalizer let it go), so the trial's slot is free at once, not after the next
    full list (60 s), and its retry can start."""
    index = _primed()
    index.job_created(NS, _job(3, version=20))
    index.pod_event("MODIFIED", _pod(3, "Running", 21))
    assert observe_cluster(index.jobs(NS, "s") or [], index.pods(NS, "s") or [], NOW).live == {3}
    index.pod_event("DELETED", _pod(3, "Running", 22))
    view = observe_cluster(index.jobs(NS, "s") or [], index.pods(NS, "s") or [], NOW)
    assert view.live == frozenset()
    assert (index.jobs(NS, "s") or [])[0]["status"] == {"failed": 1}


def test_a_pod_whose_finalizer_we_removed_is_not_settled_again() -> None:
    index = _primed()
    finished = _pod(3, "Succeeded", 21)
    index.pod_event("MODIFIED", finished)
    view = observe_cluster([], index.pods(NS, "s") or [], NOW)
    assert [o.trial_number for o in view.finished] == [3]
    index.finalizer_removed(finished)
    view = observe_cluster([], index.pods(NS, "s") or [], NOW)
    assert view.finished == []
    assert finished["metadata"]["finalizers"] == [ACCOUNTING_FINALIZER]  # the caller's copy is untouched


def test_only_a_single_study_selector_is_served_from_the_index() -> None:
    assert study_of_selector(study_selector("mnist")) == "mnist"
    assert study_of_selector(STUDY_LABEL) is None
    assert study_of_selector(f"{STUDY_LABEL}=a,{TRIAL_LABEL}=1") is None
    assert study_of_selector(f"{STUDY_LABEL}!=a") is None
    assert study_of_selector("app=a") is None


def test_zero_seconds_lists_on_every_read() -> None:
    index = ClusterIndex(full_resync_s=0.0, clock=Clock())
    index.listed(NS, "s", "pods", _listed([_pod(0, "Running", 5)], 5))
    assert index.pods(NS, "s") is None


def test_a_bad_list_resync_setting_names_the_variable() -> None:
    assert full_resync_seconds({}) == 60.0
    assert full_resync_seconds({LIST_RESYNC_ENV: "0"}) == 0.0
    for bad in ("soon", "-1", "nan"):
        with pytest.raises(ValueError, match=LIST_RESYNC_ENV):
            full_resync_seconds({LIST_RESYNC_ENV: bad})
