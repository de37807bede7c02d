"""Command-mode metrics: Katib's name=value lines and JSON lines."""

from __future__ import annotations

import math

from trial_worker.metrics import MetricCollector, parse_metric_line

WANTED = {"val_accuracy", "loss"}


def test_katib_pairs_several_per_line() -> None:
    parsed = parse_metric_line("epoch 3: loss=0.25 val_accuracy=0.91", WANTED)
    assert parsed is not None and parsed.values == {"loss": 0.25, "val_accuracy": 0.91}
    assert parsed.step is None


def test_step_marks_an_intermediate_value() -> None:
    parsed = parse_metric_line("step=7 val_accuracy=0.5", WANTED)
    assert parsed is not None and parsed.step == 7


def test_json_lines() -> None:
    parsed = parse_metric_line('{"step": 3, "val_accuracy": 0.91, "note": "x"}', WANTED)
    assert parsed is not None and parsed.values == {"val_accuracy": 0.91} and parsed.step == 3


def test_scientific_notation_negative_and_spaces() -> None:
    parsed = parse_metric_line("loss = -1.5e-3", WANTED)
    assert parsed is not None and parsed.values["loss"] == -0.0015


def test_nan_is_read_so_the_trial_can_fail_with_that_reason() -> None:
    parsed = parse_metric_line("loss=nan", WANTED)
    assert parsed is not None and math.isnan(parsed.values["loss"])


def test_other_names_and_partial_words_are_ignored() -> None:
    assert parse_metric_line("lr=0.1 batch=32", WANTED) is None
    assert parse_metric_line("my_loss=0.3", WANTED) is None
    assert parse_metric_line("loss=0.3abc", WANTED) is None
    assert parse_metric_line("not json {", WANTED) is None


def test_collector_keeps_the_last_value_of_each_metric() -> None:
    collector = MetricCollector(WANTED)
    for line in ["loss=3", "noise", "loss=2 val_accuracy=0.5", '{"val_accuracy": 0.75}']:
        collector.feed(line)
    assert collector.last == {"loss": 2.0, "val_accuracy": 0.75}
