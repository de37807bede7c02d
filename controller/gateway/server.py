"""The trial gateway: Optuna's gRPC storage servicer behind per-trial tokens, TLS and a bounded pool.

Trial workers talk Optuna's own storage protocol (``GrpcStorageProxy``), so an unchanged objective
gets a real ``optuna.Trial``. What is ours is the interceptor in front of the servicer: it checks
the token, resolves what the request touches, applies ``authorization.authorize``, and sheds load
beyond ``max_in_flight`` calls with ``RESOURCE_EXHAUSTED`` and a retry-after instead of queueing.
The database sees at most ``pool_size`` connections per replica (plus one short-lived for
/readyz), however many trials run.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any, NoReturn

import grpc
import sqlalchemy
import sqlalchemy.exc
import structlog
from optuna.storages import RDBStorage
from optuna.storages._grpc.auto_generated import api_pb2_grpc
from optuna.storages._grpc.servicer import _from_proto_trial_state

from controller.gateway import metrics
from controller.gateway.authorization import METHOD_ACCESS, Access, CallRefused, Target, authorize
from controller.gateway.directory import Directory
from controller.gateway.health import HealthServer
from controller.gateway.reports import ReportBatcher
from controller.gateway.servicer import GatewayServicer
from controller.gateway.settings import GatewaySettings
from controller.gateway.snapshots import StudySnapshots
from controller.gateway.tokens import TokenClaims, TokenKeys, TokenRefused
from trial_worker.gateway_protocol import REPORT, report_handler, report_parts

log = structlog.get_logger("tunefleet.gateway")

RETRY_AFTER_MS = 100  # the least a shed client waits; jitter spreads the retries
QUEUE_WAIT_S = 0.05  # a call waits this long for a slot before it is shed
_DB_DOWN = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.TimeoutError)

Behavior = Callable[[Any, grpc.ServicerContext], Any]


class GatewayInterceptor(grpc.ServerInterceptor):
    """Token, authorization, load shedding, metrics and refusal logs for every storage call."""

    def __init__(
        self,
        keys: TokenKeys,
        directory: Directory,
        max_in_flight: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._directory = directory
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._max_in_flight = max_in_flight
        self._clock = clock

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return None  # every Optuna storage call is unary; anything else is UNIMPLEMENTED
        method = handler_call_details.method.rsplit("/", 1)[-1]
        inner: Behavior = handler.unary_unary

        def behavior(request: Any, context: grpc.ServicerContext) -> Any:
            return self._serve(method, inner, request, context)

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _serve(self, method: str, inner: Behavior, request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            if not self._slots.acquire(timeout=QUEUE_WAIT_S):
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
                wait_ms = str(RETRY_AFTER_MS + random.randrange(RETRY_AFTER_MS))
                # retry-after-ms is ours; grpc-retry-pushback-ms is what gRPC's retry policy obeys
                context.set_trailing_metadata(
                    (("retry-after-ms", wait_ms), ("grpc-retry-pushback-ms", wait_ms))
                )
                context.abort(
                    code,
                    f"gateway busy: {self._max_in_flight} calls in flight; retry after {wait_ms} ms",
                )
            metrics.IN_FLIGHT.inc()
            try:
                return self._serve_admitted(method, inner, request, context)
            finally:
                metrics.IN_FLIGHT.dec()
                self._slots.release()
        except Exception:
            if code == grpc.StatusCode.OK:
                code = _context_code(context)
            raise
        finally:
            metrics.CALLS.labels(method, code.name).inc()
            metrics.CALL_SECONDS.labels(method).observe(time.perf_counter() - started)

    def _serve_admitted(
        self, method: str, inner: Behavior, request: Any, context: grpc.ServicerContext
    ) -> Any:
        try:
            claims = self._keys.verify(_bearer(context), self._clock())
        except TokenRefused as refused:
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, method, "bad-token", refused.reason, None)
        try:
            # A Report is checked as the two Optuna calls it stands for: its write, then its read.
            parts = _report_calls(request) if method == REPORT else ((method, request),)
            targets: list[Target] = []
            for name, part in parts:
                targets.append(self._resolve(name, part))
                authorize(claims, name, targets[-1])
            target = targets[0]
        except CallRefused as refused:
            self._refuse(
                context, grpc.StatusCode.PERMISSION_DENIED, method, refused.reason, refused.message, claims
            )
        except _DB_DOWN as error:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the study database is unreachable: {error}")
        try:
            response = inner(request, context)
        except _DB_DOWN as error:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the study database is unreachable: {error}")
        if method == "SetTrialStateValues" and target.trial_id is not None and target.requested_state:
            self._directory.record_state(target.trial_id, target.requested_state)
        return response

    def _resolve(self, method: str, request: Any) -> Target:
        """What the request touches, ids resolved to names (cached; see directory.py)."""
        fields = request.DESCRIPTOR.fields_by_name
        if "study_name" in fields:  # GetStudyIdFromName, CreateNewStudy
            return Target(study=request.study_name)
        if "study_id" in fields:
            study_id = int(request.study_id)
            number = int(request.trial_number) if "trial_number" in fields else None
            return Target(study=self._directory.study_name(study_id), study_id=study_id, trial=number)
        if "trial_id" in fields:
            trial_id = int(request.trial_id)
            writes = METHOD_ACCESS.get(method) is Access.WRITE_TRIAL
            info = self._directory.trial(trial_id, fresh_state=writes)
            if info is None:
                return Target(trial_id=trial_id)
            requested = _from_proto_trial_state(request.state) if "state" in fields else None
            param = (
                (request.param_name, float(request.param_value_internal), request.distribution)
                if method == "SetTrialParameter"
                else None
            )
            return Target(
                study=info.study, study_id=info.study_id, trial_id=trial_id, trial=info.number,
                trial_state=info.state, requested_state=requested, param=param,
            )
        return Target()  # GetAllStudies

    def _refuse(
        self,
        context: grpc.ServicerContext,
        code: grpc.StatusCode,
        method: str,
        reason: str,
        message: str,
        claims: TokenClaims | None,
    ) -> NoReturn:
        metrics.REFUSALS.labels(method, reason).inc()
        log.warning(
            "gateway.refused",
            method=method,
            code=code.name,
            reason=reason,
            detail=message,
            peer=context.peer(),
            namespace=claims.namespace if claims else None,
            study=claims.study if claims else None,
            trial=claims.trial if claims else None,
        )
        context.abort(code, message)
        raise AssertionError("context.abort raises")


def _report_calls(request: Any) -> tuple[tuple[str, Any], ...]:
    write, read = report_parts(request)
    return (("SetTrialIntermediateValue", write), ("GetTrials", read))


def _bearer(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    raise TokenRefused("no token: send metadata 'authorization: Bearer <token>'")


def _context_code(context: grpc.ServicerContext) -> grpc.StatusCode:
    code = getattr(context, "code", lambda: None)()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def open_backend(settings: GatewaySettings) -> RDBStorage:
    """Optuna's storage over a bounded pool: never more than ``pool_size`` connections.

    Not wrapped in Optuna's ``_CachedStorage``: its one lock for all studies is held across
    database round trips (every read of trials, every parameter), which serialised the whole
    gateway; reads of trials are served from ``snapshots.StudySnapshots`` instead.
    """
    engine_kwargs = {
        "pool_size": settings.pool_size,
        "max_overflow": 0,
        "pool_pre_ping": True,
        "pool_timeout": 30,
    }
    return RDBStorage(settings.connection_url, engine_kwargs=engine_kwargs)


class GatewayServer:
    """The gRPC server (TLS only) and its HTTP side port (/healthz, /readyz, /metrics)."""

    def __init__(self, settings: GatewaySettings, keys: TokenKeys | None = None) -> None:
        self.settings = settings
        self._keys = keys or TokenKeys.from_file(settings.token_keys)
        self._server: grpc.Server | None = None
        self._health: HealthServer | None = None
        self._engine: sqlalchemy.Engine | None = None
        self._reports: ReportBatcher | None = None

    def start(self) -> int:
        """Serve; returns the bound gRPC port. Raises OSError when the address cannot be bound."""
        settings = self.settings
        credentials = grpc.ssl_server_credentials(
            [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
        )
        database = open_backend(settings)
        self._engine = database.engine
        self._reports = ReportBatcher(database)
        snapshots = StudySnapshots(database)
        directory = Directory(self._engine, snapshot_state=snapshots.state)
        interceptor = GatewayInterceptor(self._keys, directory, settings.max_in_flight)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.max_in_flight * 2, thread_name_prefix="gateway"),
            interceptors=[interceptor],
            # beyond this gRPC itself answers RESOURCE_EXHAUSTED: the queue is bounded too
            maximum_concurrent_rpcs=settings.max_in_flight * 4,
            options=[
                ("grpc.so_reuseport", 0),  # a second gateway on the same port fails, loudly
                # workers ping every 30 s during calls (trial_worker/gateway.py): allow it
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                ("grpc.http2.max_ping_strikes", 0),
            ],
        )
        servicer = GatewayServicer(database, snapshots, self._reports)
        api_pb2_grpc.add_StorageServiceServicer_to_server(servicer, server)
        server.add_generic_rpc_handlers((report_handler(servicer.Report),))
        port = server.add_secure_port(settings.listen, credentials)
        if port == 0:
            raise OSError(f"cannot listen on {settings.listen}")
        server.start()
        self._server = server
        if settings.http_port:
            host = settings.listen.rpartition(":")[0].strip("[]")
            self._health = HealthServer(host, settings.http_port, settings.connection_url)
            self._health.start()
        log.info(
            "gateway.started",
            listen=settings.listen,
            port=port,
            http_port=settings.http_port,
            pool_size=settings.pool_size,
            max_in_flight=settings.max_in_flight,
        )
        return port

    def wait(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout) if self._server is not None else True

    def stop(self, grace: float | None = 5.0) -> None:
        """Finish the calls in flight (up to ``grace`` seconds), then close everything."""
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        if self._reports is not None:
            self._reports.stop()
            self._reports = None
        if self._health is not None:
            self._health.stop()
            self._health = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        log.info("gateway.stopped")
