"""Progress on the terminal: a rich bar when interactive, a plain line per change otherwise."""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from controller.planner import StudySummary


def describe_summary(summary: StudySummary) -> str:
    best = ", ".join(f"{v:.6g}" for v in summary.best_values) if summary.best_values else "-"
    queued = f" (+{summary.queued} queued)" if summary.queued else ""
    return (
        f"complete {summary.complete} · running {summary.running}{queued} · pruned {summary.pruned} "
        f"· failed {summary.failed} · best {best}"
    )


class StudyProgress:
    """Shows trials done out of maxTrials (or a count) with states and the best value."""

    def __init__(self, study_name: str, total: int | None, enabled: bool = True) -> None:
        self._console = Console(stderr=True)
        self._interactive = enabled and self._console.is_terminal
        self._enabled = enabled
        self._last_line = ""
        self._progress = Progress(
            TextColumn("[bold]{task.fields[study]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self._console,
            disable=not self._interactive,
        )
        self._task = self._progress.add_task("starting", total=total, study=study_name)

    def __enter__(self) -> StudyProgress:
        self._progress.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.__exit__(kind, error, tb)

    def update(self, summary: StudySummary) -> None:
        line = describe_summary(summary)
        self._progress.update(self._task, completed=summary.finished, description=line)
        if self._enabled and not self._interactive and line != self._last_line:
            print(f"tunefleet: {line}", file=sys.stderr, flush=True)
        self._last_line = line
