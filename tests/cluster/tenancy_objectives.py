"""An objective that, from inside a real trial pod, tries with its own token what a tenant must not.

Even-numbered trials are the victims: they sleep ``TUNEFLEET_TEST_SLEEP`` seconds, RUNNING, and
complete. Odd-numbered trials are the intruders: with the token and CA their pod was given (env),
they try to write their running sibling, read and write another namespace's study, create and
delete studies, create trials and change their study; each attempt's outcome (the gRPC status
code, or ``ALLOWED``) goes into their own user attribute ``tenancy.attempts``, and their pod's
environment into ``tenancy.env`` (the test looks for a password there). Then they report and
complete their own trial normally.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import grpc
import optuna
from optuna.distributions import FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState

from trial_worker.contract import ASSIGNMENT_ENV, Assignment
from trial_worker.gateway import GatewayStorage, open_gateway

ATTR_ATTEMPTS = "tenancy.attempts"
ATTR_ENV = "tenancy.env"
VICTIM_STUDY_ENV = "TUNEFLEET_TEST_VICTIM_STUDY"  # another namespace's Optuna study name
VICTIM_STUDY_ID_ENV = "TUNEFLEET_TEST_VICTIM_STUDY_ID"
VICTIM_TRIAL_ID_ENV = "TUNEFLEET_TEST_VICTIM_TRIAL_ID"
TAMPERED = 123.0
Attempt = Callable[[GatewayStorage], object]


def intruder(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    if trial.number % 2 == 0:
        time.sleep(float(os.environ.get("TUNEFLEET_TEST_SLEEP", "0")))
        return float((x - 2.0) ** 2)
    storage = open_gateway(Assignment.model_validate_json(os.environ[ASSIGNMENT_ENV]).storage_url)
    sibling = _running_sibling(storage, trial)
    outcomes = {name: _outcome(storage, attempt) for name, attempt in _attempts(trial, sibling).items()}
    storage.close()
    trial.set_user_attr(ATTR_ATTEMPTS, outcomes)
    trial.set_user_attr(ATTR_ENV, {k: v for k, v in os.environ.items() if k != ASSIGNMENT_ENV})
    trial.report(float(x), step=0)
    return float((x - 2.0) ** 2)


def _running_sibling(storage: GatewayStorage, trial: optuna.Trial) -> int:
    """The trial id of another RUNNING trial of this study (reading its own study is allowed)."""
    study_id = trial.study._study_id
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        others = [t for t in running if t.number != trial.number]
        if others:
            return int(others[0]._trial_id)
        time.sleep(0.5)
    raise RuntimeError("no sibling trial ran beside the intruder")


def _attempts(trial: optuna.Trial, sibling: int) -> dict[str, Attempt]:
    own_study = trial.study._study_id
    victim = os.environ[VICTIM_STUDY_ENV]
    victim_id = int(os.environ[VICTIM_STUDY_ID_ENV])
    victim_trial = int(os.environ[VICTIM_TRIAL_ID_ENV])
    namespace = victim.split("/")[0]
    x = FloatDistribution(-10, 10)
    return {
        # another trial of its own study, RUNNING beside it
        "tell a sibling trial": lambda s: s.set_trial_state_values(sibling, TrialState.COMPLETE, [TAMPERED]),
        "report on a sibling trial": lambda s: s.set_trial_intermediate_value(sibling, 0, TAMPERED),
        "set a sibling's parameter": lambda s: s.set_trial_param(sibling, "x", 1.0, x),
        "set a sibling's attribute": lambda s: s.set_trial_user_attr(sibling, "tampered", True),
        # another namespace's study
        "find another study": lambda s: s.get_study_id_from_name(victim),
        "read another study's trials": lambda s: s.get_all_trials(victim_id),
        "read another study's trial": lambda s: s.get_trial(victim_trial),
        "write another study's trial": lambda s: s.set_trial_state_values(victim_trial, TrialState.FAIL),
        "change another study's attributes": lambda s: s.set_study_user_attr(victim_id, "tampered", True),
        # studies and trials of its own
        "create a study": lambda s: s.create_new_study([StudyDirection.MINIMIZE], f"{namespace}/evil/x"),
        "delete another study": lambda s: s.delete_study(victim_id),
        "delete its own study": lambda s: s.delete_study(own_study),
        "list every study": lambda s: s.get_all_studies(),
        "create a trial": lambda s: s.create_new_trial(own_study),
        "change its study's attributes": lambda s: s.set_study_user_attr(own_study, "tampered", True),
    }


def _outcome(storage: GatewayStorage, attempt: Attempt) -> str:
    try:
        attempt(storage)
    except grpc.RpcError as error:
        return str(error.code().name)
    except Exception as error:  # noqa: BLE001 - recorded, the test says what it expected
        return f"{type(error).__name__}: {error}"
    return "ALLOWED"
