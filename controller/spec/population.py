"""Population-based training in the spec: the ``pbt`` sampler's settings and the rules it needs.

``strategy.sampler: pbt`` (or ``auto`` with parameters marked ``mutable: true``) trains a
population of members in segments of ``interval`` steps up to ``objective.steps``; weak members
copy strong ones and perturb their mutable parameters. The decisions themselves are the
planner's (:mod:`controller.planner.population`); this module says what a valid PBT spec is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.spec.population_settings import (  # noqa: F401  (re-exported)
    BadSetting,
    PopulationSettings,
    parse_population_settings,
)
from controller.spec.rules import Rule, Rules
from trial_worker.contract import SEGMENT_PLACEHOLDERS

if TYPE_CHECKING:
    from controller.spec.study import StudySpec

# CEL over the Study spec (``self``): what the API server stores, without defaults filled in.
_HAS_SAMPLER = "has(self.strategy) && has(self.strategy.sampler)"
_HAS_MUTABLE = (
    "has(self.searchSpace) && "
    "self.searchSpace.exists(n, has(self.searchSpace[n].mutable) && self.searchSpace[n].mutable)"
)
POPULATION_BASED_CEL = (
    f"(({_HAS_SAMPLER} && self.strategy.sampler == 'pbt') || "
    f"(!({_HAS_SAMPLER} && self.strategy.sampler != 'auto') && {_HAS_MUTABLE}))"
)
"""CEL for :func:`is_population_based`."""
SEGMENT_NAMES_CEL = "[" + ", ".join(f"'{name}'" for name in SEGMENT_PLACEHOLDERS) + "]"
_UNTYPED_SETTINGS = (
    "strategy.settings are free-form (kept as written for the sampler), so CEL cannot see interval"
)
_UNTYPED_WHEN = (
    "a condition's values (when) are untyped, so CEL cannot see whether a parameter has one or "
    "which parameters others depend on"
)

PBT_MUTABLE_NEEDS_PBT = Rule(
    "pbt-mutable-needs-pbt",
    field="searchSpace",
    message="'{name}' is mutable, but only population-based training changes parameters during "
    "training: set strategy.sampler to pbt (or auto), or remove mutable",
    cel=f"!({_HAS_MUTABLE}) || !({_HAS_SAMPLER}) || self.strategy.sampler in ['pbt', 'auto']",
    message_expression=(
        "\"'\" + self.searchSpace.filter(n, has(self.searchSpace[n].mutable) && "
        "self.searchSpace[n].mutable)[0] + \"' is mutable, but only population-based training changes "
        "parameters during training: set strategy.sampler to pbt (or auto), or remove mutable\""
    ),
)
PBT_NEEDS_A_MUTABLE_PARAMETER = Rule(
    "pbt-needs-a-mutable-parameter",
    field="searchSpace",
    message="pbt needs at least one parameter marked mutable: true (what explore may change "
    "between a member's segments)",
    cel=f"!({_HAS_SAMPLER} && self.strategy.sampler == 'pbt') || ({_HAS_MUTABLE})",
)
PBT_ONE_METRIC = Rule(
    "pbt-one-metric",
    field="objective.metrics",
    message="pbt ranks members by one metric; list exactly one",
    cel=f"!{POPULATION_BASED_CEL} || size(self.objective.metrics) == 1",
)
PBT_NEEDS_STEPS = Rule(
    "pbt-needs-steps",
    field="objective.steps",
    message="pbt needs intermediate values: set objective.steps to the number of steps (e.g. "
    "epochs) each member trains, and report each with trial.report(value, step)",
    cel=f"!{POPULATION_BASED_CEL} || has(self.objective.steps)",
)
PBT_INTERVAL_WITHIN_STEPS = Rule(
    "pbt-interval-within-steps",
    field="strategy.settings.interval",
    message="the interval ({interval}) exceeds objective.steps ({steps})",
    condition_time=_UNTYPED_SETTINGS,
)
PBT_MUTABLE_NOT_CONDITIONAL = Rule(
    "pbt-mutable-not-conditional",
    field="searchSpace",
    message="a conditional parameter cannot be mutable",
    condition_time=_UNTYPED_WHEN,
)
PBT_MUTABLE_NOT_A_PARENT = Rule(
    "pbt-mutable-not-a-parent",
    field="searchSpace",
    message="'{child}' depends on it; a parameter others depend on cannot change during training",
    condition_time=_UNTYPED_WHEN,
)
PBT_PARAMETER_NAMES_NOT_RESERVED = Rule(
    "pbt-parameter-names-not-reserved",
    field="searchSpace",
    message="'{name}' is a placeholder of pbt segments; rename it",
    cel=(
        f"!{POPULATION_BASED_CEL} || !has(self.searchSpace) || "
        f"!self.searchSpace.exists(n, n in {SEGMENT_NAMES_CEL})"
    ),
    message_expression=(
        f"\"'\" + self.searchSpace.filter(n, n in {SEGMENT_NAMES_CEL})[0] + "
        "\"' is a placeholder of pbt segments; rename it\""
    ),
)
PBT_NO_PRUNER = Rule(
    "pbt-no-pruner",
    field="strategy.pruner",
    message="pbt replaces pruning (weak members copy strong ones); use none or auto",
    cel=(
        f"!{POPULATION_BASED_CEL} || !has(self.strategy) || !has(self.strategy.pruner) || "
        "self.strategy.pruner in ['auto', 'none']"
    ),
)
PBT_NO_WARM_START = Rule(
    "pbt-no-warm-start",
    field="warmStart",
    message="a PBT member starts from sampled parameters; warm start is not supported with pbt",
    cel=f"!{POPULATION_BASED_CEL} || !has(self.warmStart)",
)
PBT_NO_CONFIRM = Rule(
    "pbt-no-confirm",
    field="confirm",
    message="a PBT result is a schedule with its weights, not a configuration to rerun",
    cel=f"!{POPULATION_BASED_CEL} || !has(self.confirm)",
)
PBT_NO_TERMINATOR = Rule(
    "pbt-no-terminator",
    field="strategy.terminator",
    message="the terminator judges independent trials, not PBT segments",
    cel=(
        f"!{POPULATION_BASED_CEL} || !has(self.strategy) || !has(self.strategy.terminator) || "
        "!self.strategy.terminator"
    ),
)
POPULATION_RULES: Rules = (
    PBT_MUTABLE_NEEDS_PBT,
    PBT_NEEDS_A_MUTABLE_PARAMETER,
    PBT_ONE_METRIC,
    PBT_NEEDS_STEPS,
    PBT_INTERVAL_WITHIN_STEPS,
    PBT_MUTABLE_NOT_CONDITIONAL,
    PBT_MUTABLE_NOT_A_PARENT,
    PBT_PARAMETER_NAMES_NOT_RESERVED,
    PBT_NO_PRUNER,
    PBT_NO_WARM_START,
    PBT_NO_CONFIRM,
    PBT_NO_TERMINATOR,
)

def is_population_based(spec: StudySpec) -> bool:
    """``sampler: pbt``, or ``auto`` where the spec marks mutable parameters (auto never picks
    PBT otherwise)."""
    sampler = spec.strategy.sampler
    return sampler == "pbt" or (sampler == "auto" and any(p.mutable for p in spec.searchSpace.values()))


def population_settings(spec: StudySpec) -> PopulationSettings:
    """The pbt settings of a valid spec (the defaults when ``auto`` chose pbt)."""
    if spec.strategy.sampler != "pbt":
        return PopulationSettings()
    return parse_population_settings(spec.strategy.settings)


def mutable_parameters(spec: StudySpec) -> list[str]:
    return [name for name, param in spec.searchSpace.items() if param.mutable]


def check_population(spec: StudySpec) -> None:
    """The rules of a PBT spec, each error naming its field."""
    mutable = mutable_parameters(spec)
    if not is_population_based(spec):
        if mutable:
            raise PBT_MUTABLE_NEEDS_PBT.error(name=mutable[0])
        return
    if not mutable:
        raise PBT_NEEDS_A_MUTABLE_PARAMETER.error()
    if spec.is_multi_objective:
        raise PBT_ONE_METRIC.error()
    steps = spec.objective.steps
    if steps is None:
        raise PBT_NEEDS_STEPS.error()
    interval = population_settings(spec).interval
    if interval is not None and interval > steps:
        raise PBT_INTERVAL_WITHIN_STEPS.error(interval=interval, steps=steps)
    for name in mutable:
        if spec.searchSpace[name].when:
            raise PBT_MUTABLE_NOT_CONDITIONAL.error(at=f"searchSpace.{name}.mutable")
        dependents = [other for other, p in spec.searchSpace.items() if name in (p.when or {})]
        if dependents:
            raise PBT_MUTABLE_NOT_A_PARENT.error(at=f"searchSpace.{name}.mutable", child=dependents[0])
    for name in spec.searchSpace:
        if name in SEGMENT_PLACEHOLDERS:
            raise PBT_PARAMETER_NAMES_NOT_RESERVED.error(name=name)
    if spec.strategy.pruner not in ("auto", "none"):
        raise PBT_NO_PRUNER.error()
    if spec.warmStart is not None:
        raise PBT_NO_WARM_START.error()
    if spec.confirm is not None:
        raise PBT_NO_CONFIRM.error()
    if spec.strategy.terminator:
        raise PBT_NO_TERMINATOR.error()
