"""Where the trial pods' database password comes from, and what to say when it cannot be read.

In order: the Study's ``spec.storage.secretRef`` (a Secret in the Study's namespace), the Secret
``TUNEFLEET_DB_SECRET`` names in the controller's namespace (the chart's database Secret), then the
controller's own environment. A Secret the controller may not read (403), that is missing (404)
or lacks the key is never passed over in silence: the check carries a problem the reconciler turns
into a Study condition, an Event and an error log line. A ``secretRef`` the user named but the
controller cannot read blocks new trials (they would log in with some other password); the
controller's own Secret falls back to the password the controller started with, and says so.

With the trial gateway on (``TUNEFLEET_GATEWAY_ADDRESS``) trial pods hold no password at all: only
the controller's own Secret is read (:func:`check_gateway`), for the controller's own connections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

PASSWORD_KEY = "password"
Reason = Literal["SecretForbidden", "SecretNotFound", "SecretKeyMissing"]


class SecretUnreadable(Exception):
    """A Secret's key could not be read; ``reason`` says why in one word."""

    def __init__(self, namespace: str, name: str, key: str, reason: Reason, detail: str = "") -> None:
        self.namespace, self.name, self.key, self.reason, self.detail = namespace, name, key, reason, detail
        super().__init__(self.describe())

    def describe(self) -> str:
        where = f"Secret {self.namespace}/{self.name}"
        if self.reason == "SecretForbidden":
            return f"{where} is forbidden to the controller (403){': ' + self.detail if self.detail else ''}"
        if self.reason == "SecretNotFound":
            return f"{where} does not exist"
        return f"{where} has no key {self.key!r}"


class SecretReader(Protocol):
    def read_secret_value(self, namespace: str, name: str, key: str) -> str:
        """The decoded value; raises :class:`SecretUnreadable`."""
        ...


@dataclass(frozen=True)
class PasswordSources:
    """The controller's configuration of where passwords live."""

    controller_namespace: str
    db_secret: str | None  # TUNEFLEET_DB_SECRET: the chart's database Secret
    environment_password: str | None  # what the controller started with (TUNEFLEET_DB_PASSWORD)


@dataclass(frozen=True)
class CredentialCheck:
    """The password for a Study's trial pods, where it came from, and any problem on the way.

    ``blocking``: no trial may start (the Study asked for a Secret that cannot be read).
    ``controller_password``: the value of the controller's own Secret when it was read, so the
    controller's own new connections follow a rotation.
    """

    password: str
    source: str
    problem: SecretUnreadable | None = None
    blocking: bool = False
    controller_password: str | None = None
    gateway: bool = False  # trial pods go through the trial gateway: ``password`` is unused

    @property
    def reason(self) -> str:
        if self.problem is not None:
            return self.problem.reason
        return "TrialGateway" if self.gateway else "SecretRead"

    @property
    def message(self) -> str:
        if self.gateway:
            said = "trial pods reach the database only through the trial gateway, each with its own token"
            if self.problem is None:
                return said
            return f"{self.problem.describe()}: the controller keeps the password it started with; {said}"
        if self.problem is None:
            return f"trial pods get the database password from {self.source}"
        if self.blocking:
            return (
                f"{self.problem.describe()}; no trial starts until the controller can read it "
                "(spec.storage.secretRef; the chart grants reads of the names in "
                "rbac.storageSecretNames)"
            )
        return (
            f"{self.problem.describe()}: the controller keeps the password it started with and trial "
            f"pods get theirs from {self.source}, so a rotated password reaches neither (the chart's "
            "RBAC grants the controller this read)"
        )


def check_gateway(reader: SecretReader, sources: PasswordSources) -> CredentialCheck:
    """With the trial gateway: the controller's own password only (``spec.storage.secretRef`` is
    unused, trial pods log in to nothing)."""
    controller_password, problem = _controller_password(reader, sources)
    return CredentialCheck("", "the trial gateway", problem, controller_password=controller_password,
                           gateway=True)


def _controller_password(
    reader: SecretReader, sources: PasswordSources
) -> tuple[str | None, SecretUnreadable | None]:
    if not sources.db_secret:
        return None, None
    try:
        return reader.read_secret_value(sources.controller_namespace, sources.db_secret, PASSWORD_KEY), None
    except SecretUnreadable as problem:
        return None, problem


def check_password(reader: SecretReader, sources: PasswordSources, namespace: str,
                   secret_ref: str | None) -> CredentialCheck:
    """The trial pods' password for a Study in ``namespace`` whose spec names ``secret_ref``."""
    controller_password, fallback_problem = _controller_password(reader, sources)
    if secret_ref:
        try:
            value = reader.read_secret_value(namespace, secret_ref, PASSWORD_KEY)
        except SecretUnreadable as problem:
            return CredentialCheck("", f"Secret {namespace}/{secret_ref}", problem, blocking=True,
                                   controller_password=controller_password)
        return CredentialCheck(value, f"Secret {namespace}/{secret_ref} (spec.storage.secretRef)",
                               fallback_problem, controller_password=controller_password)
    if controller_password is not None:
        return CredentialCheck(controller_password,
                               f"Secret {sources.controller_namespace}/{sources.db_secret}",
                               controller_password=controller_password)
    return CredentialCheck(sources.environment_password or "", "the controller's environment",
                           fallback_problem)
