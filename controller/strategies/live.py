"""The strategy of a running study: chosen at creation, revised as trials finish.

Before any trial finishes, ``auto`` works from ``trial.expectedDuration`` (or the worst case,
``maxDuration``). Each time more trials have finished, the cost per trial is measured again, the
affordable trials recomputed from what is left of the budget, and ``auto`` re-resolved: a study
that looked like 6 worst-case trials (random) can turn out to afford 300 (TPE). A revision swaps
the sampler of the asking process (never into or out of ``grid`` or ``pbt``, whose bookkeeping
needs them from the start), changes the pruner of the trials started next, and is appended to the study's
``tunefleet.strategy_revisions``. The process that asks trials (the local runner, the operator)
owns one instance per study.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
import structlog
from optuna.trial import FrozenTrial, TrialState

from controller.spec import StudySpec
from controller.strategies.choice import (
    Spent,
    StartCost,
    StrategyChoice,
    affordable_trials,
    choose_strategy,
    measure_costs,
    trial_cost,
)
from controller.strategies.convergence import terminator_converged
from controller.strategies.costs import measured_seconds
from controller.strategies.pruning import pin_steps, pruner_config, reports_intermediate_values
from controller.strategies.samplers import build_sampler
from controller.strategies.warmstart import IMPORTED_REASON
from trial_worker.contract import ATTR_REASON, PrunerConfig

ATTR_REVISIONS = "tunefleet.strategy_revisions"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

log = structlog.get_logger("tunefleet.strategies")


class LiveStrategy:
    """Sampler, pruner config and convergence verdict of one study, kept current.

    Args:
        spec: the study.
        seed: the study seed; samplers are rebuilt from it, so a revision stays reproducible.
    """

    def __init__(self, spec: StudySpec, seed: int) -> None:
        self.spec = spec
        self.seed = seed
        self.choice: StrategyChoice = choose_strategy(spec)
        self.pruner: PrunerConfig = pruner_config(spec, self.choice.pruner)
        self.converged = False
        self._finished_seen = -1
        self._completed_seen = -1

    def build_sampler(self, seed: int | None = None) -> optuna.samplers.BaseSampler:
        if seed is not None:
            self.seed = seed
        return build_sampler(self.choice.sampler, self.spec, self.seed, self.choice.cost_aware)

    def refresh(
        self,
        study: optuna.Study,
        trials: Sequence[FrozenTrial],
        spent: Spent,
        start: StartCost | None = None,
    ) -> bool:
        """Revise after trials finished; True when the sampler or pruner changed.

        ``start``: what starting a trial costs the asking process, when it measures it (the local
        runner); with trials that cost few starts, ``pruner: auto`` stops pruning.
        """
        own = [t for t in trials if t.user_attrs.get(ATTR_REASON) != IMPORTED_REASON]
        finished = [t for t in own if t.state in FINISHED]
        if len(finished) == self._finished_seen:
            return False
        self._finished_seen = len(finished)
        pin_steps(study, trials, self.pruner, self.spec.objective.steps)
        self._judge_convergence(study, trials)
        if not self._revisable() or not finished:
            return False
        durations = [t.duration.total_seconds() for t in finished if t.duration is not None]
        cost = trial_cost(self.spec, durations)
        spent_now = Spent(spent.gpu_seconds, spent.cpu_seconds, spent.elapsed_s, len(finished))
        affordability = affordable_trials(self.spec, cost, spent_now)
        costs = measure_costs(self.spec, measured_seconds(own, self.spec.objective.steps), spent_now)
        revised = choose_strategy(
            self.spec,
            affordability,
            reports_intermediate_values(own),
            costs,
            start,
            pruning_now=self.choice.pruner != "none",
            cost_aware_now=self.choice.cost_aware,
        )
        return self._adopt(study, revised, len(finished))

    def _revisable(self) -> bool:
        """``auto`` anywhere in the strategy, cost-aware search included, is revised as trials finish."""
        strategy = self.spec.strategy
        auto_costs = strategy.costAware is None and strategy.sampler == "auto"
        return "auto" in (strategy.sampler, strategy.pruner) or auto_costs

    def _adopt(self, study: optuna.Study, revised: StrategyChoice, finished: int) -> bool:
        sampler = revised.sampler
        if {"grid", "pbt"} & {sampler, self.choice.sampler}:
            sampler = self.choice.sampler  # their bookkeeping needs them from the first trial
        cost_aware = revised.cost_aware and sampler == revised.sampler
        changed_sampler = sampler != self.choice.sampler or cost_aware != self.choice.cost_aware
        changed_pruner = revised.pruner != self.choice.pruner
        if not (changed_sampler or changed_pruner):
            return False
        self.choice = StrategyChoice(
            sampler, revised.pruner, revised.reasons, revised.affordable_trials, cost_aware
        )
        if changed_sampler:
            # No random stream to carry over: the asking side reseeds the sampler from (study
            # seed, trial number) before each trial, so the rebuilt one proposes nothing again.
            study.sampler = build_sampler(sampler, self.spec, self.seed, cost_aware)
        if changed_pruner:
            self.pruner = pruner_config(self.spec, revised.pruner)
            pin_steps(study, study.get_trials(deepcopy=False), self.pruner, self.spec.objective.steps)
        record: dict[str, Any] = {
            "afterFinishedTrials": finished,
            "sampler": sampler,
            "costAware": cost_aware,
            "pruner": revised.pruner,
            "affordableTrials": revised.affordable_trials,
            "reasons": list(revised.reasons),
        }
        history = list(study.user_attrs.get(ATTR_REVISIONS, []))
        study.set_user_attr(ATTR_REVISIONS, [*history, record])
        log.info(
            "strategy revised",
            study=study.study_name,
            sampler=sampler,
            cost_aware=cost_aware,
            pruner=revised.pruner,
        )
        return True

    def _judge_convergence(self, study: optuna.Study, trials: Sequence[FrozenTrial]) -> None:
        if not self.spec.strategy.terminator or self.converged:
            return
        completed = sum(1 for t in trials if t.state == TrialState.COMPLETE)
        if completed == self._completed_seen:
            return
        self._completed_seen = completed
        self.converged = terminator_converged(study)


def current_strategy(study: optuna.Study) -> dict[str, Any] | None:
    """The strategy in use now: the last revision, else the one recorded at creation."""
    revisions = study.user_attrs.get(ATTR_REVISIONS)
    if revisions:
        return dict(revisions[-1])
    recorded = study.user_attrs.get("tunefleet.strategy")
    return dict(recorded) if isinstance(recorded, dict) else None
