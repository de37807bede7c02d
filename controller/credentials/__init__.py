"""Database credentials on the cluster: where the trial pods' password comes from, said out loud when
it cannot be read, and the password of the controller's own connections, which a Secret can rotate."""

from __future__ import annotations

from controller.credentials.rotation import follow_rotation, rotate_password
from controller.credentials.sources import (
    CredentialCheck,
    PasswordSources,
    SecretReader,
    SecretUnreadable,
    check_gateway,
    check_password,
)

__all__ = [
    "CredentialCheck",
    "PasswordSources",
    "SecretReader",
    "SecretUnreadable",
    "check_gateway",
    "check_password",
    "follow_rotation",
    "rotate_password",
]
