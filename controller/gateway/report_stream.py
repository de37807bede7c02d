"""tunefleet's ``Reports`` stream: a trial's reports, each answered with its study's new trials,
on one call that lasts as long as the trial.

A unary call costs gRPC Python about three times what a message on an open stream costs, on
both sides (``bench/grpc_floor.py``: aio vs aio-stream), and each trial reports every step. So a worker
opens the stream once and sends each report on it (``trial_worker/gateway.py``). Nothing is
trusted for the stream's sake: every report is checked by the gate as the unary ``Report`` is
(the token, still unexpired, may write this trial and read this study).

A report is served on the event loop, without a worker thread, when nothing in it needs the
database but its write: the gate's lookups cached, the write handed to the batched writer
(``reports.ReportBatcher``, awaited), the answer read from the study's snapshot (one report
of a study whose snapshot is due waits for its refresh on a worker thread; the study's other
reports meanwhile are answered from the snapshot in hand, as ``StudySnapshots`` answers them).
Otherwise (a trial's first lookups, a study's first read, SQLite) it is
``GatewayServicer.Report`` on a worker thread, as the unary call. Hopping to a thread and back
for each report cost the gateway more than the report itself, its threads contending for the
interpreter. A report that may not go on ends the stream with the status the unary call would
have answered; the worker reopens one for its next report.

The stream's last message may be the trial's tell (``gateway_protocol``): checked and served as
``SetTrialStateValues`` on a worker thread. The worker opens the stream as soon as it knows its
trial, so neither its first report nor its tell waits for gRPC to accept a new call: the asyncio
server accepts the calls of one method one at a time, several turns of its event loop each, and
with a thousand trials starting and ending that queue, not the work, was what a tell waited for.
The stream's initial metadata (``TELL_ON_STREAM``) tells the worker that tells are welcome here.
Each report is one call in the gateway's metrics (method ``Reports``), each tell one of
``SetTrialStateValues``. Messages are not shed: a stream carries one at a time, so streams, not
messages, bound what waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent import futures
from typing import Any

import grpc
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._grpc.auto_generated import api_pb2
from optuna.storages._grpc.servicer import _from_proto_trial_state

from controller.gateway import metrics
from controller.gateway.directory import NeedsDatabase
from controller.gateway.gate import DB_DOWN, THREAD_CONTEXT, CallEnded, Gate, bearer, shed, unavailable
from controller.gateway.reports import ReportBatcher
from controller.gateway.servicer import GatewayServicer, report_refused
from controller.gateway.snapshots import StudySnapshots
from trial_worker.gateway_protocol import REPORT, REPORTS, TELL, TELL_ON_STREAM, report_parts, tell_part

STREAM_RETRY_AFTER_MS = 30_000  # a worker refused a stream reports by calls this long

# What a report is answered with: the message, or (from a snapshot) its serialized form
Reply = api_pb2.GetTrialsReply | bytes


class ReportStream:
    def __init__(
        self,
        gate: Gate,
        servicer: GatewayServicer,
        reports: ReportBatcher,
        snapshots: StudySnapshots,
        threads: futures.Executor,
        max_streams: int,
    ) -> None:
        self._gate = gate
        self._max_streams = max_streams
        self._open = 0  # streams open now; touched on the event loop only
        self._servicer = servicer
        self._reports = reports
        self._snapshots = snapshots
        self._threads = threads
        self._refreshing: set[int] = set()  # studies whose snapshot a worker thread is refreshing

    async def serve(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Reply]:
        if self._open >= self._max_streams:
            await self._refuse_stream(context)
        self._open += 1
        metrics.STREAMS.inc()
        try:
            async for reply in self._serve(requests, context):
                yield reply
        finally:
            self._open -= 1
            metrics.STREAMS.dec()

    async def _refuse_stream(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Beyond ``max_streams`` a stream is refused as a shed call is: its worker sends that
        report as a ``Report`` call (admitted or shed like any call) and tries a stream later."""
        with metrics.counted(REPORTS) as outcome:
            outcome.code = grpc.StatusCode.RESOURCE_EXHAUSTED
            await shed(
                context,
                STREAM_RETRY_AFTER_MS,
                f"gateway busy: {self._open} report streams open; send reports as calls "
                f"and open a stream again after {STREAM_RETRY_AFTER_MS} ms",
            )

    async def _serve(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Reply]:
        loop = asyncio.get_running_loop()
        token, peer = bearer(context.invocation_metadata()), str(context.peer())
        await context.send_initial_metadata((TELL_ON_STREAM,))
        async for request in requests:
            with metrics.counted(TELL if request.tell else REPORTS) as outcome:
                metrics.IN_FLIGHT.inc()
                try:
                    if request.tell:
                        reply = await self._tell(loop, request, token, peer)
                    else:
                        reply = await self._report(loop, request, token, peer)
                except CallEnded as ended:
                    outcome.code = ended.code
                    await context.abort(ended.code, ended.details)
                finally:
                    metrics.IN_FLIGHT.dec()
            yield reply

    async def _report(
        self, loop: asyncio.AbstractEventLoop, request: Any, token: str | None, peer: str
    ) -> Reply:
        if self._reports.batched:
            try:
                self._gate.check(REPORT, request, token, peer, cached_only=True)
            except NeedsDatabase:
                pass
            else:
                return await self._report_on_loop(loop, request)
        return await loop.run_in_executor(
            self._threads, self._gate.serve, REPORT, request, token, peer, self._servicer.Report
        )

    async def _tell(
        self, loop: asyncio.AbstractEventLoop, request: Any, token: str | None, peer: str
    ) -> Reply:
        """The trial's tell, checked and served as ``SetTrialStateValues``: answered (with no
        trials) once committed. Only a finished state: a claim is not a stream's business."""
        tell = tell_part(request)
        try:
            finishes = _from_proto_trial_state(tell.state).is_finished()
        except ValueError:  # not a state at all
            finishes = False
        if not finishes:
            raise CallEnded(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a tell on the Reports stream must finish the trial; state {tell.state} does not",
            )
        await loop.run_in_executor(
            self._threads, self._gate.serve, TELL, tell, token, peer, self._servicer.SetTrialStateValues
        )
        return b""  # an empty GetTrialsReply

    async def _report_on_loop(self, loop: asyncio.AbstractEventLoop, request: Any) -> Reply:
        """The report, checked already: its write committed, then the study's trials."""
        written = self._reports.submit_future(request.trial_id, request.step, request.intermediate_value)
        try:
            await asyncio.wrap_future(written)
        except (KeyError, UpdateFinishedTrialError) as error:
            raise CallEnded(*report_refused(error)) from error
        except DB_DOWN as error:
            raise unavailable(error) from error
        study_id = request.study_id
        cached = self._snapshots.cached_reply(
            study_id, request.included_trial_ids, request.trial_id_greater_than
        )
        if cached is not None:
            reply, due = cached
            if not due or study_id in self._refreshing:  # as StudySnapshots answers during a refresh
                return reply  # already serialized
        # The study's first read here, or a snapshot due: this report waits for the read, so
        # the snapshot is never older than its max age.
        self._refreshing.add(study_id)
        try:
            return await loop.run_in_executor(self._threads, self._read, request)
        finally:
            self._refreshing.discard(study_id)

    def _read(self, request: Any) -> api_pb2.GetTrialsReply:
        try:
            return self._servicer.GetTrials(report_parts(request)[1], THREAD_CONTEXT)
        except DB_DOWN as error:
            raise unavailable(error) from error
