"""Command-mode objectives: run a program, stream its output, read metrics, prune it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Any

import optuna

from trial_worker.contract import ExitCode
from trial_worker.metrics import MetricCollector

TERMINATE_GRACE_S = 10.0


@dataclass(frozen=True)
class CommandResult:
    """How the command ended: its metrics, or why it failed, or that it was pruned."""

    values: dict[str, float]
    pruned: bool = False
    failure: ExitCode | None = None
    message: str | None = None
    returncode: int | None = None


_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")


def substitute(argv: list[str], params: dict[str, Any]) -> list[str]:
    """Replace ``{{name}}`` in each argument with the trial's value (empty if inactive)."""
    return [_PLACEHOLDER.sub(lambda m: _render(params.get(m.group(1))), part) for part in argv]


def unfilled_placeholders(argv: list[str], params: dict[str, Any], active: list[str] | None) -> list[str]:
    """Placeholders that would be replaced by nothing although their parameter applies.

    Only a conditional parameter that does not apply to this trial (not in ``active``) may be
    empty; without ``active`` every placeholder needs a value.
    """
    names = dict.fromkeys(m.group(1) for part in argv for m in _PLACEHOLDER.finditer(part))
    return [name for name in names if name not in params and (active is None or name in active)]


def _render(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class RunningCommand:
    """The command's process, so a watchdog can stop it from another thread."""

    current: subprocess.Popen[str] | None = None
    lock = threading.Lock()

    @classmethod
    def terminate(cls, grace_s: float = TERMINATE_GRACE_S) -> None:
        with cls.lock:
            process = cls.current
        if process is not None:
            _stop(process, grace_s)


def _stop(process: subprocess.Popen[str], grace_s: float) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def run_command(
    trial: optuna.Trial,
    argv: list[str],
    objective_metrics: list[str],
    extra_metrics: list[str],
    env: dict[str, str],
    workdir: str | None,
    placeholders: dict[str, str] | None = None,
) -> CommandResult:
    """Run the command for ``trial`` and collect the metrics it prints.

    A line carrying ``step=<int>`` reports the first objective metric as an intermediate value
    (single-objective studies); when the pruner says prune, the command gets SIGTERM, then SIGKILL
    after a grace period, and the result is pruned. ``placeholders`` fills ``{{name}}``s that are
    not parameters (a PBT segment's checkpoint directories and steps).
    """
    command = substitute(argv, {**trial.params, **(placeholders or {})})
    collector = MetricCollector(set(objective_metrics) | set(extra_metrics))
    report_metric = objective_metrics[0] if len(objective_metrics) == 1 else None
    try:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            cwd=workdir,
            env={**os.environ, **env},
            start_new_session=True,
        )
    except OSError as exc:
        return CommandResult(
            {}, failure=ExitCode.COMMAND_FAILED, message=f"cannot start {command[0]!r}: {exc}"
        )
    with RunningCommand.lock:
        RunningCommand.current = process
    pruned = False
    reported_steps: set[int] = set()
    try:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            parsed = collector.feed(line)
            if parsed is None or parsed.step is None or report_metric is None:
                continue
            value = parsed.values.get(report_metric)
            if value is None or parsed.step in reported_steps:
                continue
            reported_steps.add(parsed.step)
            trial.report(value, parsed.step)
            if trial.should_prune():
                pruned = True
                _stop(process, TERMINATE_GRACE_S)
                break
        process.wait()
    finally:
        with RunningCommand.lock:
            RunningCommand.current = None
        if process.poll() is None:
            _stop(process, TERMINATE_GRACE_S)
        if process.stdout is not None:
            process.stdout.close()
    if pruned:
        return CommandResult(collector.last, pruned=True)
    if process.returncode != 0:
        return CommandResult(
            collector.last,
            failure=ExitCode.COMMAND_FAILED,
            message=f"command exited with code {process.returncode}",
            returncode=process.returncode,
        )
    missing = [name for name in objective_metrics + extra_metrics if name not in collector.last]
    if missing:
        return CommandResult(
            collector.last,
            failure=ExitCode.NO_METRIC,
            message=f"the command printed no value for {', '.join(missing)} "
            "(print lines like 'name=value' or JSON objects)",
        )
    return CommandResult(collector.last)
