"""Writing the export directory from any reachable study storage."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml

from controller.budget.ledger import Ledger
from controller.export.best_config import BestConfig, best_config
from controller.export.trials_table import write_trials_csv
from controller.studies.storage import open_storage


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    files: list[str]
    best: BestConfig | None


def write_export(storage_url: str, study_name: str, out_dir: Path) -> ExportResult:
    """Write best_config.json/.yaml and trials.csv for ``study_name`` into ``out_dir``.

    Works for a finished or a running study; raises KeyError if the study does not exist.
    """
    storage = open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise KeyError(f"no study named {study_name!r} in this storage") from None
    metrics = _metric_names(study)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    best = best_config(study, metrics)
    document = best.to_document() if best else {"trial": None, "note": "no trial has completed yet"}
    (out_dir / "best_config.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    (out_dir / "best_config.yaml").write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    written += ["best_config.json", "best_config.yaml"]
    ledger = Ledger(storage_url)
    try:
        charges = ledger.charges_by_trial(study_name)
    finally:
        ledger.close()
    write_trials_csv(out_dir / "trials.csv", study.get_trials(deepcopy=False), metrics, charges)
    written.append("trials.csv")
    return ExportResult(out_dir, written, best)


def _metric_names(study: optuna.Study) -> list[str]:
    spec = study.user_attrs.get("tunefleet.spec")
    if isinstance(spec, dict):
        return [m["name"] for m in spec["objective"]["metrics"]]
    names = study.metric_names
    return list(names) if names else [f"value{i}" if len(study.directions) > 1 else "value" for i in range(len(study.directions))]
