"""``spec.tracking``: where a study's trials are mirrored for the tools ML teams already read.

Only MLflow today. The controller (or the local runner) mirrors from the study database; trial
pods never talk to the tracker and hold none of its credentials.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar

from pydantic import Field, model_validator

from controller.spec.rules import Rule, Rules, SpecModel

TRACKING_URI_PATTERN = r"^https?://[^\s/@]+(/[^\s]*)?$"
CREDENTIALS_PATTERN = r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]*@"
# MLflow's own limits on tag keys and values (mlflow.utils.validation).
MAX_TAG_KEY = 250
MAX_TAG_VALUE = 5000
MAX_TAGS = 64
RESERVED_TAG_PREFIXES = ("mlflow.", "tunefleet.")

URI_WITHOUT_CREDENTIALS = Rule(
    "tracking-uri-without-credentials",
    field="trackingUri",
    message="holds credentials: put them in a Secret named by secretRef instead",
    cel=f"!self.trackingUri.matches(r'{CREDENTIALS_PATTERN}')",
)
URI_IS_HTTP = Rule(
    "tracking-uri-is-http",
    field="trackingUri",
    message="is not an http:// or https:// URL of an MLflow tracking server",
    # Reported once: a URL with credentials is already refused by the rule above.
    cel=(
        f"self.trackingUri.matches(r'{CREDENTIALS_PATTERN}')"
        f" || self.trackingUri.matches(r'{TRACKING_URI_PATTERN}')"
    ),
)
TAG_KEY_LENGTH = Rule(
    "tracking-tag-key-length",
    field="tags",
    message=f"tag keys hold 1 to {MAX_TAG_KEY} characters",
    cel=f"!has(self.tags) || self.tags.all(k, size(k) >= 1 && size(k) <= {MAX_TAG_KEY})",
)
TAG_KEY_NOT_RESERVED = Rule(
    "tracking-tag-key-not-reserved",
    field="tags",
    message="tag keys starting with " + " or ".join(RESERVED_TAG_PREFIXES) + " are reserved",
    cel="!has(self.tags) || self.tags.all(k, "
    + " && ".join(f"!k.startsWith('{prefix}')" for prefix in RESERVED_TAG_PREFIXES)
    + ")",
)


class MlflowTracking(SpecModel):
    """An MLflow tracking server: a parent run per study, a nested run per trial."""

    spec_rules: ClassVar[Rules] = (URI_WITHOUT_CREDENTIALS, URI_IS_HTTP, TAG_KEY_LENGTH, TAG_KEY_NOT_RESERVED)

    trackingUri: str = Field(
        min_length=1,
        max_length=2048,
        description="The tracking server's http(s) URL, without credentials (those go in secretRef).",
    )
    experiment: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="MLflow experiment name; default: the study's name (<namespace>/<name> on a cluster).",
    )
    tags: dict[str, Annotated[str, Field(max_length=MAX_TAG_VALUE)]] = Field(
        default_factory=dict,
        max_length=MAX_TAGS,
        description="Tags set on the study's run and on every trial's run.",
    )
    secretRef: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description=(
            "A Secret in the Study's namespace with keys username and password, or token; read by "
            "the controller only. Without it, the controller's MLFLOW_TRACKING_* environment."
        ),
    )

    @model_validator(mode="after")
    def _check(self) -> MlflowTracking:
        if re.match(CREDENTIALS_PATTERN, self.trackingUri):
            raise URI_WITHOUT_CREDENTIALS.error()
        if not re.match(TRACKING_URI_PATTERN, self.trackingUri):
            raise URI_IS_HTTP.error()
        self.trackingUri = self.trackingUri.rstrip("/")
        for key in self.tags:
            if not 1 <= len(key) <= MAX_TAG_KEY:
                raise TAG_KEY_LENGTH.error()
            if key.startswith(RESERVED_TAG_PREFIXES):
                raise TAG_KEY_NOT_RESERVED.error()
        return self


class Tracking(SpecModel):
    """Experiment trackers the study is mirrored to."""

    mlflow: MlflowTracking | None = None
