"""Optuna's storage servicer, with the calls every trial makes made cheap.

Each second a trial reports (``SetTrialIntermediateValue``: written in groups by
``reports.ReportBatcher``) and asks ``should_prune`` (``GetTrials``: answered from
``snapshots.StudySnapshots``). Each trial also starts with ``load_study`` and ``optuna.Trial``:
what they ask never changes (a study's id for its name, its directions, a trial's id for its
number) and is cached here for the life of the process, or is read without the ORM (a trial's
id, ``GetTrial``). A trial's final tell is one Core transaction (``tells.finish_trial``). Every other
call is Optuna's own, over the bounded ``RDBStorage``.
"""

from __future__ import annotations

from typing import Any

import grpc
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.storages._grpc.auto_generated import api_pb2
from optuna.storages._grpc.servicer import OptunaStorageProxyService, _from_proto_trial_state

from controller.gateway.reports import ReportBatcher
from controller.gateway.snapshots import StudySnapshots
from controller.gateway.tells import finish_trial
from controller.gateway.trial_rows import read_trial, trial_id_of
from trial_worker.gateway_protocol import report_parts


class GatewayServicer(OptunaStorageProxyService):
    def __init__(self, backend: RDBStorage, snapshots: StudySnapshots, reports: ReportBatcher) -> None:
        super().__init__(backend)
        self._database = backend
        self._snapshots = snapshots
        self._reports = reports
        # Never changed once they exist (names carry the study's uid; ids are never reused).
        self._study_ids: dict[str, api_pb2.GetStudyIdFromNameReply] = {}
        self._directions: dict[int, api_pb2.GetStudyDirectionsReply] = {}
        self._trial_ids: dict[tuple[int, int], api_pb2.GetTrialIdFromStudyIdTrialNumberReply] = {}

    def GetStudyIdFromName(
        self, request: api_pb2.GetStudyIdFromNameRequest, context: grpc.ServicerContext
    ) -> api_pb2.GetStudyIdFromNameReply:
        reply = self._study_ids.get(request.study_name)
        if reply is None:
            reply = super().GetStudyIdFromName(request, context)
            self._study_ids[request.study_name] = reply
        return reply

    def GetStudyDirections(
        self, request: api_pb2.GetStudyDirectionsRequest, context: grpc.ServicerContext
    ) -> api_pb2.GetStudyDirectionsReply:
        reply = self._directions.get(request.study_id)
        if reply is None:
            reply = super().GetStudyDirections(request, context)
            self._directions[request.study_id] = reply
        return reply

    def GetTrialIdFromStudyIdTrialNumber(
        self, request: api_pb2.GetTrialIdFromStudyIdTrialNumberRequest, context: grpc.ServicerContext
    ) -> api_pb2.GetTrialIdFromStudyIdTrialNumberReply:
        key = (request.study_id, request.trial_number)
        reply = self._trial_ids.get(key)
        if reply is None:
            # Every trial asks once, for its own number: a Core query, not an ORM session.
            trial_id = trial_id_of(self._database.engine, request.study_id, request.trial_number)
            if trial_id is None:  # Optuna's answer, its NOT_FOUND message included
                return super().GetTrialIdFromStudyIdTrialNumber(request, context)
            reply = api_pb2.GetTrialIdFromStudyIdTrialNumberReply(trial_id=trial_id)
            self._trial_ids[key] = reply
        return reply

    def GetTrial(
        self, request: api_pb2.GetTrialRequest, context: grpc.ServicerContext
    ) -> api_pb2.GetTrialReply:
        try:
            trial = read_trial(self._database.engine, request.trial_id)
        except KeyError as error:
            context.abort(code=grpc.StatusCode.NOT_FOUND, details=str(error))
        return api_pb2.GetTrialReply(trial=trial)

    def GetTrials(
        self, request: api_pb2.GetTrialsRequest, context: grpc.ServicerContext
    ) -> api_pb2.GetTrialsReply:
        try:
            trials = self._snapshots.trials(
                request.study_id, request.included_trial_ids, request.trial_id_greater_than
            )
        except KeyError as error:
            context.abort(code=grpc.StatusCode.NOT_FOUND, details=str(error))
        return api_pb2.GetTrialsReply(trials=trials)

    def SetTrialIntermediateValue(
        self, request: api_pb2.SetTrialIntermediateValueRequest, context: grpc.ServicerContext
    ) -> api_pb2.SetTrialIntermediateValueReply:
        try:
            self._reports.submit(request.trial_id, request.step, request.intermediate_value)
        except (KeyError, UpdateFinishedTrialError) as error:
            context.abort(*report_refused(error))
        return api_pb2.SetTrialIntermediateValueReply()

    def Report(self, request: Any, context: grpc.ServicerContext) -> api_pb2.GetTrialsReply:
        """tunefleet's ``Report`` (``trial_worker.gateway_protocol``): the report, committed, then
        what ``GetTrials`` would answer for the trial's study (the gate checked both)."""
        write, read = report_parts(request)
        self.SetTrialIntermediateValue(write, context)
        return self.GetTrials(read, context)

    def SetTrialStateValues(
        self, request: api_pb2.SetTrialStateValuesRequest, context: grpc.ServicerContext
    ) -> api_pb2.SetTrialStateValuesReply:
        state = _from_proto_trial_state(request.state)
        if state.is_finished():
            values = list(request.values) if request.values else None
            if finish_trial(self._database.engine, request.trial_id, state, values):
                return api_pb2.SetTrialStateValuesReply(trial_updated=True)
        # A claim, or a trial that is not running: Optuna's own path, with its own answers.
        return super().SetTrialStateValues(request, context)


def report_refused(error: KeyError | UpdateFinishedTrialError) -> tuple[grpc.StatusCode, str]:
    """The status a report the writer refused is answered with, as Optuna's servicer answers it:
    no such trial, or a trial already finished."""
    if isinstance(error, KeyError):
        return grpc.StatusCode.NOT_FOUND, str(error)
    return grpc.StatusCode.FAILED_PRECONDITION, str(error)
