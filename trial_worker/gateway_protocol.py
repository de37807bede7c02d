"""tunefleet's additions to Optuna's storage protocol: a report that answers with the study's new
trials, alone or as a stream of them that also carries the trial's tell.

A trial that reports and then asks ``should_prune`` makes two calls each step with Optuna's own
protocol: ``SetTrialIntermediateValue``, then ``GetTrials`` (its client cache's watermark). With
a thousand trials that is most of what the gateway serves. ``Report`` does both in one round
trip::

    service tunefleet.gateway.TrialGateway {
      // SetTrialIntermediateValue(trial_id, step, intermediate_value), then
      // GetTrials(study_id, included_trial_ids, trial_id_greater_than): the trial's own study
      rpc Report(ReportRequest) returns (optuna.GetTrialsReply);
      // The same, one answer per report, on one call for the life of a trial: a message on an
      // open stream costs gRPC a third of what a call costs. Its last message may be the
      // trial's tell (tell = true): SetTrialStateValues(trial_id, state, values) for a finished
      // state, answered with an empty GetTrialsReply once committed.
      rpc Reports(stream ReportRequest) returns (stream optuna.GetTrialsReply);
    }

A gateway that takes tells on the stream says so in the stream's initial metadata
(``TELL_ON_STREAM``); a worker sends its tell there only then, so an older gateway never reads a
tell as a report. The request message is built here from its descriptor (no generated code to
keep in step); the reply is Optuna's own ``GetTrialsReply``. A gateway that does not know the
method answers UNIMPLEMENTED, and the worker goes back to ``Report``, or to Optuna's two calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from optuna.storages._grpc.auto_generated import api_pb2

SERVICE = "tunefleet.gateway.TrialGateway"
REPORT = "Report"
REPORT_PATH = f"/{SERVICE}/{REPORT}"
REPORTS = "Reports"
REPORTS_PATH = f"/{SERVICE}/{REPORTS}"
TELL = "SetTrialStateValues"  # what a tell on the stream stands for (checks, metrics)
TELL_ON_STREAM = ("tunefleet-tell-on-stream", "1")  # the gateway's initial metadata on Reports

_FIELDS = (  # (name, type), numbered from 1
    ("study_id", descriptor_pb2.FieldDescriptorProto.TYPE_INT64),
    ("trial_id", descriptor_pb2.FieldDescriptorProto.TYPE_INT64),
    ("step", descriptor_pb2.FieldDescriptorProto.TYPE_INT64),
    ("intermediate_value", descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE),
    ("included_trial_ids", descriptor_pb2.FieldDescriptorProto.TYPE_INT64),
    ("trial_id_greater_than", descriptor_pb2.FieldDescriptorProto.TYPE_INT64),
    ("tell", descriptor_pb2.FieldDescriptorProto.TYPE_BOOL),  # the trial's tell, not a report
    ("state", descriptor_pb2.FieldDescriptorProto.TYPE_INT32),  # a tell's optuna.TrialState
    ("values", descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE),  # a tell's values
)
_REPEATED = {"included_trial_ids", "values"}


def _report_request_class() -> Any:
    proto = descriptor_pb2.FileDescriptorProto(
        name="tunefleet/gateway.proto", package="tunefleet.gateway", syntax="proto3"
    )
    message = proto.message_type.add(name="ReportRequest")
    for number, (name, kind) in enumerate(_FIELDS, start=1):
        label = (
            descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
            if name in _REPEATED
            else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
        )
        message.field.add(name=name, number=number, type=kind, label=label)
    pool = descriptor_pool.DescriptorPool()  # a pool of its own: nothing else can clash with it
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tunefleet.gateway.ReportRequest"))


ReportRequest: Any = _report_request_class()


def report_method(channel: Any) -> Any:
    """The client's ``Report`` callable on ``channel`` (a ``grpc.Channel`` or ``grpc.aio.Channel``)."""
    return channel.unary_unary(
        REPORT_PATH,
        request_serializer=ReportRequest.SerializeToString,
        response_deserializer=api_pb2.GetTrialsReply.FromString,
    )


def report_handler(behavior: Callable[[Any, grpc.ServicerContext], api_pb2.GetTrialsReply]) -> Any:
    """The server's generic handler for ``Report``, served by ``behavior``."""
    method = grpc.unary_unary_rpc_method_handler(
        behavior,
        request_deserializer=ReportRequest.FromString,
        response_serializer=api_pb2.GetTrialsReply.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(SERVICE, {REPORT: method})


def reports_method(channel: Any) -> Any:
    """The client's ``Reports`` stream callable on ``channel`` (``grpc.Channel`` or ``grpc.aio.Channel``)."""
    return channel.stream_stream(
        REPORTS_PATH,
        request_serializer=ReportRequest.SerializeToString,
        response_deserializer=api_pb2.GetTrialsReply.FromString,
    )


def reports_handler(behavior: Callable[[Any, Any], Any]) -> Any:
    """The server's generic handler for the ``Reports`` stream, served by ``behavior`` (which
    may answer with a ``GetTrialsReply`` or with one already serialized)."""
    method = grpc.stream_stream_rpc_method_handler(
        behavior,
        request_deserializer=ReportRequest.FromString,
        response_serializer=_serialized_reply,
    )
    return grpc.method_handlers_generic_handler(SERVICE, {REPORTS: method})


def _serialized_reply(reply: api_pb2.GetTrialsReply | bytes) -> bytes:
    """A reply the gateway serialized already (its snapshots keep trials encoded) goes as it is."""
    return reply if isinstance(reply, bytes) else reply.SerializeToString()


def report_parts(request: Any) -> tuple[api_pb2.SetTrialIntermediateValueRequest, api_pb2.GetTrialsRequest]:
    """The two Optuna calls a ``Report`` stands for: what it writes, then what it reads."""
    write = api_pb2.SetTrialIntermediateValueRequest(
        trial_id=request.trial_id, step=request.step, intermediate_value=request.intermediate_value
    )
    read = api_pb2.GetTrialsRequest(
        study_id=request.study_id,
        included_trial_ids=request.included_trial_ids,
        trial_id_greater_than=request.trial_id_greater_than,
    )
    return write, read


def tell_message(study_id: int, trial_id: int, state: int, values: Sequence[float] | None) -> Any:
    """A trial's tell (``state``: an ``optuna.TrialState`` of the protocol) as a stream message."""
    return ReportRequest(
        study_id=study_id, trial_id=trial_id, tell=True, state=state, values=list(values or ())
    )


def tell_part(request: Any) -> api_pb2.SetTrialStateValuesRequest:
    """The Optuna call a tell on the stream stands for."""
    return api_pb2.SetTrialStateValuesRequest(
        trial_id=request.trial_id, state=request.state, values=request.values
    )
