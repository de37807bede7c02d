"""A mirrored study in the MLflow UI itself, opened in a real headless Chromium.

The study (synthetic trials with curves, no worker processes: this is about what the UI shows)
is mirrored to the session's MLflow server; Chromium opens MLflow's run comparison of its
trials, signed in through a loopback proxy (tests/support/mlflow_server.py). The screenshot
(``mlflow-study.png`` in the test's output folder; also under ``$TUNEFLEET_SCREENSHOT_DIR`` if
set) must not be blank, and the page must name the trials and their parameters.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import create_trial

from controller.spec.tracking import Tracking
from controller.studies.record import ATTR_SPEC, ATTR_STARTED_AT, ATTR_STOP_REASON, ATTR_STRATEGY
from controller.tracking import TrackingMirror
from controller.tracking.credentials import Credentials, credentials_in_environment
from tests.report.png import read_png
from tests.report.test_report_browser import CHROMIUM, FLAGS
from tests.support.mlflow_server import MlflowServer, signed_in_proxy
from tests.support.specs import study_document

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium is not installed: run `apt-get install -y chromium` (as root)"
    ),
    pytest.mark.slow,
    pytest.mark.xdist_group("mlflow"),  # one worker starts the session's MLflow server
]
SCREENSHOT_DIR_ENV = "TUNEFLEET_SCREENSHOT_DIR"


def mirrored_study(server: MlflowServer, storage: str) -> tuple[str, list[str]]:
    """A finished 6-trial study, mirrored; returns its experiment id and trial run ids."""
    spec = study_document(
        searchSpace={
            "lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        }
    )["spec"]
    study = optuna.create_study(study_name="mlp-digits", storage=storage, direction="minimize")
    for key, value in {
        ATTR_SPEC: spec,
        ATTR_STRATEGY: {"sampler": "tpe", "pruner": "median", "reasons": ["30 trials afford a model"]},
        ATTR_STARTED_AT: time.time() - 600,
        ATTR_STOP_REASON: "MaxTrialsReached",
    }.items():
        study.set_user_attr(key, value)
    distributions = {
        "lr": FloatDistribution(1e-4, 0.1, log=True),
        "optimizer": CategoricalDistribution(["adam", "sgd"]),
    }
    began = datetime.datetime.now() - datetime.timedelta(minutes=10)
    for number in range(6):
        lr, optimizer = 10 ** (-4 + 0.5 * number), ["adam", "sgd"][number % 2]
        final = 0.1 + 0.05 * abs(number - 3)
        trial = create_trial(
            params={"lr": lr, "optimizer": optimizer},
            distributions=distributions,
            value=final,
            intermediate_values={step: final + 1.0 / (step + 1) for step in range(8)},
        )
        trial.datetime_start = began + datetime.timedelta(seconds=70 * number)
        trial.datetime_complete = trial.datetime_start + datetime.timedelta(seconds=45 + 7 * number)
        study.add_trial(trial)
    mirror = TrackingMirror(storage, interval_s=0.2)
    try:
        mirror.watch(
            "mlp-digits", "mlp-digits", Tracking.model_validate({"mlflow": {"trackingUri": server.url}})
        )
        with credentials_in_environment(Credentials(server.username, server.password)):
            assert mirror.finish("mlp-digits", 120), mirror.health("mlp-digits")
    finally:
        mirror.close()
    from mlflow.tracking import MlflowClient

    with credentials_in_environment(Credentials(server.username, server.password)):
        client = MlflowClient(server.url)
        experiment = client.get_experiment_by_name("mlp-digits")
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id], "tags.`tunefleet.role` = 'trial'")
    return str(experiment.experiment_id), [r.info.run_id for r in runs]


def chromium(url: str, *extra: str) -> str:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="tunefleet-chromium-") as profile:
        result = subprocess.run(
            [CHROMIUM, *FLAGS[:-1], "--virtual-time-budget=20000", f"--user-data-dir={profile}", *extra, url],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_mlflow_ui_compares_the_trials_of_a_mirrored_study(
    mlflow_server: MlflowServer, sqlite_url: str, tmp_path: Path
) -> None:
    experiment_id, run_ids = mirrored_study(mlflow_server, sqlite_url)
    assert len(run_ids) == 6
    page = (
        f"/#/compare-runs?runs={quote(json.dumps(run_ids))}&experiments={quote(json.dumps([experiment_id]))}"
    )
    shot = tmp_path / "mlflow-study.png"
    with signed_in_proxy(mlflow_server) as base:
        dom = chromium(base + page, "--dump-dom")
        chromium(base + page, "--window-size=1400,1000", f"--screenshot={shot}")
    for number in range(6):
        assert f"trial-{number}" in dom
    assert "optimizer" in dom and "intermediate/loss" in dom

    rgb = read_png(shot)[..., :3].astype(int)
    ink = (rgb.min(axis=2) < 235).mean()
    colour = ((rgb.max(axis=2) - rgb.min(axis=2)) > 60).mean()
    assert ink > 0.03, f"the screenshot is nearly blank ({ink:.1%} non-white)"
    assert colour > 0.002, f"no colour on the screenshot ({colour:.2%})"
    if os.environ.get(SCREENSHOT_DIR_ENV):
        shutil.copy(shot, Path(os.environ[SCREENSHOT_DIR_ENV]) / shot.name)
