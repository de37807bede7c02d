"""``tunefleet-worker``: run the trial in ``TUNEFLEET_ASSIGNMENT``, or serve trials (``--serve``)."""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from trial_worker.contract import ASSIGNMENT_ENV, Assignment, ExitCode, redact_url
from trial_worker.logs import configure_logging

EPILOG = """exit codes:
  0  the outcome (COMPLETE or PRUNED) was stored
  2  the assignment is missing or malformed
  3  the objective raised an exception (type, message and traceback tail stored)
  4  the objective returned NaN, inf, None or the wrong number of values
  5  the command exited non-zero
  6  the command printed no value for an objective metric
  7  maxDuration exceeded
  8  the study storage could not be reached (an infrastructure failure: retried)
  9  the python objective could not be imported
  10 the trial was no longer running; nothing was run
  11 a PBT segment's checkpoint to resume from is missing or unreadable
  12 a PBT segment ended without saving its checkpoint
  13 the trial lacks a parameter that applies to it (or a command placeholder would be
     empty): refused, nothing was run
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tunefleet-worker",
        description=f"Run one tunefleet trial from the JSON assignment in ${ASSIGNMENT_ENV}.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="read assignments from stdin, one JSON document per line, and run them in turn",
    )
    args = parser.parse_args(argv)
    configure_logging()
    import structlog

    log = structlog.get_logger("tunefleet.worker")
    if args.serve:
        from trial_worker.serve import report_stream, serve

        return serve(sys.stdin, report_stream())
    try:
        assignment = Assignment.from_env()
    except (ValueError, ValidationError) as exc:
        log.error("bad assignment", error=str(exc))
        return int(ExitCode.BAD_ASSIGNMENT)
    from trial_worker.serve import run_one_with_log

    log.info(
        "trial starting",
        study=assignment.study_name,
        trial=assignment.trial_number,
        storage=redact_url(assignment.storage_url),
    )
    report = run_one_with_log(assignment)
    log.info("trial finished", trial=report.trial_number, state=report.state, reason=report.reason)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
