"""``reproducibility.json``: everything needed to rerun a study and get the same trials.

Assembled from the record the runner (or controller) stored in the study's user attributes when
the study began (spec, hash, study seed, strategy, versions), each trial's seed and provenance
attributes (image and digest from pod status, GPU model, node), and the versions of the exporting
process. Sampler and pruner settings are resolved: the constructor's defaults, overridden by what
the built object holds and by the spec's explicit settings, so no setting is left implicit.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any

import optuna
from pydantic import BaseModel

from controller.analysis.data import StudyData
from controller.planner.confirmation import ATTR_CONFIRM_OF
from controller.studies import record
from trial_worker.contract import ATTR_ATTEMPT, ATTR_KIND, ATTR_RETRY_OF, ATTR_SEED

PRUNER_CLASSES: dict[str, type[optuna.pruners.BasePruner]] = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "asha": optuna.pruners.SuccessiveHalvingPruner,
    "wilcoxon": optuna.pruners.WilcoxonPruner,
}
# What the worker adds to a pruner's settings (trial_worker/pruners.py), mirrored here because
# the controller does not import the worker's pruner module.
PRUNER_IMPLICIT: dict[str, dict[str, Any]] = {"percentile": {"percentile": 25.0}}
REVISION_KEYS = ("tunefleet.dev/revision", "org.opencontainers.image.revision")


class TrialRecord(BaseModel):
    number: int
    state: str
    kind: str
    seed: int | None
    confirm_of: int | None = None
    retry_of: int | None = None
    attempt: int = 0
    image: str | None = None
    image_digest: str | None = None
    gpu_model: str | None = None
    node: str | None = None


class Component(BaseModel):
    name: str | None
    cls: str | None
    settings: dict[str, Any]
    explicit_settings: dict[str, Any]


class Reproducibility(BaseModel):
    study: str
    spec: dict[str, Any] | None
    spec_hash: str | None
    spec_hash_matches: bool | None
    study_seed: int | None
    deterministic: bool
    sampler: Component
    pruner: Component
    strategy_reasons: list[str]
    versions_at_start: dict[str, str]
    versions_at_export: dict[str, str]
    images: list[dict[str, str | None]]
    gpu_models: list[str]
    code_revision: dict[str, str] | None
    trials: list[TrialRecord]
    how_to_reproduce: str


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def resolved_settings(obj: object, explicit: dict[str, Any]) -> dict[str, Any]:
    """Constructor defaults, then what ``obj`` holds (``_name`` attributes), then ``explicit``."""
    settings: dict[str, Any] = {}
    held = dict(vars(obj))
    for nested in list(held.values()):
        if hasattr(nested, "_asdict"):
            held.update({f"_{k}": v for k, v in nested._asdict().items()})
    for name, parameter in inspect.signature(type(obj).__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        value = held.get(f"_{name}", parameter.default)
        if value is inspect.Parameter.empty:
            continue
        settings[name] = value if _jsonable(value) else repr(value)
    settings.update({k: v for k, v in explicit.items() if _jsonable(v)})
    return settings


def _sampler(data: StudyData, strategy: dict[str, Any], seed: int | None) -> Component:
    name = strategy.get("sampler")
    explicit = dict(strategy.get("samplerSettings") or {})
    if not name or data.spec is None:
        return Component(name=name, cls=None, settings=explicit, explicit_settings=explicit)
    from controller.spec import StudySpec
    from controller.strategies import build_sampler

    if name == "pbt":
        return _population(data, explicit, seed)
    try:
        sampler = build_sampler(name, StudySpec.model_validate(data.spec), seed or 0)
    except (ValueError, TypeError) as exc:
        return Component(name=name, cls=None, settings={"error": str(exc)}, explicit_settings=explicit)
    settings = resolved_settings(sampler, explicit)
    if "seed" in settings and "seed" not in explicit:
        settings["seed"] = seed  # the study seed is what build_sampler passes
    return Component(name=name, cls=type(sampler).__name__, settings=settings, explicit_settings=explicit)


def _population(data: StudyData, explicit: dict[str, Any], seed: int | None) -> Component:
    """Population-based training: no Optuna sampler decides, the planner does, with these settings."""
    from controller.spec import StudySpec
    from controller.spec.population import population_settings

    spec = StudySpec.model_validate(data.spec)
    resolved = population_settings(spec)
    settings: dict[str, Any] = resolved.model_dump(mode="json")
    settings["interval"] = resolved.interval_for(spec.objective.steps or 1)
    settings["seed"] = seed
    return Component(
        name="pbt", cls="controller.planner.population", settings=settings, explicit_settings=explicit
    )


def _pruner(strategy: dict[str, Any]) -> Component:
    name = strategy.get("pruner")
    explicit = dict(strategy.get("prunerSettings") or {})
    cls = PRUNER_CLASSES.get(str(name))
    if cls is None:
        return Component(name=name, cls=None, settings=explicit, explicit_settings=explicit)
    arguments = {**PRUNER_IMPLICIT.get(str(name), {}), **explicit}
    try:
        pruner = cls(**arguments)
    except (ValueError, TypeError) as exc:
        return Component(
            name=name, cls=cls.__name__, settings={"error": str(exc)}, explicit_settings=explicit
        )
    return Component(
        name=name, cls=cls.__name__, settings=resolved_settings(pruner, arguments), explicit_settings=explicit
    )


def _trial_record(trial: optuna.trial.FrozenTrial) -> TrialRecord:
    attrs = trial.user_attrs
    seed = attrs.get(ATTR_SEED)
    retry_of = attrs.get(ATTR_RETRY_OF)
    confirm_of = attrs.get(ATTR_CONFIRM_OF)
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        kind=str(attrs.get(ATTR_KIND) or "search"),
        seed=int(seed) if seed is not None else None,
        confirm_of=int(confirm_of) if confirm_of is not None else None,
        retry_of=int(retry_of) if retry_of is not None and retry_of != trial.number else None,
        attempt=int(attrs.get(ATTR_ATTEMPT, 0)),
        image=attrs.get(record.ATTR_TRIAL_IMAGE),
        image_digest=attrs.get(record.ATTR_TRIAL_IMAGE_DIGEST),
        gpu_model=attrs.get(record.ATTR_TRIAL_GPU_MODEL),
        node=attrs.get(record.ATTR_TRIAL_NODE),
    )


def _images(data: StudyData, trials: list[TrialRecord]) -> list[dict[str, str | None]]:
    seen: dict[tuple[str | None, str | None], None] = {}
    for trial in trials:
        if trial.image or trial.image_digest:
            seen[(trial.image, trial.image_digest)] = None
    declared = ((data.spec or {}).get("trial") or {}).get("image")
    if declared and not any(image == declared for image, _ in seen):
        seen[(declared, None)] = None  # declared in the spec; no pod reported its digest
    return [{"image": image, "digest": digest} for image, digest in seen]


def _code_revision(data: StudyData, trials: list[optuna.trial.FrozenTrial]) -> dict[str, str] | None:
    template = ((data.spec or {}).get("trial") or {}).get("template") or {}
    metadata = template.get("metadata") or {}
    for where in ("annotations", "labels"):
        for key in REVISION_KEYS:
            value = (metadata.get(where) or {}).get(key)
            if value:
                return {"revision": str(value), "source": f"spec.trial.template.metadata.{where}[{key}]"}
    for trial in trials:
        value = trial.user_attrs.get(record.ATTR_TRIAL_IMAGE_REVISION)
        if value:
            return {
                "revision": str(value),
                "source": "the trial image's org.opencontainers.image.revision label",
            }
    stored = data.user_attrs.get(record.ATTR_CODE_REVISION)
    if isinstance(stored, dict) and stored.get("revision"):
        return {str(k): str(v) for k, v in stored.items()}
    return None


def _gpu_models(data: StudyData, trials: list[TrialRecord]) -> list[str]:
    models = {t.gpu_model for t in trials if t.gpu_model}
    host = data.user_attrs.get(record.ATTR_HOST_GPUS) or []
    gpus = float(((data.spec or {}).get("trial") or {}).get("gpus", 0) or 0)
    if gpus > 0 or not models:
        models.update(str(m) for m in host)
    return sorted(models)


def _hash(spec: dict[str, Any] | None) -> str | None:
    if spec is None:
        return None
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def reproducibility_record(data: StudyData) -> Reproducibility:
    attrs = data.user_attrs
    strategy = attrs.get(record.ATTR_STRATEGY) or {}
    seed = attrs.get(record.ATTR_SEED)
    study_seed = int(seed) if seed is not None else None
    trials = [_trial_record(t) for t in sorted(data.trials, key=lambda t: t.number)]
    stored_hash = attrs.get(record.ATTR_SPEC_HASH)
    spec = data.spec
    return Reproducibility(
        study=data.name,
        spec=spec,
        spec_hash=stored_hash,
        spec_hash_matches=(stored_hash == _hash(spec)) if stored_hash and spec else None,
        study_seed=study_seed,
        deterministic=bool(((spec or {}).get("reproducibility") or {}).get("deterministic", False)),
        sampler=_sampler(data, strategy, study_seed),
        pruner=_pruner(strategy),
        strategy_reasons=list(strategy.get("reasons") or []),
        versions_at_start=dict(attrs.get(record.ATTR_VERSIONS) or {}),
        versions_at_export=record.library_versions(),
        images=_images(data, trials),
        gpu_models=_gpu_models(data, trials),
        code_revision=_code_revision(data, data.trials),
        trials=trials,
        how_to_reproduce=(
            "Run the spec above (same hash) with strategy.seed set to study_seed and parallelism 1: "
            "the sampler then asks for the same parameter sequence, and each trial gets the seed "
            "listed here (derived from the study seed and the trial number). With "
            "reproducibility.deterministic true, a deterministic objective gives the same values "
            "on the same hardware and library versions."
        ),
    )
