"""Population-based training against TPE + Hyperband, and against Ray Tune's PBT, on a task where a
learning-rate schedule matters.

The task is ``examples/pbt``: an MLP on a noisy regression (noise variance 1, so the best possible
validation MSE is about 1.0) trained 20 epochs with SGD and momentum. A large rate makes fast
progress but leaves the weights in the noise, a small one settles closer but slowly; the best
schedule falls, which no constant rate does.

In one run, for each seed:

- **tunefleet pbt**: ``sampler: pbt``, 8 members x 20 epochs in segments of 4 (at most 160 epochs:
  a member that copies one further ahead skips the steps between), as
  a real local study (``LocalRunner``, parallelism 2, SQLite).
- **tunefleet tpe + hyperband**: the same objective and space (``lr`` constant per trial),
  ``tpe`` + ``hyperband`` (``maxResource: 20``), parallelism 2, with ``budget.deadline`` set to
  the wall seconds the PBT study of the same seed took and ``onExhausted: drain`` (trials still
  running then are stopped): the same two worker slots for the same time. (A ``cpuHours`` budget
  would not be equal: each trial reserves its worst case, ``maxDuration``, which starves whole
  20-epoch trials near the end of a budget sized for 4-epoch segments.)
- **ray tune pbt** (when ``ray[tune]`` is installed, ``pip install -e '.[bench]'``): Ray Tune's
  ``PopulationBasedTraining`` with the same population, perturbation interval (4 epochs),
  quantile, resample probability, perturbation factors and space, 2 CPUs, 20 epochs a member.

Printed per method, over the seeds: the best validation MSE of a model the method kept (a
completed tunefleet trial or segment, or a Ray checkpoint epoch), median and range; the wall
seconds from the study's start until such a model first reached each target (median over the
seeds that reached it, and how many did); epochs trained; CPU-seconds billed; wall seconds.

Run: ``.venv/bin/python bench/pbt.py [--seeds 5] [--first-seed 0] [--targets 1.10 1.07]``
(30 to 50 minutes on 2 busy cores; ``--first-seed`` reruns some seeds alone). A Ray run that
fails to start (its node can time out on an overloaded machine) is printed as not run.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from controller.budget.ledger import Ledger  # noqa: E402
from controller.local.runner import LocalRunner, RunOptions  # noqa: E402
from controller.spec import parse_study_text  # noqa: E402
from controller.studies.record import ATTR_STARTED_AT  # noqa: E402

POPULATION = 8
INTERVAL = 4
EPOCHS = 20  # examples.pbt.train.EPOCHS
QUANTILE = 0.25
RESAMPLE = 0.25
FACTORS = (0.8, 1.2)
LR_RANGE = (1e-3, 0.3)
WIDTHS = [16, 32, 64]


@dataclass
class Outcome:
    """One method on one seed."""

    best: float
    reached: dict[float, float | None]  # target -> wall seconds from the start (None: never)
    epochs: int
    cpu_seconds: float | None
    wall_s: float
    notes: list[str] = field(default_factory=list)


def study_document(
    strategy: dict[str, Any], seed: int, mutable: bool, deadline_s: float | None
) -> dict[str, Any]:
    source = yaml.safe_load((REPO / "examples/pbt/study.yaml").read_text(encoding="utf-8"))
    spec = source["spec"]
    spec["strategy"] = {**strategy, "seed": seed}
    spec["searchSpace"]["lr"]["mutable"] = mutable
    spec["budget"] = {"deadline": "30m"}
    if deadline_s is not None:
        spec["budget"] = {"deadline": max(1, round(deadline_s)), "onExhausted": "drain"}
    spec["parallelism"] = 2
    spec["trial"]["maxRetries"] = 0
    spec["trial"]["maxDuration"] = "40s" if mutable else "2m"  # a segment, or a whole trial
    spec.pop("checkpoints", None)
    return source


def run_tunefleet(strategy: dict[str, Any], seed: int, mutable: bool, deadline_s: float | None,
                  targets: Sequence[float], workdir: Path) -> Outcome:
    manifest = parse_study_text(yaml.safe_dump(study_document(strategy, seed, mutable, deadline_s)))
    url = f"sqlite:///{workdir / 'study.db'}"
    options = RunOptions(
        storage_url=url,
        workdir=str(REPO),
        log_dir=workdir / "logs",
        show_progress=False,
        checkpoint_dir=workdir / "checkpoints",
    )
    result = LocalRunner(manifest, options).run()
    study = optuna.load_study(study_name=manifest.metadata.name, storage=url)
    started = float(study.user_attrs[ATTR_STARTED_AT])
    kept = [
        t for t in study.get_trials(deepcopy=False)
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None and t.datetime_complete
    ]
    with Ledger(url) as ledger:
        settled = ledger.totals(manifest.metadata.name).settled
    reached: dict[float, float | None] = {}
    for target in targets:
        times = [t.datetime_complete.timestamp() - started for t in kept if t.value <= target]
        reached[target] = min(times) if times else None
    epochs = sum(len(t.intermediate_values) for t in study.get_trials(deepcopy=False))
    return Outcome(
        best=min((float(t.value) for t in kept), default=float("inf")),
        reached=reached,
        epochs=epochs,
        cpu_seconds=float(settled.cpu_seconds),
        wall_s=time.time() - started,
        notes=[f"stopped {result.stop_reason.value}"],
    )


def run_ray(seed: int, targets: Sequence[float], workdir: Path) -> Outcome:
    """Ray Tune's PopulationBasedTraining on the same task, population and budget (240 epochs)."""
    import ray
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
    )
    try:
        scheduler = PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=INTERVAL,
            hyperparam_mutations={"lr": tune.loguniform(*LR_RANGE)},
            quantile_fraction=QUANTILE,
            resample_probability=RESAMPLE,
            perturbation_factors=(FACTORS[1], FACTORS[0]),
        )
        tuner = tune.Tuner(
            tune.with_resources(_ray_trainable, {"cpu": 1}),
            param_space={
                "lr": tune.loguniform(*LR_RANGE),
                "width": tune.choice(WIDTHS),
                "seed": tune.randint(0, 2**31 - 1),
            },
            tune_config=tune.TuneConfig(
                scheduler=scheduler, metric="val_mse", mode="min", num_samples=POPULATION,
                search_alg=tune.search.BasicVariantGenerator(random_state=seed),
                reuse_actors=True,  # an exploit restores into a live process, as tunefleet's warm workers do
            ),
            run_config=tune.RunConfig(
                name=f"pbt-{seed}",
                storage_path=str(workdir / "ray"),
                stop={"training_iteration": EPOCHS},
                verbose=0,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=4),
            ),
        )
        began = time.time()
        results = tuner.fit()
        wall = time.time() - began
    finally:
        ray.shutdown()
    kept: list[tuple[float, float]] = []  # (wall time, val_mse) of the epochs that saved a checkpoint
    epochs = 0
    for result in results:
        frame = result.metrics_dataframe
        if frame is None:
            continue
        epochs += len(frame)
        for _, row in frame.iterrows():
            if bool(row.get("checkpointed", False)):
                kept.append((float(row["wall"]) - began, float(row["val_mse"])))
    reached = {
        target: min((t for t, value in kept if value <= target), default=None) for target in targets
    }
    return Outcome(
        best=min((value for _, value in kept), default=float("inf")),
        reached=reached,
        epochs=epochs,
        cpu_seconds=None,
        wall_s=wall,
        notes=[f"{len(results.errors)} failed: {str(e).splitlines()[0]}" for e in results.errors[:1]],
    )


def _ray_trainable(config: dict[str, Any]) -> None:
    """The example's model and data, trained one epoch per report; a checkpoint every interval."""
    import math
    import pickle

    import torch
    from ray import tune
    from torch import nn

    from examples.pbt import train

    torch.set_num_threads(1)
    torch.manual_seed(int(config["seed"]))
    x_train, y_train, x_val, y_val = train._data()
    model = train._model(int(config["width"]))
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=train.MOMENTUM)
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = pickle.loads((Path(directory) / "state.pkl").read_bytes())
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["epoch"]) + 1
        for group in optimizer.param_groups:
            group["lr"] = config["lr"]  # PBT's explored rate
    loss_fn = nn.MSELoss()
    for epoch in range(start, EPOCHS):
        model.train()
        order = torch.randperm(train.TRAIN_SIZE)
        for begin in range(0, train.TRAIN_SIZE, train.BATCH_SIZE):
            batch = order[begin : begin + train.BATCH_SIZE]
            optimizer.zero_grad()
            loss_fn(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_mse = loss_fn(model(x_val), y_val).item()
        if not math.isfinite(val_mse) or val_mse > train.DIVERGED:
            val_mse = train.DIVERGED  # as the tunefleet objective does
        metrics = {"val_mse": val_mse, "wall": time.time(), "checkpointed": False}
        if (epoch + 1) % INTERVAL == 0 or epoch == EPOCHS - 1:
            with tempfile.TemporaryDirectory() as directory:
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
                (Path(directory) / "state.pkl").write_bytes(pickle.dumps(state))
                metrics["checkpointed"] = True
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            tune.report(metrics)


def report(seed: int, method: str, outcome: Outcome) -> None:
    reached = ", ".join(
        f"{target}: {'never' if at is None else f'{at:.1f} s'}" for target, at in outcome.reached.items()
    )
    billed = f", {outcome.cpu_seconds:.0f} CPU-s" if outcome.cpu_seconds is not None else ""
    notes = f" ({'; '.join(outcome.notes)})" if outcome.notes else ""
    print(f"seed {seed} {method}: best {outcome.best:.4f}, reached {reached}, {outcome.epochs} epochs"
          f"{billed}, {outcome.wall_s:.0f} s{notes}", flush=True)


def summarize(name: str, outcomes: list[Outcome], targets: Sequence[float]) -> list[str]:
    bests = [o.best for o in outcomes]
    line = [
        name,
        f"{statistics.median(bests):.4f} [{min(bests):.4f}, {max(bests):.4f}]",
        f"{statistics.mean(bests):.4f}",
    ]
    for target in targets:
        times = [o.reached[target] for o in outcomes if o.reached[target] is not None]
        shown = f"{statistics.median(times):.1f} s" if times else "never"
        line.append(f"{shown} ({len(times)}/{len(outcomes)})")
    line.append(f"{statistics.mean(o.epochs for o in outcomes):.0f}")
    cpu = [o.cpu_seconds for o in outcomes if o.cpu_seconds is not None]
    line.append(f"{statistics.mean(cpu):.0f}" if cpu else "-")
    line.append(f"{statistics.mean(o.wall_s for o in outcomes):.0f}")
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed, first-seed + 1, ...")
    parser.add_argument("--targets", type=float, nargs="+", default=[1.10, 1.07])
    parser.add_argument("--no-ray", action="store_true", help="skip Ray Tune even if it is installed")
    parser.add_argument("--only-ray", action="store_true", help="run Ray Tune's PBT alone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("TUNEFLEET_LOG_LEVEL", "warning")
    try:
        import ray  # noqa: F401

        ray_error = None
    except ImportError as exc:
        ray_error = f"{exc} (pip install -e '.[bench]')"
    results: dict[str, list[Outcome]] = {}
    if not args.only_ray:
        results = {"tunefleet pbt": [], "tunefleet tpe + hyperband": []}
    if not args.no_ray and ray_error is None:
        results["ray tune pbt"] = []
    pbt = {"sampler": "pbt", "pruner": "none",
           "settings": {"population": POPULATION, "interval": INTERVAL, "quantile": QUANTILE,
                        "resampleProbability": RESAMPLE, "perturbFactors": list(FACTORS)}}
    tpe_hb = {"sampler": "tpe", "pruner": "hyperband", "prunerSettings": {"maxResource": EPOCHS}}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        if "tunefleet pbt" in results:
            with tempfile.TemporaryDirectory() as tmp:
                outcome = run_tunefleet(pbt, seed, True, None, args.targets, Path(tmp))
            results["tunefleet pbt"].append(outcome)
            report(seed, "tunefleet pbt", outcome)
            with tempfile.TemporaryDirectory() as tmp:
                outcome = run_tunefleet(tpe_hb, seed, False, outcome.wall_s, args.targets, Path(tmp))
            results["tunefleet tpe + hyperband"].append(outcome)
            report(seed, "tunefleet tpe + hyperband", outcome)
        if "ray tune pbt" in results:
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    outcome = run_ray(seed, args.targets, Path(tmp))
            except Exception as exc:  # noqa: BLE001 - Ray raises bare Exception when its node times out at startup
                print(f"seed {seed} ray tune pbt: not run: {type(exc).__name__}: {exc}", flush=True)
                continue
            results["ray tune pbt"].append(outcome)
            report(seed, "ray tune pbt", outcome)

    headers = ["method", "best val_mse, median [min, max]", "mean",
               *(f"time to {t} (median, seeds)" for t in args.targets), "epochs", "CPU-s billed", "wall s"]
    rows = [summarize(name, outcomes, args.targets) for name, outcomes in results.items() if outcomes]
    print()
    last = args.first_seed + args.seeds - 1
    print(f"seeds {args.first_seed}..{last}; PBT: {POPULATION} members x {EPOCHS} epochs; TPE + "
          "Hyperband: the same 2 slots for the wall seconds the PBT study of the same seed took; "
          "Ray: the same population and epochs")
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if ray_error is not None:
        print(f"ray tune pbt: not run, ray[tune] is not installed: {ray_error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
