"""What a restart, a resume or a re-created Study must not do: run a trial without its parameters,
replay a configuration, post an Event again, or adopt another object's data.

Pods are simulated: a trial pod "runs" by having this test tell its trial a value computed from
the params it finds in the study (the worker is not what is under test here; the failure-budget
test runs real workers).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa

from controller.kube.manifests import STUDY_UID_LABEL
from tests.cluster.controller_harness import (
    NAMESPACE,
    STUDIES,
    ControllerProcess,
    condition,
    finished,
    load_trials,
    optuna_key,
    prepare_cluster,
    study_manifest,
    study_status,
    trial_jobs,
    wait_for,
)
from tests.cluster.emulator import KubeEmulator
from trial_worker.contract import ASSIGNMENT_ENV, ATTR_KIND, ATTR_REASON, ATTR_RETRY_OF, ATTR_SEED, Assignment

pytestmark = pytest.mark.timeout(300)

XY = {"x": {"type": "float", "low": -10.0, "high": 10.0}, "y": {"type": "float", "low": -10.0, "high": 10.0}}
SAMPLERS = ["random", "tpe", "gp", "cmaes", "qmc", "nsga2", "nsga3", "motpe"]
MULTI_OBJECTIVE = ("nsga2", "nsga3", "motpe")


class Teller:
    """The simulated pods' worker: tells each trial a value from its params as its pod starts."""

    def __init__(self, storage_url: str) -> None:
        self.storage = optuna.storages.RDBStorage(storage_url)
        self.lock = threading.Lock()

    def behaviour(self, pod: dict[str, Any]) -> tuple[float, int]:
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env") or []}
        assignment = Assignment.model_validate_json(env[ASSIGNMENT_ENV])
        with self.lock:
            study_id = self.storage.get_study_id_from_name(assignment.study_name)
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, assignment.trial_number)
            trial = self.storage.get_trial(trial_id)
            if not {"x", "y"} <= set(trial.params) or ATTR_SEED not in trial.user_attrs:
                return (0.2, 11)  # what the worker does with an incomplete trial: refuse it
            x, y = float(trial.params["x"]), float(trial.params["y"])
            values = [(x - 1) ** 2 + (y + 2) ** 2]
            if len(assignment.metrics) == 2:
                values.append((x + 1) ** 2 + y**2)
            self.storage.set_trial_state_values(trial_id, optuna.trial.TrialState.COMPLETE, values)
        return (0.2, 0)


def xy_study(name: str, sampler: str = "random", max_trials: int = 3, parallelism: int = 1) -> dict[str, Any]:
    body = study_manifest(name, max_trials=max_trials, parallelism=parallelism)
    spec = body["spec"]
    spec["searchSpace"] = XY
    spec["strategy"] = {"sampler": sampler, "pruner": "none", "seed": 7}
    if sampler in MULTI_OBJECTIVE:
        spec["objective"] = {
            "metrics": [{"name": "a", "direction": "minimize"}, {"name": "b", "direction": "minimize"}]
        }
    return body


def events(kube: KubeEmulator, name: str, reason: str) -> list[dict[str, Any]]:
    return [
        e
        for e in kube.api.list("events", NAMESPACE)
        if e["involvedObject"]["name"] == name and e.get("reason") == reason
    ]


def search_configurations(storage_url: str, name: str) -> list[tuple[tuple[str, Any], ...]]:
    """Each search trial's configuration; retries (same params on purpose) and abandoned trials
    (never ran) left out."""
    return [
        tuple(sorted(t.params.items()))
        for t in load_trials(storage_url, name)
        if t.user_attrs.get(ATTR_RETRY_OF) is None
        and ATTR_KIND not in t.user_attrs
        and t.user_attrs.get(ATTR_REASON) != "incomplete"
    ]


def test_a_controller_killed_between_two_parameters_never_runs_the_half_asked_trial(
    kube_emulator_factory: Callable[..., KubeEmulator], postgres_url: str, tmp_path: Path
) -> None:
    """The issue's crash: the trial exists with ``x`` and without ``y``. It used to get a Job whose
    ``{{y}}`` was empty, completed with ``params: {}`` and became the best trial."""
    kube = kube_emulator_factory(mode="simulate", behaviour=Teller(postgres_url).behaviour)
    prepare_cluster(kube)
    doomed = ControllerProcess(
        kube, postgres_url, tmp_path, env={"TUNEFLEET_CRASH_AT": "after-param"}, name="doomed"
    ).start()
    kube.api.create(STUDIES, xy_study("halfway"), NAMESPACE)
    wait_for(lambda: doomed.process is not None and doomed.process.poll() is not None, 120,
             lambda: "the controller never reached after-param\n" + doomed.log()[-3000:])
    [half] = load_trials(postgres_url, "halfway")
    assert list(half.params) == ["x"] and half.state.name == "RUNNING"

    fresh = ControllerProcess(kube, postgres_url, tmp_path, name="fresh").start()
    try:
        wait_for(lambda: finished(kube, "halfway"), 120,
                 lambda: "the study did not finish\n" + fresh.log()[-3000:])
    finally:
        fresh.stop()
    trials = load_trials(postgres_url, "halfway")
    assert trials[0].state.name == "FAIL" and trials[0].user_attrs[ATTR_REASON] == "incomplete"
    ran = trials[1:]
    assert [t.state.name for t in ran] == ["COMPLETE"] * 3
    assert all(set(t.params) == {"x", "y"} for t in ran)
    assert sorted(j["metadata"]["name"] for j in trial_jobs(kube, "halfway")) == [
        f"halfway-t{n}" for n in (1, 2, 3)
    ]  # no Job for the half-asked trial
    status = study_status(kube, "halfway")
    assert status["phase"] == "Succeeded" and status["trialsSummary"] == "3/3"
    assert status["bestTrial"]["number"] in (1, 2, 3) and set(status["bestTrial"]["params"]) == {"x", "y"}
    assert [e["message"] for e in events(kube, "halfway", "TrialFailed")] == [
        "trial 0 failed: incomplete: never started: y, seed never written; asked anew"
    ]


@pytest.mark.parametrize("point", ["after-started-posted", "after-finished-posted"])
def test_a_controller_killed_between_an_announcement_and_its_status_neither_loses_nor_repeats_it(
    kube_emulator_factory: Callable[..., KubeEmulator], postgres_url: str, tmp_path: Path, point: str
) -> None:
    """StudyStarted / StudyFinished are posted, then the controller dies before the status shows
    them: the next controller finds them due again. It used to be that such a crash lost the
    Event (posted after the status) or, the other way round, posted it twice."""
    kube = kube_emulator_factory(mode="simulate", behaviour=Teller(postgres_url).behaviour)
    prepare_cluster(kube)
    doomed = ControllerProcess(
        kube, postgres_url, tmp_path, env={"TUNEFLEET_CRASH_AT": point}, name="doomed"
    ).start()
    kube.api.create(STUDIES, xy_study("told"), NAMESPACE)
    wait_for(lambda: doomed.process is not None and doomed.process.poll() is not None, 120,
             lambda: f"the controller never reached {point}\n" + doomed.log()[-3000:])
    shown = study_status(kube, "told")
    if point == "after-started-posted":
        assert not shown.get("startTime")
    else:
        assert not shown.get("completionTime") and shown.get("phase") not in ("Succeeded", "Failed")

    fresh = ControllerProcess(kube, postgres_url, tmp_path, name="fresh").start()
    try:
        wait_for(lambda: finished(kube, "told"), 120,
                 lambda: "the study did not finish\n" + fresh.log()[-3000:])
        status = study_status(kube, "told")
        assert status["phase"] == "Succeeded" and status["startTime"] and status["completionTime"]
        assert len(events(kube, "told", "StudyStarted")) == 1
        [ended] = events(kube, "told", "StudyFinished")
        assert ended["message"] == "the study ended: MaxTrialsReached (3 trials complete)"
        # A larger maxTrials reopens the study: its second end is announced too.
        kube.api.patch(STUDIES, NAMESPACE, "told", {"spec": {"budget": {"maxTrials": 4}}})
        wait_for(lambda: study_status(kube, "told").get("trialsSummary") == "4/4" and finished(kube, "told"),
                 120, lambda: "the reopened study did not finish\n" + fresh.log()[-3000:])
        wait_for(lambda: len(events(kube, "told", "StudyFinished")) == 2, 30,
                 "the second end was not announced")
    finally:
        fresh.stop()
    assert len(events(kube, "told", "StudyStarted")) == 1


_COUNT_COMPLETE = sa.text(
    "SELECT count(*) FROM trials JOIN studies ON trials.study_id = studies.study_id "
    "WHERE studies.study_name = :key AND trials.state = 'COMPLETE'"
)


def count_complete(storage_url: str, name: str) -> int:
    """COMPLETE trials of the Study, in one query (polled often, while trials finish fast)."""
    engine = sa.create_engine(storage_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            found = connection.execute(_COUNT_COMPLETE, {"key": optuna_key(storage_url, name)})
            return int(found.scalar_one())
    except sa.exc.DatabaseError:
        return 0  # no Optuna tables yet
    finally:
        engine.dispose()


class Resumes:
    """Each study's own resumes after the controller restart, done as soon as it has enough
    complete trials: suspend at 3 (parallelism 1, so little runs past it), resume with
    parallelism 2 once the status says Suspended, and a spec change back to parallelism 1 at 5."""

    def __init__(self, kube: KubeEmulator, storage_url: str, names: list[str]) -> None:
        self.kube, self.storage_url = kube, storage_url
        self.step = dict.fromkeys(names, 0)

    def advance(self) -> bool:
        """Take every study that can a step further; True once each has been resumed."""
        for name, step in self.step.items():
            done = count_complete(self.storage_url, name)
            if step == 0 and done >= 3:
                self._patch(name, {"suspend": True})
            elif step == 1 and study_status(self.kube, name).get("phase") == "Suspended":
                self._patch(name, {"suspend": False, "parallelism": 2})
            elif step == 2 and done >= 5:
                assert done < 8, f"{name} ended before its last resume"
                self._patch(name, {"parallelism": 1})
            else:
                continue
            self.step[name] = step + 1
        return all(step == 3 for step in self.step.values())

    def _patch(self, name: str, spec: dict[str, Any]) -> None:
        self.kube.api.patch(STUDIES, NAMESPACE, name, {"spec": spec})


def test_every_sampler_resumed_three_times_repeats_no_configuration_and_announces_once(
    kube_emulator_factory: Callable[..., KubeEmulator], postgres_url: str, tmp_path: Path
) -> None:
    """One Study per sampler, resumed three ways: the controller SIGKILLed and restarted,
    suspend/resume, and a spec change (parallelism). No study repeats a configuration (trials 4-6 used
    to repeat 0-2 after a restart), and StudyStarted / StudyFinished are posted once each, though
    the controller restarts again after the studies ended."""
    kube = kube_emulator_factory(mode="simulate", behaviour=Teller(postgres_url).behaviour)
    prepare_cluster(kube)
    reconciles = tmp_path / "reconciles.txt"
    env = {"TUNEFLEET_RECONCILE_LOG": str(reconciles)}
    names = [f"s-{sampler}" for sampler in SAMPLERS]
    controller = ControllerProcess(kube, postgres_url, tmp_path, env=env, name="first").start()
    started: list[ControllerProcess] = [controller]
    try:
        for sampler, name in zip(SAMPLERS, names, strict=True):
            kube.api.create(STUDIES, xy_study(name, sampler, max_trials=8, parallelism=1), NAMESPACE)
        wait_for(lambda: all(count_complete(postgres_url, n) >= 2 for n in names), 180,
                 lambda: "the studies did not start\n" + controller.log()[-3000:])
        controller.kill()  # 1: a new controller process takes every study over
        controller = ControllerProcess(kube, postgres_url, tmp_path, env=env, name="second").start()
        started.append(controller)
        resumes = Resumes(kube, postgres_url, names)  # 2 and 3, study by study
        wait_for(resumes.advance, 240, lambda: "not every study was resumed\n" + controller.log()[-3000:])
        wait_for(lambda: all(finished(kube, n) for n in names), 180,
                 lambda: "the studies did not finish\n" + controller.log()[-3000:])
        controller.kill()  # once more, after they ended: nothing may be announced again
        lines_before = len(reconciles.read_text().splitlines())
        controller = ControllerProcess(kube, postgres_url, tmp_path, env=env, name="third").start()
        started.append(controller)
        # Its first reconcile of each ended study is where StudyFinished used to be posted again.
        wait_for(lambda: len(reconciles.read_text().splitlines()) >= lines_before + len(names), 120,
                 "the restarted controller did not reconcile the studies")
    finally:
        for process in started:
            process.stop()

    for sampler, name in zip(SAMPLERS, names, strict=True):
        seen = search_configurations(postgres_url, name)
        repeated = [c for c, count in Counter(seen).items() if count > 1]
        assert not repeated, f"{sampler} repeated {repeated} across restarts"
        assert study_status(kube, name)["trialsSummary"] == "8/8"
        assert len(events(kube, name, "StudyStarted")) == 1, name
        assert len(events(kube, name, "StudyFinished")) == 1, name
        assert len(events(kube, name, "StudySuspended")) == 1, name


def test_a_study_applied_again_under_its_name_is_a_new_study(
    kube_emulator_factory: Callable[..., KubeEmulator], postgres_url: str, tmp_path: Path
) -> None:
    """Deleting a Study and applying one with the same name used to adopt the old data: the new
    object was at once Failed 51/10 MaxTrialsReached, ran nothing and exported the old trials."""
    kube = kube_emulator_factory(mode="simulate", behaviour=Teller(postgres_url).behaviour)
    prepare_cluster(kube)
    controller = ControllerProcess(kube, postgres_url, tmp_path).start()
    try:
        kube.api.create(STUDIES, xy_study("again", max_trials=3), NAMESPACE)
        wait_for(lambda: finished(kube, "again"), 120,
                 lambda: "it did not finish\n" + controller.log()[-3000:])
        first = kube.api.get(STUDIES, NAMESPACE, "again")
        old_key = first["status"]["optunaStudy"]
        assert old_key == f"{NAMESPACE}/again/{first['metadata']['uid']}"
        kube.api.delete(STUDIES, NAMESPACE, "again")
        kube.api.create(STUDIES, xy_study("again", max_trials=3), NAMESPACE)  # at once, as users do
        second = kube.api.get(STUDIES, NAMESPACE, "again")
        wait_for(lambda: finished(kube, "again") and count_complete(postgres_url, "again") == 3, 120,
                 lambda: "the second study did not run\n" + controller.log()[-3000:])
    finally:
        controller.stop()
    status = study_status(kube, "again")
    assert status["phase"] == "Succeeded" and status["trialsSummary"] == "3/3"
    new_key = status["optunaStudy"]
    assert new_key == f"{NAMESPACE}/again/{second['metadata']['uid']}" != old_key
    assert optuna_key(postgres_url, "again") == new_key
    old_trials = optuna.load_study(study_name=old_key, storage=postgres_url).get_trials()
    assert [t.state.name for t in old_trials] == ["COMPLETE"] * 3  # the earlier data is untouched
    assert {j["metadata"]["labels"][STUDY_UID_LABEL] for j in trial_jobs(kube, "again")} == {
        second["metadata"]["uid"]
    }
    [kept] = events(kube, "again", "EarlierStudyKept")
    assert kept["involvedObject"]["uid"] == second["metadata"]["uid"]
    assert f"{old_key!r} (3 trials)" in kept["message"]
    assert f"tunefleet export --storage <url> --study {old_key}" in kept["message"]
    assert f"warmStart.fromStudy: {old_key}" in kept["message"]
    assert condition(kube, "again", "Failed")["status"] == "False"  # type: ignore[index]
