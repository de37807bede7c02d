"""The promises a study keeps under any fault: one small function per invariant.

Each takes the latest :class:`Snapshot`, the :class:`History` of all snapshots and the run's
:class:`Context`, and returns what it found broken (empty: it holds). ``CONTINUOUS`` run on
every snapshot while faults are injected; ``FINAL`` run once everything has settled. A check
that needs the database is skipped (not counted) while PostgreSQL is away.
"""

from __future__ import annotations

import datetime
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from controller.kube.manifests import ACCOUNTING_FINALIZER, MANAGED_BY_LABEL, STUDY_LABEL, TRIAL_LABEL
from controller.planner.confirmation import ATTR_CONFIRM_OF
from controller.planner.observation import INCOMPLETE_REASON, INFRASTRUCTURE_REASONS, StopReason
from tests.chaos.observe import History, Snapshot
from tests.chaos.studies import MAX_DURATION_S, MAX_FAILED_TRIALS, ChaosStudy
from trial_worker.contract import ATTR_ATTEMPT, ATTR_KIND, ATTR_REASON, ATTR_RETRY_OF

SEARCH_SPACE = ("x", "y")
ENDED = ("Succeeded", "Failed")
# Trials the study stopped itself, or that never ran: no failure of theirs counts.
STOPPED_BY_STUDY = frozenset(
    {"budget", "deadline", "drained", "failureBudget", "studyDeleted", "imported", INCOMPLETE_REASON})
MAX_PARALLELISM = 4  # the most a parallelism_change fault sets
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
EXPECTED_SECRETS = {"tunefleet-db-credentials"}


@dataclass
class Context:
    studies: list[ChaosStudy]
    fault_window_s: float
    final: bool = False

    def study(self, name: str) -> ChaosStudy:
        return next(s for s in self.studies if s.name == name)


Check = Callable[[Snapshot, History, Context], list[str]]


# -- helpers --------------------------------------------------------------------------------------


def _root(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get(ATTR_RETRY_OF, trial.number))


def _is_confirmation(trial: FrozenTrial) -> bool:
    return trial.user_attrs.get(ATTR_KIND) == "confirm" or ATTR_CONFIRM_OF in trial.user_attrs


def _has_params(trial: FrozenTrial) -> bool:
    return all(name in trial.params for name in SEARCH_SPACE)


def _never_ran(trial: FrozenTrial) -> bool:
    """An ask a crash interrupted (issue 11): failed as incomplete, it counts towards nothing."""
    return trial.state == TrialState.FAIL and trial.user_attrs.get(ATTR_REASON) == INCOMPLETE_REASON


def _search(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials the sampler chose (no retry, no confirmation run, no incomplete ask)."""
    return [t for t in trials if _root(t) == t.number and not _is_confirmation(t) and not _never_ran(t)]


def _trials(snapshot: Snapshot) -> dict[str, list[FrozenTrial]]:
    return snapshot.trials or {}


def _status(snapshot: Snapshot, name: str) -> dict[str, Any]:
    return (snapshot.studies.get(name) or {}).get("status") or {}


def _stamp(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _counted_failures(trials: list[FrozenTrial], max_retries: int) -> int:
    """Failures the failure budget counts (issue 11): the trial's own, and infrastructure ones
    whose retries ran out; not confirmation runs, not trials the study stopped or never ran."""
    return sum(
        1 for t in trials
        if t.state == TrialState.FAIL and not _is_confirmation(t)
        and t.user_attrs.get(ATTR_REASON) not in STOPPED_BY_STUDY
        and not (t.user_attrs.get(ATTR_REASON) in INFRASTRUCTURE_REASONS
                 and int(t.user_attrs.get(ATTR_ATTEMPT, 0)) < max_retries)
    )


# -- trials ---------------------------------------------------------------------------------------


def no_trial_complete_twice(snap: Snapshot, history: History, ctx: Context) -> list[str]:
    """A logical trial (an attempt and its retries) completes at most once."""
    broken = []
    for name, trials in _trials(snap).items():
        completes = Counter(_root(t) for t in trials if t.state == TrialState.COMPLETE)
        broken += [f"{name}: trial {root} COMPLETE {n} times" for root, n in completes.items() if n > 1]
    return broken


def finished_trials_stay_finished(snap: Snapshot, history: History, ctx: Context) -> list[str]:
    """A trial seen COMPLETE, PRUNED or FAIL never shows another state later."""
    broken = []
    for name, trials in _trials(snap).items():
        for trial in trials:
            key = (name, trial.number)
            before = history.finished_states.get(key)
            if before is not None and before != trial.state.name:
                broken.append(f"{name}: trial {trial.number} was {before}, is now {trial.state.name}")
            elif before is None and trial.state in FINISHED:
                history.finished_states[key] = trial.state.name
    return broken


def one_job_per_attempt(snap: Snapshot, history: History, ctx: Context) -> list[str]:
    """Each trial number (one attempt) ever had at most one Job."""
    return [f"{study}: trial {number} had {len(uids)} Jobs" for (study, number), uids
            in sorted(history.job_uids.items()) if len(uids) > 1]


def retry_keeps_params(snap: Snapshot, history: History, ctx: Context) -> list[str]:
    """A retry, and a confirmation run, have exactly the params of the trial they repeat."""
    broken = []
    for name, trials in _trials(snap).items():
        by_number = {t.number: t for t in trials}
        for trial in trials:
            source = _root(trial) if _root(trial) != trial.number else trial.user_attrs.get(ATTR_CONFIRM_OF)
            if source is None or int(source) not in by_number or not _has_params(trial):
                continue
            if trial.params != by_number[int(source)].params:
                broken.append(f"{name}: trial {trial.number} repeats {source} with {trial.params}, "
                              f"not {by_number[int(source)].params}")
    return broken


def no_trial_started_without_params(snap: Snapshot, history: History, ctx: Context) -> list[str]:
    """A trial that had a Job, or that finished as anything but FAIL, had all its params."""
    broken = []
    for name, trials in _trials(snap).items():
        for trial in trials:
            if _has_params(trial) or trial.state == TrialState.RUNNING:
                continue  # a RUNNING one may be between its ask and its params (no Job yet)
            had_job = (name, trial.number) in history.job_uids
            if had_job or trial.state != TrialState.FAIL:
                broken.append(f"{name}: trial {trial.number} ({trial.state.name}) "
                              f"{'had a Job' if had_job else 'finished'} with params {trial.params}")
    return broken


def no_configuration_repeated(snap: Snapshot, history: History, ctx: Context) -> list[str]:
    """The sampler never proposes a configuration twice (retries and confirmations aside)."""
    broken = []
    for name, trials in _trials(snap).items():
        seen: dict[tuple[Any, ...], int] = {}
        for trial in sorted(_search(trials), key=lambda t: t.number):
            if not _has_params(trial):
                continue
            config = tuple(trial.params[k] for k in SEARCH_SPACE)
            if config in seen:
                broken.append(f"{name}: trial {trial.number} repeats trial {seen[config]} {trial.params}")
            else:
                seen[config] = trial.number
    return broken


def max_trials_exact(snap: Snapshot, history: History, ctx: Context) -> list[str]:
    """Never more logical trials than maxTrials; exactly maxTrials when it says it reached them."""
    broken = []
    for name, trials in _trials(snap).items():
        limit = ctx.study(name).max_trials
        started = len(_search(trials))
        if started > limit:
            broken.append(f"{name}: {started} trials started, maxTrials {limit}")
        stop = _status(snap, name).get("stopReason")
        if ctx.final and stop == StopReason.MAX_TRIALS.value and started != limit:
            broken.append(f"{name}: stopReason {stop} with {started} trials, maxTrials {limit}")
    return broken


def failure_budget_respected(snap: Snapshot, history: History, ctx: Context) -> list[str]:
    """maxFailedTrials counted failures are tolerated, one more stops the study: beyond it only
    trials already running may fail, and the study ends Failed."""
    broken = []
    for name, trials in _trials(snap).items():
        spec = ctx.study(name).body["spec"]
        failures = _counted_failures(trials, int(spec["trial"]["maxRetries"]))
        if failures > MAX_FAILED_TRIALS + MAX_PARALLELISM:
            broken.append(f"{name}: {failures} counted failures, maxFailedTrials {MAX_FAILED_TRIALS}")
        phase = _status(snap, name).get("phase")
        if ctx.final and failures > MAX_FAILED_TRIALS and phase != "Failed":
            broken.append(f"{name}: {failures} counted failures, maxFailedTrials {MAX_FAILED_TRIALS}, "
                          f"but phase {phase}")
    return broken


# -- the ledger -----------------------------------------------------------------------------------


def ledger_no_overspend(snap: Snapshot, history: History, ctx: Context) -> list[str]:
    """Settled plus reserved never exceeds a study's limit or the namespace's GPUBudget."""
    broken = []
    ns = snap.namespace_totals
    if ns is not None and ns.used + ns.reserved > ns.gpu_seconds_limit:
        broken.append(f"GPUBudget: used {ns.used} + reserved {ns.reserved} > {ns.gpu_seconds_limit} GPU-s")
    for name, totals in (snap.totals or {}).items():
        limit = totals.gpu_seconds_limit
        committed = totals.settled.gpu_seconds + totals.reserved.gpu_seconds
        if limit is not None and committed > limit:
            broken.append(f"{name}: settled+reserved {committed} > limit {limit} GPU-s")
    return broken


def pods_billed_exactly(snap: Snapshot, history: History, ctx: Context) -> list[str]:
    """Every pod that started is settled once, and a pod with a final status is billed
    gpus x (finishedAt - startTime), to the second."""
    if snap.settled is None:
        return []
    broken = []
    for uid, pod in history.last_pods.items():
        study = (pod["metadata"].get("labels") or {}).get(STUDY_LABEL, "?")
        status = pod.get("status") or {}
        if not status.get("startTime"):
            continue
        settled = snap.settled.get(uid)
        if settled is None:
            broken.append(f"{study}: pod {pod['metadata']['name']} ({uid}) was never settled")
            continue
        ended = [c["state"]["terminated"] for c in status.get("containerStatuses") or []
                 if (c.get("state") or {}).get("terminated")]
        if not ended:
            continue  # lost with its node: no final status to bill from
        gpus = next((s.gpus for s in ctx.studies if s.name == study), 0)
        finished = max(_stamp(t["finishedAt"]) for t in ended)
        expected = gpus * int((finished - _stamp(status["startTime"])).total_seconds())
        if settled.gpu_seconds != expected:
            broken.append(f"{study}: pod {pod['metadata']['name']} billed {settled.gpu_seconds} "
                          f"GPU-s, its timestamps say {expected}")
    return broken


# -- objects left behind --------------------------------------------------------------------------


def no_finalizer_after_end(snap: Snapshot, history: History, ctx: Context) -> list[str]:
    """Once a study ended (and the controller had time to settle), no pod holds the finalizer."""
    broken = []
    for pod in snap.pods:
        study = (pod["metadata"].get("labels") or {}).get(STUDY_LABEL)
        if _status(snap, study or "").get("phase") not in ENDED:
            continue
        if ACCOUNTING_FINALIZER in (pod["metadata"].get("finalizers") or []):
            broken.append(f"{study}: pod {pod['metadata']['name']} still holds {ACCOUNTING_FINALIZER}")
    return broken


def no_orphans(snap: Snapshot, history: History, ctx: Context) -> list[str]:
    """Every Job belongs to its Study (owner reference) and to a trial the database has; an
    ended study runs no Job; no tunefleet Secret but the shared credentials and the gateway token
    Secrets of Jobs that still exist (garbage-collected with their Job)."""
    broken = []
    trials = _trials(snap)
    for job in snap.jobs:
        labels = job["metadata"].get("labels") or {}
        study, number = labels.get(STUDY_LABEL), labels.get(TRIAL_LABEL)
        owner = snap.studies.get(study or "")
        owners = {ref.get("uid") for ref in job["metadata"].get("ownerReferences") or []}
        if owner is None or owner["metadata"]["uid"] not in owners:
            broken.append(f"Job {job['metadata']['name']} is not owned by Study {study}")
        if snap.has_database and number is not None and not any(
            t.number == int(number) for t in trials.get(study or "", [])
        ):
            broken.append(f"Job {job['metadata']['name']} runs trial {number}, which {study} does not have")
        if _status(snap, study or "").get("phase") in ENDED and (job.get("status") or {}).get("active"):
            broken.append(f"Job {job['metadata']['name']} still runs after {study} ended")
    jobs = {job["metadata"]["uid"] for job in snap.jobs}
    for secret in snap.secrets:
        meta = secret["metadata"]
        ours = (meta.get("labels") or {}).get(MANAGED_BY_LABEL) == "tunefleet"
        if not ours or meta["name"] in EXPECTED_SECRETS:
            continue
        owners = meta.get("ownerReferences") or []
        if not any(ref.get("kind") == "Job" and ref.get("uid") in jobs for ref in owners):
            broken.append(f"Secret {meta['name']} is left behind (no existing Job owns it)")
    return broken


# -- status ---------------------------------------------------------------------------------------


def status_matches_database(snap: Snapshot, history: History, ctx: Context) -> list[str]:
    """An ended Study's status shows the database's counts, best trial, Pareto set and stop."""
    broken = []
    for name, trials in _trials(snap).items():
        status = _status(snap, name)
        if status.get("phase") not in ENDED:
            continue
        # An incomplete ask is no trial to the user: status.trials leaves it out.
        counts = Counter(t.state.name for t in trials if not _never_ran(t))
        shown = status.get("trials") or {}
        for state, key in (("COMPLETE", "complete"), ("FAIL", "failed"), ("PRUNED", "pruned"),
                           ("RUNNING", "running")):
            if int(shown.get(key) or 0) != counts[state]:
                broken.append(f"{name}: status.trials.{key} {shown.get(key)}, database {counts[state]}")
        broken += _best_matches(name, ctx.study(name), status, trials)
        stop = status.get("stopReason")
        if stop == StopReason.MAX_TRIALS.value and len(_search(trials)) != ctx.study(name).max_trials:
            broken.append(f"{name}: stopReason {stop} with {len(_search(trials))} trials")
        failed_with_results = status.get("phase") == "Failed" and counts["COMPLETE"] > 0
        if (status.get("phase") == "Succeeded" and not counts["COMPLETE"]) or (
            failed_with_results and stop != "FailureBudgetExhausted"
        ):
            broken.append(f"{name}: phase {status.get('phase')} ({stop}) with {counts['COMPLETE']} "
                          "complete trials")
    return broken


def _best_matches(name: str, study: ChaosStudy, status: dict[str, Any],
                  trials: list[FrozenTrial]) -> list[str]:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and not _is_confirmation(t)]
    metrics = study.body["spec"]["objective"]["metrics"]
    if len(metrics) > 1:
        front = sorted(t.number for t in complete if not any(_dominates(o.values, t.values)
                                                            for o in complete if o is not t))
        shown = sorted(int(e["number"]) for e in (status.get("paretoFront") or {}).get("trials") or [])
        return [] if shown == front else [f"{name}: status.paretoFront {shown}, database {front}"]
    best = (status.get("bestTrial") or {}).get("number")
    if study.confirm_runs:
        # Chosen by the mean of its reruns: only check it is a completed search trial.
        ok = best is None if not complete else best in {t.number for t in complete}
        return [] if ok else [f"{name}: status.bestTrial {best} is not a completed search trial"]
    expected = min(complete, key=lambda t: (t.values[0], t.number)).number if complete else None
    return [] if best == expected else [f"{name}: status.bestTrial {best}, database {expected}"]


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def every_study_ends_in_bound(snap: Snapshot, history: History, ctx: Context) -> list[str]:
    """Each study ends, within the fault window plus what its trials need one at a time, each
    at maxDuration and retried once, plus a lease and a minute of settling."""
    broken = []
    for study in ctx.studies:
        ended = history.first_ended.get(study.name)
        bound = ctx.fault_window_s + 2 * (study.max_trials + study.confirm_runs) * (MAX_DURATION_S + 5) + 70
        if ended is None:
            broken.append(f"{study.name}: never ended (phase {_status(snap, study.name).get('phase')})")
        elif (ended - history.started).total_seconds() > bound:
            took = (ended - history.started).total_seconds()
            broken.append(f"{study.name}: ended after {took:.0f} s, bound {bound:.0f} s")
    return broken


CONTINUOUS: dict[str, Check] = {
    check.__name__: check
    for check in (
        no_trial_complete_twice, finished_trials_stay_finished, one_job_per_attempt, retry_keeps_params,
        no_trial_started_without_params, no_configuration_repeated, max_trials_exact,
        failure_budget_respected,
        ledger_no_overspend,
    )
}
FINAL: dict[str, Check] = {
    **CONTINUOUS,
    **{check.__name__: check for check in (
        pods_billed_exactly, no_finalizer_after_end, no_orphans, status_matches_database,
        every_study_ends_in_bound,
    )},
}
NEEDS_DATABASE = frozenset(FINAL) - {"one_job_per_attempt", "no_finalizer_after_end"}
ALL_NAMES = tuple(FINAL)


@dataclass
class Tally:
    """Checks run and failed per invariant, and the first few violations of each."""

    runs: Counter[str]
    failures: Counter[str]
    examples: dict[str, list[str]]

    @classmethod
    def empty(cls) -> Tally:
        return cls(Counter(), Counter(), defaultdict(list))

    def check(self, checks: dict[str, Check], snap: Snapshot, history: History, ctx: Context) -> None:
        for name, check in checks.items():
            if name in NEEDS_DATABASE and not snap.has_database:
                continue
            self.runs[name] += 1
            broken = check(snap, history, ctx)
            if broken:
                self.failures[name] += 1
                known = self.examples[name]
                known += [b for b in broken if b not in known][: max(0, 5 - len(known))]

    def merge(self, other: Tally) -> None:
        self.runs.update(other.runs)
        self.failures.update(other.failures)
        for name, found in other.examples.items():
            self.examples[name] += found[: max(0, 5 - len(self.examples[name]))]

    @property
    def broken(self) -> list[str]:
        return [name for name in ALL_NAMES if self.failures[name]]
