"""1,000 trial workers at once: through one gateway replica, and straight to PostgreSQL.

    .venv/bin/python -m bench.gateway_scale [--workers 1000] [--studies 50] [--seconds 60]

Each simulated trial worker does what a trial pod does once a second: report an intermediate
value and ask ``should_prune`` (Optuna's MedianPruner), and tells its trial at the end; then it
takes the next trial.

Through the gateway, a worker is by default a light client: it makes exactly the RPCs Optuna's
``GrpcStorageProxy`` makes for ``load_study`` + ``optuna.Trial`` + report/should_prune/tell
(GetStudyIdFromName, GetStudyDirections, GetTrialIdFromStudyIdTrialNumber, GetTrial; per step
one message on tunefleet's Reports stream with the client cache's included_trial_ids and
trial_id_greater_than, as ``GatewayStorage`` sends it; with ``--reports unary`` one Report call
instead, with ``--reports separate`` Optuna's SetTrialIntermediateValue then GetTrials; several
values run the gateway once for each, one after the other; SetTrialStateValues at the end), on
an asyncio channel opened as ``trial_worker.gateway.GatewayStorage`` opens its own (TLS with the
CA, the same channel options and gRPC retry policy, the bearer token, the same retries of shed
calls, a new stream after one ended), and computes the median of
the completed trials at that step from the reply's protobuf. It skips only the client-side
decoding of every trial into ``FrozenTrial``s (strptime, json), which on 2 shared cores with
1,000 workers would cost more CPU than the gateway itself and so measure the load generator;
a real trial pod pays it on its own CPU. ``--optuna-clients`` runs real ``optuna.Trial`` objects
instead. The direct run always uses a real ``RDBStorage`` per worker, as trial pods did.

Trials are created RUNNING, one insert each, over one direct connection per load process (never
counted as a worker's; see ``TrialSource``), and each worker's trial has its own token. The
light workers are asyncio tasks (``--optuna-clients`` and the direct run: threads) in several
processes, spread over ``--studies`` studies (a shared fleet: many teams, each a study of
modest parallelism).

Two runs, one after the other, against one real PostgreSQL (``max_connections`` at its default,
100):
- gateway: every worker talks to one ``tunefleet gateway`` replica (TLS, tokens, a pool of
  ``--pool`` connections);
- direct: every worker opens its own connection, as trial pods did before the gateway.

Printed per run: p50/p99 latency of report, should_prune, step (the two together) and tell
(seconds of the worker's call, retries included), errors by kind, the calls served, the
gateway's CPU seconds per call (its process only; the load generators and PostgreSQL share the
same 2 cores), and the most connections ``pg_stat_activity`` showed; for the direct run, what
PostgreSQL answered the connections it refused.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.controller_scale import (  # noqa: E402  (the same figures, one definition)
    _cpu_seconds,
    _percentile,
    _postgres_cpu_seconds,
)
from bench.gateway_load import OPERATIONS, STEPS, LoadPlan, LoadResult, run_load  # noqa: E402


class ConnectionWatch:
    """The most connections PostgreSQL showed to the benchmark's database, sampled 4x a second."""

    def __init__(self, db_url: str) -> None:
        import sqlalchemy

        self._engine = sqlalchemy.create_engine(db_url, pool_size=1, max_overflow=0)
        self._connection = self._engine.connect()  # held from the start: counted, and never refused
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        import sqlalchemy

        query = sqlalchemy.text(
            "select count(*) from pg_stat_activity"
            " where datname = current_database() and pid <> pg_backend_pid()"
        )
        while not self._stop.wait(0.25):
            self.most = max(self.most, int(self._connection.execute(query).scalar_one()))
            self._connection.rollback()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self._connection.close()
        self._engine.dispose()
        return self.most


def _merge(results: list[LoadResult]) -> LoadResult:
    merged = LoadResult()
    for result in results:
        for op in OPERATIONS:
            merged.latencies[op].extend(result.latencies[op])
        merged.errors.update(result.errors)
        merged.retried.update(result.retried)
        merged.trials_told += result.trials_told
        merged.cpu_s += result.cpu_s
    return merged


def _gateway_calls(http_port: int) -> collections.Counter[str]:
    """What the gateway's Prometheus metrics count: calls by gRPC status code (served: OK, shed:
    RESOURCE_EXHAUSTED, refused), and per method the calls and seconds spent inside the gateway
    (``seconds:<method>``, ``count:<method>``, in microseconds and calls)."""
    import re
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read().decode()
    calls: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        value = float(line.rsplit(" ", 1)[-1]) if line and not line.startswith("#") else 0.0
        method = re.search(r'method="([A-Za-z]+)"', line)
        if line.startswith("tunefleet_gateway_calls_total{"):
            code = re.search(r'code="([A-Z_]+)"', line)
            calls[code.group(1) if code else "?"] += int(value)
        elif line.startswith("tunefleet_gateway_call_seconds_sum{") and method:
            calls[f"seconds:{method.group(1)}"] += int(value * 1e6)
        elif line.startswith("tunefleet_gateway_call_seconds_count{") and method:
            calls[f"count:{method.group(1)}"] += int(value)
        elif line.startswith("tunefleet_gateway_call_seconds_bucket{") and method:
            bound = re.search(r'le="([^"]+)"', line)
            calls[f"bucket:{method.group(1)}:{bound.group(1) if bound else '+Inf'}"] += int(value)
    return calls


def _inside_p99(counted: collections.Counter[str], method: str) -> str:
    """The histogram bucket that holds the 99th percentile of the time a call spent inside the
    gateway (an upper bound: the buckets are coarse), to tell the gateway's tail from the rest
    of the path (the network, TLS, the load processes' own scheduling)."""
    total = counted[f"count:{method}"]
    bounds = sorted(
        (float(key.rsplit(":", 1)[1]), counted[key])
        for key in counted
        if key.startswith(f"bucket:{method}:")
    )
    for bound, cumulative in bounds:
        if cumulative >= 0.99 * total:
            return "over 5 s" if bound == float("inf") else f"<= {1000 * bound:g} ms"
    return "?"


def run_mode(mode: str, args: argparse.Namespace, db_url: str, studies: list[str],
             gateway: Any = None, pg_data: Path | None = None,
             reports: str = "stream") -> tuple[LoadResult, int, str]:
    plans = [
        LoadPlan(
            mode=mode,
            studies=studies[i::args.processes],
            workers=args.workers // args.processes + (1 if i < args.workers % args.processes else 0),
            seconds=args.seconds,
            db_url=db_url,
            gateway_url=gateway.url if gateway else "",
            ca_pem=gateway.ca_pem if gateway else "",
            key_file=str(gateway.key_file) if gateway else "",
            seed=i,
            optuna_clients=args.optuna_clients,
            reports=reports,
            steps=args.steps,
        )
        for i in range(args.processes)
    ]
    watch = ConnectionWatch(db_url)
    pg_before = _postgres_cpu_seconds(pg_data)
    wall_before = time.monotonic()
    cpu_before = _cpu_seconds(gateway.process.pid) if gateway else 0.0
    calls_before = _gateway_calls(gateway.http_port) if gateway else collections.Counter()
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        results = pool.map(run_load, plans)
    most = watch.stop()
    wall = time.monotonic() - wall_before
    pg_after = _postgres_cpu_seconds(pg_data)
    merged = _merge(results)
    lines = []
    if gateway:
        cpu = _cpu_seconds(gateway.process.pid) - cpu_before
        counted = _gateway_calls(gateway.http_port) - calls_before
        by_code = {k: v for k, v in counted.items() if ":" not in k}
        calls = sum(by_code.values())
        per_call = 1000 * cpu / max(calls, 1)
        codes = ", ".join(f"{code} {count}" for code, count in sorted(by_code.items(), key=lambda i: -i[1]))
        lines.append(
            f"gateway: {calls} calls ({calls / wall:.0f}/s; {codes}), {cpu:.1f} CPU s "
            f"({cpu / wall:.2f} cores), {per_call:.2f} ms CPU per call"
        )
        inside = sorted(
            (k.split(":", 1)[1], counted[k] / 1000 / max(counted[f"count:{k.split(':', 1)[1]}"], 1))
            for k in counted
            if k.startswith("seconds:")
        )
        lines.append("mean ms inside the gateway: " + ", ".join(f"{m} {ms:.1f}" for m, ms in inside))
        lines.append("p99 inside the gateway: " + ", ".join(
            f"{m} {_inside_p99(counted, m)}" for m, _ in inside
        ))
    # Where the machine's 2 cores went: a figure near os.cpu_count() in all means it was saturated.
    lines.append(f"load processes: {merged.cpu_s:.1f} CPU s ({merged.cpu_s / wall:.2f} cores)")
    if pg_before is not None and pg_after is not None:
        pg = pg_after - pg_before
        lines.append(f"PostgreSQL: {pg:.1f} CPU s ({pg / wall:.2f} cores)")
    return merged, most, "\n  ".join(lines)


def _print(mode: str, result: LoadResult, most: int, summary: str) -> None:
    print(f"\n== {mode}: {result.trials_told} trials told")
    print(f"  {'operation':<13} {'calls':>7} {'p50 ms':>9} {'p99 ms':>9}")
    for op in OPERATIONS:
        values = result.latencies[op]
        print(f"  {op:<13} {len(values):>7} {1000 * _percentile(values, 0.5):>9.1f} "
              f"{1000 * _percentile(values, 0.99):>9.1f}")
    print(f"  most PostgreSQL connections seen: {most}")
    if summary:
        print(f"  {summary}")
    if result.retried:
        retried = ", ".join(f"{kind} {count}" for kind, count in result.retried.most_common(6))
        print(f"  calls retried by the worker (after gRPC's own retries): {retried}")
    errors = sum(result.errors.values())
    print(f"  errors: {errors}")
    for kind, count in result.errors.most_common(6):
        print(f"    {count:>6}  {kind}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--pool", type=int, default=20, help="the gateway's PostgreSQL pool")
    parser.add_argument("--steps", type=int, default=STEPS,
                        help="reports per trial (one a second) unless pruned: fewer means more trials "
                        "starting and ending each second")
    parser.add_argument("--max-in-flight", type=int, default=None,
                        help="the gateway's max_in_flight (its worker threads); default: the gateway's")
    parser.add_argument("--optuna-clients", action="store_true",
                        help="gateway workers run real optuna.Trial objects (client CPU included)")
    parser.add_argument("--reports", nargs="+", default=["stream"], choices=["stream", "unary", "separate"],
                        help="how light workers report each step: tunefleet's Reports stream (what "
                        "trial pods do), one Report call each, or Optuna's two calls; several: one "
                        "gateway run each")
    parser.add_argument("--modes", nargs="+", default=["gateway", "direct"], choices=["gateway", "direct"])
    args = parser.parse_args()
    if args.processes < 1 or args.workers < args.processes or args.studies < args.processes:
        parser.error("--processes must be at least 1, and --workers and --studies at least --processes "
                     "(each load process runs workers of studies of its own)")
    if args.seconds <= 0 or args.pool < 1:
        parser.error("--seconds must be above 0 and --pool at least 1")
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.max_in_flight is not None and args.max_in_flight < 1:
        parser.error("--max-in-flight must be at least 1")

    import optuna

    from tests.support.gateway import running_gateway
    from tests.support.postgres import remove_server, start_server

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    server = start_server()
    try:
        server.max_connections = 100  # PostgreSQL's default, not the tests' 300
        server.stop()
        server.start()
        db_url = server.create_database()
        storage = optuna.storages.RDBStorage(db_url)
        studies = [f"team-{i}/study/{i:04d}" for i in range(args.studies)]
        for name in studies:
            optuna.create_study(study_name=name, storage=storage, direction="maximize")
        storage.engine.dispose()
        print(f"{args.workers} workers in {args.processes} processes, {args.studies} studies, "
              f"{args.seconds:.0f} s per run, one report + should_prune per worker per second, "
              f"trials of up to {args.steps} steps")
        for mode in args.modes:
            if mode == "gateway":
                for reports in args.reports:
                    with tempfile.TemporaryDirectory() as tmp, running_gateway(
                        db_url, None, Path(tmp), pool_size=args.pool, max_in_flight=args.max_in_flight
                    ) as gateway:
                        result, most, summary = run_mode(
                            mode, args, db_url, studies, gateway, server.data_dir, reports
                        )
                    _print(f"gateway, reports: {reports}" if len(args.reports) > 1 else mode,
                           result, most, summary)
            else:
                result, most, summary = run_mode(mode, args, db_url, studies, pg_data=server.data_dir)
                _print(mode, result, most, summary)
    finally:
        remove_server(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
