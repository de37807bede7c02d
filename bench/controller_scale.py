"""The controller's cost as work grows: 100 Studies, 1,000 trials running at once.

Runs ``tunefleet controller`` (a child process) against the emulated Kubernetes API in simulate
mode (pods only pretend to run) and a real PostgreSQL. A simulated pod has its Optuna trial told
COMPLETE by this script as soon as the pod starts, so the controller sees exactly what it sees on
a cluster: a pod that succeeded and a trial that is finished.

Prints reconcile latency p50/p99 (from its wake-up, so a queue for a reconcile thread counts;
the p99 is the start, when every Study's first reconcile starts its first trials), the wait from a
pod event to its reconcile, API calls per trial, controller CPU seconds per trial (the emulator's
and PostgreSQL's CPU separately: they share the machine), and a trial's turnaround (its pod
finished -> the next Job of that study created) p50/p99.

    .venv/bin/python -m bench.controller_scale [--studies 100] [--parallelism 10] [--trials 20]

``TUNEFLEET_LIST_RESYNC_S=0`` makes the controller list Jobs and pods on every reconcile (no
watch-fed index), for comparison; ``BENCH_KEEP=1`` keeps the controller's log.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import optuna

from controller.kube.crd import build_crds
from tests.cluster.emulator import KubeEmulator
from tests.cluster.emulator.store import JOB_KEY, POD_KEY
from tests.support.postgres import remove_server, start_server
from trial_worker.contract import ASSIGNMENT_ENV, Assignment, connection_url

NAMESPACE = "bench"
VENV_BIN = Path(sys.executable).parent


class Timeline:
    """Pod finishes and Job creations per study, timed as the emulator commits them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.finished: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self.turnarounds: list[float] = []
        self.running = 0
        self.peak_running = 0
        self.jobs_created = 0
        self.pods_finished = 0

    def on_event(self, event: Any) -> None:
        meta = event.obj.get("metadata") or {}
        study = (meta.get("labels") or {}).get("tunefleet.dev/study")
        if study is None:
            return
        now = time.monotonic()
        if event.key == JOB_KEY and event.type == "ADDED":
            with self.lock:
                self.jobs_created += 1
                pending = self.finished[study]
                if pending:
                    self.turnarounds.append(now - pending.popleft())
        elif event.key == POD_KEY and event.type == "MODIFIED":
            phase = (event.obj.get("status") or {}).get("phase")
            before = ((event.old or {}).get("status") or {}).get("phase")
            if phase == before:
                return
            with self.lock:
                if phase == "Running":
                    self.running += 1
                    self.peak_running = max(self.peak_running, self.running)
                elif phase in ("Succeeded", "Failed") and before == "Running":
                    self.running -= 1
                    self.pods_finished += 1
                    self.finished[study].append(now)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def _postgres_cpu_seconds(data_dir: Path | None) -> float | None:
    """The server's CPU: the postmaster, its live backends, and the backends that already exited."""
    pid_file = data_dir / "postmaster.pid" if data_dir is not None else None
    if pid_file is None or not pid_file.exists():
        return None  # an external server: not ours to measure
    postmaster = int(pid_file.read_text().split()[0])
    ticks = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    total = sum(int(f) for f in fields[11:15]) / ticks  # utime, stime, cutime, cstime
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            child = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(child[1]) == postmaster:
            total += (int(child[11]) + int(child[12])) / ticks
    return total


def _study(name: str, trials: int, parallelism: int) -> dict[str, Any]:
    return {
        "apiVersion": "tunefleet.dev/v1alpha1",
        "kind": "Study",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "objective": {"metrics": [{"name": "loss", "direction": "minimize"}]},
            "searchSpace": {"x": {"type": "float", "low": -10, "high": 10}},
            "strategy": {"sampler": "random", "pruner": "none", "seed": 1},
            "budget": {"maxTrials": trials},
            "parallelism": parallelism,
            "trial": {"python": "bench.objectives:noop", "cpus": 0.1, "maxDuration": "10m", "maxRetries": 1},
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--parallelism", type=int, default=10)
    parser.add_argument("--trials", type=int, default=20, help="maxTrials per study")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long a simulated trial runs")
    parser.add_argument("--timeout", type=float, default=540.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tunefleet-scale-"))
    server = start_server()
    url = server.create_database()
    tellers = concurrent.futures.ThreadPoolExecutor(4, "tell")
    storages: dict[str, optuna.storages.RDBStorage] = {}
    storage_lock = threading.Lock()

    def tell(assignment: Assignment) -> None:
        with storage_lock:
            storage = storages.get("s") or optuna.storages.RDBStorage(connection_url(url))
            storages["s"] = storage
        study_id = storage.get_study_id_from_name(assignment.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, assignment.trial_number)
        storage.set_trial_state_values(
            trial_id, optuna.trial.TrialState.COMPLETE, [float(assignment.trial_number)]
        )

    jitter = random.Random(0)

    def behaviour(pod: dict[str, Any]) -> tuple[float, int]:
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env") or []}
        tellers.submit(tell, Assignment.model_validate_json(env[ASSIGNMENT_ENV] or ""))
        return (args.seconds * jitter.uniform(0.5, 1.5), 0)  # trials differ, as real ones do

    timeline = Timeline()
    total = args.studies * args.trials
    kube = KubeEmulator(work, mode="simulate", behaviour=behaviour).start()
    process: subprocess.Popen[bytes] | None = None
    try:
        kube.api.apply_crds(build_crds())
        kube.api.create_namespace(NAMESPACE)
        kube.store.add_listener(timeline.on_event)
        reconcile_log = work / "reconciles.txt"
        env = {
            **os.environ,
            **kube.env(),
            "TUNEFLEET_STORAGE_URL": url,
            "TUNEFLEET_RECONCILE_LOG": str(reconcile_log),
            "TUNEFLEET_RESYNC_S": "10",
            "TUNEFLEET_LOG_FORMAT": "json",
        }
        with open(work / "controller.log", "wb") as log:
            # BENCH_ENTRY: another script to run the controller with (e.g. one that profiles it).
            entry = os.environ.get("BENCH_ENTRY") or str(VENV_BIN / "tunefleet")
            process = subprocess.Popen(
                [
                    sys.executable,
                    entry,
                    "controller",
                    "--standalone",
                    "--health-port",
                    "0",
                    "--metrics-port",
                    "0",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        time.sleep(3)
        kube.reset_request_counts()
        postgres_before = _postgres_cpu_seconds(getattr(server, "data_dir", None))
        bench_before = time.process_time()
        began = time.monotonic()
        for index in range(args.studies):
            kube.api.create(
                "studies.tunefleet.dev", _study(f"s{index:03d}", args.trials, args.parallelism), NAMESPACE
            )
        reached_at = None
        target = min(args.studies * args.parallelism, total)
        while time.monotonic() - began < args.timeout:
            if reached_at is None and timeline.running >= target:
                reached_at = time.monotonic() - began
            if timeline.pods_finished >= total:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - began
        cpu = _cpu_seconds(process.pid)
        requests = dict(kube.request_counts)
        bench_cpu = time.process_time() - bench_before
        postgres_after = _postgres_cpu_seconds(getattr(server, "data_dir", None))
    finally:
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        kube.stop()
        tellers.shutdown(wait=False, cancel_futures=True)
        remove_server(server)

    latencies: list[float] = []
    waits: list[float] = []  # pod event -> its reconcile started (debounce + a free thread)
    lines = reconcile_log.read_text().splitlines() if reconcile_log.exists() else []
    if not os.environ.get("BENCH_KEEP"):  # BENCH_KEEP=1 keeps the controller log and reconcile times
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")
    for line in lines:
        seconds, _, waited = line.partition(" ")
        latencies.append(float(seconds))
        if waited and waited != "-":
            waits.append(float(waited))
    done = timeline.pods_finished
    calls = sum(requests.values())
    by_verb: collections.Counter[str] = collections.Counter()
    for (verb, resource), count in requests.items():
        by_verb[f"{verb} {resource}"] += count
    print(
        f"studies: {args.studies}, parallelism: {args.parallelism}, trials per study: {args.trials}, "
        f"simulated trial: {args.seconds:.0f} s +-50%"
    )
    print(
        f"peak running trials: {timeline.peak_running} (target {target}); reached after {reached_at:.1f} s"
        if reached_at is not None
        else f"peak running trials: {timeline.peak_running} (target {target}; not reached)"
    )
    print(f"trials finished: {done}/{total} in {elapsed:.1f} s; Jobs created: {timeline.jobs_created}")
    print(
        f"reconciles: {len(latencies)}; latency p50 {_percentile(latencies, 0.5) * 1000:.0f} ms, "
        f"p99 {_percentile(latencies, 0.99) * 1000:.0f} ms"
    )
    print(
        f"woken by a pod event: {len(waits)}; pod event -> reconcile start p50 "
        f"{_percentile(waits, 0.5) * 1000:.0f} ms, p99 {_percentile(waits, 0.99) * 1000:.0f} ms"
    )
    print(f"API calls: {calls} total, {calls / max(1, timeline.jobs_created):.1f} per trial")
    print("  " + ", ".join(f"{k}: {v}" for k, v in by_verb.most_common(8)))
    print(f"emulator + bench CPU (this process, while measuring): {bench_cpu:.1f} s")
    if postgres_before is not None and postgres_after is not None:
        print(f"PostgreSQL CPU (while measuring): {postgres_after - postgres_before:.1f} s")
    print(f"controller CPU: {cpu:.1f} s total, {cpu / max(1, timeline.jobs_created) * 1000:.1f} ms per trial")
    turn = timeline.turnarounds
    print(
        f"turnaround (pod finished -> next Job created): p50 {_percentile(turn, 0.5):.2f} s, "
        f"p99 {_percentile(turn, 0.99):.2f} s over {len(turn)} trials"
    )
    print(
        json.dumps(
            {
                "peak_running": timeline.peak_running,
                "reconcile_p50_s": _percentile(latencies, 0.5),
                "reconcile_p99_s": _percentile(latencies, 0.99),
                "wake_wait_p50_s": _percentile(waits, 0.5),
                "api_calls_per_trial": calls / max(1, timeline.jobs_created),
                "cpu_s_per_trial": cpu / max(1, timeline.jobs_created),
                "turnaround_p50_s": _percentile(turn, 0.5),
                "turnaround_p99_s": _percentile(turn, 0.99),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
