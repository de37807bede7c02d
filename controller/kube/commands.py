"""The cluster subcommands of ``tunefleet``: ``controller``, ``render`` and ``release-finalizers``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import yaml

from controller.kube.manifests import (
    DEADLINE_GRACE_SECONDS,
    DEFAULT_TRIAL_IMAGE,
    TRIAL_SERVICE_ACCOUNT,
    StudyRef,
    TrialPodSettings,
    build_assignment,
    db_credentials_secret,
    trial_job,
    trial_service_account,
)
from controller.kube.trial_access import gateway_from_env, gateway_secret
from controller.multinode.manifests import job_companions
from trial_worker.contract import (
    DB_PASSWORD_ENV,
    PrunerConfig,
    StorageUrlError,
    normalize_storage_url,
    split_password,
)

if TYPE_CHECKING:
    from controller.kube.reconciler import ControllerConfig

STORAGE_URL_ENV = "TUNEFLEET_STORAGE_URL"
DB_SECRET_ENV = "TUNEFLEET_DB_SECRET"
TRIAL_SERVICE_ACCOUNT_ENV = "TUNEFLEET_TRIAL_SERVICE_ACCOUNT"
TRIAL_IMAGE_ENV = "TUNEFLEET_TRIAL_IMAGE"
DEADLINE_GRACE_ENV = "TUNEFLEET_TRIAL_DEADLINE_GRACE_S"
RENDER_STORAGE_URL = "postgresql+psycopg2://tunefleet@tunefleet-postgresql:5432/tunefleet"


def trial_settings_from_env(environ: Mapping[str, str] = os.environ) -> TrialPodSettings:
    """Raises ValueError naming the variable when a setting is malformed (or a gateway file is
    missing or unreadable, see :func:`controller.kube.trial_access.gateway_from_env`)."""
    return TrialPodSettings(
        service_account=environ.get(TRIAL_SERVICE_ACCOUNT_ENV) or TRIAL_SERVICE_ACCOUNT,
        default_image=environ.get(TRIAL_IMAGE_ENV) or DEFAULT_TRIAL_IMAGE,
        deadline_grace_seconds=_deadline_grace(environ.get(DEADLINE_GRACE_ENV)),
        gateway=gateway_from_env(environ),
    )


def _deadline_grace(raw: str | None) -> int:
    """Seconds past maxDuration before Kubernetes kills a trial pod the worker did not end.

    The worker stops its own trial at maxDuration and stores why; the grace is the time it has
    for that (and a checkpoint) before the kubelet's hard kill, and every reservation includes it.
    """
    if raw is None or not raw.strip():
        return DEADLINE_GRACE_SECONDS
    try:
        seconds = int(raw)
    except ValueError:
        seconds = -1
    if seconds < 1:
        raise ValueError(f"{DEADLINE_GRACE_ENV} must be a whole number of seconds >= 1, got {raw!r}")
    return seconds


# -- tunefleet controller ----------------------------------------------------------------------


def controller_config(environ: Mapping[str, str]) -> ControllerConfig:
    """The controller's settings from the environment the chart's Deployment sets.

    Raises:
        StorageUrlError: ``TUNEFLEET_STORAGE_URL`` is missing or names no database we can open.
    """
    from controller.kube.reconciler import ControllerConfig

    raw_url = environ.get(STORAGE_URL_ENV)
    if not raw_url:
        raise StorageUrlError(f"set {STORAGE_URL_ENV} to the study database URL")
    try:
        url, inline_password = split_password(normalize_storage_url(raw_url))
    except StorageUrlError as error:
        raise StorageUrlError(f"{STORAGE_URL_ENV}: {error}") from None
    return ControllerConfig(
        storage_url=url,
        db_password=environ.get(DB_PASSWORD_ENV) or inline_password,
        db_secret=environ.get(DB_SECRET_ENV) or None,
        controller_namespace=environ.get("TUNEFLEET_POD_NAMESPACE")
        or environ.get("POD_NAMESPACE")
        or _own_namespace(),
        trial_settings=trial_settings_from_env(environ),
        unschedulable_timeout_s=float(environ.get("TUNEFLEET_UNSCHEDULABLE_TIMEOUT_S", 600)),
        image_pull_timeout_s=float(environ.get("TUNEFLEET_IMAGE_PULL_TIMEOUT_S", 300)),
        resync_s=float(environ.get("TUNEFLEET_RESYNC_S", 5)),
    )


def cmd_controller(args: argparse.Namespace) -> int:
    from controller.kube.operator import OperatorOptions, run

    try:
        config = controller_config(os.environ)
    except (StorageUrlError, ValueError) as error:
        print(f"tunefleet controller: {error}", file=sys.stderr)
        return 2
    if config.db_password:
        os.environ[DB_PASSWORD_ENV] = config.db_password  # the controller's own connections add it back
    options = OperatorOptions(
        config=config,
        namespaces=args.namespace or (),
        peering=None if args.standalone else args.peering,
        health_port=args.health_port or None,
        metrics_port=args.metrics_port or None,
        reconcile_log=os.environ.get("TUNEFLEET_RECONCILE_LOG") or None,
    )
    run(options)
    return 0


def _own_namespace() -> str:
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    try:
        with open(path) as handle:
            return handle.read().strip() or "default"
    except OSError:
        return "default"


# -- tunefleet render --------------------------------------------------------------------------


def render_objects(
    manifest: Any, namespace: str | None, trial_number: int, storage_url: str, include_namespace_objects: bool
) -> list[dict[str, Any]]:
    """What the controller would create for one trial (offline: no cluster, no database)."""
    from controller.strategies import choose_strategy
    from controller.studies.asking import trial_seed

    spec = manifest.spec
    ref = StudyRef(manifest.metadata.name, namespace or manifest.metadata.namespace or "default")
    choice = choose_strategy(spec)
    pruner = PrunerConfig(
        name=choice.pruner if choice.pruner != "auto" else "none",  # type: ignore[arg-type]
        settings=spec.strategy.prunerSettings,
    )
    seed = trial_seed(spec.strategy.seed or 0, trial_number)
    settings = trial_settings_from_env()
    gateway = settings.gateway
    trial_url = gateway.storage_url if gateway is not None else split_password(storage_url)[0]
    assignment = build_assignment(spec, ref, trial_number, seed, trial_url, pruner)
    job = trial_job(spec, ref, assignment, settings)
    objects = [job, *job_companions(job, spec)]
    if gateway is not None:  # created with the Job, once the Job's uid and creation time are known
        stored = {"metadata": {**job["metadata"], "uid": "<the Job's uid>"}}
        objects.append(gateway_secret(stored, "<signed by the controller for this trial>", gateway.ca_pem))
    if include_namespace_objects:
        objects.append(trial_service_account(ref.namespace, settings))
        if gateway is None:
            password = "<mirrored from the database Secret>"
            objects.append(db_credentials_secret(ref.namespace, password, settings))
    return objects


def cmd_render(args: argparse.Namespace) -> int:
    from controller.spec import load_study_file

    manifest = load_study_file(args.spec)
    url = normalize_storage_url(args.storage or os.environ.get(STORAGE_URL_ENV) or RENDER_STORAGE_URL)
    try:
        objects = render_objects(manifest, args.namespace, args.trial, url, args.all)
    except ValueError as error:  # a malformed TUNEFLEET_* setting, named in the message
        print(f"tunefleet render: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True))
    return 0


# -- tunefleet release-finalizers --------------------------------------------------------------


def cmd_release_finalizers(args: argparse.Namespace) -> int:
    from controller.kube.release_finalizers import release_all

    released = release_all(args.namespace or (), kubeconfig=None)
    print(f"released the tunefleet.dev/gpu-accounting finalizer of {released} pod(s)")
    return 0


def add_commands(sub: Any) -> None:
    """Register the cluster subcommands on the ``tunefleet`` parser."""
    controller = sub.add_parser("controller", help="run the Kubernetes operator (Studies -> trial Jobs)")
    controller.add_argument(
        "--namespace",
        action="append",
        metavar="NS",
        help="watch only this namespace (repeatable; default: cluster-wide)",
    )
    mode = controller.add_mutually_exclusive_group()
    mode.add_argument("--peering", metavar="NAME", help="replicas elect one leader via this peering object")
    mode.add_argument("--standalone", action="store_true", help="one replica: no leader election")
    controller.add_argument("--health-port", type=int, default=8080, help="/healthz and /readyz (0: off)")
    controller.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics (0: off)")
    controller.set_defaults(handler=cmd_controller)

    render = sub.add_parser("render", help="print the Kubernetes objects a trial would get, offline")
    render.add_argument("spec", help="the Study YAML file")
    render.add_argument("--namespace", help="the study namespace (default: metadata.namespace or default)")
    render.add_argument("--trial", type=int, default=0, help="trial number (default 0)")
    render.add_argument("--storage", help=f"storage URL in the assignment (default: ${STORAGE_URL_ENV})")
    render.add_argument(
        "--all", action="store_true", help="also the ServiceAccount and Secret of the namespace"
    )
    render.set_defaults(handler=cmd_render)

    release = sub.add_parser(
        "release-finalizers", help="remove tunefleet.dev/gpu-accounting from every trial pod (uninstall)"
    )
    release.add_argument(
        "--namespace", action="append", metavar="NS", help="only this namespace (repeatable)"
    )
    release.set_defaults(handler=cmd_release_finalizers)
