"""Writing the export directory from any reachable study storage.

Files: ``best_config.json``/``.yaml``, ``trials.csv``, ``importance.json``, ``report.html``,
``reproducibility.json`` and, when the study ran confirmation trials,
``confidence_intervals.json``. The study is read once; each part is timed (``ExportResult.timings``)
so ``bench/export.py`` can report where the time goes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from controller.analysis.confidence import ConfidenceReport, confidence_report
from controller.analysis.data import StudyData, load_study_data
from controller.analysis.importance import EvaluatorName, compute_importance
from controller.analysis.plots import build_plots
from controller.analysis.report import render_report
from controller.analysis.reproducibility import reproducibility_record
from controller.analysis.summary import summarize_study
from controller.export.best_config import BestConfig, best_config
from controller.export.trials_table import write_trials_csv
from controller.studies.record import library_versions

T = TypeVar("T")


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    files: list[str]
    best: BestConfig | None
    confidence: ConfidenceReport | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")


def write_export(
    storage_url: str, study_name: str, out_dir: Path, importance_evaluator: EvaluatorName = "ped-anova"
) -> ExportResult:
    """Write the export of ``study_name`` into ``out_dir``.

    Works for a finished or a running study; raises KeyError if the study does not exist.

    Args:
        storage_url: the study storage (Postgres or SQLite URL).
        study_name: the study to export.
        out_dir: created if missing; files in it are overwritten.
        importance_evaluator: ``"ped-anova"`` (default) or ``"fanova"`` (slower; skips conditional
            parameters).
    """
    timings: dict[str, float] = {}

    def timed(part: str, action: Callable[[], T]) -> T:
        started = time.perf_counter()
        result = action()
        timings[part] = timings.get(part, 0.0) + time.perf_counter() - started
        return result

    data = timed("read trials", lambda: load_study_data(storage_url, study_name))
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    timed("in-memory search study", data.search_study)

    confidence = timed("confidence intervals", lambda: confidence_report(data))
    best = timed("best config", lambda: best_config(data, confidence))
    document = best.to_document() if best else {"trial": None, "note": "no trial has completed yet"}
    (out_dir / "best_config.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    (out_dir / "best_config.yaml").write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    written += ["best_config.json", "best_config.yaml"]
    if confidence is not None:
        _json(out_dir / "confidence_intervals.json", confidence.model_dump(mode="json"))
        written.append("confidence_intervals.json")

    timed(
        "trials.csv",
        lambda: write_trials_csv(
            out_dir / "trials.csv", data.trials, data.metrics, data.charges, data.confirm_of
        ),
    )
    written.append("trials.csv")

    importance = timed("importance", lambda: compute_importance(data, importance_evaluator))
    _json(out_dir / "importance.json", importance.model_dump(mode="json"))
    written.append("importance.json")

    record = timed("reproducibility", lambda: reproducibility_record(data))
    _json(out_dir / "reproducibility.json", record.model_dump(mode="json"))
    written.append("reproducibility.json")

    summary = timed("summary", lambda: summarize_study(data))
    plots = build_plots(data, importance)
    for section in plots:
        timings[f"plot {section.key}"] = section.seconds
    page = timed("render report", lambda: _render(data, summary, best, confidence, plots))
    (out_dir / "report.html").write_text(page, encoding="utf-8")
    written.append("report.html")
    return ExportResult(out_dir, written, best, confidence, timings)


def _render(
    data: StudyData,
    summary: Any,
    best: BestConfig | None,
    confidence: ConfidenceReport | None,
    plots: list[Any],
) -> str:
    return render_report(data, summary, best, confidence, plots, library_versions().get("tunefleet", "dev"))


def describe_export(result: ExportResult) -> list[str]:
    """Lines for the command line: where the files are, and the best configuration's interval."""
    lines = [f"export: {result.directory} ({', '.join(result.files)})"]
    lines.append(f"report: {(result.directory / 'report.html').resolve().as_uri()}")
    best = result.best
    if best is not None and best.confirmed:
        chosen = f"best configuration (trial #{best.trial}) chosen by {best.chosen_by}"
        intervals = "; ".join(
            f"{metric} {interval.mean:.6g} (95% CI {interval.low:.6g} .. {interval.high:.6g}, n={interval.n})"
            if interval.low is not None and interval.high is not None
            else f"{metric} {interval.mean:.6g} (n={interval.n}, too few runs for an interval)"
            for metric, interval in best.confirmed.items()
        )
        lines.append(f"{chosen}: {intervals}")
    elif best is not None and best.pareto is None:
        lines.append("no confidence interval measured (set spec.confirm to rerun the best configurations)")
    return lines
