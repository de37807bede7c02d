"""Reading every trial of a study in five plain queries, for exports of large studies.

Optuna's ``get_trials`` on an RDB storage builds an ORM object per row (a 10,000-trial study with
ten intermediate values each is ~200,000 objects) and takes tens of seconds on a busy machine.
This reads the same tables with SQLAlchemy Core and builds the ``FrozenTrial`` objects exactly as
``RDBStorage._build_frozen_trial_from_trial_model`` does (naive UTC datetimes shown as local time,
values and intermediate values decoded by Optuna's own models). The storage test compares the
result with ``study.get_trials()`` on SQLite and PostgreSQL; any error falls back to Optuna.
"""

from __future__ import annotations

import datetime
import json
from collections import defaultdict
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial


@lru_cache(maxsize=4096)
def _distribution(text: str) -> BaseDistribution:
    return json_to_distribution(text)


def _local(value: datetime.datetime | None) -> datetime.datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=datetime.UTC).astimezone().replace(tzinfo=None)


def read_trials(storage: RDBStorage, study_id: int) -> list[FrozenTrial]:
    """Every trial of the study, ordered by number."""
    trials_table = models.TrialModel.__table__
    in_study = sa.select(trials_table.c.trial_id).where(trials_table.c.study_id == study_id)

    def rows(model: Any, *columns: str) -> list[Any]:
        table = model.__table__
        query = sa.select(table.c.trial_id, *(table.c[c] for c in columns)).where(
            table.c.trial_id.in_(in_study)
        )
        with storage.engine.connect() as conn:
            return list(conn.execute(query))

    with storage.engine.connect() as conn:
        trial_rows = list(
            conn.execute(
                sa.select(
                    trials_table.c.trial_id,
                    trials_table.c.number,
                    trials_table.c.state,
                    trials_table.c.datetime_start,
                    trials_table.c.datetime_complete,
                )
                .where(trials_table.c.study_id == study_id)
                .order_by(trials_table.c.number)
            )
        )
    params: dict[int, list[Any]] = defaultdict(list)
    for row in sorted(
        rows(models.TrialParamModel, "param_id", "param_name", "param_value", "distribution_json"),
        key=lambda r: r.param_id,
    ):
        params[row.trial_id].append(row)
    values: dict[int, dict[int, float]] = defaultdict(dict)
    for row in rows(models.TrialValueModel, "objective", "value", "value_type"):
        values[row.trial_id][row.objective] = models.TrialValueModel.stored_repr_to_value(
            row.value, row.value_type
        )
    steps: dict[int, dict[int, float]] = defaultdict(dict)
    for row in rows(
        models.TrialIntermediateValueModel, "step", "intermediate_value", "intermediate_value_type"
    ):
        steps[row.trial_id][row.step] = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
            row.intermediate_value, row.intermediate_value_type
        )
    user_attrs: dict[int, dict[str, Any]] = defaultdict(dict)
    for row in rows(models.TrialUserAttributeModel, "key", "value_json"):
        user_attrs[row.trial_id][row.key] = json.loads(row.value_json)
    system_attrs: dict[int, dict[str, Any]] = defaultdict(dict)
    for row in rows(models.TrialSystemAttributeModel, "key", "value_json"):
        system_attrs[row.trial_id][row.key] = json.loads(row.value_json)

    trials: list[FrozenTrial] = []
    for row in trial_rows:
        trial_id = row.trial_id
        stored = values.get(trial_id)
        distributions = {p.param_name: _distribution(p.distribution_json) for p in params.get(trial_id, [])}
        trials.append(
            FrozenTrial(
                number=row.number,
                state=row.state,
                value=None,
                values=[stored[i] for i in sorted(stored)] if stored else None,
                datetime_start=_local(row.datetime_start),
                datetime_complete=_local(row.datetime_complete),
                params={
                    p.param_name: distributions[p.param_name].to_external_repr(p.param_value)
                    for p in params.get(trial_id, [])
                },
                distributions=distributions,
                user_attrs=user_attrs.get(trial_id, {}),
                system_attrs=system_attrs.get(trial_id, {}),
                intermediate_values=steps.get(trial_id, {}),
                trial_id=trial_id,
            )
        )
    return trials
