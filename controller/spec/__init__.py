"""The Study and GPUBudget specs: pydantic models, loading and field-precise errors."""

from __future__ import annotations

from controller.spec.durations import Duration, format_duration, parse_duration
from controller.spec.errors import SpecError, SpecInvalid
from controller.spec.gpubudget import GPUBudgetManifest, GPUBudgetSpec
from controller.spec.loading import (
    load_manifest_file,
    load_study_file,
    parse_study_text,
    validate_spec,
)
from controller.spec.params import CategoricalParam, Choice, FloatParam, IntParam, Param
from controller.spec.study import (
    API_VERSION,
    PRUNERS,
    SAMPLERS,
    StudyManifest,
    StudySpec,
    ordered_parameters,
)

__all__ = [
    "API_VERSION",
    "PRUNERS",
    "SAMPLERS",
    "CategoricalParam",
    "Choice",
    "Duration",
    "FloatParam",
    "GPUBudgetManifest",
    "GPUBudgetSpec",
    "IntParam",
    "Param",
    "SpecError",
    "SpecInvalid",
    "StudyManifest",
    "StudySpec",
    "format_duration",
    "load_manifest_file",
    "load_study_file",
    "ordered_parameters",
    "parse_duration",
    "parse_study_text",
    "validate_spec",
]
