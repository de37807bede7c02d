"""The trial gateway: Optuna's gRPC storage servicer behind per-trial tokens, TLS and a bounded pool.

Trial workers talk Optuna's own storage protocol (``GrpcStorageProxy``), so an unchanged objective
gets a real ``optuna.Trial``; their reports go on one ``Reports`` stream per trial
(``report_stream.py``). What is ours is in front of the servicer: the interceptor runs the
``gate`` (token, what the call touches, the token's rules) and sheds load beyond
``max_in_flight`` x ``QUEUED_PER_SLOT`` admitted calls with ``RESOURCE_EXHAUSTED`` and a
retry-after instead of queueing without bound. The server is gRPC's asyncio server: calls arrive
on its event loop and are served on ``max_in_flight`` worker threads (Optuna's servicer and the
database are synchronous). The database sees at most ``pool_size`` connections per replica (plus
one short-lived for /readyz), however many trials run.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Awaitable, Callable
from concurrent import futures
from typing import Any

import grpc
import sqlalchemy
import structlog
from optuna.storages import RDBStorage
from optuna.storages._grpc.auto_generated import api_pb2_grpc

from controller.gateway import metrics
from controller.gateway.directory import Directory
from controller.gateway.gate import CallEnded, Gate, bearer, shed
from controller.gateway.health import HealthServer
from controller.gateway.report_stream import ReportStream
from controller.gateway.reports import ReportBatcher
from controller.gateway.servicer import GatewayServicer
from controller.gateway.settings import GatewaySettings
from controller.gateway.snapshots import StudySnapshots
from controller.gateway.tokens import TokenKeys
from trial_worker.gateway_protocol import REPORTS, report_handler, reports_handler

log = structlog.get_logger("tunefleet.gateway")

RETRY_AFTER_MS = 100  # the least a shed client waits; jitter spreads the retries
QUEUED_PER_SLOT = 4  # admitted calls (served or waiting for a thread) per slot; beyond: shed

Behavior = Callable[[Any, Any], Any]


class GatewayInterceptor(grpc.aio.ServerInterceptor):
    """Admission (load shedding), the gate, metrics, for every unary storage call."""

    def __init__(self, gate: Gate, threads: futures.Executor, max_in_flight: int) -> None:
        self._gate = gate
        self._threads = threads
        self._most_admitted = max_in_flight * QUEUED_PER_SLOT
        self._admitted = 0  # touched on the event loop only

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method.rsplit("/", 1)[-1]
        if handler is not None and handler.stream_stream is not None and method == REPORTS:
            return handler  # checks each report it carries (report_stream.py)
        if handler is None or handler.unary_unary is None:
            return None  # every Optuna storage call is unary; anything else is UNIMPLEMENTED
        inner: Behavior = handler.unary_unary

        async def behavior(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return await self._serve(method, inner, request, context)

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    async def _serve(
        self, method: str, inner: Behavior, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        with metrics.counted(method) as outcome:
            if self._admitted >= self._most_admitted:
                outcome.code = grpc.StatusCode.RESOURCE_EXHAUSTED
                wait_ms = RETRY_AFTER_MS + random.randrange(RETRY_AFTER_MS)
                busy = f"gateway busy: {self._admitted} calls admitted; retry after {wait_ms} ms"
                await shed(context, wait_ms, busy)
            self._admitted += 1
            metrics.IN_FLIGHT.inc()
            try:
                token, peer = bearer(context.invocation_metadata()), str(context.peer())
                return await asyncio.get_running_loop().run_in_executor(
                    self._threads, self._gate.serve, method, request, token, peer, inner
                )
            except CallEnded as ended:
                outcome.code = ended.code
                await context.abort(ended.code, ended.details)
            finally:
                self._admitted -= 1
                metrics.IN_FLIGHT.dec()


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
    """The gRPC server (TLS only, on its own event loop thread) and its HTTP side port
    (/healthz, /readyz, /metrics)."""

    def __init__(self, settings: GatewaySettings, keys: TokenKeys | None = None) -> None:
        self.settings = settings
        self._keys = keys or TokenKeys.from_file(settings.token_keys)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None
        self._threads: futures.ThreadPoolExecutor | None = None
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
        self._reports = reports = ReportBatcher(database)
        snapshots = StudySnapshots(database)
        gate = Gate(self._keys, Directory(self._engine, snapshot_state=snapshots.state))
        servicer = GatewayServicer(database, snapshots, self._reports)
        self._threads = futures.ThreadPoolExecutor(
            max_workers=settings.max_in_flight, thread_name_prefix="gateway"
        )
        threads = self._threads
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._loop_thread = threading.Thread(target=loop.run_forever, name="gateway-grpc", daemon=True)
        self._loop_thread.start()

        async def serve() -> int:
            server = grpc.aio.server(
                interceptors=[GatewayInterceptor(gate, threads, settings.max_in_flight)],
                options=[
                    ("grpc.so_reuseport", 0),  # a second gateway on the same port fails, loudly
                    # workers ping every 30 s during calls (trial_worker/gateway.py): allow it
                    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                    ("grpc.http2.max_ping_strikes", 0),
                ],
            )
            api_pb2_grpc.add_StorageServiceServicer_to_server(servicer, server)
            server.add_generic_rpc_handlers((
                report_handler(servicer.Report),
                reports_handler(
                    ReportStream(gate, servicer, reports, snapshots, threads, settings.max_streams).serve
                ),
            ))
            try:
                port = server.add_secure_port(settings.listen, credentials)
            except RuntimeError:  # grpc raises where older versions returned 0
                port = 0
            if port == 0:
                raise OSError(f"cannot listen on {settings.listen}")
            await server.start()
            self._server = server
            return port

        port = asyncio.run_coroutine_threadsafe(serve(), loop).result()
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
            max_streams=settings.max_streams,
        )
        return port

    def stop(self, grace: float | None = 5.0) -> None:
        """Finish the calls in flight (up to ``grace`` seconds), then close everything."""
        if self._loop is not None:
            if self._server is not None:
                server = self._server
                asyncio.run_coroutine_threadsafe(server.stop(grace), self._loop).result()
                self._server = None
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(timeout=10)
                self._loop_thread = None
            self._loop.close()
            self._loop = None
        if self._threads is not None:
            self._threads.shutdown(wait=True)
            self._threads = None
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
