"""One mirroring pass of one study: the study's run, each trial whose content changed, the ending.

A pass compares what each run should hold (:mod:`controller.tracking.content`) with what the
record table says MLflow holds (:mod:`controller.tracking.records`) and sends the difference
through :class:`~controller.tracking.mlflow_writer.MlflowWriter`, writing each record as soon as
MLflow accepted its part. The study's run is finished last: after every trial and the export.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from controller.tracking.content import PARENT_TRIAL, RunContent, StudyFacts, study_content, trial_content
from controller.tracking.records import RunRecord, Sent, TrackingRecords

if TYPE_CHECKING:
    from controller.budget.ledger import Ledger
    from controller.tracking.mlflow_writer import MlflowWriter


@dataclass
class MirrorState:
    """What the passes of one study learned, kept between them."""

    experiment_id: str | None = None
    parent_run_id: str | None = None
    unmirrored: int = 0  # trials whose latest content is not in MLflow yet
    adoptable: dict[int, str] | None = None  # runs found in MLflow on the first pass (a crash's)


class MirrorPass:
    """One mirroring pass of one study: the study's run, each changed trial, then the ending."""

    def __init__(
        self,
        writer: MlflowWriter,
        records: TrackingRecords,
        facts: StudyFacts,
        ledger: Ledger,
        storage_url: str,
    ) -> None:
        self.writer = writer
        self.records = records
        self.facts = facts
        self.ledger = ledger
        self.storage_url = storage_url
        self.known = records.load()
        self.state = MirrorState()

    @property
    def experiment_id(self) -> str:
        assert self.state.experiment_id is not None
        return self.state.experiment_id

    def run(self, state: MirrorState) -> bool:
        """Send what MLflow lacks; True once the ended study is in MLflow whole."""
        self.state = state
        facts = self.facts
        study = study_content(facts, int(time.time() * 1000))
        ended = facts.stop_reason is not None and all(t.state.is_finished() for t in facts.trials)
        marker = f"export:{facts.stop_reason}:{len(facts.trials)}"
        parent = self._run_record(PARENT_TRIAL, study, None)
        state.parent_run_id = parent.run_id
        if "spec" not in parent.sent.artifacts:
            self._upload(parent, "spec", "tunefleet", self._write_spec)
        # The study's run ends (FINISHED) only once its trials and export are all in MLflow.
        final = ended and marker in parent.sent.artifacts
        self._send(
            PARENT_TRIAL,
            parent,
            study if final else dataclasses.replace(study, status="RUNNING", end_ms=None),
            {},
        )
        charges = self.ledger.charges_by_trial(facts.key)
        contents = [
            trial_content(t, facts.metric_names, charges.get(t.number), facts.key, facts.extra_tags)
            for t in facts.trials
        ]
        changed = [
            c
            for c in contents
            if (r := self.known.get(int(c.tags["tunefleet.trial"]))) is None or r.digest != c.digest()
        ]
        state.unmirrored = len(changed)
        for content in changed:
            number = int(content.tags["tunefleet.trial"])
            record = self._run_record(number, content, parent.run_id)
            links = {tag: self.known[n].run_id for tag, n in content.links.items() if n in self.known}
            links["mlflow.parentRunId"] = parent.run_id  # also on a run adopted after a crash
            self._send(number, record, content, links)
            state.unmirrored -= 1
        if not ended:
            return False
        if marker not in parent.sent.artifacts:
            self._upload(parent, marker, "export", self._write_export)
        self._send(PARENT_TRIAL, parent, study, {})
        return True

    def _run_record(self, number: int, content: RunContent, parent_run_id: str | None) -> RunRecord:
        record = self.known.get(number)
        if record is None:
            if self.state.adoptable is None:  # once per process: runs made just before a crash
                self.state.adoptable = self.writer.find_runs(self.experiment_id, self.facts.identity)
            run_id = self.state.adoptable.pop(number, None) or self.writer.create_run(
                self.experiment_id, content, self.facts.identity, parent_run_id
            )
            record = RunRecord(run_id, self.experiment_id, None, Sent())
            self.records.save(number, record)
            self.known[number] = record
        return record

    def _send(self, number: int, record: RunRecord, content: RunContent, links: dict[str, str]) -> None:
        before = record.sent.to_json()
        self.writer.push(record.run_id, content, record.sent, links)
        digest = content.digest()
        if record.sent.to_json() != before or record.digest != digest:
            record.digest = digest
            self.records.save(number, record)

    def _upload(self, record: RunRecord, marker: str, path: str, write: Callable[[Path], None]) -> None:
        with tempfile.TemporaryDirectory(prefix="tunefleet-mlflow-") as directory:
            write(Path(directory))
            self.writer.upload(record.run_id, Path(directory), path)
        record.sent.artifacts = [a for a in record.sent.artifacts if a.split(":")[0] != marker.split(":")[0]]
        record.sent.artifacts.append(marker)
        self.records.save(PARENT_TRIAL, record)

    def _write_spec(self, directory: Path) -> None:
        from controller.studies.record import ATTR_STRATEGY

        spec = self.facts.spec or {}
        (directory / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        strategy = self.facts.user_attrs.get(ATTR_STRATEGY) or {}
        (directory / "strategy.json").write_text(json.dumps(strategy, indent=2) + "\n", encoding="utf-8")

    def _write_export(self, directory: Path) -> None:
        from controller.export import write_export

        write_export(self.storage_url, self.facts.key, directory)
