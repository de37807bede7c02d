"""``spec.tracking``: where a study's trials are mirrored for the tools ML teams already read.

Only MLflow today. The controller (or the local runner) mirrors from the study database; trial
pods never talk to the tracker and hold none of its credentials.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

TRACKING_URI_PATTERN = r"^https?://[^\s/@]+(/[^\s]*)?$"
# MLflow's own limits on tag keys and values (mlflow.utils.validation).
MAX_TAG_KEY = 250
MAX_TAG_VALUE = 5000
RESERVED_TAG_PREFIXES = ("mlflow.", "tunefleet.")


class MlflowTracking(BaseModel):
    """An MLflow tracking server: a parent run per study, a nested run per trial."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    trackingUri: str = Field(
        min_length=1,
        description="The tracking server's http(s) URL, without credentials (those go in secretRef).",
    )
    experiment: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="MLflow experiment name; default: the study's name (<namespace>/<name> on a cluster).",
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="Tags set on the study's run and on every trial's run."
    )
    secretRef: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "A Secret in the Study's namespace with keys username and password, or token; read by "
            "the controller only. Without it, the controller's MLFLOW_TRACKING_* environment."
        ),
    )

    @field_validator("trackingUri")
    @classmethod
    def _check_uri(cls, uri: str) -> str:
        if "@" in uri.split("://", 1)[-1].split("/", 1)[0]:
            raise ValueError("holds credentials: put them in a Secret named by secretRef instead")
        if not re.match(TRACKING_URI_PATTERN, uri):
            raise ValueError(f"{uri!r} is not an http:// or https:// URL of an MLflow tracking server")
        return uri.rstrip("/")

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, tags: dict[str, str]) -> dict[str, str]:
        for key, value in tags.items():
            if not key or len(key) > MAX_TAG_KEY:
                raise ValueError(f"tag key {key!r} must hold 1 to {MAX_TAG_KEY} characters")
            if key.startswith(RESERVED_TAG_PREFIXES):
                raise ValueError(
                    f"tag key {key!r}: the prefixes {', '.join(RESERVED_TAG_PREFIXES)} are reserved"
                )
            if len(value) > MAX_TAG_VALUE:
                raise ValueError(f"tag {key!r}: values hold at most {MAX_TAG_VALUE} characters")
        return tags


class Tracking(BaseModel):
    """Experiment trackers the study is mirrored to."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    mlflow: MlflowTracking | None = None
