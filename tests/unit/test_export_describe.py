"""What ``tunefleet run --out`` and ``tunefleet export`` print about the export."""

from __future__ import annotations

from pathlib import Path

from controller.analysis.confidence import Interval
from controller.export import ExportResult, describe_export
from controller.export.best_config import NO_INTERVAL, BestConfig, BestTrial


def test_lines_name_the_files_the_report_and_the_interval(tmp_path: Path) -> None:
    best = BestConfig(
        trial=4,
        params={"x": 1},
        values={"loss": 0.2},
        chosen_by="the best mean loss over the confirmation runs",
        confirmed={"loss": Interval(n=5, mean=0.25, std=0.01, low=0.2376, high=0.2624)},
    )
    lines = describe_export(ExportResult(tmp_path, ["best_config.json", "report.html"], best))
    assert lines[0] == f"export: {tmp_path} (best_config.json, report.html)"
    assert lines[1] == f"report: {(tmp_path / 'report.html').resolve().as_uri()}"
    assert "trial #4" in lines[2] and "loss 0.25 (95% CI 0.2376 .. 0.2624, n=5)" in lines[2]


def test_without_confirmation_the_lines_say_no_interval_was_measured(tmp_path: Path) -> None:
    best = BestConfig(trial=1, params={}, values={"loss": 0.1}, note=NO_INTERVAL)
    assert describe_export(ExportResult(tmp_path, [], best))[-1].startswith("no confidence interval measured")
    pareto = BestConfig(pareto=[BestTrial(trial=0, params={}, values={"a": 1.0, "b": 2.0})])
    assert len(describe_export(ExportResult(tmp_path, [], pareto))) == 2
    assert len(describe_export(ExportResult(tmp_path, [], None))) == 2
