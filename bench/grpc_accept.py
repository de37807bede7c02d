"""How fast gRPC's asyncio server takes new calls while its event loop is busy.

    .venv/bin/python -m bench.grpc_accept [--calls 300] [--turn-ms 0 4 8] [--methods 1 4]

``grpc.aio``'s server asks gRPC core for the next call of a method only once the previous one
was handed to its handler, and each hand-over takes several turns of the event loop. So the
rate at which it takes new calls of one method falls with the length of a turn, however little
each call costs. Here a server whose handler does nothing has its loop slowed by a callback that
keeps it busy for ``--turn-ms`` every turn (as a busy gateway's loop is: at 1,000 trials it was
busy 85% of the time); a client on ``--calls`` channels sends one call on each at once, spread
over ``--methods`` methods, and the time until the median and the last answer is printed, for
three bursts. This is why the trial gateway keeps a trial's reports and its tell on one stream
opened ahead of its first report (``controller/gateway/report_stream.py``): messages on an open
stream need no acceptance.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import time
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SERVICE = "bench.Accept"
BURSTS = 3


def _server(
    port: int, key_pem: bytes, cert_pem: bytes, methods: int, turn_s: float, ready: Queue[int]
) -> None:
    import grpc
    from optuna.storages._grpc.auto_generated import api_pb2

    reply = api_pb2.GetStudyDirectionsReply(directions=[api_pb2.MAXIMIZE])

    async def answer(_request: Any, _context: Any) -> Any:
        return reply

    handlers = {
        f"M{i}": grpc.unary_unary_rpc_method_handler(
            answer,
            request_deserializer=api_pb2.GetStudyDirectionsRequest.FromString,
            response_serializer=api_pb2.GetStudyDirectionsReply.SerializeToString,
        )
        for i in range(methods)
    }

    async def serve() -> None:
        server = grpc.aio.server()
        server.add_registered_method_handlers(SERVICE, handlers)  # as Optuna's servicer is added
        server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials([(key_pem, cert_pem)]))
        await server.start()
        loop = asyncio.get_running_loop()

        def busy_turn() -> None:
            began = time.perf_counter()
            while time.perf_counter() - began < turn_s:
                pass
            loop.call_soon(busy_turn)

        if turn_s > 0:
            loop.call_soon(busy_turn)
        ready.put(1)
        await server.wait_for_termination()

    asyncio.run(serve())


def _client(
    port: int, ca_pem: bytes, calls: int, methods: int, done: Queue[list[tuple[float, float]]]
) -> None:
    import grpc
    from optuna.storages._grpc.auto_generated import api_pb2

    async def run() -> None:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
        channels = [grpc.aio.secure_channel(f"localhost:{port}", credentials) for _ in range(calls)]
        senders = [
            channel.unary_unary(
                f"/{SERVICE}/M{i % methods}",
                request_serializer=api_pb2.GetStudyDirectionsRequest.SerializeToString,
                response_deserializer=api_pb2.GetStudyDirectionsReply.FromString,
            )
            for i, channel in enumerate(channels)
        ]
        request = api_pb2.GetStudyDirectionsRequest(study_id=1)
        await asyncio.gather(*(send(request) for send in senders))  # connections open, not timed
        results = []
        async def one(send: Any, began: float) -> float:
            await send(request)
            return time.monotonic() - began

        for _ in range(BURSTS):
            began = time.monotonic()
            waits = sorted(await asyncio.gather(*(one(send, began) for send in senders)))
            results.append((waits[len(waits) // 2], waits[-1]))
            await asyncio.sleep(0.5)
        done.put(results)

    asyncio.run(run())


def measure(calls: int, turn_ms: float, methods: int) -> str:
    from tests.support.gateway import free_port, make_certificates

    certificates = make_certificates()
    context = multiprocessing.get_context("spawn")
    ready: Queue[int] = context.Queue()
    done: Queue[list[tuple[float, float]]] = context.Queue()
    port = free_port()
    server = context.Process(
        target=_server,
        args=(port, certificates.key_pem, certificates.cert_pem, methods, turn_ms / 1000, ready),
    )
    server.start()
    try:
        ready.get(timeout=60)
        client = context.Process(target=_client, args=(port, certificates.ca_pem, calls, methods, done))
        client.start()
        results = done.get(timeout=600)
        client.join()
    finally:
        server.kill()
        server.join()
    bursts = ", ".join(f"{median * 1000:.0f} / {last * 1000:.0f} ms" for median, last in results)
    return f"  loop turn {turn_ms:g} ms, {methods} method(s): median / last answer per burst: {bursts}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=300, help="calls in a burst, one per channel")
    parser.add_argument("--turn-ms", type=float, nargs="+", default=[0.0, 4.0, 8.0],
                        help="how long each turn of the server's event loop is kept busy")
    parser.add_argument("--methods", type=int, nargs="+", default=[1, 4],
                        help="how many methods the burst is spread over")
    args = parser.parse_args()
    if args.calls < 1 or any(t < 0 for t in args.turn_ms) or any(m < 1 for m in args.methods):
        parser.error("--calls and --methods must be at least 1, --turn-ms not negative")
    print(f"{args.calls} calls at once on {args.calls} TLS channels, against grpc.aio's server "
          f"(pid {os.getpid()} runs the processes)", flush=True)
    for methods in args.methods:
        for turn_ms in args.turn_ms:
            print(measure(args.calls, turn_ms, methods), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
