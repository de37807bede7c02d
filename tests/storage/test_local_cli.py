"""``tunefleet run`` as a user runs it: Ctrl-C, a runner killed mid-study, and resuming."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import REPO_ROOT
from tests.support.postgres import PostgresServer
from tests.support.specs import study_document, write_study

pytestmark = pytest.mark.storage


# A test session started in the background (`cmd &`, nohup) ignores SIGINT, and a child inherits
# that, so Ctrl-C would do nothing; a user's `tunefleet run` in a terminal takes it. The child
# restores Python's handler itself: a preexec_fn would make subprocess fork() a test process that
# may hold gRPC's threads (the gateway tests), and gRPC's fork handler can abort the child.
_AS_IN_A_TERMINAL = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('controller.cli', run_name='__main__', alter_sys=True)"
)


def start_run(spec: Path, storage_url: str, sleep_s: str, tmp_path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "TUNEFLEET_TEST_SLEEP": sleep_s, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            _AS_IN_A_TERMINAL,
            "run",
            str(spec),
            "--storage",
            storage_url,
            "-q",
            "--workdir",
            str(REPO_ROOT),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout_s: float) -> str:
    """Its output once it exits; killed (never left running) if it does not within ``timeout_s``."""
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"tunefleet run did not exit within {timeout_s} s:\n{output}") from None
    return output


def wait_for_running(storage_url: str, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            trials = optuna.load_study(study_name="test-study", storage=storage_url).get_trials()
        except KeyError:
            trials = []
        if sum(t.state == TrialState.RUNNING for t in trials) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"{count} trials never ran at once")


def sleeping_study(tmp_path: Path) -> Path:
    document = study_document(
        trial={"python": "tests.support.objectives:sleeps", "maxRetries": 1}, budget={"maxTrials": 4}
    )
    return write_study(tmp_path / "study.yaml", document)


def test_ctrl_c_marks_running_trials_interrupted_and_a_rerun_finishes_them(
    storage_url: str, tmp_path: Path
) -> None:
    spec = sleeping_study(tmp_path)
    process = start_run(spec, storage_url, "60", tmp_path)
    wait_for_running(storage_url, 2)
    process.send_signal(signal.SIGINT)
    output = finish(process, 60)
    assert process.returncode == 0, output
    assert "Interrupted" in output
    trials = optuna.load_study(study_name="test-study", storage=storage_url).get_trials()
    assert [t.user_attrs.get("tunefleet.reason") for t in trials] == ["interrupted", "interrupted"]

    rerun = start_run(spec, storage_url, "0", tmp_path)
    output = finish(rerun, 120)
    assert rerun.returncode == 0, output
    assert "MaxTrialsReached" in output
    trials = optuna.load_study(study_name="test-study", storage=storage_url).get_trials()
    retried = {t.user_attrs["tunefleet.retry_of"]: t for t in trials if "tunefleet.retry_of" in t.user_attrs}
    assert set(retried) == {0, 1}
    assert all(retried[n].params == trials[n].params for n in (0, 1))
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
    assert not any(t.state == TrialState.RUNNING for t in trials)


def test_a_killed_runner_leaves_nothing_running_after_the_rerun(sqlite_url: str, tmp_path: Path) -> None:
    spec = sleeping_study(tmp_path)
    process = start_run(spec, sqlite_url, "60", tmp_path)
    wait_for_running(sqlite_url, 2)
    process.kill()
    finish(process, 30)

    rerun = start_run(spec, sqlite_url, "0", tmp_path)
    output = finish(rerun, 120)
    assert rerun.returncode == 0, output
    trials = optuna.load_study(study_name="test-study", storage=sqlite_url).get_trials()
    lost = [t for t in trials if t.user_attrs.get("tunefleet.reason") == "lost"]
    outcomes = [(t.number, t.state.name, t.user_attrs.get("tunefleet.reason"), t.params) for t in trials]
    assert [t.number for t in lost] == [0, 1], outcomes
    assert not any(t.state == TrialState.RUNNING for t in trials)
    first_attempts = [t for t in trials if "tunefleet.retry_of" not in t.user_attrs]
    assert len(first_attempts) == 4, "maxTrials counts configurations, not attempts"


def test_bad_spec_exits_1_without_a_traceback(tmp_path: Path) -> None:
    document = study_document(parallelism=-1)
    spec = write_study(tmp_path / "bad.yaml", document)
    result = subprocess.run(
        [sys.executable, "-m", "controller.cli", "run", str(spec)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 1
    assert "spec.parallelism" in result.stderr and "Traceback" not in result.stderr


def test_unreachable_storage_is_a_clear_error(tmp_path: Path) -> None:
    spec = write_study(tmp_path / "study.yaml", study_document())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "run",
            str(spec),
            "--storage",
            "postgresql+psycopg2://tunefleet:hunter2@127.0.0.1:1/none",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert "cannot open storage" in result.stderr and "127.0.0.1:1" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


def test_run_and_export_take_any_postgresql_url_and_a_password_from_the_environment(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """``postgresql://`` is what users and the chart write; SQLAlchemy 2.1 alone would want psycopg 3."""
    role, password = f"tf_{uuid.uuid4().hex[:8]}", "p@ss:w/rd%?"
    postgres_server.create_login(role, password)
    database = postgres_server.create_database(owner=role).rsplit("/", 1)[1]
    where = f"{role}@{postgres_server.host}:{postgres_server.port}/{database}"
    spec = write_study(tmp_path / "study.yaml", study_document(budget={"maxTrials": 2}))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TUNEFLEET_DB_PASSWORD": password}
    tunefleet = [sys.executable, "-m", "controller.cli"]
    run = subprocess.run(
        [*tunefleet, "run", str(spec), "--storage", f"postgresql://{where}", "-q",
         "--workdir", str(REPO_ROOT)],
        capture_output=True, text=True, cwd=tmp_path, env=env, check=False, timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "complete 2 · running 0 · pruned 0 · failed 0" in run.stdout, run.stdout
    export = subprocess.run(
        [*tunefleet, "export", "--storage", f"postgres://{where}", "--study", "test-study",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path, env=env, check=False, timeout=120,
    )
    assert export.returncode == 0, export.stdout + export.stderr
    assert (tmp_path / "out" / "best_config.json").exists()
    assert password not in run.stdout + run.stderr + export.stdout + export.stderr
