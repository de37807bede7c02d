"""What the controller remembers about one Study between reconciles (rebuilt after a restart)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controller.credentials import CredentialCheck
from controller.kube.executor import StudyRuntime
from controller.kube.finishing import FinishMemory
from controller.strategies.live import LiveStrategy


@dataclass
class StudyState:
    """What the controller remembers about a Study between reconciles (rebuilt after a restart).

    ``uid``: the object it is about; a Study deleted and applied again under the same name is
    another object, and gets a fresh state.
    """

    uid: str = ""
    runtime: StudyRuntime | None = None
    spec_json: str | None = None
    limits: tuple[int | None, int | None] | None = None
    started_at: float = 0.0
    last_status: dict[str, Any] | None = None
    namespace_ready: str | None = None  # the password mirrored last
    credentials: CredentialCheck | None = None  # where the trial pods' password came from
    stuck: tuple[str, str] | None = None
    # Events posted by this process; whether one is due comes from the Study's status (announcements).
    announced: set[str] = field(default_factory=set)
    failure: tuple[int, str] | None = None  # (first failed trial, the message) once failures stop it
    best_written: int | None = None
    strategy: LiveStrategy | None = None  # one per Study: refreshed every reconcile
    pareto: tuple[int, dict[str, Any]] | None = None  # (complete search trials, status.paretoFront)
    finish: FinishMemory = field(default_factory=FinishMemory)
