"""The Study spec (tunefleet.dev/v1alpha1): the single source of truth for CLI, CRD and controller."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from controller.spec.conditions import (
    CONDITION_NAMES_A_PARAMETER,
    CONDITION_NOT_ON_A_FLOAT,
    CONDITION_NOT_ON_ITSELF,
    CONDITION_VALUE_IN_INT_RANGE,
    CONDITION_VALUE_IS_A_CHOICE,
    CONDITIONS_ACYCLIC,
    WARM_START_NAMES_A_PARAMETER,
    WARM_START_VALUE_IN_RANGE,
    WARM_START_VALUE_IS_A_CHOICE,
    WARM_START_VALUE_IS_A_NUMBER,
    check_conditions,
    check_fixed_params,
)
from controller.spec.durations import Duration
from controller.spec.params import (
    CategoricalParam,
    Choice,
    FloatParam,
    IntParam,
    Param,
)
from controller.spec.population import (
    POPULATION_BASED_CEL,
    POPULATION_RULES,
    SEGMENT_PLACEHOLDERS,
    check_population,
    is_population_based,
)
from controller.spec.rules import Rule, Rules, SpecModel
from controller.spec.tracking import Tracking

API_VERSION = "tunefleet.dev/v1alpha1"
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
STUDY_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,48}[a-z0-9])?$"
PYTHON_ENTRY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
PARAMETER_NAME = r"[A-Za-z_][A-Za-z0-9_.-]*"
PLACEHOLDER_PATTERN = r"\{\{\s*" + PARAMETER_NAME + r"\s*\}\}"
PLACEHOLDER = re.compile(r"\{\{\s*(" + PARAMETER_NAME + r")\s*\}\}")
MAX_METRICS = 16
MAX_PARAMETERS = 128
MAX_COMMAND_PARTS = 128
MAX_COMMAND_PART_LENGTH = 1024

SAMPLERS = ("auto", "random", "grid", "tpe", "gp", "cmaes", "qmc", "nsga2", "nsga3", "motpe", "pbt")
PRUNERS = ("auto", "none", "median", "percentile", "hyperband", "asha", "wilcoxon")

SamplerName = Literal[
    "auto", "random", "grid", "tpe", "gp", "cmaes", "qmc", "nsga2", "nsga3", "motpe", "pbt"
]
PrunerName = Literal["auto", "none", "median", "percentile", "hyperband", "asha", "wilcoxon"]


MetricName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]

METRICS_UNIQUE = Rule(
    "objective-metrics-unique",
    field="metrics",
    message="metric '{name}' is listed twice",
    cel="self.metrics.all(m, self.metrics.exists_one(n, n.name == m.name))",
    message_expression=(
        # Names first: CEL's cost estimate loses string sizes through filter(...)[0].name.
        "\"metric '\" + self.metrics.map(m, m.name)"
        ".filter(name, !self.metrics.exists_one(n, n.name == name))[0] + \"' is listed twice\""
    ),
)
GOAL_SINGLE_METRIC = Rule(
    "objective-goal-single-metric",
    field="goal",
    message="goal applies to single-objective studies only",
    cel="!has(self.goal) || size(self.metrics) == 1",
)
CONSTRAINT_NOT_A_METRIC = Rule(
    "objective-constraint-not-a-metric",
    field="constraints",
    message="'{name}' is an objective metric; a constraint must be another",
    cel="!has(self.constraints) || !self.constraints.exists(c, self.metrics.exists(m, m.name == c))",
    message_expression=(
        "\"'\" + self.constraints.filter(c, self.metrics.exists(m, m.name == c))[0]"
        " + \"' is an objective metric; a constraint must be another\""
    ),
)


class Metric(SpecModel):
    """One objective metric and whether it should go up or down."""

    name: MetricName
    direction: Literal["minimize", "maximize"]


class Objective(SpecModel):
    """What the study optimizes: one metric, or several for a multi-objective study."""

    spec_rules: ClassVar[Rules] = (METRICS_UNIQUE, GOAL_SINGLE_METRIC, CONSTRAINT_NOT_A_METRIC)

    metrics: list[Metric] = Field(
        min_length=1,
        max_length=MAX_METRICS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    goal: float | None = Field(default=None, description="Stop once the best value reaches this.")
    steps: int | None = Field(
        default=None,
        ge=1,
        description="How many intermediate steps (e.g. epochs) a trial reports with trial.report; "
        "population-based training trains each member this many steps.",
    )
    constraints: list[MetricName] = Field(
        default_factory=list,
        max_length=MAX_METRICS,
        description="Metric names that must be <= 0 for a trial to be feasible.",
    )

    @model_validator(mode="after")
    def _check(self) -> Objective:
        names = [m.name for m in self.metrics]
        for name in names:
            if names.count(name) > 1:
                raise METRICS_UNIQUE.error(name=name)
        if self.goal is not None and len(self.metrics) > 1:
            raise GOAL_SINGLE_METRIC.error()
        for name in self.constraints:
            if name in names:
                raise CONSTRAINT_NOT_A_METRIC.error(name=name)
        return self

    @property
    def directions(self) -> list[str]:
        return [m.direction for m in self.metrics]

    @property
    def metric_names(self) -> list[str]:
        return [m.name for m in self.metrics]


FREE_FORM_SETTINGS = (
    "settings are free-form (kept as written), so CEL cannot tell an empty map from a full one"
)
SETTINGS_NEED_A_SAMPLER = Rule(
    "strategy-settings-need-a-named-sampler",
    field="settings",
    message="settings need a named sampler; auto chooses one with its defaults",
    condition_time=FREE_FORM_SETTINGS,
)
SETTINGS_NEED_A_PRUNER = Rule(
    "strategy-pruner-settings-need-a-named-pruner",
    field="prunerSettings",
    message="settings need a named pruner; auto chooses one with its defaults",
    condition_time=FREE_FORM_SETTINGS,
)
SETTINGS_MATCH_OPTUNA = Rule(
    "strategy-settings-match-optuna",
    field="settings",
    message="{problem}",
    condition_time="checked against the installed Optuna's constructor signatures, which only Python knows",
)


class Strategy(SpecModel):
    """How trials are chosen (sampler) and stopped early (pruner)."""

    spec_rules: ClassVar[Rules] = (SETTINGS_NEED_A_SAMPLER, SETTINGS_NEED_A_PRUNER, SETTINGS_MATCH_OPTUNA)

    sampler: SamplerName = "auto"
    pruner: PrunerName = "auto"
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    settings: dict[str, Any] = Field(
        default_factory=dict, description="Options passed to the sampler's constructor."
    )
    prunerSettings: dict[str, Any] = Field(
        default_factory=dict, description="Options passed to the pruner's constructor."
    )
    terminator: bool = Field(
        default=False, description="Also stop when Optuna's terminator judges the study converged."
    )

    @model_validator(mode="after")
    def _check_settings(self) -> Strategy:
        # Checked against the installed Optuna's constructor signatures (controller.strategies).
        from controller.strategies.settings import SettingError, check_sampler_settings, pruner_options

        for field, name, settings in (
            ("settings", self.sampler, self.settings),
            ("prunerSettings", self.pruner, self.prunerSettings),
        ):
            if not settings:
                continue
            if name == "auto":
                raise (SETTINGS_NEED_A_SAMPLER if field == "settings" else SETTINGS_NEED_A_PRUNER).error()
            try:
                if field == "settings":
                    check_sampler_settings(name, settings)
                else:
                    pruner_options(name, settings)
            except SettingError as error:
                where = f"{field}.{error.key}" if error.key else field
                raise SETTINGS_MATCH_OPTUNA.error(at=where, problem=error.message) from None
        return self


class Budget(SpecModel):
    """Limits on the study; any subset. gpuHours and cpuHours are hard caps."""

    gpuHours: float | None = Field(default=None, gt=0)
    cpuHours: float | None = Field(default=None, gt=0)
    maxTrials: int | None = Field(default=None, ge=1)
    deadline: Duration | None = None
    patience: int | None = Field(
        default=None, ge=1, description="End as Converged after this many trials without improvement."
    )
    onExhausted: Literal["finish", "drain"] = "finish"
    maxFailedTrials: int | None = Field(
        default=None,
        ge=0,
        description="Failed trials the study tolerates (retried infrastructure failures aside): "
        "one more ends it as Failed. Unset: end as Failed when the first 3 finished trials all "
        "failed for the same reason and none completed.",
    )


PYTHON_OR_COMMAND = Rule(
    "trial-python-or-command",
    field="python",
    message="set exactly one of trial.python or trial.command",
    cel="has(self.python) != has(self.command)",
)


class Trial(SpecModel):
    """What one trial runs and with which resources."""

    spec_rules: ClassVar[Rules] = (PYTHON_OR_COMMAND,)

    python: str | None = Field(
        default=None,
        pattern=PYTHON_ENTRY_PATTERN,
        description="module:function taking an optuna.Trial and returning the metric value(s).",
    )
    command: list[Annotated[str, Field(max_length=MAX_COMMAND_PART_LENGTH)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_COMMAND_PARTS,
        description="A command with {{param}} placeholders; metrics are read from stdout.",
    )
    image: str | None = None
    gpus: int = Field(default=0, ge=0, le=64)
    cpus: float = Field(default=1.0, gt=0, le=512)
    memory: str | None = Field(default=None, pattern=QUANTITY_PATTERN)
    maxDuration: Duration = 3600
    expectedDuration: Duration | None = None
    maxRetries: int = Field(default=2, ge=0, le=20)
    isolation: Literal["warm", "process"] = Field(
        default="warm",
        description="warm: a local worker process runs trial after trial; process: one per trial.",
    )
    queueName: str | None = None
    template: dict[str, Any] = Field(
        default_factory=dict, description="PodTemplateSpec fields merged into each trial pod."
    )

    @model_validator(mode="after")
    def _one_entry(self) -> Trial:
        if (self.python is None) == (self.command is None):
            raise PYTHON_OR_COMMAND.error()
        return self


class WarmStart(SpecModel):
    """Configurations to run first, and/or another study to learn from."""

    params: list[dict[str, Choice]] = Field(default_factory=list)
    fromStudy: str | None = None


class Confirm(SpecModel):
    """Rerun the best configurations with fresh seeds to measure confidence intervals."""

    topK: int = Field(default=3, ge=1, le=50)
    repeats: int = Field(default=5, ge=2, le=100)


class Reproducibility(SpecModel):
    deterministic: bool = Field(
        default=False, description="Set deterministic algorithms (torch, cuDNN, cuBLAS)."
    )


class Export(SpecModel):
    """Where the controller writes the analysis export on the cluster."""

    persistentVolumeClaim: str
    path: str = "/"


CHECKPOINT_PATH_INSIDE = Rule(
    "checkpoints-path-inside-the-volume",
    field="path",
    message="the path must stay inside the volume (no '..')",
    cel="!has(self.path) || !self.path.matches('(^|/)[.][.](/|$)')",
)


class Checkpoints(SpecModel):
    """Where population-based training keeps checkpoints on the cluster (mounted into trial pods)."""

    spec_rules: ClassVar[Rules] = (CHECKPOINT_PATH_INSIDE,)

    persistentVolumeClaim: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    path: str = Field(
        default="/",
        max_length=1024,
        description="A directory inside the volume; each study gets its own below it.",
    )

    @model_validator(mode="after")
    def _inside(self) -> Checkpoints:
        if ".." in self.path.split("/"):
            raise CHECKPOINT_PATH_INSIDE.error()
        return self


class Storage(SpecModel):
    secretRef: str | None = Field(
        default=None, description="Secret with the database password (key: password)."
    )
    url: str | None = Field(default=None, description="Storage URL, for local runs.")


HAS_STRATEGY = "has(self.strategy) && has(self.strategy.sampler)"
PARAMETER_NAMES = Rule(
    "searchspace-parameter-names",
    field="",
    field_path="searchSpace",
    message="parameter name '{name}' must start with a letter or _ and hold only letters, digits, _ . -",
    cel=f"!has(self.searchSpace) || self.searchSpace.all(name, name.matches(r'{NAME_PATTERN}'))",
    message_expression=(
        "\"parameter name '\" + self.searchSpace.filter(name, !name.matches(r'" + NAME_PATTERN + "'))[0]"
        " + \"' must start with a letter or _ and hold only letters, digits, _ . -\""
    ),
)
# find and findAll come from the Kubernetes regex library of CEL.
_KNOWN = f"(has(self.searchSpace) && p.find(r'{PARAMETER_NAME}') in self.searchSpace)"
_PLACEHOLDERS = f"part.findAll(r'{PLACEHOLDER_PATTERN}')"
PLACEHOLDERS_NAME_PARAMETERS = Rule(
    "command-placeholders-name-parameters",
    field="trial.command",
    message="placeholder {{{{{name}}}}} names no parameter of searchSpace",
    # A population-based study's command may also name the segment placeholders: the API server
    # leaves its placeholders to the controller (checking both kinds in one loop costs CEL more
    # than the API server's per-rule limit).
    cel=(
        f"{POPULATION_BASED_CEL} || !has(self.trial.command) || "
        f"self.trial.command.all(part, {_PLACEHOLDERS}.all(p, {_KNOWN}))"
    ),
    message_expression=(
        "'placeholder {{' + self.trial.command.filter(part, "
        f"{_PLACEHOLDERS}.exists(p, !{_KNOWN}))[0].findAll(r'{PLACEHOLDER_PATTERN}')"
        f".filter(p, !{_KNOWN})[0].find(r'{PARAMETER_NAME}') + '}}}} names no parameter of searchSpace'"
    ),
)
GRID_NEEDS_STEPS = Rule(
    "grid-needs-a-finite-space",
    field="searchSpace",
    message="the grid sampler needs a finite space: give float '{name}' a step",
    cel=(
        f"!({HAS_STRATEGY} && self.strategy.sampler == 'grid') || !has(self.searchSpace) || "
        "self.searchSpace.all(n, self.searchSpace[n].type != 'float' || has(self.searchSpace[n].step))"
    ),
    message_expression=(
        "\"the grid sampler needs a finite space: give float '\" + self.searchSpace.filter(n, "
        "self.searchSpace[n].type == 'float' && !has(self.searchSpace[n].step))[0] + \"' a step\""
    ),
)
GRID_SIZE_LIMIT = Rule(
    "grid-size-limit",
    field="strategy.sampler",
    message="the grid has {size} points; at most {limit} are supported",
    condition_time=(
        "counting the grid multiplies every parameter's number of values: CEL has no product over "
        "a map, and cannot see categorical choices"
    ),
)
_SEVERAL = "size(self.objective.metrics) > 1"
PATIENCE_SINGLE_METRIC = Rule(
    "budget-patience-single-metric",
    field="budget.patience",
    message="patience applies to single-objective studies",
    cel=f"!has(self.budget) || !has(self.budget.patience) || !({_SEVERAL})",
)
CMAES_SINGLE_METRIC = Rule(
    "strategy-cmaes-single-metric",
    field="strategy.sampler",
    message="cmaes optimizes a single metric; use nsga2, nsga3 or motpe",
    cel=f"!({HAS_STRATEGY} && self.strategy.sampler == 'cmaes' && {_SEVERAL})",
)
MULTI_OBJECTIVE_SAMPLER = Rule(
    "strategy-multi-objective-sampler-needs-several-metrics",
    field="strategy.sampler",
    message="{sampler} is for several metrics; with one, use tpe, gp or cmaes",
    cel=f"!({HAS_STRATEGY} && self.strategy.sampler in ['motpe', 'nsga2', 'nsga3'] && !({_SEVERAL}))",
    message_expression="self.strategy.sampler + ' is for several metrics; with one, use tpe, gp or cmaes'",
)
PRUNER_SINGLE_METRIC = Rule(
    "strategy-pruner-single-metric",
    field="strategy.pruner",
    message="Optuna prunes single-objective studies only; use none",
    cel=(
        "!(has(self.strategy) && has(self.strategy.pruner) && !(self.strategy.pruner in ['auto', 'none'])"
        f" && {_SEVERAL})"
    ),
)
TERMINATOR_SINGLE_METRIC = Rule(
    "strategy-terminator-single-metric",
    field="strategy.terminator",
    message="the terminator judges single-objective studies only",
    cel=f"!(has(self.strategy) && has(self.strategy.terminator) && self.strategy.terminator && {_SEVERAL})",
)
class StudySpec(SpecModel):
    """Everything a study needs: objective, search space, strategy, budget and trial."""

    spec_rules: ClassVar[Rules] = (
        PARAMETER_NAMES,
        PLACEHOLDERS_NAME_PARAMETERS,
        GRID_NEEDS_STEPS,
        GRID_SIZE_LIMIT,
        PATIENCE_SINGLE_METRIC,
        CMAES_SINGLE_METRIC,
        MULTI_OBJECTIVE_SAMPLER,
        PRUNER_SINGLE_METRIC,
        TERMINATOR_SINGLE_METRIC,
        *POPULATION_RULES,
        CONDITION_NOT_ON_ITSELF,
        CONDITION_NAMES_A_PARAMETER,
        CONDITION_VALUE_IS_A_CHOICE,
        CONDITION_VALUE_IN_INT_RANGE,
        CONDITION_NOT_ON_A_FLOAT,
        CONDITIONS_ACYCLIC,
        WARM_START_NAMES_A_PARAMETER,
        WARM_START_VALUE_IS_A_CHOICE,
        WARM_START_VALUE_IS_A_NUMBER,
        WARM_START_VALUE_IN_RANGE,
    )

    objective: Objective
    searchSpace: dict[str, Param] = Field(default_factory=dict, max_length=MAX_PARAMETERS)
    strategy: Strategy = Field(default_factory=Strategy)
    budget: Budget = Field(default_factory=Budget)
    parallelism: int = Field(default=1, ge=1, le=1000)
    trial: Trial
    storage: Storage = Field(default_factory=Storage)
    suspend: bool = False
    warmStart: WarmStart | None = None
    confirm: Confirm | None = None
    reproducibility: Reproducibility = Field(default_factory=Reproducibility)
    export: Export | None = None
    tracking: Tracking | None = None
    checkpoints: Checkpoints | None = Field(
        default=None, description="A PersistentVolumeClaim for the checkpoints of sampler pbt (on a cluster)."
    )

    @field_validator("searchSpace")
    @classmethod
    def _check_names(cls, space: dict[str, Any]) -> dict[str, Any]:
        for name in space:
            if not re.match(NAME_PATTERN, name):
                raise PARAMETER_NAMES.error(name=name)
        return space

    @model_validator(mode="after")
    def _check_cross_references(self) -> StudySpec:
        check_conditions(self.searchSpace)
        check_population(self)
        if self.trial.command is not None:
            for part in self.trial.command:
                for name in PLACEHOLDER.findall(part):
                    # a segment placeholder is known only to a population-based study
                    segment = name in SEGMENT_PLACEHOLDERS and is_population_based(self)
                    if name not in self.searchSpace and not segment:
                        raise PLACEHOLDERS_NAME_PARAMETERS.error(name=name)
        if self.warmStart is not None:
            for index, params in enumerate(self.warmStart.params):
                check_fixed_params(self.searchSpace, params, f"warmStart.params[{index}]")
        if self.strategy.sampler == "grid":
            for name, param in self.searchSpace.items():
                if isinstance(param, FloatParam) and param.step is None:
                    raise GRID_NEEDS_STEPS.error(name=name)
        if self.budget.patience is not None and len(self.objective.metrics) > 1:
            raise PATIENCE_SINGLE_METRIC.error()
        _check_strategy_fits_objective(self)
        return self

    @property
    def is_multi_objective(self) -> bool:
        return len(self.objective.metrics) > 1

    @property
    def is_population_based(self) -> bool:
        """Population-based training: ``sampler: pbt``, or ``auto`` with mutable parameters."""
        return is_population_based(self)

    def space_size(self) -> int | None:
        """Distinct configurations in the space, or None if any parameter is continuous.

        Exact for conditional spaces too: a parameter only varies where its condition holds.
        """
        from controller.strategies.grid import count_configurations

        return count_configurations(self.searchSpace)


def _check_strategy_fits_objective(spec: StudySpec) -> None:
    strategy = spec.strategy
    several = spec.is_multi_objective
    if several and strategy.sampler == "cmaes":
        raise CMAES_SINGLE_METRIC.error()
    if not several and strategy.sampler in ("motpe", "nsga2", "nsga3"):
        raise MULTI_OBJECTIVE_SAMPLER.error(sampler=strategy.sampler)
    if several and strategy.pruner not in ("auto", "none"):
        raise PRUNER_SINGLE_METRIC.error()
    if several and strategy.terminator:
        raise TERMINATOR_SINGLE_METRIC.error()
    if strategy.sampler == "grid":
        from controller.strategies.grid import MAX_GRID_POINTS, product_size

        size = product_size(spec.searchSpace)
        if size is not None and size > MAX_GRID_POINTS:
            raise GRID_SIZE_LIMIT.error(size=size, limit=MAX_GRID_POINTS)


def ordered_parameters(
    space: dict[str, FloatParam | IntParam | CategoricalParam],
) -> list[str]:
    """Parameter names with every condition's parents before their children."""
    order: list[str] = []

    def place(name: str) -> None:
        if name in order:
            return
        for parent in space[name].when or {}:
            place(parent)
        order.append(name)

    for name in space:
        place(name)
    return order


class ObjectMeta(SpecModel):
    name: str = Field(pattern=STUDY_NAME_PATTERN)
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class StudyManifest(SpecModel):
    """A Study document as written in a YAML file or applied with kubectl."""

    apiVersion: Literal["tunefleet.dev/v1alpha1"]
    kind: Literal["Study"]
    metadata: ObjectMeta
    spec: StudySpec
