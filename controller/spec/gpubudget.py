"""The GPUBudget spec: a team's GPU-hours, shared by every study of its namespace."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from controller.spec.study import ObjectMeta


class GPUBudgetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    gpuHours: float = Field(gt=0, description="GPU-hours available per period.")
    period: Literal["none", "daily", "weekly", "monthly"] = Field(
        default="none", description="When the budget refills (UTC calendar); none never refills."
    )
    maxGpuHoursPerStudy: float | None = Field(
        default=None, gt=0, description="Cap on what one study may spend of it."
    )


class GPUBudgetManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    apiVersion: Literal["tunefleet.dev/v1alpha1"]
    kind: Literal["GPUBudget"]
    metadata: ObjectMeta
    spec: GPUBudgetSpec
