"""A study whose trials all fail stops fast, locally, with the words the controller uses.

(``budget.maxFailedTrials`` letting every trial fail runs in test_local_runner.py's failure tests.)
"""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

from controller.cli import EXIT_ERROR, main
from controller.studies.record import ATTR_STOP_DETAIL, ATTR_STOP_REASON
from tests.conftest import REPO_ROOT
from tests.support.specs import study_document, write_study
from trial_worker.contract import ATTR_REASON

pytestmark = pytest.mark.storage


def test_an_objective_that_cannot_be_imported_stops_after_three_trials_with_its_error(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # its trial logs go to ./.tunefleet/logs
    document = study_document(
        parallelism=2,
        budget={"maxTrials": 50},
        trial={"python": "tests.support.no_such_module:objective", "maxDuration": "60s"},
    )
    spec = write_study(tmp_path / "study.yaml", document)
    code = main(["run", str(spec), "--storage", sqlite_url, "-q", "--workdir", str(REPO_ROOT)])
    stderr = capsys.readouterr().err

    assert code == EXIT_ERROR
    study = optuna.load_study(study_name="test-study", storage=sqlite_url)
    trials = study.get_trials()
    assert len(trials) <= 4  # 3 failures decide; one more may have been running, and was stopped
    reasons = [t.user_attrs.get(ATTR_REASON) for t in trials]
    assert reasons.count("objectiveNotFound") >= 3 and set(reasons) <= {"objectiveNotFound", "failureBudget"}
    assert study.user_attrs[ATTR_STOP_REASON] == "FailureBudgetExhausted"
    message = study.user_attrs[ATTR_STOP_DETAIL]
    assert message.startswith("the first 3 trials all failed with objectiveNotFound and none completed")
    # Trials 0 and 1 start together: on a busy machine 1, 2 and 3 may fail while trial 0 is still
    # starting, so the message names the first trial that had failed, not always trial 0.
    named = re.search(
        r"trial (\d+) failed with objectiveNotFound: cannot load tests\.support\.no_such_module:obj", message
    )
    assert named, message
    failed = sorted(t.number for t in trials if t.user_attrs.get(ATTR_REASON) == "objectiveNotFound")
    assert int(named.group(1)) in failed[:2]
    log_tail = message.split("its log ends with:\n", 1)[1]
    assert log_tail.endswith("ModuleNotFoundError: No module named 'tests.support.no_such_module'")
    assert message in stderr
