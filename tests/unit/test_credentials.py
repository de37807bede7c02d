"""Where the trial pods' database password comes from, and that no unreadable Secret goes unsaid."""

from __future__ import annotations

import pytest

from controller.credentials import PasswordSources, SecretUnreadable, check_password
from controller.kube import status as status_mod

SOURCES = PasswordSources("tunefleet-system", "tunefleet-db", "started-with")


class Reader:
    """Secrets by (namespace, name); a value that is a reason string is that failure."""

    def __init__(self, secrets: dict[tuple[str, str], str]) -> None:
        self.secrets = secrets

    def read_secret_value(self, namespace: str, name: str, key: str) -> str:
        value = self.secrets.get((namespace, name), "SecretNotFound")
        if value in ("SecretForbidden", "SecretNotFound", "SecretKeyMissing"):
            detail = "RBAC says no" if value == "SecretForbidden" else ""
            raise SecretUnreadable(namespace, name, key, value, detail)
        return value


def test_the_chart_secret_is_read_and_rotates_the_controller_too() -> None:
    check = check_password(Reader({("tunefleet-system", "tunefleet-db"): "rotated"}), SOURCES, "team-a", None)
    assert (check.password, check.problem, check.blocking) == ("rotated", None, False)
    assert check.controller_password == "rotated"
    assert check.reason == "SecretRead" and "tunefleet-system/tunefleet-db" in check.message


def test_a_forbidden_chart_secret_falls_back_loudly() -> None:
    reader = Reader({("tunefleet-system", "tunefleet-db"): "SecretForbidden"})
    check = check_password(reader, SOURCES, "team-a", None)
    assert check.password == "started-with" and not check.blocking
    assert check.reason == "SecretForbidden" and check.controller_password is None
    assert "tunefleet-system/tunefleet-db is forbidden to the controller (403): RBAC says no" in check.message
    assert "rotated password reaches neither" in check.message


@pytest.mark.parametrize(
    ("failure", "said"),
    [
        ("SecretForbidden", "is forbidden"),
        ("SecretNotFound", "does not exist"),
        ("SecretKeyMissing", "has no key 'password'"),
    ],
)
def test_a_secret_ref_that_cannot_be_read_blocks_new_trials(failure: str, said: str) -> None:
    reader = Reader({("tunefleet-system", "tunefleet-db"): "db-pw", ("team-a", "team-db"): failure})
    check = check_password(reader, SOURCES, "team-a", "team-db")
    assert check.blocking and check.reason == failure and check.password == ""
    assert f"Secret team-a/team-db {said}" in check.message and "no trial starts" in check.message
    assert check.controller_password == "db-pw"  # the controller's own connections still follow


def test_a_readable_secret_ref_wins() -> None:
    reader = Reader({("tunefleet-system", "tunefleet-db"): "db-pw", ("team-a", "team-db"): "team-pw"})
    check = check_password(reader, SOURCES, "team-a", "team-db")
    assert (check.password, check.problem, check.blocking) == ("team-pw", None, False)


def test_without_a_database_secret_the_environment_is_the_source_and_no_problem() -> None:
    check = check_password(Reader({}), PasswordSources("ns", None, "env-pw"), "team-a", None)
    assert (check.password, check.problem) == ("env-pw", None)


def test_the_credentials_condition_replaces_only_its_own_type() -> None:
    previous = [{"type": "Ready", "status": "True", "reason": "Reconciled", "message": "",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Running", "status": "True", "reason": "TrialsRunning", "message": "",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    blocked = status_mod.credentials_blocked_status("SecretForbidden", "why", previous)
    by_type = {c["type"]: c for c in blocked["conditions"]}
    assert set(blocked) == {"conditions"}  # phase, counts and best trial stay as they are
    assert by_type["Running"] == previous[1]
    assert by_type["Ready"]["status"] == "False" and by_type["Ready"]["reason"] == "SecretForbidden"
    assert by_type["Ready"]["lastTransitionTime"] != "2026-01-01T00:00:00Z"
    assert by_type[status_mod.CREDENTIALS] | {"lastTransitionTime": ""} == {
        "type": "StorageCredentials", "status": "False", "reason": "SecretForbidden", "message": "why",
        "lastTransitionTime": "",
    }
