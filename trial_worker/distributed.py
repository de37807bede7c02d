"""A trial that spans several nodes, from inside one rank: its environment and its one voice.

Every rank runs the same objective with the same parameters. Rank 0 is the trial's only voice in
the study: it reports, asks the pruner and tells the outcome. The other ranks get a
:class:`FollowerTrial`, which reads the parameters rank 0 reads and whose writes do nothing, so
``N`` processes never race to report the same step or tell the trial twice.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FixedTrial, FrozenTrial, TrialState

from trial_worker.contract import Assignment, Rendezvous

PARAM_WAIT_S = 30.0  # how long a follower waits for rank 0 to sample a parameter the spec lacks
PARAM_POLL_S = 0.2
PRUNE_CHECK_EVERY_S = 1.0


def current_rendezvous(assignment: Assignment) -> Rendezvous | None:
    """This process's place in its trial: from the assignment (local runs) or the pod's env."""
    return assignment.rendezvous or Rendezvous.from_env()


@contextlib.contextmanager
def rendezvous_environment(rendezvous: Rendezvous | None) -> Iterator[None]:
    """The rendezvous variables in ``os.environ`` while the objective runs (a command inherits
    them); afterwards the previous values, and no process group left for the next trial."""
    if rendezvous is None:
        yield
        return
    values = rendezvous.environment()
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        _destroy_process_group()
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _destroy_process_group() -> None:
    """A warm worker runs the next trial in this process: a group left initialized would refuse
    the next ``init_process_group``. Only if the objective loaded torch.distributed at all."""
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return
    with contextlib.suppress(Exception):  # the group may be broken already (a peer died)
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


class FollowerTrial(FixedTrial):
    """A rank > 0's trial: the stored parameters to read, and writes that go nowhere.

    ``suggest_*`` return the values rank 0 was given (a parameter the spec does not declare is
    sampled by rank 0 inside the objective, so a follower waits briefly for it to be stored).
    ``report`` and ``set_user_attr`` do nothing to the study; ``should_prune`` is true once rank 0
    has ended the trial, so a follower that asks stops with it.
    """

    def __init__(self, stored: FrozenTrial, reread: Callable[[], FrozenTrial]) -> None:
        super().__init__(dict(stored.params), number=stored.number)
        self._reread = reread
        self._checked_at = 0.0
        self._ended = False

    @property
    def params(self) -> dict[str, Any]:
        """Every stored parameter, as ``optuna.Trial.params`` gives rank 0 (commands need all)."""
        return {**self._params, **self._suggested_params}

    def _suggest(self, name: str, distribution: BaseDistribution) -> Any:
        deadline = time.monotonic() + PARAM_WAIT_S
        while name not in self._params and time.monotonic() < deadline:
            time.sleep(PARAM_POLL_S)
            self._params.update(self._reread().params)
        return super()._suggest(name, distribution)

    def should_prune(self) -> bool:
        now = time.monotonic()
        if not self._ended and now - self._checked_at >= PRUNE_CHECK_EVERY_S:
            self._checked_at = now
            self._ended = self._reread().state != TrialState.RUNNING
        return self._ended


def follower_trial(study: optuna.Study, trial: optuna.Trial) -> FollowerTrial:
    storage = study._storage
    trial_id = trial._trial_id
    return FollowerTrial(storage.get_trial(trial_id), lambda: storage.get_trial(trial_id))
