"""structlog set-up: JSON lines in a cluster (or when asked), readable lines in a terminal."""

from __future__ import annotations

import logging
import os
import sys

import structlog

LOG_FORMAT_ENV = "TUNEFLEET_LOG_FORMAT"


def configure_logging(level: int = logging.INFO) -> None:
    """JSON when ``TUNEFLEET_LOG_FORMAT=json`` or stderr is not a terminal, else colored text."""
    wanted = os.environ.get(LOG_FORMAT_ENV, "").lower()
    as_json = wanted == "json" or (wanted != "console" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # Resolve sys.stderr per logger, so a replaced stderr (tests, daemons) is followed.
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Optuna logs every told trial at INFO; the controller reports progress itself.
    logging.getLogger("optuna").setLevel(logging.WARNING)
