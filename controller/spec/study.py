"""The Study spec (tunefleet.dev/v1alpha1): the single source of truth for CLI, CRD and controller."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from controller.spec.durations import Duration
from controller.spec.errors import describe, field_error
from controller.spec.params import (
    CategoricalParam,
    Choice,
    FloatParam,
    IntParam,
    Param,
    same_choice,
)

API_VERSION = "tunefleet.dev/v1alpha1"
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
STUDY_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,48}[a-z0-9])?$"
PYTHON_ENTRY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")

SAMPLERS = ("auto", "random", "grid", "tpe", "gp", "cmaes", "qmc", "nsga2", "nsga3", "motpe")
PRUNERS = ("auto", "none", "median", "percentile", "hyperband", "asha", "wilcoxon")

SamplerName = Literal["auto", "random", "grid", "tpe", "gp", "cmaes", "qmc", "nsga2", "nsga3", "motpe"]
PrunerName = Literal["auto", "none", "median", "percentile", "hyperband", "asha", "wilcoxon"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Metric(_Strict):
    """One objective metric and whether it should go up or down."""

    name: str = Field(pattern=NAME_PATTERN)
    direction: Literal["minimize", "maximize"]


class Objective(_Strict):
    """What the study optimizes: one metric, or several for a multi-objective study."""

    metrics: list[Metric] = Field(min_length=1)
    goal: float | None = Field(default=None, description="Stop once the best value reaches this.")
    constraints: list[str] = Field(
        default_factory=list,
        description="Metric names that must be <= 0 for a trial to be feasible.",
    )

    @model_validator(mode="after")
    def _check(self) -> Objective:
        names = [m.name for m in self.metrics]
        for name in names:
            if names.count(name) > 1:
                raise field_error("metrics", f"metric {name!r} is listed twice")
        if self.goal is not None and len(self.metrics) > 1:
            raise field_error("goal", "goal applies to single-objective studies only")
        for name in self.constraints:
            if not re.match(NAME_PATTERN, name):
                raise field_error("constraints", f"{name!r} is not a valid metric name")
            if name in names:
                raise field_error(
                    "constraints", f"{name!r} is an objective metric; a constraint must be another"
                )
        return self

    @property
    def directions(self) -> list[str]:
        return [m.direction for m in self.metrics]

    @property
    def metric_names(self) -> list[str]:
        return [m.name for m in self.metrics]


class Strategy(_Strict):
    """How trials are chosen (sampler) and stopped early (pruner)."""

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
                kind = "sampler" if field == "settings" else "pruner"
                raise field_error(field, f"settings need a named {kind}; auto chooses one with its defaults")
            try:
                if field == "settings":
                    check_sampler_settings(name, settings)
                else:
                    pruner_options(name, settings)
            except SettingError as error:
                raise field_error(f"{field}.{error.key}" if error.key else field, error.message) from None
        return self


class Budget(_Strict):
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


class Trial(_Strict):
    """What one trial runs and with which resources."""

    python: str | None = Field(
        default=None,
        pattern=PYTHON_ENTRY_PATTERN,
        description="module:function taking an optuna.Trial and returning the metric value(s).",
    )
    command: list[str] | None = Field(
        default=None,
        min_length=1,
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
            raise field_error("python", "set exactly one of trial.python or trial.command")
        return self


class WarmStart(_Strict):
    """Configurations to run first, and/or another study to learn from."""

    params: list[dict[str, Choice]] = Field(default_factory=list)
    fromStudy: str | None = None


class Confirm(_Strict):
    """Rerun the best configurations with fresh seeds to measure confidence intervals."""

    topK: int = Field(default=3, ge=1, le=50)
    repeats: int = Field(default=5, ge=2, le=100)


class Reproducibility(_Strict):
    deterministic: bool = Field(
        default=False, description="Set deterministic algorithms (torch, cuDNN, cuBLAS)."
    )


class Export(_Strict):
    """Where the controller writes the analysis export on the cluster."""

    persistentVolumeClaim: str
    path: str = "/"


class Storage(_Strict):
    secretRef: str | None = Field(
        default=None, description="Secret with the database password (key: password)."
    )
    url: str | None = Field(default=None, description="Storage URL, for local runs.")


class StudySpec(_Strict):
    """Everything a study needs: objective, search space, strategy, budget and trial."""

    objective: Objective
    searchSpace: dict[str, Param] = Field(default_factory=dict)
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

    @field_validator("searchSpace")
    @classmethod
    def _check_names(cls, space: dict[str, Any]) -> dict[str, Any]:
        for name in space:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(
                    f"parameter name {name!r} must start with a letter or _ and hold only "
                    "letters, digits, _ . -"
                )
        return space

    @model_validator(mode="after")
    def _check_cross_references(self) -> StudySpec:
        _check_conditions(self.searchSpace)
        if self.trial.command is not None:
            for part in self.trial.command:
                for name in PLACEHOLDER.findall(part):
                    if name not in self.searchSpace:
                        raise field_error(
                            "trial.command",
                            f"placeholder {{{{{name}}}}} names no parameter of searchSpace",
                        )
        if self.warmStart is not None:
            for index, params in enumerate(self.warmStart.params):
                _check_fixed_params(self.searchSpace, params, f"warmStart.params[{index}]")
        if self.strategy.sampler == "grid":
            for name, param in self.searchSpace.items():
                if isinstance(param, FloatParam) and param.step is None:
                    raise field_error(
                        f"searchSpace.{name}",
                        "the grid sampler needs a finite space: give this float a step",
                    )
        if self.budget.patience is not None and len(self.objective.metrics) > 1:
            raise field_error("budget.patience", "patience applies to single-objective studies")
        _check_strategy_fits_objective(self)
        return self

    @property
    def is_multi_objective(self) -> bool:
        return len(self.objective.metrics) > 1

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
        raise field_error("strategy.sampler", "cmaes optimizes a single metric; use nsga2, nsga3 or motpe")
    if not several and strategy.sampler in ("motpe", "nsga2", "nsga3"):
        raise field_error(
            "strategy.sampler", f"{strategy.sampler} is for several metrics; with one, use tpe, gp or cmaes"
        )
    if several and strategy.pruner not in ("auto", "none"):
        raise field_error("strategy.pruner", "Optuna prunes single-objective studies only; use none")
    if several and strategy.terminator:
        raise field_error("strategy.terminator", "the terminator judges single-objective studies only")
    if strategy.sampler == "grid":
        from controller.strategies.grid import MAX_GRID_POINTS, product_size

        size = product_size(spec.searchSpace)
        if size is not None and size > MAX_GRID_POINTS:
            raise field_error(
                "strategy.sampler", f"the grid has {size} points; at most {MAX_GRID_POINTS} are supported"
            )


def _check_conditions(space: dict[str, FloatParam | IntParam | CategoricalParam]) -> None:
    for name, param in space.items():
        for parent, wanted in (param.when or {}).items():
            where = f"searchSpace.{name}.when.{parent}"
            if parent == name:
                raise field_error(where, "a parameter cannot depend on itself")
            if parent not in space:
                raise field_error(where, f"{parent!r} is not a parameter of searchSpace")
            target = space[parent]
            for value in wanted if isinstance(wanted, list) else [wanted]:
                if isinstance(target, CategoricalParam):
                    if not any(same_choice(value, c) for c in target.choices):
                        raise field_error(
                            where,
                            f"{describe(value)} is not one of {parent}'s choices {target.choices}",
                        )
                elif isinstance(target, IntParam):
                    if not isinstance(value, int) or not target.low <= value <= target.high:
                        raise field_error(
                            where,
                            f"{describe(value)} is not an integer in {parent}'s range "
                            f"[{target.low}, {target.high}]",
                        )
                else:
                    raise field_error(where, f"{parent!r} is a float; conditions need a categorical or int")
    _check_acyclic(space)


def _check_acyclic(space: dict[str, FloatParam | IntParam | CategoricalParam]) -> None:
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = " -> ".join([*trail[trail.index(name) :], name])
            raise field_error(f"searchSpace.{name}.when", f"conditions form a cycle: {cycle}")
        visiting.add(name)
        for parent in space[name].when or {}:
            visit(parent, [*trail, name])
        visiting.discard(name)
        done.add(name)

    for name in space:
        visit(name, [])


def _check_fixed_params(
    space: dict[str, FloatParam | IntParam | CategoricalParam], params: dict[str, Choice], where: str
) -> None:
    for name, value in params.items():
        if name not in space:
            raise field_error(f"{where}.{name}", "names no parameter of searchSpace")
        param = space[name]
        if isinstance(param, CategoricalParam):
            if not any(same_choice(value, c) for c in param.choices):
                raise field_error(f"{where}.{name}", f"{describe(value)} is not one of {param.choices}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise field_error(f"{where}.{name}", f"{describe(value)} is not a number")
        elif not param.low <= value <= param.high:
            raise field_error(f"{where}.{name}", f"{value} is outside [{param.low}, {param.high}]")


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


class ObjectMeta(_Strict):
    name: str = Field(pattern=STUDY_NAME_PATTERN)
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class StudyManifest(_Strict):
    """A Study document as written in a YAML file or applied with kubectl."""

    apiVersion: Literal["tunefleet.dev/v1alpha1"]
    kind: Literal["Study"]
    metadata: ObjectMeta
    spec: StudySpec
