"""The quickstart end to end, as the README runs it, with a reduced budget."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.storage, pytest.mark.slow]


def test_quickstart_reaches_a_good_accuracy_and_exports(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the quickstart needs the examples extra (torch CPU build)")
    document = yaml.safe_load((REPO_ROOT / "examples/quickstart/study.yaml").read_text())
    document["spec"]["budget"]["maxTrials"] = 6
    spec = tmp_path / "study.yaml"
    spec.write_text(yaml.safe_dump(document))
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "run",
            str(spec),
            "--out",
            str(out),
            "--workdir",
            str(REPO_ROOT),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MaxTrialsReached" in result.stdout and "best trial #" in result.stdout
    best = json.loads((out / "best_config.json").read_text())
    assert best["values"]["val_accuracy"] >= 0.9
    assert set(best["params"]) >= {"lr", "batch_size", "optimizer", "n_layers", "hidden"}
    with (out / "trials.csv").open() as table:
        rows = list(csv.DictReader(table))
    assert len(rows) == 6
    assert {
        "number",
        "state",
        "val_accuracy",
        "param_lr",
        "duration_s",
        "gpu_seconds",
        "cpu_seconds",
        "reason",
    } <= set(rows[0])
    assert all(int(r["cpu_seconds"]) > 0 for r in rows), "every trial is charged its CPU-seconds"
    assert yaml.safe_load((out / "best_config.yaml").read_text()) == best
