"""The GPUBudget spec: a team's GPU-hours, shared by every study of its namespace."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from controller.spec.rules import Rules, SpecModel
from controller.spec.study import ObjectMeta


class GPUBudgetSpec(SpecModel):
    """GPU-hours shared by the studies of a namespace, optionally refilled every period."""

    # Rules its validators raise reach the CRD as CEL, as a Study's do (controller/spec/rules.py).

    spec_rules: ClassVar[Rules] = ()

    gpuHours: float = Field(gt=0, description="GPU-hours available per period.")
    period: Literal["none", "daily", "weekly", "monthly"] = Field(
        default="none", description="When the budget refills (UTC calendar); none never refills."
    )
    maxGpuHoursPerStudy: float | None = Field(
        default=None, gt=0, description="Cap on what one study may spend of it."
    )


class GPUBudgetManifest(SpecModel):
    apiVersion: Literal["tunefleet.dev/v1alpha1"]
    kind: Literal["GPUBudget"]
    metadata: ObjectMeta
    spec: GPUBudgetSpec
