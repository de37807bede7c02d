"""The failure budget: when failed trials stop a study (``budget.maxFailedTrials``).

A study whose objective cannot run (a module missing from the image, an image that cannot be
pulled, a command that exits 9) would otherwise fail trial after trial until ``maxTrials``. Two
rules, pure functions of the trials:

- ``budget.maxFailedTrials: N``: the study tolerates N failed trials and stops at the next one
  (``maxFailedTrials: maxTrials`` lets every trial fail; 0 stops at the first failure).
- unset (the default): the study stops once its first :data:`DEFAULT_FIRST_FAILURES` finished
  trials all failed for the same reason, before any trial completed or was pruned. A study
  that worked once, or fails for varied reasons, runs on.

Counted: trials that failed for a reason of their own (the objective raised, returned NaN, timed
out, the image could not be pulled, ...), and infrastructure failures whose retries ran out.
Not counted: failures still to be retried, trials that never ran (``incomplete``), imported
trials, confirmation runs, and trials the study itself stopped (budget, deadline, deletion).
The study then ends ``Failed`` with reason ``FailureBudgetExhausted``; :func:`failure_message`
words what the user sees, the same on the cluster and locally.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from controller.planner.observation import TrialView
from controller.spec import StudySpec

DEFAULT_FIRST_FAILURES = 3
# Reasons the study gave its own trials when it stopped them: not the objective failing.
STOPPED_BY_STUDY = frozenset({"budget", "deadline", "drained", "failureBudget", "studyDeleted", "imported"})
LOG_TAIL_LINES = 20
LOG_TAIL_CHARS = 2000


@dataclass(frozen=True)
class FailureVerdict:
    """Why failed trials stop the study.

    ``reason`` is the failure reason the counted trials share (the most common one, under an
    explicit ``maxFailedTrials``); ``first_failed`` the lowest-numbered counted trial, whose
    log the message quotes; ``limit`` the explicit ``maxFailedTrials``, None under the default.
    """

    reason: str
    first_failed: int
    failed: int
    limit: int | None


def counted_failures(spec: StudySpec, trials: list[TrialView]) -> list[TrialView]:
    """The failed trials the failure budget counts, by trial number."""
    max_retries = spec.trial.maxRetries
    counted = []
    for trial in trials:
        if trial.state != "FAIL" or trial.never_ran or trial.reason in STOPPED_BY_STUDY:
            continue
        if trial.failed_by_infrastructure and trial.attempt < max_retries:
            continue  # retried with the same params: the platform failed, not the trial
        counted.append(trial)
    return sorted(counted, key=lambda t: t.number)


def failure_verdict(spec: StudySpec, trials: list[TrialView]) -> FailureVerdict | None:
    """The verdict when failed trials have used up the study's failure budget, else None.

    ``trials`` are the study's own search trials (no confirmation runs).
    """
    failed = counted_failures(spec, trials)
    if not failed:
        return None
    limit = spec.budget.maxFailedTrials
    if limit is not None:
        if len(failed) <= limit:
            return None
        reason = Counter(t.reason or "failed" for t in failed).most_common(1)[0][0]
        return FailureVerdict(reason, failed[0].number, len(failed), limit)
    worked = any(t.state in ("COMPLETE", "PRUNED") and t.reason is None for t in trials)
    reasons = {t.reason for t in failed}
    if worked or len(failed) < DEFAULT_FIRST_FAILURES or len(reasons) != 1:
        return None
    return FailureVerdict(failed[0].reason or "failed", failed[0].number, len(failed), None)


def failure_message(verdict: FailureVerdict, detail: str | None, log_tail: str | None) -> str:
    """What the Study's Failed condition, its Event and ``tunefleet run`` say.

    ``detail`` is the first failed trial's stored reason text; ``log_tail`` the end of its log
    (None when it has none, e.g. its container never started).
    """
    # The rule's own numbers, not the count when it was judged: trials still running then may
    # fail before the study stops them, and the words must not depend on that race.
    if verdict.limit is None:
        head = (
            f"the first {DEFAULT_FIRST_FAILURES} trials all failed with {verdict.reason} and none "
            "completed, so the study stopped instead of running the rest "
            "(set budget.maxFailedTrials to allow more failures)"
        )
    else:
        head = (
            f"more than {verdict.limit} trials failed (budget.maxFailedTrials: {verdict.limit}), "
            f"most often with {verdict.reason}"
        )
    first = f"trial {verdict.first_failed} failed with {verdict.reason}"
    if detail:
        first += f": {_last_lines(detail, 3)}"
    tail = _last_lines(log_tail, LOG_TAIL_LINES) if log_tail and log_tail.strip() else None
    log = f"; its log ends with:\n{tail}" if tail else "; it left no log"
    return f"{head}. {first}{log}"


def _last_lines(text: str, lines: int) -> str:
    kept = "\n".join(text.strip().splitlines()[-lines:])
    return kept[-LOG_TAIL_CHARS:]
