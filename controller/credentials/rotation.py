"""The password of the controller's own database connections, which a rotated Secret replaces.

Connections already open keep working (PostgreSQL checks a password only at login); new ones
must log in with the password of now. The current password lives where every connection URL
takes it from (``TUNEFLEET_DB_PASSWORD``, see ``trial_worker.contract.connection_url``), and
long-lived engines read it again at each new connection.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import sqlalchemy as sa
import structlog

from trial_worker.contract import DB_PASSWORD_ENV

log = structlog.get_logger("tunefleet.controller")
_lock = threading.Lock()


def rotate_password(password: str, source: str) -> bool:
    """Make ``password`` the one new connections use; True when it changed."""
    with _lock:
        if os.environ.get(DB_PASSWORD_ENV) == password:
            return False
        os.environ[DB_PASSWORD_ENV] = password
    log.info("database password rotated: new connections use the new one", source=source)
    return True


def follow_rotation(engine: sa.engine.Engine) -> None:
    """Each new connection of ``engine`` logs in with the current password, not the one the engine
    was created with."""

    @sa.event.listens_for(engine, "do_connect")
    def _current_password(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
        password = os.environ.get(DB_PASSWORD_ENV)
        if password and "password" in params:
            params["password"] = password
