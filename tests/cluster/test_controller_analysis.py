"""On the cluster as locally: the chosen strategy, warm start, confirmation runs, Pareto sets,
the export on a PVC and the reproducibility record of the trial images."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from controller.budget.ledger import Charge, Ledger
from controller.kube.trial_access import gateway_secret_name
from controller.strategies.live import current_strategy
from tests.cluster.controller_harness import (
    NAMESPACE,
    STUDIES,
    VENV_BIN,
    ControllerProcess,
    finished,
    load_trials,
    optuna_key,
    prepare_cluster,
    study_manifest,
    study_status,
    wait_for,
)
from tests.cluster.emulator import KubeEmulator
from trial_worker.contract import DB_PASSWORD_ENV

pytestmark = pytest.mark.timeout(300)


def _run_study(
    kube: KubeEmulator,
    storage_url: str,
    work_dir: Path,
    body: dict[str, Any],
    env: dict[str, str] | None = None,
    until: Any = None,
    claims: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Apply the Study, wait until it ends (and ``until`` holds), return its status.

    ``claims`` are PersistentVolumeClaims to create first (host directories in the emulator).
    """
    name = body["metadata"]["name"]
    prepare_cluster(kube)
    for claim in claims:
        kube.api.create("persistentvolumeclaims", {"metadata": {"name": claim}, "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}, NAMESPACE)
    controller = ControllerProcess(kube, storage_url, work_dir, env=env).start()
    try:
        kube.api.create(STUDIES, body, NAMESPACE)
        wait_for(
            lambda: finished(kube, name) and (until is None or until()),
            240,
            lambda: f"study {name} did not end\n" + controller.log()[-3000:],
            interval=0.5,
        )
    finally:
        controller.stop()
    return study_status(kube, name)


def _best_config_map(kube: KubeEmulator, name: str) -> dict[str, Any]:
    config_map = kube.api.get("configmaps", NAMESPACE, f"{name}-best")
    document = json.loads(config_map["data"]["best_config.json"])
    assert yaml.safe_load(config_map["data"]["best_config.yaml"]) == document
    return dict(document)


def _export(storage_url: str, name: str, out: Path) -> None:
    """The real ``tunefleet export`` command line, as a user runs it anywhere."""
    subprocess.run(
        [str(VENV_BIN / "tunefleet"), "export", "--storage", storage_url,
         "--study", optuna_key(storage_url, name), "--out", str(out)],
        check=True, capture_output=True, timeout=180,
    )


def _study(storage_url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=optuna_key(storage_url, name), storage=storage_url)


def test_a_study_with_sampler_auto_shows_the_chosen_sampler_and_pruner_with_reasons(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    body = study_manifest("autoq", max_trials=3, parallelism=2)
    body["spec"]["strategy"] = {"sampler": "auto", "pruner": "auto", "seed": 11}
    status = _run_study(kube_emulator, postgres_url, tmp_path, body)

    strategy = status["strategy"]
    recorded = current_strategy(_study(postgres_url, "autoq"))
    assert recorded is not None
    assert strategy["sampler"] == recorded["sampler"] != "auto"
    assert strategy["pruner"] == recorded["pruner"] != "auto"
    assert strategy["reasons"] and all(isinstance(r, str) and r for r in strategy["reasons"])
    assert status["phase"] == "Succeeded"


def test_a_warm_started_study_runs_its_listed_params_first(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    listed = [{"x": 1.5}, {"x": -3.25}]
    body = study_manifest("warm", max_trials=3, parallelism=1, warmStart={"params": listed})
    _run_study(kube_emulator, postgres_url, tmp_path, body)

    trials = sorted(load_trials(postgres_url, "warm"), key=lambda t: t.number)
    assert [t.params for t in trials[:2]] == listed
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert trials[0].value == pytest.approx((1.5 - 2.0) ** 2)


def test_a_confirm_study_ends_with_intervals_and_the_config_map_chosen_by_mean(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    body = study_manifest(
        "conf",
        objective="tests.cluster.analysis_objectives:noisy_quadratic",
        max_trials=4,
        parallelism=2,
        confirm={"topK": 2, "repeats": 2},
    )
    status = _run_study(kube_emulator, postgres_url, tmp_path, body)

    trials = load_trials(postgres_url, "conf")
    reruns = [t for t in trials if t.user_attrs.get("tunefleet.kind") == "confirm"]
    assert len(reruns) == 4 and len(trials) == 8
    by_source: dict[int, list[float]] = {}
    for rerun in reruns:
        source = int(rerun.user_attrs["tunefleet.confirm_of"])
        assert rerun.params == next(t for t in trials if t.number == source).params
        assert rerun.value is not None
        by_source.setdefault(source, []).append(rerun.value)
    assert sorted(len(v) for v in by_source.values()) == [2, 2]
    best_by_mean = min(by_source, key=lambda s: statistics.fmean(by_source[s]))

    out = tmp_path / "export"
    _export(postgres_url, "conf", out)
    intervals = json.loads((out / "confidence_intervals.json").read_text())
    assert intervals["configurations"]
    exported = json.loads((out / "best_config.json").read_text())
    assert exported["trial"] == best_by_mean
    assert "mean" in exported["chosen_by"]
    loss = exported["confirmed"]["loss"]
    assert loss["mean"] == pytest.approx(statistics.fmean(by_source[best_by_mean]))
    assert loss["low"] <= loss["mean"] <= loss["high"]

    config_map = _best_config_map(kube_emulator, "conf")
    assert config_map["trial"] == best_by_mean
    assert config_map["confirmed"]["loss"]["mean"] == pytest.approx(loss["mean"])
    assert status["bestTrial"]["number"] == best_by_mean
    assert "mean" in status["bestTrial"]["chosenBy"]
    # Reruns are not search trials: the status counts them but never shows one as the best.
    assert status["bestTrial"]["number"] not in {t.number for t in reruns}


def test_a_multi_objective_study_has_its_pareto_set_in_status_and_config_map(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    body = study_manifest(
        "pareto",
        objective="tests.cluster.analysis_objectives:two_distances",
        max_trials=5,
        parallelism=2,
    )
    body["spec"]["objective"] = {
        "metrics": [
            {"name": "to_two", "direction": "minimize"},
            {"name": "to_minus_two", "direction": "minimize"},
        ]
    }
    status = _run_study(kube_emulator, postgres_url, tmp_path, body)

    study = _study(postgres_url, "pareto")
    front = sorted(t.number for t in study.best_trials)
    assert front
    assert sorted(t["number"] for t in status["paretoFront"]["trials"]) == front
    assert status["paretoFront"]["size"] == len(front)
    for entry in status["paretoFront"]["trials"]:
        assert set(entry["values"]) == {"to_two", "to_minus_two"}
    config_map = _best_config_map(kube_emulator, "pareto")
    assert sorted(p["trial"] for p in config_map["pareto"]) == front
    assert status.get("bestTrial") is None


def test_spec_export_writes_the_files_on_the_claim_and_posts_an_event(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    # The emulated kubelet mounts the claim as a host directory (tests/cluster/README.md), so the
    # export Job's process writes into it through the mount path on its command line.
    body = study_manifest(
        "exq", max_trials=3, parallelism=2, export={"persistentVolumeClaim": "results", "path": "runs/exq"}
    )

    def exported() -> bool:
        return (study_status(kube_emulator, "exq").get("export") or {}).get("phase") in ("Written", "Failed")

    # With the trial gateway on (the chart's way, and the harness's default), the export Job reads
    # through it with a read-only token; the ledger's figures come from the study's attribute.
    status = _run_study(
        kube_emulator,
        postgres_url,
        tmp_path,
        body,
        until=exported,
        claims=("results",),
    )

    assert status["export"]["phase"] == "Written", status["export"]
    out = kube_emulator.claim_path(NAMESPACE, "results") / "runs" / "exq"
    for name in ("best_config.json", "best_config.yaml", "trials.csv", "importance.json", "report.html",
                 "reproducibility.json"):
        assert (out / name).is_file(), name
    best = json.loads((out / "best_config.json").read_text())
    assert best["trial"] == status["bestTrial"]["number"]
    job = kube_emulator.api.get("jobs.batch", NAMESPACE, "exq-export")
    volume = job["spec"]["template"]["spec"]["volumes"][0]
    assert volume["persistentVolumeClaim"]["claimName"] == "results"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][container["command"].index("--storage") + 1].startswith("tunefleet-gateway://")
    assert all(e["name"] != DB_PASSWORD_ENV for e in container["env"])  # no password, a token
    secret = gateway_secret_name(job["metadata"]["name"], job["metadata"]["labels"])
    owner = kube_emulator.api.get("secrets", NAMESPACE, secret)["metadata"]["ownerReferences"][0]
    assert owner["name"] == "exq-export"
    # The charges in trials.csv are the ledger's, copied into the study before the Job ran.
    with (out / "trials.csv").open() as table:
        exported_gpu = {int(row["number"]): int(row["gpu_seconds"]) for row in csv.DictReader(table)}
    ledger = Ledger(postgres_url)
    try:
        charged = ledger.charges_by_trial(optuna_key(postgres_url, "exq"))
    finally:
        ledger.close()
    assert charged and exported_gpu == {n: charged.get(n, Charge()).gpu_seconds for n in exported_gpu}
    events = [
        e for e in kube_emulator.api.list("events", NAMESPACE)
        if e["involvedObject"]["name"] == "exq" and e["reason"] == "ExportWritten"
    ]
    assert len(events) == 1
    assert "results" in events[0]["message"] and "runs/exq" in events[0]["message"]


def test_reproducibility_of_a_cluster_study_lists_the_trial_image_and_digest(
    kube_emulator: KubeEmulator, postgres_url: str, tmp_path: Path
) -> None:
    body = study_manifest("repro", max_trials=2, parallelism=2)
    _run_study(kube_emulator, postgres_url, tmp_path, body)

    out = tmp_path / "export"
    _export(postgres_url, "repro", out)
    record = json.loads((out / "reproducibility.json").read_text())
    # The emulated runtime reports imageID "emulated://<image>" (no registry digest to give).
    assert {"image": "tunefleet-test:local", "digest": "emulated://tunefleet-test:local"} in record["images"]
    assert len(record["trials"]) == 2
    for trial in record["trials"]:
        assert trial["image"] == "tunefleet-test:local"
        assert trial["image_digest"] == "emulated://tunefleet-test:local"
        assert trial["node"] == "emulated-node"
