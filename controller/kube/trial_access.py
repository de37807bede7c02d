"""How trial pods reach the study storage when the trial gateway is on: per-trial tokens in Secrets.

With ``TUNEFLEET_GATEWAY_ADDRESS`` set, a trial pod holds no database password. Its assignment's
storage URL is ``tunefleet-gateway://<address>`` and its env takes ``TUNEFLEET_GATEWAY_TOKEN`` and
``TUNEFLEET_GATEWAY_CA`` from the Secret ``<job-name>-gateway-<hash>`` (:func:`gateway_secret_name`),
which the controller creates right after the Job, owned by it (so it goes with the Job). The
token is signed for the trial's namespace,
Optuna study and number, and expires at the trial's reservation end (the Job's creation +
``maxDuration`` + the deadline grace) plus ``TUNEFLEET_GATEWAY_TOKEN_SLACK_S``: the time its pod may
wait to be scheduled and pulled, which a reservation does not count. Everything here is pure but
:func:`gateway_from_env`, which reads the key and CA files.

The Study's export Job gets a Secret the same way (:func:`export_secret`), with a read-only token
for its study that expires at the Job's creation + its ``activeDeadlineSeconds`` + the slack.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.gateway.tokens import TokenClaims, TokenKeyError, TokenKeys
from trial_worker.contract import GATEWAY_CA_ENV, GATEWAY_SCHEME, GATEWAY_TOKEN_ENV

ADDRESS_ENV = "TUNEFLEET_GATEWAY_ADDRESS"
TOKEN_KEYS_ENV = "TUNEFLEET_GATEWAY_TOKEN_KEYS"
CA_FILE_ENV = "TUNEFLEET_GATEWAY_CA_FILE"
TOKEN_SLACK_ENV = "TUNEFLEET_GATEWAY_TOKEN_SLACK_S"
# An hour for the pod to be scheduled, its image pulled and its volumes attached.
DEFAULT_TOKEN_SLACK_S = 3600
# What the trial worker reads (trial_worker/gateway.py).
TOKEN_ENV = GATEWAY_TOKEN_ENV
CA_ENV = GATEWAY_CA_ENV
SECRET_TOKEN_KEY = "token"
SECRET_CA_KEY = "ca.crt"
# controller.kube.manifests's labels (it imports this module, so they are not imported from it).
TRIAL_LABEL = "tunefleet.dev/trial"
STUDY_UID_LABEL = "tunefleet.dev/study-uid"
ATTEMPT_LABEL = "tunefleet.dev/attempt"


@dataclass(frozen=True, eq=False)
class GatewayAccess:
    """The gateway trial pods dial, the keys that sign their tokens and the CA they verify it with."""

    address: str  # HOST:PORT as the pods resolve it
    keys: TokenKeys
    ca_pem: str
    token_slack_s: int = DEFAULT_TOKEN_SLACK_S

    @property
    def storage_url(self) -> str:
        """The assignment's storage URL: no password, no database."""
        return f"{GATEWAY_SCHEME}://{self.address}"


def gateway_from_env(environ: Mapping[str, str]) -> GatewayAccess | None:
    """None without ``TUNEFLEET_GATEWAY_ADDRESS``; raises ValueError naming a missing or bad variable."""
    address = (environ.get(ADDRESS_ENV) or "").strip()
    if not address:
        return None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{ADDRESS_ENV} must be HOST:PORT, got {address!r}")
    keys_path = _required_file(environ, TOKEN_KEYS_ENV)
    try:
        keys = TokenKeys.from_file(keys_path)
    except TokenKeyError as error:
        raise ValueError(f"{TOKEN_KEYS_ENV}: {error}") from None
    ca_pem = _required_file(environ, CA_FILE_ENV).read_text(errors="replace")
    if "BEGIN CERTIFICATE" not in ca_pem:
        raise ValueError(f"{CA_FILE_ENV}: {environ[CA_FILE_ENV]} holds no PEM certificate")
    return GatewayAccess(address, keys, ca_pem, _token_slack(environ.get(TOKEN_SLACK_ENV)))


def _required_file(environ: Mapping[str, str], name: str) -> Path:
    raw = environ.get(name)
    if not raw:
        raise ValueError(f"{name} must name a readable file when {ADDRESS_ENV} is set")
    path = Path(raw)
    try:
        path.read_bytes()
    except OSError as error:
        raise ValueError(f"{name}: cannot read {raw}: {error.strerror or error}") from None
    return path


def _token_slack(raw: str | None) -> int:
    if raw is None or not raw.strip():
        return DEFAULT_TOKEN_SLACK_S
    try:
        seconds = int(raw)
    except ValueError:
        seconds = -1
    if seconds < 0:
        raise ValueError(f"{TOKEN_SLACK_ENV} must be a whole number of seconds >= 0, got {raw!r}")
    return seconds


def gateway_secret_name(job_name: str, labels: Mapping[str, str]) -> str:
    """``<job-name>-gateway-<hash>``: the hash of the Study's uid and the trial's attempt makes the
    name one Job's alone. A Job of the same name (the Study applied again, a trial retried) never
    finds the Secret of the one before, which the garbage collector may not have removed yet: the
    controller may create trial Secrets, not read or replace them."""
    identity = f"{labels.get(STUDY_UID_LABEL, '')}/{labels.get(ATTEMPT_LABEL, '0')}"
    return f"{job_name}-gateway-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"


def gateway_env(job_name: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """The trial container's env: the token and the CA, from the trial's own Secret."""
    secret = gateway_secret_name(job_name, labels)
    return [
        {"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": secret, "key": SECRET_TOKEN_KEY}}},
        {"name": CA_ENV, "valueFrom": {"secretKeyRef": {"name": secret, "key": SECRET_CA_KEY}}},
    ]


@dataclass(frozen=True)
class TrialLifetime:
    """When a trial's Job was created and how long its reservation runs past that."""

    created: float  # unix seconds: the Job's creationTimestamp, or now for a Job just created
    max_duration_s: int
    deadline_grace_s: int

    def token_expiry(self, slack_s: int) -> int:
        return int(self.created) + self.max_duration_s + self.deadline_grace_s + slack_s


def trial_claims(namespace: str, study_key: str, trial: int, expires: int) -> TokenClaims:
    """What a trial's token allows: its own trial of its own study, until ``expires``."""
    return TokenClaims(namespace=namespace, study=study_key, trial=trial, expires=expires)


def job_created_at(job: Mapping[str, Any], default: float) -> float:
    """The Job's creationTimestamp in unix seconds; ``default`` when it has none (not stored yet)."""
    raw = (job.get("metadata") or {}).get("creationTimestamp")
    if not raw:
        return default
    return datetime.datetime.fromisoformat(str(raw).replace("Z", "+00:00")).timestamp()


def gateway_secret(job: Mapping[str, Any], token: str, ca_pem: str) -> dict[str, Any]:
    """Secret ``<job-name>-gateway-<hash>``: the trial's token and the gateway's CA, owned by the Job.

    ``job`` is the Job as stored (its uid makes the owner reference), so the Secret is deleted
    with it; labelled like the Job, so it is found by the study's and trial's labels.
    """
    meta = job["metadata"]
    metadata: dict[str, Any] = {
        "name": gateway_secret_name(meta["name"], meta.get("labels") or {}),
        "namespace": meta["namespace"],
        "labels": dict(meta.get("labels") or {}),
        "ownerReferences": [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": meta["name"],
                "uid": meta["uid"],
                "blockOwnerDeletion": False,
            }
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "data": {
            SECRET_TOKEN_KEY: base64.b64encode(token.encode()).decode(),
            SECRET_CA_KEY: base64.b64encode(ca_pem.encode()).decode(),
        },
    }


def trial_secret(job: Mapping[str, Any], gateway: GatewayAccess, study_key: str,
                 lifetime: TrialLifetime) -> dict[str, Any]:
    """The stored trial Job's gateway Secret, with a token signed for its trial of ``study_key``."""
    meta = job["metadata"]
    number = int(meta["labels"][TRIAL_LABEL])
    expires = lifetime.token_expiry(gateway.token_slack_s)
    token = gateway.keys.mint(trial_claims(meta["namespace"], study_key, number, expires))
    return gateway_secret(job, token, gateway.ca_pem)


def export_claims(namespace: str, study_key: str, expires: int) -> TokenClaims:
    """What the export's token allows: reading its study (``trial=None``), until ``expires``."""
    return TokenClaims(namespace=namespace, study=study_key, trial=None, expires=expires)


def export_secret(job: Mapping[str, Any], gateway: GatewayAccess, study_key: str,
                  created: float) -> dict[str, Any]:
    """The stored export Job's gateway Secret: a read-only token for ``study_key``, expiring at
    the Job's creation + its ``activeDeadlineSeconds`` + the token slack (time to be scheduled)."""
    meta = job["metadata"]
    deadline = int((job.get("spec") or {})["activeDeadlineSeconds"])
    expires = int(created) + deadline + gateway.token_slack_s
    token = gateway.keys.mint(export_claims(meta["namespace"], study_key, expires))
    return gateway_secret(job, token, gateway.ca_pem)


def needs_secret(job: Mapping[str, Any]) -> bool:
    """Whether a trial Job may still start a pod: not finished, not being deleted."""
    if (job.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (job.get("status") or {}).get("conditions") or []
    return not any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions
    )
