"""What a real API server found (issue 11), against a real control plane: a controller killed while
it creates trials, resumes, the same name applied twice, and an objective that cannot run.

``pytest tests/real_cluster --real-cluster`` (see docs/real-cluster.md). The controller runs as the
chart's ServiceAccount with the chart's environment (``tests/real_cluster/harness.py``); trial pods
run as local processes. Trials are read from the database through ``status.optunaStudy``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.real_cluster.conftest import GROUP, VERSION, RealCluster
from tests.real_cluster.harness import LocalController
from trial_worker.contract import ATTR_REASON, ATTR_RETRY_OF, ATTR_SEED

pytestmark = [pytest.mark.real_cluster, pytest.mark.timeout(900)]

# float('') fails: a trial given an empty placeholder would exit 1, not run with a hole in it.
SCRIPT = "import sys; x, y = map(float, sys.argv[1:3]); print('loss=' + str((x - 1) ** 2 + y ** 2))"


def xy_study(name: str, image: str, *, max_trials: int, parallelism: int = 1) -> dict[str, Any]:
    """A command-mode Study over two parameters, so a crash can fall between them."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Study",
        "metadata": {"name": name},
        "spec": {
            "objective": {"metrics": [{"name": "loss", "direction": "minimize"}]},
            "searchSpace": {
                "x": {"type": "float", "low": -10, "high": 10},
                "y": {"type": "float", "low": -10, "high": 10},
            },
            "strategy": {"sampler": "random", "pruner": "none", "seed": 7},
            "budget": {"maxTrials": max_trials},
            "parallelism": parallelism,
            "trial": {
                "command": ["python", "-c", SCRIPT, "{{x}}", "{{y}}"],
                "image": image,
                "cpus": 0.1,
                "memory": "256Mi",
                "maxDuration": "5m",
            },
        },
    }


def finished(cluster: RealCluster, name: str, summary: str | None = None) -> bool:
    status = cluster.status(name)
    done = status.get("phase") in ("Succeeded", "Failed")
    return done and (summary is None or status.get("trialsSummary") == summary)


def event_reasons(cluster: RealCluster, name: str) -> Counter[str]:
    return Counter(e.reason for e in cluster.events(name))


@pytest.fixture
def own_controller(controller: LocalController) -> Iterator[LocalController]:
    """The controller, for a test that restarts it with more environment; restored after."""
    environment = controller.environment
    yield controller
    controller.stop()
    controller.environment = environment
    controller.start().wait_ready()


def with_env(controller: LocalController, **extra: str) -> None:
    """Restart the controller with ``extra`` added to the chart's environment."""
    plain = controller.environment
    controller.stop()
    controller.environment = lambda: {**plain(), **extra}
    controller.start()


def test_a_controller_killed_while_it_creates_trials_runs_none_without_params_and_repeats_none(
    real_cluster: RealCluster, own_controller: LocalController
) -> None:
    controller = own_controller
    plain = controller.environment
    controller.stop()
    controller.environment = lambda: {**plain(), "TUNEFLEET_CRASH_AT": "after-param"}
    controller.start()
    real_cluster.apply_study(xy_study("crash", real_cluster.image, max_trials=4, parallelism=2))
    real_cluster.wait(lambda: not controller.running, 180, "the controller never reached after-param")
    assert "crash point reached" in controller.log_tail(200)

    controller.environment = plain
    controller.start().wait_ready()
    real_cluster.wait(lambda: finished(real_cluster, "crash"), 600, "the study did not finish")

    trials = real_cluster.trials("crash")
    half = trials[0]
    assert half.state.name == "FAIL" and half.user_attrs[ATTR_REASON] == "incomplete"
    ran = [t for t in trials if t.user_attrs.get(ATTR_REASON) != "incomplete"]
    assert [t.state.name for t in ran] == ["COMPLETE"] * 4
    assert all(set(t.params) == {"x", "y"} and ATTR_SEED in t.user_attrs for t in ran)
    assert len({tuple(sorted(t.params.items())) for t in ran}) == 4
    assert "crash-t0" not in {j.metadata.name for j in real_cluster.jobs("crash")}
    status = real_cluster.status("crash")
    assert status["phase"] == "Succeeded" and status["trialsSummary"] == "4/4"
    assert set(status["bestTrial"]["params"]) == {"x", "y"}


def test_resumes_and_restarts_repeat_no_configuration_and_no_event(
    real_cluster: RealCluster, own_controller: LocalController, tmp_path: Path
) -> None:
    controller = own_controller
    reconciles = tmp_path / "reconciles.txt"
    with_env(controller, TUNEFLEET_RECONCILE_LOG=str(reconciles))
    controller.wait_ready()
    real_cluster.apply_study(xy_study("resume", real_cluster.image, max_trials=3))
    real_cluster.wait(lambda: finished(real_cluster, "resume", "3/3"), 600, "the study did not finish")
    controller.kill()  # a new controller process, then a spec change: both rebuild the sampler
    real_cluster.patch_study("resume", {"spec": {"budget": {"maxTrials": 6}, "parallelism": 2}})
    controller.start().wait_ready()
    real_cluster.wait(lambda: finished(real_cluster, "resume", "6/6"), 600, "the resumed study did not end")
    # More trials, suspended at once (an ended study stays ended): then resumed.
    real_cluster.patch_study("resume", {"spec": {"suspend": True, "budget": {"maxTrials": 8}}})
    real_cluster.wait(lambda: real_cluster.status("resume").get("phase") == "Suspended", 120, "not Suspended")
    real_cluster.patch_study("resume", {"spec": {"suspend": False}})
    real_cluster.wait(lambda: finished(real_cluster, "resume", "8/8"), 600, "the study did not finish again")
    before = event_reasons(real_cluster, "resume")
    controller.kill()
    lines = len(reconciles.read_text().splitlines())
    controller.start().wait_ready()
    # Its first reconcile of the ended study is where StudyFinished used to be posted again.
    real_cluster.wait(lambda: len(reconciles.read_text().splitlines()) > lines, 120, "no reconcile")

    configurations = [
        tuple(sorted(t.params.items()))
        for t in real_cluster.trials("resume")
        if t.user_attrs.get(ATTR_RETRY_OF) is None
    ]
    assert len(configurations) == 8
    assert len(set(configurations)) == 8, "a resume repeated a configuration"
    after = event_reasons(real_cluster, "resume")
    assert after["StudyStarted"] == 1
    assert after["StudyFinished"] == before["StudyFinished"] == 3  # once per end, never per restart


def test_the_same_name_applied_twice_is_a_new_study(real_cluster: RealCluster) -> None:
    real_cluster.apply_study(xy_study("twice", real_cluster.image, max_trials=2))
    real_cluster.wait(lambda: finished(real_cluster, "twice", "2/2"), 600, "the first study did not finish")
    first = real_cluster.study("twice")
    assert first is not None
    old_key = first["status"]["optunaStudy"]
    old_trials = real_cluster.trials("twice")
    real_cluster.delete_study("twice")
    real_cluster.wait(lambda: real_cluster.study("twice") is None, 120, "the Study was not deleted")
    real_cluster.apply_study(xy_study("twice", real_cluster.image, max_trials=2))
    real_cluster.wait(lambda: finished(real_cluster, "twice", "2/2"), 600, "the second study did not run")

    second = real_cluster.study("twice")
    assert second is not None and second["metadata"]["uid"] != first["metadata"]["uid"]
    status = second["status"]
    assert status["phase"] == "Succeeded" and status["stopReason"] == "MaxTrialsReached"
    assert status["optunaStudy"] == f"{real_cluster.namespace}/twice/{second['metadata']['uid']}" != old_key
    assert [t.state.name for t in real_cluster.trials("twice")] == ["COMPLETE"] * 2  # its own two
    assert len(old_trials) == 2  # the earlier object's trials stay in their own study
    kept = [e for e in real_cluster.events("twice") if e.reason == "EarlierStudyKept"]
    assert len(kept) == 1 and kept[0].involved_object.uid == second["metadata"]["uid"]
    assert f"{old_key!r} (2 trials)" in kept[0].message and "tunefleet export" in kept[0].message


def test_an_objective_that_cannot_run_stops_the_study_fast(real_cluster: RealCluster) -> None:
    body = xy_study("broken", real_cluster.image, max_trials=30, parallelism=2)
    body["spec"]["trial"].pop("command")
    body["spec"]["trial"]["python"] = "tunefleet_no_such_module.train:objective"  # exit 9
    real_cluster.apply_study(body)
    real_cluster.wait(lambda: finished(real_cluster, "broken"), 300, "the study did not stop")

    status = real_cluster.status("broken")
    assert status["phase"] == "Failed" and status["stopReason"] == "FailureBudgetExhausted"
    assert len(real_cluster.jobs("broken")) <= 4  # it used to create all 30
    failed = real_cluster.condition("broken", "Failed")
    assert failed is not None and failed["status"] == "True" and failed["reason"] == "FailureBudgetExhausted"
    message = failed["message"]
    assert message.startswith("the first 3 trials all failed with objectiveNotFound and none completed")
    assert "No module named 'tunefleet_no_such_module'" in message
    warnings = [e for e in real_cluster.events("broken") if e.reason == "FailureBudgetExhausted"]
    assert len(warnings) == 1 and warnings[0].type == "Warning"
