"""The architecture's layers, checked on every run (as kopf's import contracts are)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PLANNER_FORBIDDEN = (
    "kubernetes",
    "kopf",
    "sqlalchemy",
    "psycopg2",
    "subprocess",
    "requests",
    "optuna",
    "socket",
    "aiohttp",
    "time",
    "datetime",
    "random",
    "os",
)


def imports_of(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def python_files(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", python_files("trial_worker"), ids=lambda p: p.name)
def test_the_worker_never_imports_the_controller(path: Path) -> None:
    assert not [m for m in imports_of(path) if m == "controller" or m.startswith("controller.")]


@pytest.mark.parametrize("path", python_files("controller"), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_the_controller_imports_only_the_workers_contract(path: Path) -> None:
    worker_imports = [m for m in imports_of(path) if m == "trial_worker" or m.startswith("trial_worker.")]
    # trial_worker.gateway is the worker's side of the gateway contract: the export
    # (controller/analysis/data.py) reads through the trial gateway with the same client.
    # trial_worker.gateway_protocol is tunefleet's addition to that protocol (Report), both sides'.
    # trial_worker.trial_reads is how both sides read a study's trials (Optuna's read in SQL Core):
    # one definition, so the controller's samplers and the workers' pruners see the same trials.
    allowed = {
        "trial_worker.contract",
        "trial_worker.gateway",
        "trial_worker.gateway_protocol",
        "trial_worker.trial_reads",
    }
    assert set(worker_imports) <= allowed


@pytest.mark.parametrize("path", python_files("controller/planner"), ids=lambda p: p.name)
def test_the_planner_does_no_io_and_reads_no_clock(path: Path) -> None:
    bad = [m for m in imports_of(path) if m.split(".")[0] in PLANNER_FORBIDDEN]
    assert not bad, f"{path.name} imports {bad}"


def test_every_module_starts_with_future_annotations() -> None:
    missing = [
        str(path.relative_to(REPO_ROOT))
        for package in ("controller", "trial_worker")
        for path in python_files(package)
        if path.stat().st_size > 0 and "from __future__ import annotations" not in path.read_text()
    ]
    assert not missing
