"""A study read once for the analysis: its trials split into search and confirmation runs.

Every part of the export (best configuration, importance, plots, intervals, record) works from one
:class:`StudyData`, so a 10,000-trial study is read from the storage once. Optuna's plots and
importance evaluators take a ``Study``; :func:`search_study` gives them an in-memory copy holding
only the search trials, so confirmation reruns do not count twice in the history or importance.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import optuna
import structlog
from optuna.storages import InMemoryStorage, RDBStorage
from optuna.trial import FrozenTrial, TrialState

from controller.analysis.ledger_snapshot import ATTR_LEDGER, decode_ledger
from controller.budget.ledger import Charge, Ledger, Totals
from controller.planner.confirmation import ATTR_CONFIRM_OF, CONFIRM_KIND
from controller.studies.record import ATTR_SPEC
from trial_worker.contract import ATTR_KIND, GATEWAY_SCHEME

log = structlog.get_logger("tunefleet.analysis")


@dataclass
class StudyData:
    """What the analysis needs, read from the storage in one pass."""

    name: str
    metrics: list[str]
    directions: list[str]  # "minimize" / "maximize", one per metric
    user_attrs: dict[str, Any]
    trials: list[FrozenTrial]
    charges: dict[int, Charge] = field(default_factory=dict)
    totals: Totals | None = None
    _search_study: optuna.Study | None = field(default=None, repr=False)

    @property
    def spec(self) -> dict[str, Any] | None:
        spec = self.user_attrs.get(ATTR_SPEC)
        return spec if isinstance(spec, dict) else None

    @property
    def is_multi_objective(self) -> bool:
        return len(self.metrics) > 1

    @property
    def confirm_of(self) -> dict[int, int]:
        """Confirmation trial number -> the search trial whose configuration it repeats."""
        return {
            t.number: int(t.user_attrs[ATTR_CONFIRM_OF])
            for t in self.trials
            if t.user_attrs.get(ATTR_KIND) == CONFIRM_KIND and ATTR_CONFIRM_OF in t.user_attrs
        }

    @property
    def search_trials(self) -> list[FrozenTrial]:
        confirm = self.confirm_of
        return [t for t in self.trials if t.number not in confirm]

    @property
    def confirmation_trials(self) -> list[FrozenTrial]:
        confirm = self.confirm_of
        return [t for t in self.trials if t.number in confirm]

    def completed_search(self) -> list[FrozenTrial]:
        return [t for t in self.search_trials if t.state == TrialState.COMPLETE and t.values is not None]

    def search_study(self) -> optuna.Study:
        """An in-memory study with the search trials only (built once, then reused)."""
        if self._search_study is None:
            self._search_study = study_of(self.search_trials, self.directions, self.metrics)
        return self._search_study


def study_of(trials: list[FrozenTrial], directions: list[str], metrics: list[str]) -> optuna.Study:
    """An in-memory study holding ``trials`` (for Optuna's plots and evaluators)."""
    study = optuna.create_study(storage=InMemoryStorage(), directions=directions)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # set_metric_names is experimental
        study.set_metric_names(metrics)
    # RUNNING trials are copied as they are: the timeline shows them; plots skip them.
    study.add_trials(trials)
    return study


def load_study_data(storage_url: str, study_name: str) -> StudyData:
    """Read a study and its ledger charges; raises KeyError if the study does not exist.

    A ``tunefleet-gateway://`` URL (the export Job on a cluster) reads through the trial gateway
    with the token in ``TUNEFLEET_GATEWAY_TOKEN``; the ledger's figures then come from the study's
    :data:`~controller.analysis.ledger_snapshot.ATTR_LEDGER` attribute, which the controller wrote.
    """
    if storage_url.startswith(f"{GATEWAY_SCHEME}://"):
        return _load_through_gateway(storage_url, study_name)
    from controller.studies.storage import open_storage

    storage = open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise KeyError(f"no study named {study_name!r} in this storage") from None
    try:
        user_attrs = dict(study.user_attrs)
        trials = _read_trials(storage, study)
        directions = [d.name.lower() for d in study.directions]
        metrics = metric_names(user_attrs, study.metric_names, len(directions))
    finally:
        storage.engine.dispose()
    ledger = Ledger(storage_url)
    try:
        charges = ledger.charges_by_trial(study_name)
        totals = ledger.totals(study_name)
    finally:
        ledger.close()
    return StudyData(
        name=study_name,
        metrics=metrics,
        directions=directions,
        user_attrs=user_attrs,
        trials=trials,
        charges=charges,
        totals=totals,
    )


def _load_through_gateway(storage_url: str, study_name: str) -> StudyData:
    """Optuna's reads only (the gateway serves nothing else); the ledger from the study attribute."""
    # The gateway client is the worker's side of the gateway contract (see tests/unit/test_layers.py).
    from trial_worker.gateway import open_gateway

    storage = open_gateway(storage_url)
    try:
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            raise KeyError(f"no study named {study_name!r} behind the gateway") from None
        user_attrs = dict(study.user_attrs)
        trials = study.get_trials(deepcopy=False)
        directions = [d.name.lower() for d in study.directions]
        metrics = metric_names(user_attrs, study.metric_names, len(directions))
        recorded = storage.get_study_system_attrs(study._study_id).get(ATTR_LEDGER)
    finally:
        storage.close()
    charges: dict[int, Charge] = {}
    totals: Totals | None = None
    if recorded is None:
        log.info("the study holds no ledger figures; the export shows no charges", study=study_name,
                 attribute=ATTR_LEDGER)
    else:
        try:
            charges, totals = decode_ledger(recorded)
        except ValueError as error:
            log.warning("the study's ledger figures are unreadable; the export shows no charges",
                        study=study_name, attribute=ATTR_LEDGER, error=str(error))
    return StudyData(
        name=study_name,
        metrics=metrics,
        directions=directions,
        user_attrs=user_attrs,
        trials=trials,
        charges=charges,
        totals=totals,
    )


def _read_trials(storage: RDBStorage, study: optuna.Study) -> list[FrozenTrial]:
    """Every trial, with plain queries when the schema is Optuna's usual one, else via Optuna."""
    from sqlalchemy.exc import SQLAlchemyError

    from trial_worker.trial_reads import read_trials

    try:
        return sorted(read_trials(storage.engine, study._study_id), key=lambda t: t.number)
    except (SQLAlchemyError, KeyError, ValueError, TypeError, AttributeError) as exc:
        log.warning("reading trials directly failed; using Optuna's reader", error=str(exc))
        return study.get_trials(deepcopy=False)


def metric_names(user_attrs: dict[str, Any], stored: list[str] | None, count: int) -> list[str]:
    """The spec's metric names, else Optuna's, else value / value0, value1, ..."""
    spec = user_attrs.get(ATTR_SPEC)
    if isinstance(spec, dict):
        return [m["name"] for m in spec["objective"]["metrics"]]
    if stored:
        return list(stored)
    return ["value"] if count == 1 else [f"value{i}" for i in range(count)]
