"""One chaos run: four Studies at once under a seeded fault schedule, invariants throughout.

``run_chaos(seed, ...)`` starts an emulated cluster whose trial pods run the real worker code
in threads (worker.py), two controller replicas on the test's PostgreSQL, applies the Studies
and the GPUBudget, injects faults for ``window_s`` seconds while checking the continuous
invariants on every snapshot, repairs everything, waits for every study to end, lets the
controller settle, and checks every invariant once more.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from controller.budget.ledger import Ledger
from tests.chaos import invariants, observe
from tests.chaos.faults import Environment, FaultInjector
from tests.chaos.invariants import Context, Tally
from tests.chaos.replicas import Replica
from tests.chaos.studies import chaos_studies, gpubudget
from tests.chaos.worker import InProcessWorkers
from tests.cluster.controller_harness import NAMESPACE, STUDIES, prepare_cluster, stop_gateway
from tests.cluster.emulator import KubeEmulator
from tests.support.postgres import PostgresServer, PostgresUnavailable

GPUBUDGETS = "gpubudgets.tunefleet.dev"
SNAPSHOT_EVERY_S = 1.0
SETTLE_S = 15.0
FIRST_POD_TIMEOUT_S = 90.0  # after the last study ended: pods settled, finalizers off, Jobs done


@dataclass
class ChaosResult:
    seed: int
    tally: Tally
    faults: Counter[str]
    skipped: Counter[str]
    replica_exits: Counter[str]
    seconds: float
    log_tail: str = ""
    events: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.tally.broken

    def summary(self) -> str:
        lines = [f"chaos seed {self.seed}: {'ok' if self.ok else 'BROKEN'} in {self.seconds:.0f} s, "
                 f"faults {dict(sorted(self.faults.items()))}",
                 "  checks (run/failed): " + ", ".join(
                     f"{name} {self.tally.runs[name]}/{self.tally.failures[name]}"
                     for name in invariants.ALL_NAMES)]
        for name in self.tally.broken:
            lines.append(f"  invariant {name} broken in {self.tally.failures[name]} of "
                         f"{self.tally.runs[name]} checks:")
            lines += [f"    {example}" for example in self.tally.examples[name]]
        if self.replica_exits:
            lines.append(f"  replicas that exited on their own: {dict(self.replica_exits)}")
        return "\n".join(lines)


def replay_command(seed: int, window_s: float) -> str:
    return f".venv/bin/pytest tests/chaos --chaos-seed {seed} --chaos-window {window_s:g}"


def run_chaos(seed: int, work_dir: Path, postgres: PostgresServer, storage_url: str, *,
              window_s: float = 30.0, end_timeout_s: float | None = None,
              log: Callable[[str], None] = print) -> ChaosResult:
    started = time.monotonic()
    studies = chaos_studies(seed)
    workers = InProcessWorkers()
    kube = KubeEmulator(work_dir / "kube", mode="simulate", behaviour=workers.behaviour).start()
    workers.kube = kube
    replicas: list[Replica] = []
    ledger = Ledger(storage_url)
    storage = observe.open_storage(storage_url)
    context = Context(studies, window_s)
    tally = Tally.empty()
    history = observe.History()
    events: list[str] = []

    def note(line: str) -> None:
        events.append(line)
        log(line)

    injector: FaultInjector | None = None
    try:
        prepare_cluster(kube)
        replicas = [Replica(kube, storage_url, work_dir, f"replica-{i}").start() for i in range(2)]
        kube.api.create(GPUBUDGETS, gpubudget(), NAMESPACE)
        for study in studies:
            kube.api.create(STUDIES, study.body, NAMESPACE)
        # Faults start once trials run: a slow start (a loaded machine) does not eat the window.
        first = time.monotonic()
        while time.monotonic() - first < FIRST_POD_TIMEOUT_S and not any(
            (p.get("status") or {}).get("phase") == "Running" for p in kube.api.list("pods", NAMESPACE)
        ):
            time.sleep(0.2)
        note(f"first trial pod running after {time.monotonic() - first:.1f} s: faults start")
        injector = FaultInjector(seed, Environment(kube, postgres, replicas, studies, note), window_s)

        def check(checks: dict[str, invariants.Check]) -> None:
            snapshot = observe.take(kube, storage, studies, ledger)
            ended_before = set(history.first_ended)
            history.fold(snapshot)
            for name in sorted(set(history.first_ended) - ended_before):
                status = (snapshot.studies.get(name) or {}).get("status") or {}
                note(f"[{injector.elapsed() if injector else 0:6.1f}s] {name} ended {status.get('phase')} "
                     f"({status.get('stopReason')}, {status.get('trialsSummary')})")
            tally.check(checks, snapshot, history, context)

        next_check = 0.0
        while injector.elapsed() < window_s:
            injector.step()
            if time.monotonic() >= next_check:
                check(invariants.CONTINUOUS)
                next_check = time.monotonic() + SNAPSHOT_EVERY_S
            time.sleep(0.1)
        injector.repair_all()
        note(f"[{injector.elapsed():6.1f}s] fault window over: everything repaired")

        deadline = time.monotonic() + (end_timeout_s or _end_timeout(context))
        while time.monotonic() < deadline and len(history.first_ended) < len(studies):
            injector.keep_alive()
            check(invariants.CONTINUOUS)
            time.sleep(SNAPSHOT_EVERY_S)
        settle_until = time.monotonic() + SETTLE_S
        while time.monotonic() < settle_until:
            injector.keep_alive()
            time.sleep(0.5)
        context.final = True
        check(invariants.FINAL)
        if len(history.first_ended) < len(studies):  # hung: say on what, before tearing down
            note("sessions on the database (pid | app | state | wait | in transaction | query | locks):")
            for line in observe.database_activity(storage.engine):
                note(f"  {line}")
            for replica in replicas:
                note(f"  {replica.scheduling()}")
                replica.dump_stacks()
            note(f"replicas' thread stacks: {', '.join(str(r.log_path) for r in replicas)}")
    finally:
        with contextlib.suppress(PostgresUnavailable):
            postgres.start()  # a fault may have left it stopped (it fails if it runs: fine)
        for replica in replicas:
            replica.stop()
        stop_gateway(kube)
        kube.stop()
        workers.shutdown()
        storage.engine.dispose()
        ledger.close()
    tail = "\n".join(f"--- {r.name} ---\n{r.log()[-2500:]}" for r in replicas)
    return ChaosResult(
        seed=seed,
        tally=tally,
        faults=injector.injected if injector else Counter(),
        skipped=injector.skipped if injector else Counter(),
        replica_exits=injector.exits if injector else Counter(),
        seconds=time.monotonic() - started,
        log_tail=tail,
        events=events,
    )


def _end_timeout(context: Context) -> float:
    """The longest bound of every_study_ends_in_bound, past the window: then it is broken."""
    return max(2 * (s.max_trials + s.confirm_runs) * 15 + 70 for s in context.studies)
