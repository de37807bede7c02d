"""A population-based training segment as the study records it (pure values, no I/O).

Each segment is one trial. Its record, the trial user attribute ``tunefleet.segment``, says which
member it trains, which of the member's segments it is, the steps it covers, and whose checkpoint
it resumes: ``parent`` is the member, ``load`` the trial that saved that checkpoint. A retry of a
segment lost to the platform carries the same record, so it resumes from the same checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

ATTR_SEGMENT = "tunefleet.segment"

Decision = Literal["start", "continue", "exploit", "recover"]
DECISIONS: tuple[Decision, ...] = ("start", "continue", "exploit", "recover")


@dataclass(frozen=True)
class Segment:
    """What one segment trains.

    Attributes:
        member: the population member (0 .. population - 1).
        index: the member's segments before this one (0 for its first).
        start: the first step it trains; ``end``: the step after its last.
        parent: the member whose checkpoint it resumes (None: a fresh start).
        load: the trial number that saved that checkpoint (None: a fresh start).
        decision: ``start`` (a new member), ``continue`` (its own checkpoint), ``exploit`` (a
            better member's checkpoint, with explored parameters) or ``recover`` (its last good
            checkpoint, after the one it should have resumed from was unreadable).
    """

    member: int
    index: int
    start: int
    end: int
    parent: int | None = None
    load: int | None = None
    decision: Decision = "start"

    def to_attr(self) -> dict[str, Any]:
        return {
            "member": self.member,
            "index": self.index,
            "start": self.start,
            "end": self.end,
            "parent": self.parent,
            "load": self.load,
            "decision": self.decision,
        }

    @classmethod
    def from_attr(cls, value: Any) -> Segment | None:
        """The record stored in a trial's user attributes, or None if there is none (or it is bad)."""
        if not isinstance(value, Mapping):
            return None
        try:
            decision = str(value.get("decision", "start"))
            return cls(
                member=int(value["member"]),
                index=int(value["index"]),
                start=int(value["start"]),
                end=int(value["end"]),
                parent=_optional_int(value.get("parent")),
                load=_optional_int(value.get("load")),
                decision=decision if decision in DECISIONS else "start",
            )
        except (KeyError, TypeError, ValueError):
            return None


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def checkpoint_path(member: int, trial_number: int) -> str:
    """Where a segment's checkpoint lives, relative to the study's checkpoint directory."""
    return f"member-{member}/trial-{trial_number}"
