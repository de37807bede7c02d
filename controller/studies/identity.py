"""Which Optuna study a Study object's trials live in: one per object, keyed by its identity.

Deleting a Study and applying one with the same name makes a new object (a new
``metadata.uid``), and so a new study: it starts afresh instead of adopting the trials, budget
and stop reason of the one before. The earlier object's data stays in the database under its own
key; the controller names it in an Event, ``tunefleet export --study <key>`` exports it, and
``warmStart.fromStudy: <key>`` continues from it on purpose.

An object keeps the key its status first recorded (``status.optunaStudy``), so Studies created
before keys carried the uid (``<namespace>/<name>``) keep their data after an upgrade.
"""

from __future__ import annotations

from dataclasses import dataclass

from optuna.storages import BaseStorage


@dataclass(frozen=True)
class EarlierStudy:
    """The Optuna study an earlier object of the same name left behind."""

    key: str
    trials: int


def study_key(namespace: str, name: str, uid: str, recorded: str | None = None) -> str:
    """The Optuna study name (and ledger study key) of one Study object.

    ``recorded`` is what the object's status already says (``status.optunaStudy``); without it,
    ``<namespace>/<name>/<uid>``, or ``<namespace>/<name>`` where there is no object (offline).
    """
    if recorded:
        return recorded
    return f"{namespace}/{name}/{uid}" if uid else f"{namespace}/{name}"


def earlier_studies(storage: BaseStorage, namespace: str, name: str, key: str) -> list[EarlierStudy]:
    """Studies left by earlier objects named ``namespace/name`` (any uid, or none), not ``key``."""
    legacy = f"{namespace}/{name}"
    found = []
    for study in storage.get_all_studies():
        other = study.study_name
        if other == key or not (other == legacy or other.startswith(legacy + "/")):
            continue
        found.append(EarlierStudy(other, storage.get_n_trials(study._study_id)))
    return found
