"""structlog for the controller: JSON in the cluster (or when asked), readable text in a terminal."""

from __future__ import annotations

import logging
import os
import sys

import structlog

LOG_FORMAT_ENV = "TUNEFLEET_LOG_FORMAT"


def configure_logging(verbose: bool = False) -> None:
    """``TUNEFLEET_LOG_FORMAT=json`` or ``console`` forces a format; otherwise a TTY gets text."""
    wanted = os.environ.get(LOG_FORMAT_ENV, "").lower()
    as_json = wanted == "json" or (wanted != "console" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
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
    logging.getLogger("optuna").setLevel(logging.WARNING)
