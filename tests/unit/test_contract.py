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
    StorageUrlError,
    connection_url,
    normalize_storage_url,
    redact_url,
    split_password,
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
    with_password = connection_url(url, {"TUNEFLEET_DB_PASSWORD": "s3cr/t"})
    assert with_password == "postgresql+psycopg2://tunefleet:s3cr%2Ft@db:5432/tf"
    assert "s3cr" not in redact_url(with_password)
    assert connection_url(url, {}) == "postgresql+psycopg2://tunefleet@db:5432/tf"
    assert connection_url("sqlite:///x.db", {"TUNEFLEET_DB_PASSWORD": "p"}) == "sqlite:///x.db"


@pytest.mark.parametrize(
    "given",
    [
        "postgresql://tf@db:5432/tf?sslmode=require",
        "postgres://tf@db:5432/tf?sslmode=require",
        "postgresql+psycopg://tf@db:5432/tf?sslmode=require",
        "postgresql+psycopg2://tf@db:5432/tf?sslmode=require",
        "postgresql+asyncpg://tf@db:5432/tf?sslmode=require",
        "POSTGRESQL://tf@db:5432/tf?sslmode=require",
    ],
)
def test_every_postgresql_spelling_opens_with_the_driver_we_ship(given: str) -> None:
    assert normalize_storage_url(given) == "postgresql+psycopg2://tf@db:5432/tf?sslmode=require"
    # What SQLAlchemy makes of it: psycopg2, the one driver tunefleet installs.
    from sqlalchemy.engine import make_url

    parsed = make_url(connection_url(given, {"TUNEFLEET_DB_PASSWORD": "pw"}))
    assert parsed.drivername == "postgresql+psycopg2"
    assert parsed.get_dialect().driver == "psycopg2"
    assert (parsed.username, parsed.password, parsed.host, parsed.port, parsed.database) == (
        "tf", "pw", "db", 5432, "tf"
    )
    assert parsed.query == {"sslmode": "require"}


@pytest.mark.parametrize("password", ["p@ss:w/rd", "50%off", "a#b?c&d=e", "sp ace+plus", "ünï€ode", "%41"])
def test_passwords_with_special_characters_survive(password: str) -> None:
    from urllib.parse import quote

    from sqlalchemy.engine import make_url

    from_env = make_url(connection_url("postgres://tf@db/tf", {"TUNEFLEET_DB_PASSWORD": password}))
    assert from_env.password == password
    # Inline and percent-encoded, as a user copies it from a connection string.
    inline = make_url(connection_url(f"postgresql://tf:{quote(password, safe='')}@db/tf", {}))
    assert inline.password == password
    # An inline password wins over the environment; it is never shown.
    assert make_url(connection_url(f"postgresql://tf:{quote(password, safe='')}@db/tf",
                                   {"TUNEFLEET_DB_PASSWORD": "other"})).password == password
    for url in (f"postgresql://tf:{quote(password, safe='')}@db/tf", connection_url(
            "postgres://tf@db/tf", {"TUNEFLEET_DB_PASSWORD": password})):
        shown = redact_url(url)
        assert quote(password, safe="") not in shown and "tf:***@db/tf" in shown
    assert split_password(f"postgresql+psycopg2://tf:{quote(password, safe='')}@db/tf") == (
        "postgresql+psycopg2://tf@db/tf", password
    )


def test_a_password_pasted_without_encoding_still_parses() -> None:
    from sqlalchemy.engine import make_url

    parsed = make_url(normalize_storage_url("postgresql://tf:p@ss/w:rd@db:5432/tf"))
    assert (parsed.username, parsed.password, parsed.host, parsed.database) == ("tf", "p@ss/w:rd", "db", "tf")
    assert redact_url("postgresql://tf:p@ss/w:rd@db:5432/tf") == "postgresql://tf:***@db:5432/tf"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("tf@db:5432/tf", "has no scheme"),
        ("mysql://tf:hunter2@db/tf", "'mysql' is not supported"),
    ],
)
def test_urls_tunefleet_cannot_open_are_clear_errors(url: str, message: str) -> None:
    with pytest.raises(StorageUrlError, match=message) as caught:
        normalize_storage_url(url)
    assert "hunter2" not in str(caught.value)


def test_sqlite_urls_are_left_alone() -> None:
    for url in ("sqlite:///relative.db", "sqlite:////abs/p@th/x.db", "sqlite://"):
        assert normalize_storage_url(url) == url
        assert redact_url(url) == url


def test_exit_codes_have_distinct_reasons() -> None:
    reasons = [code.reason for code in ExitCode]
    assert len(set(reasons)) == len(reasons)
    assert ExitCode.STORAGE_UNAVAILABLE.is_infrastructure
    assert not ExitCode.OBJECTIVE_RAISED.is_infrastructure
