"""A study's trials as Optuna's gRPC messages, from the rows :mod:`trial_worker.trial_reads` reads.

The snapshots refresh every busy study twice a second; through the ORM (a session, six
``selectinload`` queries, ``FrozenTrial``s, then encoding) that was most of the gateway's CPU.
Here the rows (on PostgreSQL, one statement per read) go into ``api_pb2.Trial`` as stored:
parameters are already in their internal representation, and distributions and attributes
already JSON.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy
from optuna.storages._grpc.auto_generated import api_pb2
from optuna.storages._grpc.servicer import DATETIME_FORMAT, _to_proto_trial_state

from trial_worker.trial_reads import StoredTrial, read_stored, read_stored_trial, trial_id_of

__all__ = ["read_trial", "read_trials", "trial_id_of"]


def read_trials(
    engine: sqlalchemy.Engine, study_id: int, included: Iterable[int], greater_than: int
) -> list[tuple[api_pb2.Trial, bool]]:
    """(trial, finished) for the study's trials with an id above ``greater_than`` or in
    ``included`` (Optuna's ``_get_trials`` filter), by id. KeyError: no such study."""
    stored = read_stored(engine, study_id, None, included, greater_than)
    return [(message(trial), trial.state.is_finished()) for trial in stored]


def read_trial(engine: sqlalchemy.Engine, trial_id: int) -> api_pb2.Trial:
    """One trial (what ``GetTrial`` answers). KeyError: no such trial."""
    return message(read_stored_trial(engine, trial_id))


def message(trial: StoredTrial) -> api_pb2.Trial:
    started, completed = trial.datetime_start, trial.datetime_complete
    message = api_pb2.Trial(
        trial_id=trial.trial_id,
        number=trial.number,
        state=_to_proto_trial_state(trial.state),
        datetime_start=started.strftime(DATETIME_FORMAT) if started else "",
        datetime_complete=completed.strftime(DATETIME_FORMAT) if completed else "",
        values=trial.values or (),
        intermediate_values=trial.intermediate_values,
        user_attributes=trial.user_attrs,
        system_attributes=trial.system_attrs,
    )
    for name, internal, distribution_json in trial.params:
        message.params[name] = internal
        message.distributions[name] = distribution_json
    return message
