"""Warm start: configurations to run first, and the finished trials of another study.

``warmStart.params`` are enqueued (``study.enqueue_trial``), so the next asks return them before
the sampler proposes anything; missing parameters are sampled. ``warmStart.fromStudy`` copies the
other study's COMPLETE and PRUNED trials (params inside this space, values, intermediate values,
constraints) so the sampler starts informed. Imported trials carry the reason ``imported``: they
inform the sampler and the grid, but do not count towards ``maxTrials``, ``patience`` or ``goal``.
Both happen once per study (a resumed study is not warm-started twice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
import structlog
from optuna.trial import FrozenTrial, TrialState

from controller.spec import StudySpec
from controller.studies.asking import active_parameters, distribution_of
from trial_worker.contract import ATTR_KIND, ATTR_REASON

ATTR_WARM_STARTED = "tunefleet.warm_started"
ATTR_IMPORTED_FROM = "tunefleet.imported_from"
IMPORTED_REASON = "imported"
WARM_START_KIND = "warmStart"

log = structlog.get_logger("tunefleet.strategies")


@dataclass(frozen=True)
class WarmStartResult:
    enqueued: int = 0
    imported: int = 0
    skipped: int = 0


def apply_warm_start(study: optuna.Study, spec: StudySpec) -> WarmStartResult:
    """Enqueue ``warmStart.params`` and import ``warmStart.fromStudy``, once per study.

    Raises ValueError naming ``warmStart.fromStudy`` when that study is missing or incompatible.
    """
    warm = spec.warmStart
    if warm is None or study.user_attrs.get(ATTR_WARM_STARTED):
        return WarmStartResult()
    imported = skipped = 0
    if warm.fromStudy is not None:
        imported, skipped = _import_trials(study, spec, warm.fromStudy)
    for params in warm.params:
        study.enqueue_trial(dict(params), user_attrs={ATTR_KIND: WARM_START_KIND}, skip_if_exists=True)
    study.set_user_attr(ATTR_WARM_STARTED, True)
    result = WarmStartResult(enqueued=len(warm.params), imported=imported, skipped=skipped)
    log.info("warm start", study=study.study_name, **result.__dict__)
    return result


def _import_trials(study: optuna.Study, spec: StudySpec, source_name: str) -> tuple[int, int]:
    where = "warmStart.fromStudy"
    if source_name == study.study_name:
        raise ValueError(f"{where}: a study cannot warm-start from itself")
    try:
        source = optuna.load_study(study_name=source_name, storage=study._storage)
    except KeyError:
        raise ValueError(f"{where}: no study named {source_name!r} in this storage") from None
    if [d.name for d in source.directions] != [d.name for d in study.directions]:
        raise ValueError(
            f"{where}: {source_name!r} optimizes {[d.name.lower() for d in source.directions]}, "
            f"this study {spec.objective.directions}"
        )
    source_spec = source.user_attrs.get("tunefleet.spec")
    if isinstance(source_spec, dict):
        names = [m.get("name") for m in source_spec.get("objective", {}).get("metrics", [])]
        if names and names != spec.objective.metric_names:
            ours = spec.objective.metric_names
            raise ValueError(f"{where}: {source_name!r} measures {names}, this study {ours}")
    copies: list[FrozenTrial] = []
    skipped = 0
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    for trial in source.get_trials(deepcopy=False, states=states):
        copy = _copy_into_space(trial, spec, source_name)
        if copy is None:
            skipped += 1
        else:
            copies.append(copy)
    study.add_trials(copies)
    return len(copies), skipped


def _copy_into_space(trial: FrozenTrial, spec: StudySpec, source_name: str) -> FrozenTrial | None:
    """The trial restricted to this space, or None when a value falls outside it."""
    params: dict[str, Any] = {}
    distributions = {}
    for name in active_parameters(spec.searchSpace, trial.params):
        if name not in trial.params:
            return None  # active here but never chosen there: the trial says nothing about it
        distribution = distribution_of(spec.searchSpace[name])
        value = trial.params[name]
        try:
            inside = distribution._contains(distribution.to_internal_repr(value))
        except (ValueError, TypeError):
            inside = False
        if not inside:
            return None
        params[name] = value
        distributions[name] = distribution
    constraints = {
        k: v for k, v in trial.system_attrs.items() if k == "constraints" or k.startswith("constraints:")
    }
    return optuna.trial.create_trial(
        state=trial.state,
        values=trial.values if trial.state == TrialState.COMPLETE else None,
        params=params,
        distributions=distributions,
        user_attrs={ATTR_REASON: IMPORTED_REASON, ATTR_IMPORTED_FROM: f"{source_name}#{trial.number}"},
        system_attrs=constraints,
        intermediate_values=dict(trial.intermediate_values),
    )
