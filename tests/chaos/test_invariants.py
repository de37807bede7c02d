"""The invariants themselves, on hand-made snapshots: a harness that cries wolf hides real bugs."""

from __future__ import annotations

import datetime
from typing import Any

from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from controller.kube.manifests import MANAGED_BY_LABEL, STUDY_LABEL
from tests.chaos.invariants import Context, no_orphans, status_matches_database
from tests.chaos.observe import History, Snapshot
from tests.chaos.studies import chaos_studies
from trial_worker.contract import ATTR_REASON

NOW = datetime.datetime(2026, 11, 30, tzinfo=datetime.UTC)
SPACE = {"x": FloatDistribution(-10, 10), "y": IntDistribution(0, 50)}


def _trial(number: int, state: TrialState, value: float | None = None, reason: str | None = None,
           params: dict[str, Any] | None = None) -> FrozenTrial:
    params = {"x": float(number), "y": number} if params is None else params
    return FrozenTrial(
        number=number, state=state, value=value, datetime_start=NOW, datetime_complete=NOW,
        params=params, distributions={k: SPACE[k] for k in params},
        user_attrs={ATTR_REASON: reason} if reason else {}, system_attrs={}, intermediate_values={},
        trial_id=number + 1,
    )


def _snapshot(trials: list[FrozenTrial], failed_shown: int) -> Snapshot:
    status = {"phase": "Succeeded", "bestTrial": {"number": 0},
              "trials": {"complete": 2, "failed": failed_shown, "pruned": 0, "running": 0}}
    return Snapshot(at=NOW, studies={"gpu-a": {"metadata": {"uid": "u"}, "status": status}}, jobs=[],
                    pods=[], secrets=[], trials={"gpu-a": trials})


def test_an_incomplete_ask_is_no_trial_in_the_status_counts() -> None:
    """A crash between asking a trial and writing its params leaves it FAIL ``incomplete``:
    status.trials leaves it out (issue 11), and so must the invariant."""
    complete = [_trial(0, TrialState.COMPLETE, 1.0), _trial(1, TrialState.COMPLETE, 2.0)]
    incomplete = _trial(2, TrialState.FAIL, reason="incomplete", params={})
    context = Context(chaos_studies(11), 20.0, final=True)

    assert status_matches_database(_snapshot([*complete, incomplete], 0), History(), context) == []
    raised = _trial(3, TrialState.FAIL, reason="objectiveRaised")
    assert status_matches_database(_snapshot([*complete, incomplete, raised], 0), History(), context) == [
        "gpu-a: status.trials.failed 0, database 1"
    ]


def test_a_token_secret_is_an_orphan_only_once_its_job_is_gone() -> None:
    """Each trial's gateway Secret lives as long as its Job (the Job owns it): kept Jobs keep
    theirs; a Secret whose Job was deleted and not collected is left behind."""
    job = {"metadata": {"name": "gpu-a-t0", "uid": "job-0", "labels": {STUDY_LABEL: "gpu-a"},
                        "ownerReferences": [{"kind": "Study", "uid": "u"}]}}
    secrets = [
        {"metadata": {"name": f"gpu-a-t{n}-gateway-0f5d820f", "labels": {MANAGED_BY_LABEL: "tunefleet"},
                      "ownerReferences": [{"kind": "Job", "uid": f"job-{n}"}]}}
        for n in (0, 1)
    ]
    snapshot = Snapshot(at=NOW, studies={"gpu-a": {"metadata": {"uid": "u"}, "status": {}}}, jobs=[job],
                        pods=[], secrets=secrets, trials={})
    context = Context(chaos_studies(11), 20.0, final=True)

    assert no_orphans(snapshot, History(), context) == [
        "Secret gpu-a-t1-gateway-0f5d820f is left behind (no existing Job owns it)"
    ]


def test_a_postgres_restart_drawn_while_the_server_is_down_is_skipped_not_started_twice() -> None:
    """Seed 408 of the first 30-minute soak: a second restart drawn while the server was down
    scheduled a second start, which found the server running and failed the whole soak."""
    from pathlib import Path

    from tests.chaos.faults import Environment, FaultInjector

    class Server:
        data_dir = Path("/nonexistent")

        def __init__(self) -> None:
            self.calls: list[str] = []

        def stop(self, mode: str) -> None:
            self.calls.append(f"stop {mode}")

        def start(self) -> None:
            if self.calls[-1] == "start":
                raise AssertionError("started while running")
            self.calls.append("start")

    server = Server()
    env = Environment(kube=None, postgres=server, replicas=[], studies=[], log=lambda line: None)  # type: ignore[arg-type]
    faults = FaultInjector(408, env, window_s=10)
    faults._postgres_restart("postgres_restart")
    faults._postgres_restart("postgres_restart")
    faults.repair_all()
    faults._postgres_restart("postgres_restart")  # up again: the next one acts
    faults.repair_all()
    assert server.calls == ["stop immediate", "start", "stop immediate", "start"]
    assert faults.skipped["postgres_restart"] == 1 and faults.injected["postgres_restart"] == 2
