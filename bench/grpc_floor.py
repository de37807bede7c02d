"""gRPC Python's own cost per call on this machine: the floor under the trial gateway's figures.

    .venv/bin/python -m bench.grpc_floor [--calls 10000] [--channels 100]

A server whose one method does nothing (it reads the call's metadata, as the gateway reads the
token, and answers a fixed ``GetStudyDirectionsReply``), over TLS with a certificate like the
chart's, once as gRPC's threaded server and once on ``grpc.aio`` (what ``tunefleet gateway``
runs); the client is ``grpc.aio`` with ``--channels`` channels, each making calls one after
another, as ``bench/gateway_scale.py``'s workers do. Then the same messages on one open stream
per channel (``aio-stream``: each message written, then its answer read, as a trial sends its
reports on ``Reports``). Printed per server: calls (or messages) a second, and CPU milliseconds
per call of the server process and of the client process. Whatever the gateway spends per call
beyond the server's figure is its own work.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from concurrent import futures
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

METHOD = "GetStudyDirections"
KINDS = ("threaded", "aio", "aio-stream")


def _handler(behavior: Any) -> Any:
    import grpc
    from optuna.storages._grpc.auto_generated import api_pb2

    return grpc.method_handlers_generic_handler("optuna.StorageService", {
        METHOD: grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=api_pb2.GetStudyDirectionsRequest.FromString,
            response_serializer=api_pb2.GetStudyDirectionsReply.SerializeToString,
        )
    })


def _threaded_server(port: int, key_pem: bytes, cert_pem: bytes, ready: Queue[int]) -> None:
    import grpc
    from optuna.storages._grpc.auto_generated import api_pb2

    reply = api_pb2.GetStudyDirectionsReply(directions=[api_pb2.MAXIMIZE])

    def behavior(_request: Any, context: grpc.ServicerContext) -> Any:
        dict(context.invocation_metadata())
        return reply

    server = grpc.server(futures.ThreadPoolExecutor(128), handlers=[_handler(behavior)])
    server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    server.start()
    ready.put(1)
    server.wait_for_termination()


def _aio_server(port: int, key_pem: bytes, cert_pem: bytes, ready: Queue[int], streaming: bool) -> None:
    """The asyncio server: a unary method, or (``streaming``) a stream answering each message."""
    import grpc
    from optuna.storages._grpc.auto_generated import api_pb2

    reply = api_pb2.GetStudyDirectionsReply(directions=[api_pb2.MAXIMIZE])

    async def unary(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        dict(context.invocation_metadata() or ())
        return reply

    async def stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        dict(context.invocation_metadata() or ())
        async for _request in requests:
            yield reply

    handler = _handler(unary) if not streaming else grpc.method_handlers_generic_handler(
        "optuna.StorageService", {
            METHOD: grpc.stream_stream_rpc_method_handler(
                stream,
                request_deserializer=api_pb2.GetStudyDirectionsRequest.FromString,
                response_serializer=api_pb2.GetStudyDirectionsReply.SerializeToString,
            )
        }
    )

    async def serve() -> None:
        server = grpc.aio.server(handlers=[handler])
        server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials([(key_pem, cert_pem)]))
        await server.start()
        ready.put(1)
        await server.wait_for_termination()

    asyncio.run(serve())


def _stream_client(
    port: int, ca_pem: bytes, channels: int, calls_each: int, done: Queue[tuple[float, float]]
) -> None:
    import grpc
    from optuna.storages._grpc.auto_generated import api_pb2

    async def run() -> None:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
        metadata = (("authorization", "Bearer " + "x" * 200),)
        request = api_pb2.GetStudyDirectionsRequest(study_id=1)
        streams = []
        for _ in range(channels):  # each stream open (its first answer read) before the clock starts
            channel = grpc.aio.secure_channel(f"localhost:{port}", credentials)
            stream = channel.stream_stream(
                f"/optuna.StorageService/{METHOD}",
                request_serializer=api_pb2.GetStudyDirectionsRequest.SerializeToString,
                response_deserializer=api_pb2.GetStudyDirectionsReply.FromString,
            )(metadata=metadata)
            await stream.write(request)
            await stream.read()
            streams.append(stream)
        cpu, wall = time.process_time(), time.monotonic()

        async def messages(stream: Any) -> None:
            for _ in range(calls_each):
                await stream.write(request)
                await stream.read()

        await asyncio.gather(*(messages(stream) for stream in streams))
        done.put((time.process_time() - cpu, time.monotonic() - wall))
        for stream in streams:
            await stream.done_writing()

    asyncio.run(run())


def _client(
    port: int, ca_pem: bytes, channels: int, calls_each: int, done: Queue[tuple[float, float]]
) -> None:
    import grpc
    from optuna.storages._grpc.auto_generated import api_pb2, api_pb2_grpc

    async def run() -> None:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
        stubs = [
            api_pb2_grpc.StorageServiceStub(grpc.aio.secure_channel(f"localhost:{port}", credentials))
            for _ in range(channels)
        ]
        metadata = (("authorization", "Bearer " + "x" * 200),)  # about a trial token's size
        request = api_pb2.GetStudyDirectionsRequest(study_id=1)
        for stub in stubs:  # connected (TLS done) before the clock starts
            await stub.GetStudyDirections(request, metadata=metadata)
        cpu, wall = time.process_time(), time.monotonic()

        async def calls(stub: Any) -> None:
            for _ in range(calls_each):
                await stub.GetStudyDirections(request, metadata=metadata)

        await asyncio.gather(*(calls(stub) for stub in stubs))
        done.put((time.process_time() - cpu, time.monotonic() - wall))

    asyncio.run(run())


def _process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(kind: str, calls: int, channels: int) -> str:
    from tests.support.gateway import make_certificates

    certificates = make_certificates()
    context = multiprocessing.get_context("spawn")
    ready: Queue[int] = context.Queue()
    done: Queue[tuple[float, float]] = context.Queue()
    port = 47000 + os.getpid() % 1000 + KINDS.index(kind)
    args = (port, certificates.key_pem, certificates.cert_pem, ready)
    server = (
        context.Process(target=_threaded_server, args=args)
        if kind == "threaded"
        else context.Process(target=_aio_server, args=(*args, kind == "aio-stream"))
    )
    server.start()
    try:
        ready.get(timeout=30)
        cpu_before = _process_cpu_s(server.pid or 0)
        calls_each = max(1, calls // channels)
        client = context.Process(
            target=_stream_client if kind == "aio-stream" else _client,
            args=(port, certificates.ca_pem, channels, calls_each, done),
        )
        client.start()
        client_cpu, wall = done.get(timeout=600)
        client.join()
        server_cpu = _process_cpu_s(server.pid or 0) - cpu_before
    finally:
        server.kill()
        server.join()
    made = calls_each * channels
    return (
        f"{kind:>10}: {made} calls in {wall:.1f} s = {made / wall:.0f}/s; server "
        f"{1000 * server_cpu / made:.3f} ms CPU per call, client {1000 * client_cpu / made:.3f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=100)
    args = parser.parse_args()
    if args.calls < 1 or args.channels < 1:
        parser.error("--calls and --channels must be at least 1")
    print(f"{args.calls} calls over {args.channels} TLS channels, a handler that does nothing")
    for kind in KINDS:
        print(measure(kind, args.calls, args.channels), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
