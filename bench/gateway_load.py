"""One load process of ``bench/gateway_scale.py``: simulated trial workers and the trials they run.

A load process is given a ``LoadPlan`` (its studies, its share of the workers, the gateway or the
database to talk to) and returns a ``LoadResult`` (latencies per operation, errors, retries, its
own CPU). Through the gateway its workers are asyncio tasks on ``grpc.aio`` channels opened as
``trial_worker.gateway.GatewayStorage`` opens its own (``--optuna-clients``: threads running real
``optuna.Trial`` objects); straight to PostgreSQL, threads with an ``RDBStorage`` each. What each
worker does is described in ``bench/gateway_scale.py``.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

STEPS = 12  # intermediate values per trial by default: a trial lasts ~12 s (fewer when pruned)
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
    # per step: "stream" (tunefleet's Reports stream, what GatewayStorage sends), "unary" (one
    # Report call), "separate" (Optuna's two calls: SetTrialIntermediateValue, then GetTrials)
    reports: str = "stream"
    steps: int = STEPS  # a trial's intermediate values (seconds), unless pruned first


@dataclass
class LoadResult:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPERATIONS})
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    retried: collections.Counter[str] = field(default_factory=collections.Counter)  # by operation, code
    trials_told: int = 0
    cpu_s: float = 0.0  # the load process's own CPU (its client threads and the trials it asked)

    def add_step(self, began: float, reported: float, asked: float) -> None:
        """One step's latencies: the report, the ``should_prune`` after it, and both."""
        self.latencies["report"].append(reported - began)
        self.latencies["should_prune"].append(asked - reported)
        self.latencies["step"].append(asked - began)


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


def _close(storage: Any) -> None:
    """Close a worker's storage: its gRPC channel, or its database connections."""
    if storage is None:
        return
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()
    else:
        storage.close()


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
                _close(storage)  # a trial pod's connections end with it
                storage = _client_storage(plan, token)
            study = optuna.load_study(
                study_name=study_name, storage=storage, pruner=optuna.pruners.MedianPruner(n_startup_trials=3)
            )
            trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
            trial = optuna.Trial(study, trial_id)
            quality = rng.random()
            next_tick = time.time()
            for step in range(plan.steps):
                next_tick += 1.0
                time.sleep(max(0.0, next_tick - time.time()))
                began = time.perf_counter()
                trial.report(quality * (step + 1) / plan.steps, step)
                reported = time.perf_counter()
                pruned = trial.should_prune()
                asked = time.perf_counter()
                with lock:
                    result.add_step(began, reported, asked)
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
            _close(storage)  # the failed pod's connections are gone, not left to the collector
            storage = None
            time.sleep(1.0)
    _close(storage)


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
        self._stream: Any = None
        self._streaming = True
        self._answered = False  # a message on the open stream was answered

    def open_stream(self) -> None:
        """What ``GatewayStorage`` does once it knows its trial: open the ``Reports`` stream, so
        the gateway accepts it before the first report."""
        from trial_worker import gateway_protocol

        if self._streaming and self._stream is None:
            self._stream = gateway_protocol.reports_method(self.channel)(metadata=self._metadata)
            self._answered = False

    async def tell(self, message: Any) -> None:
        """What ``GatewayStorage.set_trial_state_values`` does: the tell (``message``, as
        ``gateway_protocol.tell_message`` builds it) on the stream when the gateway said it takes
        tells there, else (or when the stream ended) the unary call."""
        import grpc

        from trial_worker import gateway_protocol
        from trial_worker.gateway import RETRIED

        stream = self._stream if self._answered else None
        offered = tuple(await stream.initial_metadata() or ()) if stream is not None else ()
        if stream is not None and gateway_protocol.TELL_ON_STREAM in offered:
            try:
                await stream.write(message)
                if await stream.read() is not grpc.aio.EOF:
                    return
                self._retried["Reports EOF"] += 1
            except grpc.aio.AioRpcError as error:
                if error.code() not in RETRIED | {grpc.StatusCode.CANCELLED}:
                    raise
                self._retried[f"Reports {error.code().name}"] += 1
            self._stream = None
        await self.call("SetTrialStateValues", gateway_protocol.tell_part(message))

    async def report(self, request: Any) -> Any:
        """What ``GatewayStorage.set_trial_intermediate_value`` does: the report on the trial's
        ``Reports`` stream, the unary ``Report`` (with its retries) when the stream ended."""
        import grpc

        from trial_worker import gateway_protocol
        from trial_worker.gateway import RETRIED

        if self._streaming:
            try:
                if self._stream is None:
                    self._stream = gateway_protocol.reports_method(self.channel)(metadata=self._metadata)
                await self._stream.write(request)
                reply = await self._stream.read()
                if reply is not grpc.aio.EOF:
                    self._answered = True
                    return reply
                self._stream = None
                self._retried["Reports EOF"] += 1
            except grpc.aio.AioRpcError as error:
                self._stream = None
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    self._streaming = False
                elif error.code() in RETRIED | {grpc.StatusCode.CANCELLED}:
                    self._retried[f"Reports {error.code().name}"] += 1
                else:
                    raise
        return await self.call("Report", request)

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

    from trial_worker.gateway_protocol import ReportRequest, tell_message, tell_part

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
            if plan.reports == "stream":
                trial_channel.open_stream()
            await call("GetTrial", api_pb2.GetTrialRequest(trial_id=trial_id))
            cache, curve = _PruneCache(), {}
            quality = rng.random()
            next_tick = time.time()
            for step in range(plan.steps):
                next_tick += 1.0
                await asyncio.sleep(max(0.0, next_tick - time.time()))
                began = time.perf_counter()
                curve[step] = quality * (step + 1) / plan.steps
                if plan.reports == "separate":  # Optuna's protocol: the report, then GetTrials
                    await call("SetTrialIntermediateValue", api_pb2.SetTrialIntermediateValueRequest(
                        trial_id=trial_id, step=step, intermediate_value=curve[step]
                    ))
                    reported = time.perf_counter()
                    cache.add((await call("GetTrials", api_pb2.GetTrialsRequest(
                        study_id=study_id, included_trial_ids=cache.unfinished,
                        trial_id_greater_than=cache.last_finished,
                    ))).trials)
                else:  # tunefleet's report: one message (or call) brings the trials
                    request = ReportRequest(
                        study_id=study_id, trial_id=trial_id, step=step, intermediate_value=curve[step],
                        included_trial_ids=cache.unfinished, trial_id_greater_than=cache.last_finished,
                    )
                    send = trial_channel.report if plan.reports == "stream" else partial(call, "Report")
                    cache.add((await send(request)).trials)
                    reported = time.perf_counter()
                pruned = cache.should_prune(curve, step)
                asked = time.perf_counter()
                result.add_step(began, reported, asked)
                if pruned or time.time() >= deadline:
                    break
            began = time.perf_counter()
            tell = tell_message(study_id, trial_id, api_pb2.COMPLETE, [quality])
            if plan.reports == "stream":
                await trial_channel.tell(tell)
            else:
                await call("SetTrialStateValues", tell_part(tell))
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
