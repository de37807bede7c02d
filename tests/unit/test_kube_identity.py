"""A Study object's identity: its Optuna study key, the Jobs it owns, the Events it was given."""

from __future__ import annotations

import re
from typing import Any

from controller.kube import announcements
from controller.kube.manifests import STUDY_UID_LABEL, StudyRef, optuna_study_name, reservation_key
from controller.studies.identity import study_key


def test_a_new_object_is_keyed_by_its_uid_and_keeps_the_key_its_status_recorded() -> None:
    assert study_key("team-a", "quad", "u-1") == "team-a/quad/u-1"
    assert study_key("team-a", "quad", "u-2") != study_key("team-a", "quad", "u-1")
    # An object from before uid keys: its status says where its trials are, and that wins.
    assert study_key("team-a", "quad", "u-1", recorded="team-a/quad") == "team-a/quad"
    assert study_key("team-a", "quad", "") == "team-a/quad"  # offline: no object


def test_reservations_follow_the_study_key() -> None:
    ref = StudyRef("quad", "team-a", "u-1", "team-a/quad/u-1")
    assert optuna_study_name(ref) == "team-a/quad/u-1"
    assert reservation_key(ref, 3) == "team-a/quad/u-1/3"
    assert reservation_key(StudyRef("quad", "team-a"), 3) == "team-a/quad/3"  # as before


def job(uid: str | None) -> dict[str, Any]:
    labels = {"tunefleet.dev/study": "quad"}
    if uid is not None:
        labels[STUDY_UID_LABEL] = uid
    return {"metadata": {"name": "quad-t0", "labels": labels}}


def test_a_study_owns_its_jobs_not_those_of_an_earlier_object_of_its_name() -> None:
    ref = StudyRef("quad", "team-a", "u-2", "team-a/quad/u-2")
    assert ref.owns(job("u-2"))
    assert not ref.owns(job("u-1"))
    assert ref.owns(job(None))  # made before the label existed


def test_one_off_events_are_due_until_the_status_shows_them() -> None:
    fresh: dict[str, Any] = {}
    shown = {
        "startTime": "2026-01-01T00:00:00Z",
        "completionTime": "2026-01-01T01:00:00Z",
        "phase": "Suspended",
        "optunaStudy": "team-a/quad/u-1",
        "conditions": [{"type": "Invalid", "status": "True", "message": "bad"}],
    }
    assert announcements.started_due(fresh, True) and not announcements.started_due(shown, True)
    assert not announcements.started_due(fresh, False)
    assert announcements.finished_due(fresh, True) and not announcements.finished_due(shown, True)
    assert announcements.suspended_due(fresh, "Suspended")
    assert not announcements.suspended_due(shown, "Suspended")
    assert announcements.invalid_due(fresh, "bad") and not announcements.invalid_due(shown, "bad")
    assert announcements.invalid_due(shown, "another problem")
    assert announcements.identity_due(fresh) and not announcements.identity_due(shown)


class Kube:
    def __init__(self) -> None:
        self.posted: list[str] = []

    def post_event(
        self, body: dict[str, Any], reason: str, message: str, warning: bool = False, name: str | None = None
    ) -> None:
        self.posted.append(reason)


def test_an_event_is_posted_once_even_when_the_body_read_lags_behind() -> None:
    kube = Kube()
    announcer = announcements.Announcer(kube)  # type: ignore[arg-type]
    memory: set[str] = set()
    for _ in range(3):  # the body still shows no startTime: the same reconcile outcome again
        announcer.once({}, memory, "Started", True, "StudyStarted", "started")
    announcer.once({}, memory, "Started", False, "StudyStarted", "started")  # the status shows it
    assert kube.posted == ["StudyStarted"]


def test_an_event_that_happens_once_per_object_is_named_for_it_and_valid_for_the_api_server() -> None:
    body = {"metadata": {"name": "mnist-lr", "uid": "5f0c2a1e-9b7d-4c3e-8f21-0a6b9d3e7c55"}}
    started = announcements.unique_event_name(body, "StudyStarted", "")
    ended = announcements.unique_event_name(body, "StudyFinished", "g3")
    assert started == "mnist-lr.5f0c2a1e-9b7d.studystarted"
    assert ended == "mnist-lr.5f0c2a1e-9b7d.studyfinished.g3"
    dns_subdomain = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    assert dns_subdomain.match(started) and dns_subdomain.match(ended)
    other = {"metadata": {"name": "mnist-lr", "uid": "77aa0000-0000-4000-8000-000000000000"}}
    assert announcements.unique_event_name(other, "StudyStarted", "") != started  # a new object, a new Event


def test_an_event_named_for_its_occasion_is_posted_under_that_name_and_others_are_not() -> None:
    names: list[str | None] = []

    class Naming:
        def post_event(self, body: Any, reason: str, message: str, warning: bool = False,
                       name: str | None = None) -> None:
            names.append(name)

    announcer = announcements.Announcer(Naming())  # type: ignore[arg-type]
    body = {"metadata": {"name": "s", "uid": "abc"}}
    announcer.once(body, set(), "Finished", True, "StudyFinished", "ended", occasion="g2")
    announcer.once(body, set(), "Suspended", True, "StudySuspended", "suspended")
    assert names == ["s.abc.studyfinished.g2", None]
