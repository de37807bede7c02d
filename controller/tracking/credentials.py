"""Tracker credentials: from a Secret the controller reads, or the process environment.

MLflow's client reads ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``/``_TOKEN`` from the environment
on every request (tracking and artifact calls alike), so a study's own credentials are put there
for the length of its mirroring pass and taken away after it. That is safe because one thread
per process (:class:`~controller.tracking.service.TrackingMirror`'s) does all MLflow calls.
Trial pods never see any of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from controller.credentials import SecretUnreadable

USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
TOKEN_ENV = "MLFLOW_TRACKING_TOKEN"
SECRET_KEYS = ("username", "password", "token")

# (namespace, Secret name, key) -> the decoded value; raises SecretUnreadable.
SecretReader = Callable[[str, str, str], str]


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    token: str | None = None

    @property
    def usable(self) -> bool:
        return bool(self.token) or bool(self.username and self.password)


def read_secret_credentials(read: SecretReader, namespace: str, name: str) -> Credentials:
    """Each key is optional (username and password, or token); a Secret the controller may not
    read or that does not exist raises :class:`SecretUnreadable`."""
    values: dict[str, str | None] = {}
    for key in SECRET_KEYS:
        try:
            values[key] = read(namespace, name, key)
        except SecretUnreadable as error:
            if error.reason != "SecretKeyMissing":
                raise
            values[key] = None
    return Credentials(values["username"], values["password"], values["token"])


@contextmanager
def credentials_in_environment(credentials: Credentials | None) -> Iterator[None]:
    """``None`` leaves the environment as it is (the process's own MLFLOW_TRACKING_* apply)."""
    if credentials is None:
        yield
        return
    names = (USERNAME_ENV, PASSWORD_ENV, TOKEN_ENV)
    saved = {name: os.environ.get(name) for name in names}
    for name, value in zip(
        names, (credentials.username, credentials.password, credentials.token), strict=True
    ):
        if value:
            os.environ[name] = value
        else:
            os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
