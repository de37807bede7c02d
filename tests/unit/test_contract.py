"""The assignment contract between controller and worker."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from trial_worker.contract import (
    ASSIGNMENT_ENV,
    Assignment,
    CommandObjective,
    ExitCode,
    MetricDirection,
    PrunerConfig,
    PythonObjective,
    redact_url,
    storage_url_with_password,
)


def make(**changes: object) -> Assignment:
    fields: dict[str, object] = {
        "storage_url": "postgresql+psycopg2://tunefleet@db:5432/tunefleet",
        "study_name": "s",
        "trial_number": 4,
        "objective": PythonObjective(entry="train:objective"),
        "metrics": [MetricDirection(name="loss", direction="minimize")],
        "pruner": PrunerConfig(name="median", settings={"n_startup_trials": 3}),
        "seed": 123,
        "max_duration_s": 600,
    }
    fields.update(changes)
    return Assignment.model_validate(fields)


def test_round_trip_through_the_environment() -> None:
    assignment = make(objective=CommandObjective(argv=["python", "t.py", "--lr", "{{lr}}"]))
    restored = Assignment.from_env(assignment.to_env())
    assert restored == assignment
    assert isinstance(restored.objective, CommandObjective)


def test_missing_or_malformed_assignment_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=ASSIGNMENT_ENV):
        Assignment.from_env({})
    with pytest.raises(ValidationError):
        Assignment.from_env({ASSIGNMENT_ENV: '{"study_name": "s"}'})


def test_password_comes_from_the_environment_and_is_never_shown() -> None:
    url = "postgresql://tunefleet@db:5432/tf"
    with_password = storage_url_with_password(url, {"TUNEFLEET_DB_PASSWORD": "s3cr/t"})
    assert with_password == "postgresql://tunefleet:s3cr%2Ft@db:5432/tf"
    assert "s3cr" not in redact_url(with_password)
    assert storage_url_with_password(url, {}) == url
    assert storage_url_with_password("sqlite:///x.db", {"TUNEFLEET_DB_PASSWORD": "p"}) == "sqlite:///x.db"


def test_exit_codes_have_distinct_reasons() -> None:
    reasons = [code.reason for code in ExitCode]
    assert len(set(reasons)) == len(reasons)
    assert ExitCode.STORAGE_UNAVAILABLE.is_infrastructure
    assert not ExitCode.OBJECTIVE_RAISED.is_infrastructure
