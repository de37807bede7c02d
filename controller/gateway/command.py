"""``tunefleet gateway``: serve the trial gateway until SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

import sqlalchemy.exc
import structlog

GRACE_S = 10.0  # calls in flight finish; the chart's terminationGracePeriodSeconds is longer
DB_RETRY_S = 2.0

log = structlog.get_logger("tunefleet.gateway")


def cmd_gateway(args: argparse.Namespace) -> int:
    from controller.gateway.server import GatewayServer
    from controller.gateway.settings import TOKEN_KEYS_ENV, GatewaySettings, SettingsError
    from controller.gateway.tokens import TokenKeyError, TokenKeys

    try:
        settings = GatewaySettings.from_env(os.environ)
    except SettingsError as error:
        print(f"tunefleet gateway: {error}", file=sys.stderr)
        return 2
    try:
        keys = TokenKeys.from_file(settings.token_keys)
    except TokenKeyError as error:
        print(f"tunefleet gateway: {TOKEN_KEYS_ENV}: {error}", file=sys.stderr)
        return 2
    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = GatewayServer(settings, keys)
    while True:
        try:
            server.start()
            break
        except OSError as error:
            print(f"tunefleet gateway: {error}", file=sys.stderr)
            server.stop(0)
            return 2
        except sqlalchemy.exc.SQLAlchemyError as error:
            # PostgreSQL not up yet (a fresh install, a failover): wait for it rather than crash-loop.
            log.warning("gateway.database-unreachable", error=str(error).splitlines()[0])
            if stopping.wait(DB_RETRY_S):
                return 0
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        server.stop(GRACE_S)
    return 0


def add_gateway_command(sub: Any) -> None:
    gateway = sub.add_parser(
        "gateway",
        help="serve the trial gateway: trial pods' storage calls, checked per trial token (env settings)",
    )
    gateway.set_defaults(handler=cmd_gateway)
