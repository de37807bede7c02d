"""Reading back what an MLflow tracking server holds for a study, for assertions and comparisons."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from controller.tracking.credentials import Credentials, credentials_in_environment
from tests.support.mlflow_server import MlflowServer

# Measured, not decided by the study: they differ between two runs of the same seeded study.
MEASURED = ("tunefleet/duration_s", "tunefleet/gpu_seconds", "tunefleet/cpu_seconds")
# Tags that name the study instance or other runs (ids differ between two runs of one study).
INSTANCE_TAGS = (
    "tunefleet.study",
    "tunefleet.study_id",
    "tunefleet.retry_of_run",
    "tunefleet.confirm_of_run",
    "mlflow.parentRunId",
    "mlflow.runName",
    "mlflow.note.content",
    "mlflow.user",
)


@dataclass
class MirroredRun:
    run: Run
    histories: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.run.data.tags)

    @property
    def params(self) -> dict[str, str]:
        return dict(self.run.data.params)

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.run.data.metrics)

    def comparable(self, with_history: bool) -> dict[str, Any]:
        """What two runs of the same seeded study must share."""
        return {
            "name": self.run.info.run_name if self.tags.get("tunefleet.role") == "trial" else "(study)",
            "status": self.run.info.status,
            "params": self.params,
            "tags": {k: v for k, v in self.tags.items() if k not in INSTANCE_TAGS},
            "metrics": {
                k: v for k, v in self.metrics.items() if k not in MEASURED and not k.startswith("budget/")
            },
            "measured": sorted(k for k in self.metrics if k in MEASURED),
            "histories": {k: v for k, v in self.histories.items() if k not in MEASURED}
            if with_history
            else {},
            "artifacts": self.artifacts,
        }


@dataclass
class MirroredStudy:
    experiment_id: str
    parent: MirroredRun
    trials: dict[int, MirroredRun]
    all_runs: int

    def comparable(self) -> dict[str, Any]:
        return {
            "parent": self.parent.comparable(with_history=False),
            "trials": {n: run.comparable(with_history=True) for n, run in sorted(self.trials.items())},
            "runs": self.all_runs,
        }


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> Iterator[str]:
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            yield from _artifacts(client, run_id, item.path)
        else:
            yield item.path


def read_study(server: MlflowServer, experiment: str) -> MirroredStudy | None:
    """The study's runs in ``experiment``, or None while the experiment does not exist."""
    with credentials_in_environment(Credentials(server.username, server.password)):
        client = MlflowClient(server.url)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return None
        runs = client.search_runs([found.experiment_id], max_results=1000)
        parents = [r for r in runs if r.data.tags.get("tunefleet.role") == "study"]
        if not parents:
            return None
        assert len(parents) == 1, f"{len(parents)} runs for one study: {[r.info.run_id for r in parents]}"
        parent = MirroredRun(parents[0], artifacts=sorted(_artifacts(client, parents[0].info.run_id)))
        trials: dict[int, MirroredRun] = {}
        for run in runs:
            if run.data.tags.get("tunefleet.role") != "trial":
                continue
            number = int(run.data.tags["tunefleet.trial"])
            assert number not in trials, f"trial {number} has two runs"
            histories = {
                key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
                for key in run.data.metrics
            }
            trials[number] = MirroredRun(run, {k: sorted(v) for k, v in histories.items()})
        return MirroredStudy(found.experiment_id, parent, trials, len(runs))
