"""``report.html``: one self-contained page (plotly's JavaScript inlined once, no network needed).

It opens offline, from a ConfigMap, or from an artifact store. Every plot sits in a
``<section class="plot" data-plot="KEY">``; a plot that could not be drawn shows a note instead
(``data-plot-missing``), so a reader (and the browser test) can tell the two apart.
"""

from __future__ import annotations

import datetime
import html
import json
from typing import TYPE_CHECKING, Any

from optuna.trial import TrialState
from plotly.offline import get_plotlyjs

from controller.analysis.confidence import ConfidenceReport, Interval
from controller.analysis.data import StudyData
from controller.analysis.plots import PlotSection
from controller.analysis.summary import Summary

if TYPE_CHECKING:  # the export package imports this module; avoid the import cycle at run time
    from controller.export.best_config import BestConfig

TOP_CONFIGURATIONS = 10

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; padding: 0 1rem; max-width: 1200px; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } .note { color: #8a5a00; background: #fff8e6; padding: 0.4rem 0.6rem; }
.caption { color: #555; font-size: 0.9rem; } code { background: #f4f4f4; padding: 0 0.2rem; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _table(headers: list[str], rows: list[list[str]], raw: bool = False) -> str:
    head = "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr></thead>" if headers else ""
    body = "".join(
        "<tr>" + "".join(f"<td>{cell if raw else _e(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _params(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _interval(interval: Interval) -> str:
    if interval.low is None or interval.high is None:
        return f"mean {_number(interval.mean)} (n={interval.n}: too few runs for an interval)"
    return (
        f"mean {_number(interval.mean)}, sd {_number(interval.std)}, "
        f"95% CI [{_number(interval.low)}, {_number(interval.high)}] (n={interval.n})"
    )


def _strategy(summary: Summary) -> str:
    sampler = f"sampler {summary.sampler or '?'}"
    if summary.cost_aware:
        sampler += " (cost-aware: expected improvement per second)"
    return f"{sampler}, pruner {summary.pruner or '?'}"


def _summary(summary: Summary) -> str:
    rows = [
        ["Study", summary.study],
        [
            "Objective",
            ", ".join(f"{m} ({d})" for m, d in zip(summary.metrics, summary.directions, strict=True)),
        ],
        ["Why it stopped", summary.stop_reason],
        ["Search trials", ", ".join(f"{k}: {v}" for k, v in summary.search_states.items()) or "none"],
        [
            "Confirmation runs",
            ", ".join(f"{k}: {v}" for k, v in summary.confirmation_states.items()) or "none",
        ],
        ["Strategy", _strategy(summary)],
        ["Why this strategy", "; ".join(summary.strategy_reasons) or "chosen explicitly in the spec"],
    ]
    if summary.budget is not None:
        budget = summary.budget
        rows.append(["GPU-seconds used", _of(budget.gpu_seconds, budget.gpu_seconds_limit)])
        rows.append(["CPU-seconds used", _of(budget.cpu_seconds, budget.cpu_seconds_limit)])
        if budget.reserved_gpu_seconds or budget.reserved_cpu_seconds:
            rows.append(
                [
                    "Still reserved",
                    f"{budget.reserved_gpu_seconds} GPU-s, {budget.reserved_cpu_seconds} CPU-s",
                ]
            )
    pruning = summary.pruning
    rows.append(
        [
            "Pruning saved (estimate)",
            f"{pruning.saved_seconds:.1f} s of trial time ({pruning.saved_gpu_seconds:.0f} GPU-s, "
            f"{pruning.saved_cpu_seconds:.0f} CPU-s) over {pruning.pruned_trials} pruned trial(s). "
            f"How: {pruning.method}.",
        ]
    )
    table = _table([], rows)
    warning = f'<p class="note">{_e(summary.confirm_warning)}</p>' if summary.confirm_warning else ""
    return f"<h2>Summary</h2>{table}{warning}"


def _of(used: int, limit: int | None) -> str:
    if limit is None:
        return f"{used} (no limit)"
    share = 100.0 * used / limit if limit else 0.0
    return f"{used} of {limit} ({share:.1f}%)"


def _best(best: BestConfig | None, metrics: list[str]) -> str:
    if best is None:
        return '<h2>Best configuration</h2><p class="note">No search trial has completed yet.</p>'
    parts = ["<h2>Best configuration</h2>"]
    if best.pareto is not None:
        rows = [
            [
                str(entry.trial),
                _params(entry.params),
                ", ".join(f"{m}={_number(entry.values.get(m))}" for m in metrics),
                "; ".join(f"{m}: {_interval(i)}" for m, i in (entry.confirmed or {}).items())
                or "not measured",
            ]
            for entry in best.pareto
        ]
        parts.append(f"<p>{len(best.pareto)} Pareto-optimal configuration(s).</p>")
        parts.append(_table(["trial", "params", "values", "confidence interval"], rows))
    else:
        rows = [
            ["Trial", str(best.trial)],
            ["Params", _params(best.params or {})],
            ["Values (search trial)", ", ".join(f"{m}={_number(v)}" for m, v in (best.values or {}).items())],
            ["Chosen by", best.chosen_by or ""],
        ]
        for metric, interval in (best.confirmed or {}).items():
            rows.append([f"{metric} over confirmation runs", _interval(interval)])
        parts.append(_table([], rows))
    if best.note:
        parts.append(f'<p class="note" id="no-interval">{_e(best.note)}</p>')
    return "".join(parts)


def _confirmed(confidence: ConfidenceReport | None) -> str:
    if confidence is None:
        return ""
    rows = [
        [
            str(c.source_trial),
            _params(c.params),
            f"{c.completed_runs} of {len(c.runs)}",
            "; ".join(f"{m}: {_interval(i)}" for m, i in c.metrics.items()) or "no completed run",
        ]
        for c in confidence.configurations
    ]
    return (
        "<h2>Confirmed configurations</h2>"
        f'<p class="caption">{_e(confidence.method)}. Best chosen by {_e(confidence.chosen_by or "-")}.</p>'
        + _table(["search trial", "params", "completed runs", "per metric"], rows)
    )


def _top(data: StudyData) -> str:
    completed = data.completed_search()
    sign = -1.0 if data.directions[0] == "maximize" else 1.0
    caption = f"ranked by {data.metrics[0]}" + (" alone" if data.is_multi_objective else "")
    ranked = sorted(completed, key=lambda t: (sign * float(t.values[0]), t.number))[:TOP_CONFIGURATIONS]
    rows = [
        [
            str(t.number),
            *(_number(float(v)) for v in t.values),
            _params(t.params),
            _number(t.duration.total_seconds()) if t.duration else "",
        ]
        for t in ranked
    ]
    return (
        f"<h2>Top {TOP_CONFIGURATIONS} configurations</h2>"
        f'<p class="caption">Completed search trials, {caption}.</p>'
        + _table(["trial", *data.metrics, "params", "duration (s)"], rows)
    )


def _plot(section: PlotSection) -> str:
    title = f'<h2>{_e(section.title)}</h2><p class="caption">{_e(section.caption)}</p>'
    if section.html is None:
        note = f'<p class="note">Not drawn: {_e(section.note or "no data")}</p>'
        return (
            f'<section class="plot" data-plot="{_e(section.key)}" data-plot-missing="true">'
            f"{title}{note}</section>"
        )
    return f'<section class="plot" data-plot="{_e(section.key)}">{title}{section.html}</section>'


def render_report(
    data: StudyData,
    summary: Summary,
    best: BestConfig | None,
    confidence: ConfidenceReport | None,
    plots: list[PlotSection],
    version: str,
) -> str:
    """The whole page as one string."""
    running = sum(1 for t in data.trials if t.state == TrialState.RUNNING)
    status = f" ({running} trial(s) still running when exported)" if running else ""
    generated = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    body = "".join(
        [
            f"<h1>Study {_e(data.name)}</h1>",
            f'<p class="caption">tunefleet {_e(version)} report, generated {generated}{_e(status)}.</p>',
            _summary(summary),
            _best(best, data.metrics),
            _confirmed(confidence),
            _top(data),
            *(_plot(section) for section in plots),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>tunefleet: {_e(data.name)}</title><style>{STYLE}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head>'
        f"<body>{body}</body></html>\n"
    )
