"""Talking to an MLflow tracking server with MLflow's client: runs, their content, artifacts.

:class:`MlflowWriter` sends a :class:`~controller.tracking.content.RunContent` as the difference
from what a run already holds (:class:`~controller.tracking.records.Sent`), and finds runs by
their ``tunefleet.*`` tags, so a run created just before a crash is adopted, never duplicated.
Every failure becomes a :class:`TrackerProblem` that says what is wrong in the words of
``spec.tracking.mlflow``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import requests
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from controller.tracking.content import PARENT_TRIAL, TAG_ROLE, TAG_STUDY_ID, TAG_TRIAL, RunContent
from controller.tracking.records import Sent

FIELD = "spec.tracking.mlflow"
TERMINAL = ("FINISHED", "FAILED", "KILLED")
SEARCH_PAGE = 1000
# MLflow 3's UI opens an experiment of this kind on its runs table (not the GenAI overview).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


@dataclass(frozen=True)
class TrackerProblem(Exception):
    """Why mirroring failed: a condition reason and a message naming the spec field."""

    reason: str
    message: str

    def __str__(self) -> str:
        return self.message


def classify(error: Exception, tracking_uri: str, credentials_from: str) -> TrackerProblem:
    """An MLflow client error as a reason a platform engineer can act on.

    ``credentials_from`` says where the credentials came from (a Secret, or the environment).
    """
    if isinstance(error, TrackerProblem):
        return error
    text = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    code = getattr(error, "error_code", None)
    status = error.get_http_status_code() if isinstance(error, MlflowException) else None
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or status in (401, 403):
        return TrackerProblem(
            "CredentialsRefused",
            f"{FIELD}: the tracking server at {tracking_uri} refused the credentials from "
            f"{credentials_from} (HTTP {status}); it needs username and password, or token",
        )
    if _unreachable(error):
        return TrackerProblem(
            "TrackerUnreachable",
            f"{FIELD}: cannot reach the tracking server at {tracking_uri}; mirroring resumes when it "
            f"answers ({_cause(error) or text})",
        )
    if code == "ENDPOINT_NOT_FOUND" or status == 404:
        return TrackerProblem(
            "NotATracker",
            f"{FIELD}: {tracking_uri} answers, but not as an MLflow tracking server (HTTP 404); "
            "check trackingUri",
        )
    return TrackerProblem("TrackerRejected", f"{FIELD}: the tracking server at {tracking_uri} said: {text}")


def _unreachable(error: Exception) -> bool:
    chain: BaseException | None = error
    while chain is not None:
        if isinstance(chain, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, OSError)):
            return True
        chain = chain.__cause__ or chain.__context__
    status = error.get_http_status_code() if isinstance(error, MlflowException) else None
    text = str(error)
    return "failed with exception" in text or (status is not None and status >= 500 and status != 501)


def _cause(error: Exception) -> str:
    text = str(error)
    for marker in ("Connection refused", "timed out", "Name or service not known", "Max retries exceeded"):
        if marker in text:
            return marker.lower()
    return ""


class MlflowWriter:
    """One tracking server and experiment, with whatever credentials are in effect."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def ensure_experiment(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            try:
                return str(self.client.create_experiment(self.experiment, tags=EXPERIMENT_KIND))
            except MlflowException as error:
                if getattr(error, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                    raise
                found = self.client.get_experiment_by_name(self.experiment)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            raise TrackerProblem(
                "ExperimentDeleted",
                f"{FIELD}.experiment: {self.experiment!r} is deleted in MLflow; restore it there or "
                "name another experiment",
            )
        return str(found.experiment_id)

    def find_runs(self, experiment_id: str, study_identity: str) -> dict[int, str]:
        """The runs already made for this study: trial number (-1 for the study) -> run id."""
        found: dict[int, str] = {}
        token: str | None = None
        escaped = study_identity.replace("'", "\\'")
        while True:
            page = self.client.search_runs(
                [experiment_id],
                filter_string=f"tags.`{TAG_STUDY_ID}` = '{escaped}'",
                max_results=SEARCH_PAGE,
                page_token=token,
            )
            for run in page:
                tags = run.data.tags
                number = (
                    PARENT_TRIAL if tags.get(TAG_ROLE) == "study" else int(tags.get(TAG_TRIAL, PARENT_TRIAL))
                )
                found.setdefault(number, run.info.run_id)
            token = page.token
            if not token:
                return found

    def create_run(
        self, experiment_id: str, content: RunContent, study_identity: str, parent_run_id: str | None
    ) -> str:
        """A new run carrying, from its first moment, the tags :meth:`find_runs` looks for."""
        tags = {TAG_STUDY_ID: study_identity, TAG_ROLE: content.tags[TAG_ROLE]}
        if TAG_TRIAL in content.tags:
            tags[TAG_TRIAL] = content.tags[TAG_TRIAL]
        if parent_run_id is not None:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(
            experiment_id, start_time=content.start_ms, tags=tags, run_name=content.name
        )
        return str(run.info.run_id)

    def push(self, run_id: str, content: RunContent, sent: Sent, link_tags: dict[str, str]) -> None:
        """Send what ``sent`` says MLflow lacks; ``sent`` is updated as each part is accepted."""
        tags = {**content.tags, **link_tags}
        new_tags = [RunTag(k, v) for k, v in sorted(tags.items()) if sent.tags.get(k) != v]
        # MLflow keeps a param's first value; the sampler sets a new trial's params one by one.
        params = [Param(k, v) for k, v in sorted(content.params.items()) if k not in sent.params]
        metrics = [
            Metric(key, point.value, point.timestamp_ms, point.step)
            for key, point in sorted(content.metrics.items())
            if sent.metrics.get(key) != point.value
        ]
        last = sent.last_step
        curve = [(step, value) for step, value in content.curve if last is None or step > last]
        if content.curve_key is not None:
            stamp = content.start_ms or 0
            metrics += [Metric(content.curve_key, value, stamp, step) for step, value in curve]
        if new_tags or params or metrics:
            self.client.log_batch(run_id, metrics=metrics, params=params, tags=new_tags, synchronous=True)
            sent.params.update({p.key: p.value for p in params})
            sent.tags.update({t.key: t.value for t in new_tags})
            sent.metrics.update({k: p.value for k, p in content.metrics.items()})
            if curve:
                sent.last_step = curve[-1][0]
        if content.status != sent.status or (content.finished and content.end_ms != sent.end_ms):
            if content.status in TERMINAL:
                self.client.set_terminated(run_id, status=content.status, end_time=content.end_ms)
            else:
                self.client.update_run(run_id, status=content.status)
            sent.status = content.status
            sent.end_ms = content.end_ms

    def upload(self, run_id: str, directory: Path, artifact_path: str | None) -> None:
        self.client.log_artifacts(run_id, str(directory), artifact_path)
