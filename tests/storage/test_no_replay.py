"""No restart replays a configuration: every sampler, resumed three times.

Each session below does what the local runner and the controller do when they take a study over:
load the study, build the strategy's sampler from the study seed, ask trials through
``ask_new_trial``. Values are told in-process (the objective is not what is under test). The
samplers run on SQLite: what they draw does not depend on the storage (``tunefleet run`` below
and the cluster tier run PostgreSQL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.storages import RDBStorage

from controller.local.runner import LocalRunner, RunOptions
from controller.spec import StudySpec, parse_study_text, validate_spec
from controller.strategies.live import LiveStrategy
from controller.studies.asking import ask_new_trial
from controller.studies.storage import create_or_load_study, open_storage
from tests.conftest import REPO_ROOT
from tests.support.specs import study_document

pytestmark = pytest.mark.storage

SINGLE = ["random", "tpe", "gp", "cmaes", "qmc"]
MULTI = ["nsga2", "nsga3", "motpe"]
SESSIONS = 4  # the first run, then three resumes
TRIALS_PER_SESSION = 2
STUDY_SEED = 42


def spec_for(sampler: str) -> StudySpec:
    metrics = [{"name": "loss", "direction": "minimize"}]
    if sampler in MULTI:
        metrics.append({"name": "size", "direction": "minimize"})
    return validate_spec(
        {
            "objective": {"metrics": metrics},
            "searchSpace": {
                "x": {"type": "float", "low": -10.0, "high": 10.0},
                "y": {"type": "float", "low": -10.0, "high": 10.0},
            },
            "strategy": {"sampler": sampler, "pruner": "none", "seed": STUDY_SEED},
            "budget": {"maxTrials": SESSIONS * TRIALS_PER_SESSION},
            "parallelism": 1,
            "trial": {"python": "tests.support.objectives:quadratic"},
        }
    )


def values_of(spec: StudySpec, params: dict[str, Any]) -> list[float]:
    x, y = float(params["x"]), float(params["y"])
    loss = (x - 1.0) ** 2 + (y + 2.0) ** 2
    return [loss, (x + 1.0) ** 2 + y**2] if spec.is_multi_objective else [loss]


def one_session(storage: RDBStorage, spec: StudySpec, trials: int) -> None:
    """A process taking the study over: the study loaded again, a new sampler, then ask and tell."""
    strategy = LiveStrategy(spec, STUDY_SEED)
    study = create_or_load_study(storage, "resumed", spec.objective.directions, strategy.build_sampler())
    for _ in range(trials):
        trial = ask_new_trial(study, spec.searchSpace, STUDY_SEED)
        study.tell(trial, values_of(spec, trial.params))


def configurations(storage_url: str, name: str = "resumed") -> list[tuple[tuple[str, Any], ...]]:
    trials = optuna.load_study(study_name=name, storage=storage_url).get_trials(deepcopy=False)
    return [tuple(sorted(t.params.items())) for t in trials]


@pytest.mark.parametrize("sampler", SINGLE + MULTI)
def test_a_study_resumed_three_times_never_repeats_a_configuration(sampler: str, sqlite_url: str) -> None:
    spec = spec_for(sampler)
    storage = open_storage(sqlite_url)
    for _ in range(SESSIONS):
        one_session(storage, spec, TRIALS_PER_SESSION)
    seen = configurations(sqlite_url)
    assert len(seen) == SESSIONS * TRIALS_PER_SESSION
    repeated = [c for c in seen if seen.count(c) > 1]
    assert not repeated, f"{sampler} replayed {repeated[:2]} after a resume"


def test_tunefleet_run_resumed_with_more_trials_asks_new_configurations(
    postgres_url: str, tmp_path: Path
) -> None:
    """The issue's reproduction: a seeded random study run with maxTrials 4, then 8 with another
    parallelism: trials 4-7 used to be trials 0-3 again."""
    for max_trials, parallel in ((4, 1), (8, 2)):
        document = study_document(parallelism=1, budget={"maxTrials": max_trials})
        manifest = parse_study_text(yaml.safe_dump(document))
        options = RunOptions(
            storage_url=postgres_url,
            parallel=parallel,
            workdir=str(REPO_ROOT),
            log_dir=tmp_path / "logs",
            show_progress=False,
        )
        LocalRunner(manifest, options).run()
    seen = configurations(postgres_url, "test-study")
    assert len(seen) == 8
    assert len(set(seen)) == 8, "a resumed run replayed a configuration"
