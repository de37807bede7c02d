"""What a token may do through the gateway: every Optuna storage call, decided without I/O."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, distribution_to_json
from optuna.storages._grpc.auto_generated import api_pb2
from optuna.trial import TrialState

from controller.gateway.authorization import METHOD_ACCESS, Access, CallRefused, Target, authorize
from controller.gateway.tokens import TokenClaims

STUDY = "team-a/mlp/uid-1"
OTHER_STUDY = "team-b/secret/uid-9"
TRIAL = TokenClaims(namespace="team-a", study=STUDY, trial=3, expires=2**31)
READ_ONLY = TokenClaims(namespace="team-a", study=STUDY, trial=None, expires=2**31)

READS = sorted(m for m, a in METHOD_ACCESS.items() if a is Access.READ_STUDY)
WRITES = sorted(m for m, a in METHOD_ACCESS.items() if a is Access.WRITE_TRIAL)
NEVER = sorted(m for m, a in METHOD_ACCESS.items() if a is Access.NEVER)


def own_trial(state: TrialState = TrialState.RUNNING, **kwargs: object) -> Target:
    return Target(study=STUDY, study_id=1, trial_id=30, trial=3, trial_state=state, **kwargs)  # type: ignore[arg-type]


def refused(claims: TokenClaims, method: str, target: Target) -> CallRefused:
    with pytest.raises(CallRefused) as raised:
        authorize(claims, method, target)
    return raised.value


def test_every_storage_call_has_a_rule() -> None:
    served = {m.name for m in api_pb2.DESCRIPTOR.services_by_name["StorageService"].methods}
    assert served == set(METHOD_ACCESS)
    assert set(NEVER) == {
        "CreateNewStudy",
        "DeleteStudy",
        "SetStudyUserAttribute",
        "SetStudySystemAttribute",
        "GetAllStudies",
        "CreateNewTrial",
    }


@pytest.mark.parametrize("method", READS)
@pytest.mark.parametrize("claims", [TRIAL, READ_ONLY], ids=["trial", "read-only"])
def test_a_token_reads_its_own_study_whatever_the_trial_or_its_state(
    method: str, claims: TokenClaims
) -> None:
    authorize(claims, method, Target(study=STUDY, study_id=1))
    authorize(
        claims, method, Target(study=STUDY, study_id=1, trial_id=99, trial=7, trial_state=TrialState.COMPLETE)
    )


@pytest.mark.parametrize("method", READS + WRITES)
def test_no_token_touches_another_study(method: str) -> None:
    target = Target(study=OTHER_STUDY, study_id=2, trial_id=50, trial=3, trial_state=TrialState.RUNNING)
    error = refused(TRIAL, method, target)
    assert error.reason == "other-study"
    assert method in error.message and OTHER_STUDY in error.message and "trial 3" in error.message


@pytest.mark.parametrize("method", READS + WRITES)
def test_an_id_that_names_nothing_is_refused(method: str) -> None:
    error = refused(TRIAL, method, Target(study_id=404))
    assert "study id 404" in error.message


@pytest.mark.parametrize("method", WRITES)
def test_a_trial_token_writes_its_own_running_trial(method: str) -> None:
    authorize(TRIAL, method, own_trial())


@pytest.mark.parametrize("method", WRITES)
def test_a_trial_token_writes_no_other_trial(method: str) -> None:
    other = Target(study=STUDY, study_id=1, trial_id=40, trial=4, trial_state=TrialState.RUNNING)
    error = refused(TRIAL, method, other)
    assert error.reason == "other-trial"
    assert method in error.message and "trial 4" in error.message and STUDY in error.message


@pytest.mark.parametrize("method", WRITES)
@pytest.mark.parametrize(
    "state", [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.WAITING]
)
def test_nothing_is_written_after_the_trial_ended(method: str, state: TrialState) -> None:
    error = refused(TRIAL, method, own_trial(state))
    assert error.reason == "trial-ended"
    assert state.name in error.message and "trial 3" in error.message


def test_a_queued_trial_may_only_be_claimed() -> None:
    authorize(TRIAL, "SetTrialStateValues", own_trial(TrialState.WAITING, requested_state=TrialState.RUNNING))
    assert (
        refused(
            TRIAL, "SetTrialStateValues", own_trial(TrialState.WAITING, requested_state=TrialState.COMPLETE)
        ).reason
        == "trial-ended"
    )


@pytest.mark.parametrize("method", WRITES)
def test_a_read_only_token_writes_nothing(method: str) -> None:
    error = refused(READ_ONLY, method, own_trial())
    assert error.reason == "read-only" and method in error.message


@pytest.mark.parametrize("method", NEVER)
@pytest.mark.parametrize("claims", [TRIAL, READ_ONLY], ids=["trial", "read-only"])
def test_study_management_and_listing_are_never_allowed(method: str, claims: TokenClaims) -> None:
    error = refused(claims, method, Target(study=STUDY, study_id=1))
    assert error.reason == "forbidden-method"
    assert method in error.message


def test_a_token_whose_study_is_outside_its_namespace_is_refused() -> None:
    smuggled = TokenClaims(namespace="team-a", study=OTHER_STUDY, trial=3, expires=2**31)
    error = refused(smuggled, "GetTrials", Target(study=OTHER_STUDY, study_id=2))
    assert error.reason == "namespace-mismatch" and "team-a" in error.message
    # a prefix that is not a whole namespace does not count
    lookalike = TokenClaims(namespace="team", study="team-a/x/u", trial=None, expires=2**31)
    assert refused(lookalike, "GetTrials", Target(study="team-a/x/u")).reason == "namespace-mismatch"


def test_an_unknown_method_is_refused() -> None:
    assert refused(TRIAL, "DropEverything", own_trial()).reason == "unknown-method"


def test_parameters_must_lie_within_their_distribution() -> None:
    lr = distribution_to_json(FloatDistribution(1e-5, 1e-1, log=True))
    authorize(TRIAL, "SetTrialParameter", own_trial(param=("lr", 1e-3, lr)))
    error = refused(TRIAL, "SetTrialParameter", own_trial(param=("lr", 5.0, lr)))
    assert error.reason == "bad-param" and "'lr'" in error.message
    choice = distribution_to_json(CategoricalDistribution(["adam", "sgd"]))
    authorize(TRIAL, "SetTrialParameter", own_trial(param=("opt", 1.0, choice)))
    assert refused(TRIAL, "SetTrialParameter", own_trial(param=("opt", 2.0, choice))).reason == "bad-param"
    assert refused(TRIAL, "SetTrialParameter", own_trial(param=("x", 0.0, "{not json"))).reason == "bad-param"
