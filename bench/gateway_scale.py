"""1,000 trial workers at once: through one gateway replica, and straight to PostgreSQL.

    .venv/bin/python -m bench.gateway_scale [--workers 1000] [--studies 50] [--seconds 60]

Each simulated trial worker does what a trial pod does once a second: report an intermediate
value and ask ``should_prune`` (Optuna's MedianPruner), and tells its trial at the end; then it
takes the next trial.

Through the gateway, a worker is by default a light client: it makes exactly the RPCs Optuna's
``GrpcStorageProxy`` makes for ``load_study`` + ``optuna.Trial`` + report/should_prune/tell
(GetStudyIdFromName, GetStudyDirections, GetTrialIdFromStudyIdTrialNumber, GetTrial; per step
tunefleet's Report with the client cache's included_trial_ids and trial_id_greater_than, or with
``--separate-calls`` Optuna's SetTrialIntermediateValue then GetTrials; SetTrialStateValues at
the end), on an asyncio channel opened as
``trial_worker.gateway.GatewayStorage`` opens its own (TLS with the CA, the same channel options
and gRPC retry policy, the bearer token, the same retries of shed calls), and computes the median of
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
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.controller_scale import (  # noqa: E402  (the same figures, one definition)
    _cpu_seconds,
    _percentile,
    _postgres_cpu_seconds,
)

STEPS = 12  # intermediate values per trial: a trial lasts ~12 s
# "step": report + should_prune, what a trial waits for each step (with tunefleet's Report call,
# the should_prune needs no call of its own, so "step" is the figure to compare across protocols)
OPERATIONS = ("report", "should_prune", "step", "tell")


@dataclass
class LoadPlan:
    """What one load process runs."""

    mode: str  # "gateway" or "direct"
    studies: list[str]
    workers: int
    seconds: float
    db_url: str
    gateway_url: str = ""
    ca_pem: str = ""
    key_file: str = ""
    seed: int = 0
    optuna_clients: bool = False
    separate_calls: bool = False  # Optuna's two calls per step instead of tunefleet's Report


@dataclass
class LoadResult:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPERATIONS})
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    retried: collections.Counter[str] = field(default_factory=collections.Counter)  # by operation, code
    trials_told: int = 0
    cpu_s: float = 0.0  # the load process's own CPU (its client threads and the trials it asked)


def _error_kind(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            return f"grpc {code().name}"
        except Exception:  # noqa: BLE001 - a code() that fails still names the exception
            pass
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "too many clients" in text or "remaining connection slots" in text:
        return "postgres: " + text.split("FATAL:")[-1].strip()[:90]
    return f"{type(exc).__name__}: {text[:90]}"


# -- one load process ----------------------------------------------------------------------------


class TrialSource:
    """New RUNNING trials, as the controller creates them: one direct connection per load process.

    The controller asks a trial before it creates the trial's Job, so a trial exists in the
    database before its pod starts; here too trials are created ahead, ``AHEAD`` per study at a
    time by one INSERT, and handed out as workers need them. Not ``Study.ask`` (which reads every
    trial of the study through the ORM), nor one ORM insert per trial: when a wave of trials ends
    together (they all start in the first second), creating the next ones one by one held the
    load process's interpreter for hundreds of milliseconds, and every report that process had
    in flight was measured that much slower. That is the controller's work, on the controller's
    cores in a cluster. Each study is created from by one load process only, so numbers count up
    from the study's highest, as Optuna numbers them.
    """

    AHEAD = 8

    def __init__(self, plan: LoadPlan) -> None:
        import sqlalchemy
        from optuna.storages._rdb import models

        from controller.gateway.tokens import TokenKeys

        self._lock = threading.Lock()
        self._engine = sqlalchemy.create_engine(plan.db_url, pool_size=1, max_overflow=1)
        trials = models.TrialModel.__table__
        studies = models.StudyModel.__table__
        self._insert = trials.insert().returning(trials.c.number)
        self._ready: dict[str, collections.deque[int]] = {}
        self._next_number: dict[str, int] = {}
        self._study_ids: dict[str, int] = {}
        with self._engine.connect() as connection:
            for name in plan.studies:
                study_id = connection.execute(
                    sqlalchemy.select(studies.c.study_id).where(studies.c.study_name == name)
                ).scalar_one()
                highest = connection.execute(
                    sqlalchemy.select(sqlalchemy.func.max(trials.c.number))
                    .where(trials.c.study_id == study_id)
                ).scalar()
                self._study_ids[name] = study_id
                self._next_number[name] = -1 if highest is None else highest
                self._ready[name] = collections.deque()
        self._keys = TokenKeys.from_file(Path(plan.key_file)) if plan.key_file else None

    def next_trial(self, study_name: str) -> tuple[int, str]:
        """A RUNNING trial's number and (in gateway mode) its token."""
        from controller.gateway.tokens import TokenClaims

        with self._lock:
            ready = self._ready[study_name]
            if not ready:
                ready.extend(self._create(study_name, self.AHEAD))
            number = ready.popleft()
        token = ""
        if self._keys is not None:
            namespace = study_name.split("/", 1)[0]
            claims = TokenClaims(
                namespace=namespace, study=study_name, trial=number, expires=int(time.time()) + 3600
            )
            token = self._keys.mint(claims)
        return number, token

    def _create(self, study_name: str, count: int) -> list[int]:
        from optuna.trial import TrialState

        from trial_worker.trial_reads import stored_now

        first = self._next_number[study_name] + 1
        self._next_number[study_name] = first + count - 1
        now = stored_now()
        rows = [
            {"number": first + i, "study_id": self._study_ids[study_name], "state": TrialState.RUNNING,
             "datetime_start": now}
            for i in range(count)
        ]
        with self._engine.begin() as connection:
            return sorted(connection.execute(self._insert, rows).scalars().all())


def _client_storage(plan: LoadPlan, token: str) -> Any:
    if plan.mode == "gateway":
        from trial_worker.gateway import GatewayStorage

        return GatewayStorage.from_url(plan.gateway_url, token=token, ca_pem=plan.ca_pem)
    import optuna

    return optuna.storages.RDBStorage(plan.db_url, engine_kwargs={"pool_size": 1, "max_overflow": 1})


def _simulated_worker(plan: LoadPlan, source: TrialSource, index: int, deadline: float,
                      result: LoadResult, lock: threading.Lock) -> None:
    import optuna

    rng = random.Random(plan.seed * 100_000 + index)
    study_name = plan.studies[index % len(plan.studies)]
    time.sleep(rng.random())  # workers start spread over the first second, as pods do
    storage: Any = None
    while time.time() < deadline:
        try:
            number, token = source.next_trial(study_name)
            if plan.mode == "gateway" or storage is None:
                storage = _client_storage(plan, token)
            study = optuna.load_study(
                study_name=study_name, storage=storage, pruner=optuna.pruners.MedianPruner(n_startup_trials=3)
            )
            trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
            trial = optuna.Trial(study, trial_id)
            quality = rng.random()
            next_tick = time.time()
            for step in range(STEPS):
                next_tick += 1.0
                time.sleep(max(0.0, next_tick - time.time()))
                began = time.perf_counter()
                trial.report(quality * (step + 1) / STEPS, step)
                reported = time.perf_counter()
                pruned = trial.should_prune()
                asked = time.perf_counter()
                with lock:
                    result.latencies["report"].append(reported - began)
                    result.latencies["should_prune"].append(asked - reported)
                    result.latencies["step"].append(asked - began)
                if pruned or time.time() >= deadline:
                    break
            began = time.perf_counter()
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.COMPLETE, [quality])
            with lock:
                result.latencies["tell"].append(time.perf_counter() - began)
                result.trials_told += 1
        except Exception as exc:  # noqa: BLE001 - every failure is counted by kind, and the worker goes on
            with lock:
                result.errors[_error_kind(exc)] += 1
            storage = None
            time.sleep(1.0)


class _PruneCache:
    """What Optuna's GrpcClientCache keeps, reduced to what the MedianPruner reads."""

    def __init__(self) -> None:
        self.completed: dict[int, dict[int, float]] = {}  # trial number -> step -> value
        self.unfinished: set[int] = set()
        self.last_finished = -1

    def add(self, trials: Any) -> None:
        from optuna.storages._grpc.auto_generated import api_pb2

        for trial in trials:
            if trial.state in (api_pb2.RUNNING, api_pb2.WAITING):
                self.unfinished.add(trial.trial_id)
                continue
            self.last_finished = max(self.last_finished, trial.trial_id)
            self.unfinished.discard(trial.trial_id)
            if trial.state == api_pb2.COMPLETE:
                self.completed[trial.number] = dict(trial.intermediate_values)

    def should_prune(self, curve: dict[int, float], step: int) -> bool:
        """MedianPruner(n_startup_trials=3) for a maximized objective."""
        if len(self.completed) < 3:
            return False
        at_step = sorted(values[step] for values in self.completed.values() if step in values)
        if not at_step:
            return False
        middle = len(at_step) // 2
        median = at_step[middle] if len(at_step) % 2 else (at_step[middle - 1] + at_step[middle]) / 2
        return max(curve.values()) < median


class _AioTrialChannel:
    """One trial's channel to the gateway, as ``trial_worker.gateway.GatewayStorage`` opens it (TLS
    with the CA, the same channel options and gRPC retry policy, the token as call metadata, and
    the same retries of shed and unavailable calls), on asyncio: one load process runs hundreds
    of trials without a thread each."""

    def __init__(self, plan: LoadPlan, token: str, retried: collections.Counter[str]) -> None:
        import grpc
        from optuna.storages._grpc.auto_generated import api_pb2_grpc

        from trial_worker import gateway_protocol
        from trial_worker.gateway import channel_options, parse_gateway_url

        host, port = parse_gateway_url(plan.gateway_url)
        credentials = grpc.ssl_channel_credentials(root_certificates=plan.ca_pem.encode())
        self.channel = grpc.aio.secure_channel(f"{host}:{port}", credentials, options=channel_options())
        self.stub = api_pb2_grpc.StorageServiceStub(self.channel)
        self._methods = {gateway_protocol.REPORT: gateway_protocol.report_method(self.channel)}
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._retried = retried

    async def call(self, method: str, request: Any) -> Any:
        import asyncio

        import grpc

        from trial_worker.gateway import (
            ATTEMPT_TIMEOUT_S,
            DEFAULT_RETRY_BUDGET_S,
            FIRST_BACKOFF_S,
            RETRIED,
            next_backoff_s,
            retry_wait_s,
        )

        give_up_at = time.monotonic() + DEFAULT_RETRY_BUDGET_S
        delay = FIRST_BACKOFF_S
        while True:
            try:
                send = self._methods.get(method) or getattr(self.stub, method)
                return await send(request, metadata=self._metadata, timeout=ATTEMPT_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRIED:
                    raise
                self._retried[f"{method} {error.code().name}"] += 1
                wait = retry_wait_s(delay, tuple(error.trailing_metadata() or ()))
                if time.monotonic() + wait > give_up_at:
                    raise
                await asyncio.sleep(wait)
                delay = next_backoff_s(delay)


async def _light_worker(plan: LoadPlan, source: TrialSource, asker: Any, index: int, deadline: float,
                        result: LoadResult) -> None:
    import asyncio

    from optuna.storages._grpc.auto_generated import api_pb2

    from trial_worker.gateway_protocol import ReportRequest

    loop = asyncio.get_running_loop()
    rng = random.Random(plan.seed * 100_000 + index)
    study_name = plan.studies[index % len(plan.studies)]
    await asyncio.sleep(rng.random())  # workers start spread over the first second, as pods do
    while time.time() < deadline:
        trial_channel: _AioTrialChannel | None = None
        try:
            number, token = await loop.run_in_executor(asker, source.next_trial, study_name)
            trial_channel = _AioTrialChannel(plan, token, result.retried)
            call = trial_channel.call
            study_id = (await call("GetStudyIdFromName", api_pb2.GetStudyIdFromNameRequest(
                study_name=study_name
            ))).study_id
            await call("GetStudyDirections", api_pb2.GetStudyDirectionsRequest(study_id=study_id))
            trial_id = (await call("GetTrialIdFromStudyIdTrialNumber",
                                   api_pb2.GetTrialIdFromStudyIdTrialNumberRequest(
                                       study_id=study_id, trial_number=number))).trial_id
            await call("GetTrial", api_pb2.GetTrialRequest(trial_id=trial_id))
            cache, curve = _PruneCache(), {}
            quality = rng.random()
            next_tick = time.time()
            for step in range(STEPS):
                next_tick += 1.0
                await asyncio.sleep(max(0.0, next_tick - time.time()))
                began = time.perf_counter()
                curve[step] = quality * (step + 1) / STEPS
                if plan.separate_calls:  # Optuna's protocol: the report, then GetTrials
                    await call("SetTrialIntermediateValue", api_pb2.SetTrialIntermediateValueRequest(
                        trial_id=trial_id, step=step, intermediate_value=curve[step]
                    ))
                    reported = time.perf_counter()
                    cache.add((await call("GetTrials", api_pb2.GetTrialsRequest(
                        study_id=study_id, included_trial_ids=cache.unfinished,
                        trial_id_greater_than=cache.last_finished,
                    ))).trials)
                else:  # tunefleet's Report (what GatewayStorage sends): one call brings the trials
                    cache.add((await call("Report", ReportRequest(
                        study_id=study_id, trial_id=trial_id, step=step, intermediate_value=curve[step],
                        included_trial_ids=cache.unfinished, trial_id_greater_than=cache.last_finished,
                    ))).trials)
                    reported = time.perf_counter()
                pruned = cache.should_prune(curve, step)
                asked = time.perf_counter()
                result.latencies["report"].append(reported - began)
                result.latencies["should_prune"].append(asked - reported)
                result.latencies["step"].append(asked - began)
                if pruned or time.time() >= deadline:
                    break
            began = time.perf_counter()
            await call("SetTrialStateValues", api_pb2.SetTrialStateValuesRequest(
                trial_id=trial_id, state=api_pb2.COMPLETE, values=[quality]
            ))
            result.latencies["tell"].append(time.perf_counter() - began)
            result.trials_told += 1
        except Exception as exc:  # noqa: BLE001 - every failure is counted by kind, and the worker goes on
            result.errors[_error_kind(exc)] += 1
            await asyncio.sleep(1.0)
        finally:
            if trial_channel is not None:
                await trial_channel.channel.close()


async def _light_load(plan: LoadPlan, source: TrialSource, result: LoadResult) -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    deadline = time.time() + plan.seconds
    with ThreadPoolExecutor(1, thread_name_prefix="asks") as asker:  # the controller asks one at a time
        await asyncio.gather(*(
            _light_worker(plan, source, asker, i, deadline, result) for i in range(plan.workers)
        ))


def run_load(plan: LoadPlan) -> LoadResult:
    """One load process: ``plan.workers`` threads until ``plan.seconds`` have passed."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    source = TrialSource(plan)
    result, lock = LoadResult(), threading.Lock()
    deadline = time.time() + plan.seconds
    if plan.mode == "gateway" and not plan.optuna_clients:
        import asyncio

        asyncio.run(_light_load(plan, source, result))
        result.cpu_s = time.process_time()
        return result
    threads = [
        threading.Thread(
            target=_simulated_worker, args=(plan, source, i, deadline, result, lock), daemon=True
        )
        for i in range(plan.workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=plan.seconds + 120)
    result.cpu_s = time.process_time()
    return result


# -- the driver ----------------------------------------------------------------------------------


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
             gateway: Any = None, pg_data: Path | None = None) -> tuple[LoadResult, int, str]:
    per_process = args.workers // args.processes
    plans = [
        LoadPlan(
            mode=mode,
            studies=studies[i::args.processes],
            workers=per_process,
            seconds=args.seconds,
            db_url=db_url,
            gateway_url=gateway.url if gateway else "",
            ca_pem=gateway.ca_pem if gateway else "",
            key_file=str(gateway.key_file) if gateway else "",
            seed=i,
            optuna_clients=args.optuna_clients,
            separate_calls=args.separate_calls,
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
    parser.add_argument("--optuna-clients", action="store_true",
                        help="gateway workers run real optuna.Trial objects (client CPU included)")
    parser.add_argument("--separate-calls", action="store_true",
                        help="light workers make Optuna's two calls per step, not tunefleet's Report")
    parser.add_argument("--modes", nargs="+", default=["gateway", "direct"], choices=["gateway", "direct"])
    args = parser.parse_args()

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
              f"{args.seconds:.0f} s per run, one report + should_prune per worker per second")
        for mode in args.modes:
            if mode == "gateway":
                with tempfile.TemporaryDirectory() as tmp, running_gateway(
                    db_url, None, Path(tmp), pool_size=args.pool
                ) as gateway:
                    result, most, summary = run_mode(mode, args, db_url, studies, gateway, server.data_dir)
            else:
                result, most, summary = run_mode(mode, args, db_url, studies, pg_data=server.data_dir)
            _print(mode, result, most, summary)
    finally:
        remove_server(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
