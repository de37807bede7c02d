"""What a study and its trials look like in MLflow, and how tracker failures are told (no server)."""

from __future__ import annotations

import datetime

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import ENDPOINT_NOT_FOUND, UNAUTHENTICATED
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from controller.budget.accounting import Charge
from controller.spec import SpecInvalid, validate_spec
from controller.spec.tracking import MlflowTracking
from controller.tracking.content import trial_content
from controller.tracking.local import with_mlflow
from controller.tracking.mlflow_writer import classify
from tests.support.specs import study_document

START = datetime.datetime(2026, 1, 2, 3, 4, 5)


def a_trial(state: TrialState = TrialState.COMPLETE, **attrs: object) -> object:
    trial = create_trial(
        params={"lr": 0.01},
        distributions={"lr": FloatDistribution(1e-4, 1.0, log=True)},
        value=0.25 if state == TrialState.COMPLETE else None,
        state=state,
        intermediate_values={0: 0.9, 1: 0.5, 2: 0.3},
        user_attrs={"tunefleet.reason": "completed", "tunefleet.node": "gpu-7", **attrs},
    )
    trial.datetime_start = START
    trial.datetime_complete = START + datetime.timedelta(seconds=30) if state.is_finished() else None
    trial.number = 3
    return trial


def test_a_trial_is_a_run_with_params_final_values_its_curve_and_where_it_ran() -> None:
    content = trial_content(a_trial(), ["val_loss"], Charge(60, 30), "team-a/mlp", {"team": "vision"})  # type: ignore[arg-type]
    assert content.name == "trial-3" and content.status == "FINISHED"
    assert content.params == {"lr": "0.01"}
    assert content.metrics["val_loss"].value == 0.25
    assert content.metrics["tunefleet/gpu_seconds"].value == 60
    assert content.metrics["tunefleet/duration_s"].value == 30
    assert content.curve_key == "intermediate/val_loss"
    assert content.curve == ((0, 0.9), (1, 0.5), (2, 0.3))
    assert content.tags["tunefleet.node"] == "gpu-7" and content.tags["team"] == "vision"
    assert content.tags["tunefleet.state"] == "COMPLETE"
    assert content.end_ms is not None and content.end_ms - (content.start_ms or 0) == 30_000


def test_the_same_trial_always_gives_the_same_content_and_any_change_shows() -> None:
    first = trial_content(a_trial(), ["loss"], None, "s", {})  # type: ignore[arg-type]
    assert first.digest() == trial_content(a_trial(), ["loss"], None, "s", {}).digest()  # type: ignore[arg-type]
    settled = trial_content(a_trial(), ["loss"], Charge(0, 12), "s", {})  # type: ignore[arg-type]
    assert settled.digest() != first.digest()


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (TrialState.RUNNING, "RUNNING"),
        (TrialState.PRUNED, "KILLED"),
        (TrialState.FAIL, "FAILED"),
        (TrialState.WAITING, "SCHEDULED"),
    ],
)
def test_trial_states_map_to_mlflow_run_statuses(state: TrialState, status: str) -> None:
    content = trial_content(a_trial(state), ["loss"], None, "s", {})  # type: ignore[arg-type]
    assert content.status == status
    assert (content.end_ms is None) == (not state.is_finished())


def test_a_retry_links_to_the_trial_it_repeats() -> None:
    content = trial_content(
        a_trial(**{"tunefleet.retry_of": 1, "tunefleet.attempt": 1}), ["loss"], None, "s", {}
    )  # type: ignore[arg-type]
    assert content.links == {"tunefleet.retry_of_run": 1}
    assert content.tags["tunefleet.retry_of"] == "1" and content.tags["tunefleet.attempt"] == "1"


@pytest.mark.parametrize(
    ("tracking", "message"),
    [
        ({"trackingUri": "file:///tmp/mlruns"}, "is not an http:// or https:// URL"),
        ({"trackingUri": "https://bob:hunter2@mlflow.example"}, "put them in a Secret named by secretRef"),
        ({"trackingUri": "http://mlflow:5000", "tags": {"mlflow.user": "x"}}, "are reserved"),
        ({"trackingUri": "http://mlflow:5000", "experiment": ""}, "at least 1 character"),
        ({"trackingUri": "http://mlflow:5000", "secretref": "x"}, "unknown field"),
    ],
)
def test_a_bad_tracking_block_names_the_field(tracking: dict[str, object], message: str) -> None:
    with pytest.raises(SpecInvalid) as caught:
        validate_spec(study_document(tracking={"mlflow": tracking})["spec"])
    assert "spec.tracking.mlflow" in str(caught.value) and message in str(caught.value)


def test_the_mlflow_flag_sets_the_uri_and_keeps_the_rest_of_the_block() -> None:
    from controller.spec import StudyManifest

    document = study_document(tracking={"mlflow": {"trackingUri": "http://a:5000", "experiment": "e"}})
    manifest = with_mlflow(StudyManifest.model_validate(document), "http://b:5000/")
    assert manifest.spec.tracking is not None
    assert manifest.spec.tracking.mlflow == MlflowTracking(trackingUri="http://b:5000", experiment="e")
    bare = StudyManifest.model_validate(study_document())
    assert with_mlflow(bare, None) is bare


def test_tracker_failures_are_told_as_reasons_naming_the_field() -> None:
    uri = "http://mlflow:5000"
    refused = MlflowException("You are not authenticated.", error_code=UNAUTHENTICATED)
    down = MlflowException("API request to http://mlflow:5000 failed with exception Connection refused")
    down.__cause__ = requests.exceptions.ConnectionError("Connection refused")
    missing = MlflowException("404 != 200", error_code=ENDPOINT_NOT_FOUND)
    told = {classify(e, uri, "Secret 'x'").reason for e in (refused, down, missing)}
    assert told == {"CredentialsRefused", "TrackerUnreachable", "NotATracker"}
    problem = classify(refused, uri, "Secret 'mlflow-login' in namespace 'team-a' (secretRef)")
    assert problem.message.startswith("spec.tracking.mlflow: ") and "mlflow-login" in problem.message
