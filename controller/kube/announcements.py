"""One-off Events (StudyStarted, StudyFinished, ...) posted once, whatever the controller forgot.

A restarted controller has no memory of what it announced; the Study object has. Each one-off
Event goes with a change the status shows for good (``startTime`` appears, ``completionTime``
appears, the phase becomes ``Suspended``, the ``Invalid`` condition gets a message,
``optunaStudy`` is first written), so an Event is *due* only while the status the object had
before this reconcile does not show that change yet.

Events that happen once per Study object, or once per spec generation (StudyStarted;
StudyFinished and FailureBudgetExhausted, which a larger ``maxTrials`` can make happen again) are
posted *before* the status that shows them, under a name made of the Study's uid, the reason and,
where it can recur, the generation: a controller killed between the two posts it again and the
API server answers AlreadyExists, so the Event is neither lost nor repeated. Events that may
recur (StudySuspended, SpecInvalid) cannot have such a name; they are posted after the status is
written, so a crash in between loses one rather than repeating it.

The process also remembers what it posted (:class:`Announcer` ``memory``): the body a reconcile
reads may predate the status it wrote last, and would make the same Event look due again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.kube.client import KubeApi
from controller.studies.identity import EarlierStudy


def condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for item in status.get("conditions") or []:
        if item.get("type") == kind:
            return item
    return None


def started_due(previous: Mapping[str, Any], started_jobs: bool) -> bool:
    """StudyStarted: the first Jobs exist and the status has no ``startTime`` yet."""
    return started_jobs and not previous.get("startTime")


def finished_due(previous: Mapping[str, Any], finished: bool) -> bool:
    """StudyFinished: the study is over and the status has no ``completionTime`` yet."""
    return finished and not previous.get("completionTime")


def suspended_due(previous: Mapping[str, Any], phase: str) -> bool:
    return phase == "Suspended" and previous.get("phase") != "Suspended"


def invalid_due(previous: Mapping[str, Any], message: str) -> bool:
    """SpecInvalid / WarmStartFailed: the Invalid condition does not say this yet."""
    shown = condition(previous, "Invalid")
    return not (shown is not None and shown.get("status") == "True" and shown.get("message") == message)


def identity_due(previous: Mapping[str, Any]) -> bool:
    """The Study's Optuna study is named for the first time (a new object)."""
    return not previous.get("optunaStudy")


class Announcer:
    """Posts an Event when it is due and not already posted by this process."""

    def __init__(self, kube: KubeApi) -> None:
        self.kube = kube

    def once(
        self,
        body: dict[str, Any],
        memory: set[str],
        key: str,
        due: bool,
        reason: str,
        message: str,
        warning: bool = False,
        occasion: str | None = None,
    ) -> bool:
        """Post ``reason`` if ``due`` and ``key`` is not in ``memory``; True if it was posted.
        ``occasion`` (``""`` for once per object): the Event is named for the object and it, so
        posting it again (a restarted controller) is refused by the API server."""
        if not due:
            memory.discard(key)  # the object shows it now: a later change may be due again
            return False
        if key in memory:
            return False
        memory.add(key)
        name = None if occasion is None else unique_event_name(body, reason, occasion)
        self.kube.post_event(body, reason, message, warning=warning, name=name)
        return True


def unique_event_name(body: Mapping[str, Any], reason: str, occasion: str) -> str:
    """The one name an Event has that happens once per Study object and ``occasion`` (a DNS
    subdomain): ``<study>.<uid prefix>.<reason>[.<occasion>]``."""
    meta = body.get("metadata") or {}
    uid = str(meta.get("uid") or "")[:13]
    parts = [str(meta.get("name") or "study")[:200], uid, reason.lower(), occasion]
    return ".".join(part for part in parts if part)


def earlier_data_message(name: str, uid: str, key: str, earlier: list[EarlierStudy]) -> str:
    """The EarlierStudyKept Event of a new Study whose name an earlier one had: where its data is."""
    listed = ", ".join(f"{e.key!r} ({e.trials} trials)" for e in earlier)
    example = earlier[-1].key
    return (
        f"this Study is a new object (uid {uid}) and starts afresh in Optuna study {key!r}. "
        f"An earlier Study named {name!r} left its data in the database, untouched: {listed}. "
        f"Export it with `tunefleet export --storage <url> --study {example} --out <dir>`, or "
        f"continue from it on purpose with spec.warmStart.fromStudy: {example}"
    )
