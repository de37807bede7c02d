"""``strategy.settings`` and ``strategy.prunerSettings``, checked against Optuna's real signatures.

Each option is looked up in the constructor signature of the named sampler or pruner (the
installed Optuna, so the check follows upgrades), accepted as written there (``n_startup_trials``)
or in the spec's camelCase (``nStartupTrials``, and the short forms in ``ALIASES``), and its value
is checked against the annotated type. Options that take Python objects (callables, sampler
instances) cannot come from YAML: a few have names instead (``independent_sampler: tpe``,
``crossover: sbx``); the rest are refused with the reason. Options tunefleet sets itself (the
seed, the grid's search space, constraints) are refused with where to set them instead.
"""

from __future__ import annotations

import difflib
import inspect
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

from pydantic import TypeAdapter, ValidationError

SAMPLER_CLASSES: dict[str, str] = {
    "random": "RandomSampler",
    "grid": "GridSampler",
    "tpe": "TPESampler",
    "motpe": "TPESampler",
    "gp": "GPSampler",
    "cmaes": "CmaEsSampler",
    "qmc": "QMCSampler",
    "nsga2": "NSGAIISampler",
    "nsga3": "NSGAIIISampler",
}
PRUNER_CLASSES: dict[str, str] = {
    "none": "NopPruner",
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "hyperband": "HyperbandPruner",
    "asha": "SuccessiveHalvingPruner",
    "wilcoxon": "WilcoxonPruner",
}

ALIASES: dict[str, str] = {
    "startupTrials": "n_startup_trials",
    "eiCandidates": "n_ei_candidates",
    "warmupSteps": "n_warmup_steps",
    "minTrials": "n_min_trials",
    "startupSteps": "n_startup_steps",
}

MANAGED: dict[str, str] = {
    "seed": "set strategy.seed instead; tunefleet derives every sampler and trial seed from it",
    "search_space": "the grid is built from searchSpace (give each float a step)",
    "constraints_func": "list the constraint metrics in objective.constraints instead",
    "source_trials": "use warmStart.fromStudy to learn from another study's trials",
}

INDEPENDENT_SAMPLERS = ("random", "tpe")
CROSSOVERS: dict[str, str] = {
    "uniform": "UniformCrossover",
    "blxalpha": "BLXAlphaCrossover",
    "sbx": "SBXCrossover",
    "vsbx": "VSBXCrossover",
    "undx": "UNDXCrossover",
    "spx": "SPXCrossover",
}

_SIMPLE_TYPES: dict[str, Any] = {"int": int, "float": float, "bool": bool, "str": str, "None": type(None)}
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


class SettingError(ValueError):
    """One bad option: ``key`` is the option as the spec wrote it (empty for the whole set)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


@dataclass(frozen=True)
class _Option:
    name: str
    annotation: str
    convert: Callable[[Any], Any] | None  # None: the option takes a Python object


def sampler_options(sampler: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Constructor keyword arguments for ``sampler`` from the spec's settings.

    Raises :class:`SettingError` naming the first unknown, managed or mistyped option.
    """
    import optuna

    cls = getattr(optuna.samplers, SAMPLER_CLASSES[sampler])
    return _options(cls, f"the {sampler} sampler", settings, _SAMPLER_SPECIAL)


def pruner_options(pruner: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Constructor keyword arguments for ``pruner`` (plain JSON values, for the assignment)."""
    import optuna

    cls = getattr(optuna.pruners, PRUNER_CLASSES[pruner])
    options = _options(cls, f"the {pruner} pruner", settings, {})
    if pruner == "percentile":
        options.setdefault("percentile", 25.0)
    for name in ("min_resource", "max_resource"):
        value = options.get(name)
        if isinstance(value, int) and value < 1:
            key = next((k for k in settings if canonical_key(str(k)) == name), name)
            raise SettingError(key, f"{key!r} must be at least 1 (or 'auto'), got {value}")
    try:
        cls(**options)
    except (ValueError, TypeError) as exc:
        raise SettingError("", f"the {pruner} pruner refuses these settings: {exc}") from None
    return options


def check_sampler_settings(sampler: str, settings: dict[str, Any]) -> None:
    """Validate settings by converting them and building the sampler once (cheap, no study)."""
    if sampler == "pbt":
        from controller.spec.population import BadSetting, parse_population_settings

        try:
            parse_population_settings(settings)
        except BadSetting as error:
            raise SettingError(error.key, error.message) from None
        return
    options = sampler_options(sampler, settings)
    if sampler == "grid":
        return
    import optuna

    cls = getattr(optuna.samplers, SAMPLER_CLASSES[sampler])
    try:
        cls(**options)
    except ImportError as exc:
        raise SettingError("", f"the {sampler} sampler needs a package that is missing: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise SettingError("", f"the {sampler} sampler refuses these settings: {exc}") from None


def canonical_key(key: str) -> str:
    """``nStartupTrials`` -> ``n_startup_trials``; the short aliases too; snake_case unchanged."""
    if key in ALIASES:
        return ALIASES[key]
    return _CAMEL.sub("_", key).lower()


def _options(
    cls: type, what: str, settings: dict[str, Any], special: dict[str, Callable[[str, Any], Any]]
) -> dict[str, Any]:
    known = _signature_options(cls)
    result: dict[str, Any] = {}
    for key, value in settings.items():
        name = canonical_key(str(key))
        if name in MANAGED and name in known:
            raise SettingError(key, f"{key!r} cannot be set here: {MANAGED[name]}")
        option = known.get(name)
        if option is None:
            raise SettingError(key, _unknown_message(key, what, cls, known))
        if name in result:
            raise SettingError(key, f"{key!r} is given twice (as {name!r} too)")
        if name in special:
            result[name] = special[name](key, value)
        elif option.convert is None:
            raise SettingError(
                key, f"{key!r} takes a Python object ({option.annotation}) and cannot be set from a spec"
            )
        else:
            try:
                result[name] = option.convert(value)
            except ValueError:
                raise SettingError(key, f"{key!r} must be {option.annotation}, got {value!r}") from None
    return result


def _unknown_message(key: str, what: str, cls: type, known: dict[str, _Option]) -> str:
    settable = sorted(
        n for n, o in known.items() if n not in MANAGED and (o.convert is not None or n in _SAMPLER_SPECIAL)
    )
    close = difflib.get_close_matches(canonical_key(key), settable, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "."
    listed = ", ".join(settable) if settable else "none"
    return f"{key!r} is not an option of {what} (optuna {cls.__name__}){hint} Options: {listed}"


def _signature_options(cls: type) -> dict[str, _Option]:
    options: dict[str, _Option] = {}
    for parameter in inspect.signature(cls).parameters.values():
        if parameter.name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        annotation = parameter.annotation
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
        options[parameter.name] = _Option(parameter.name, text, _converter(parameter.name, text))
    return options


def _converter(name: str, annotation: str) -> Callable[[Any], Any] | None:
    parts = [part.strip() for part in annotation.split("|")]
    if not parts or any(part not in _SIMPLE_TYPES for part in parts):
        return None
    python_type: Any = Union[tuple(_SIMPLE_TYPES[part] for part in parts)]  # noqa: UP007
    adapter: TypeAdapter[Any] = TypeAdapter(python_type)

    def convert(value: Any) -> Any:
        # Strict: "10" is not an int and true is not 1; an int is still a valid float.
        if isinstance(value, bool) and "bool" not in parts:
            raise ValueError(name)
        if isinstance(value, int) and not isinstance(value, bool) and "int" not in parts and "float" in parts:
            return float(value)
        try:
            return adapter.validate_python(value, strict=True)
        except ValidationError:
            raise ValueError(name) from None

    return convert


def _independent_sampler(key: str, value: Any) -> Any:
    import optuna

    if value == "random":
        return optuna.samplers.RandomSampler()
    if value == "tpe":
        return optuna.samplers.TPESampler()
    raise SettingError(key, f"{key!r} must be one of {list(INDEPENDENT_SAMPLERS)}, got {value!r}")


def _crossover(key: str, value: Any) -> Any:
    import optuna

    if not isinstance(value, str) or value.lower() not in CROSSOVERS:
        raise SettingError(key, f"{key!r} must be one of {sorted(CROSSOVERS)}, got {value!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return getattr(optuna.samplers.nsgaii, CROSSOVERS[value.lower()])()


def _x0(key: str, value: Any) -> Any:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise SettingError(key, f"{key!r} must map parameter names to starting values")
    return dict(value)


def _reference_points(key: str, value: Any) -> Any:
    import numpy as np

    try:
        points = TypeAdapter(list[list[float]]).validate_python(value)
    except ValidationError:
        raise SettingError(key, f"{key!r} must be a list of points (lists of numbers)") from None
    return np.asarray(points, dtype=float)


_SAMPLER_SPECIAL: dict[str, Callable[[str, Any], Any]] = {
    "independent_sampler": _independent_sampler,
    "crossover": _crossover,
    "x0": _x0,
    "reference_points": _reference_points,
}


def json_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings with canonical names and plain values, for the reproducibility record."""
    return {canonical_key(str(k)): v for k, v in settings.items()}
