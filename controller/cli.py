"""The ``tunefleet`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from controller.spec import SpecInvalid, StudyManifest, load_manifest_file, load_study_file

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_ERROR = 2


def _print_errors(error: SpecInvalid) -> None:
    source = error.source or "spec"
    count = len(error.errors)
    print(f"{source}: {count} error{'s' if count != 1 else ''}", file=sys.stderr)
    for item in error.errors:
        print(f"  {item}", file=sys.stderr)


def _load(path: str) -> StudyManifest:
    return load_study_file(path)


def cmd_validate(args: argparse.Namespace) -> int:
    manifest = load_manifest_file(args.spec)
    print(f"{args.spec}: valid {manifest.kind} {manifest.metadata.name!r}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    # The export (scipy, scikit-learn, plotly) is imported only when asked for: it takes seconds
    # to load, and a study's budget is counted from the start of this process.
    from controller.local.progress import describe_summary
    from controller.local.runner import LocalRunner, RunOptions
    from controller.tracking import with_mlflow

    manifest = with_mlflow(_load(args.spec), args.mlflow)
    workdir = str(Path(args.workdir).resolve()) if args.workdir else str(Path.cwd())
    options = RunOptions(
        storage_url=args.storage,
        parallel=args.parallel,
        workdir=workdir,
        show_progress=not args.quiet,
    )
    runner = LocalRunner(manifest, options)
    result = runner.run()
    print(f"study {result.study_name}: {result.stop_reason.value} after {result.elapsed_s:.1f} s")
    print(f"  {describe_summary(result.summary)}")
    if result.failure is not None:
        print(f"tunefleet: {result.failure}", file=sys.stderr)
    metrics = manifest.spec.objective.metric_names
    if result.best is not None:
        values = ", ".join(f"{m}={v:.6g}" for m, v in zip(metrics, result.best.values, strict=True))
        print(f"  best trial #{result.best.number}: {values}")
        print(f"  params: {json.dumps(result.best.params)}")
    elif result.pareto:
        numbers = ", ".join(f"#{t.number}" for t in result.pareto[:10])
        print(f"  Pareto set: {len(result.pareto)} trials ({numbers})")
    else:
        print("  no trial completed")
    if args.out:
        from controller.export import describe_export, write_export

        export = write_export(result.storage_url, result.study_name, Path(args.out))
        for line in describe_export(export):
            print(f"  {line}")
    if runner.tracking_url:
        print(f"  mlflow: {runner.tracking_url}")
    print(f"  storage: {runner.storage_url}  (rerun to resume; trial logs in {runner.log_dir})")
    return EXIT_ERROR if result.failure is not None else EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from controller.strategies import affordable_trials, choose_strategy, trial_cost

    manifest = _load(args.spec)
    spec = manifest.spec
    affordability = affordable_trials(spec, trial_cost(spec))
    choice = choose_strategy(spec, affordability)
    cost = affordability.cost
    print(f"study {manifest.metadata.name}")
    affordable = "unlimited" if affordability.trials is None else str(affordability.trials)
    print(f"  affordable trials: {affordable}")
    for name, count in affordability.limits.items():
        print(f"    {name}: {count}")
    print(f"  trial cost: ~{cost.seconds:.0f} s per trial ({cost.basis})")
    if cost.basis == "maxDuration":
        print(
            "    (the worst case; set trial.expectedDuration for a closer figure; runs revise it)"
        )
    cost_aware = " (cost-aware: expected improvement per second)" if choice.cost_aware else ""
    print(f"  sampler: {choice.sampler}{cost_aware}")
    print(f"  pruner:  {choice.pruner}")
    for reason in choice.reasons[1:]:
        print(f"  because: {reason}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from controller.export import describe_export, write_export

    result = write_export(args.storage, args.study, Path(args.out))
    for line in describe_export(result):
        print(line)
    return EXIT_OK


def cmd_crd(args: argparse.Namespace) -> int:
    from controller.kube.crd import render_crds_yaml

    sys.stdout.write(render_crds_yaml())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunefleet",
        description="Hyperparameter studies on Kubernetes GPU fleets, or on this machine.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a study locally, with a progress bar")
    run.add_argument("spec", help="the Study YAML file")
    run.add_argument("--storage", help="storage URL (default: an SQLite file under .tunefleet/)")
    run.add_argument("--parallel", type=_positive_int, help="trials at once (default: spec.parallelism)")
    run.add_argument("--out", help="write the export (best_config, trials.csv, ...) to this directory")
    run.add_argument(
        "--mlflow", metavar="URI", help="mirror the study to this MLflow server (spec.tracking.mlflow)"
    )
    run.add_argument("--workdir", help="directory the objective runs in and imports from (default: .)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    run.set_defaults(handler=cmd_run)

    validate = sub.add_parser("validate", help="check a Study or GPUBudget file; exit 1 listing every error")
    validate.add_argument("spec")
    validate.set_defaults(handler=cmd_validate)

    plan = sub.add_parser(
        "plan", help="show the affordable trials, the sampler and pruner a study would use, and why"
    )
    plan.add_argument("spec")
    plan.set_defaults(handler=cmd_plan)

    export = sub.add_parser("export", help="write the analysis and best configuration of a study")
    export.add_argument("--storage", required=True, help="storage URL")
    export.add_argument("--study", required=True, help="study name")
    export.add_argument("--out", required=True, help="output directory")
    export.set_defaults(handler=cmd_export)

    crd = sub.add_parser("crd", help="print the CustomResourceDefinitions")
    crd.set_defaults(handler=cmd_crd)

    from controller.kube.commands import add_commands

    add_commands(sub)  # controller, render, release-finalizers
    from controller.gateway.command import add_gateway_command

    add_gateway_command(sub)  # gateway (issue 12)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    from controller.logs import configure_logging
    from controller.studies.storage import StorageUnavailable

    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except SpecInvalid as error:
        _print_errors(error)
        return EXIT_INVALID
    except StorageUnavailable as error:
        print(f"tunefleet: {error}", file=sys.stderr)
        return EXIT_ERROR
    except (KeyError, ValueError, OSError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"tunefleet: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("tunefleet: aborted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
