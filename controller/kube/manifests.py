"""Trial Jobs and the per-namespace objects they need, as plain dicts built without I/O.

Like lightkube's ``prepare_request``: every function here is pure, so the objects the controller
creates can be inspected (``tunefleet render``), compared by value and validated against the real
Kubernetes schema in tests.

Template precedence (``spec.trial.template``, a PodTemplateSpec): the user's fields are kept
(nodeSelector, tolerations, affinity, volumes, extra env, volumeMounts, labels, annotations, extra
containers, ...). The controller then sets, and the template cannot override: the trial container's
command, image (when ``trial.image`` is given), ``TUNEFLEET_*`` env, resources it derives from the
spec, ``restartPolicy: Never``, ``activeDeadlineSeconds``, the service account with no token, the
tunefleet labels and finalizer, and the restricted security context on every container.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from controller.kube.checkpoints import mount_checkpoints
from controller.kube.trial_access import CA_ENV, TOKEN_ENV, GatewayAccess, gateway_env
from controller.multinode.manifests import spread_over_nodes
from controller.spec import StudySpec
from trial_worker.contract import (
    ASSIGNMENT_ENV,
    DB_PASSWORD_ENV,
    Assignment,
    CommandObjective,
    MetricDirection,
    PrunerConfig,
    PythonObjective,
    SegmentAssignment,
)

GROUP = "tunefleet.dev"
VERSION = "v1alpha1"
STUDY_LABEL = "tunefleet.dev/study"
# The Study object's uid: a Study deleted and applied again under the same name is another object,
# whose trial Jobs and pods must not be taken for the earlier one's.
STUDY_UID_LABEL = "tunefleet.dev/study-uid"
TRIAL_LABEL = "tunefleet.dev/trial"
ATTEMPT_LABEL = "tunefleet.dev/attempt"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
# Kueue admits the Job through this LocalQueue; the ledger still bills the pods it runs.
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
ACCOUNTING_FINALIZER = "tunefleet.dev/gpu-accounting"
TRIAL_CONTAINER = "trial"
WORKER_COMMAND = "tunefleet-worker"
DB_SECRET_NAME = "tunefleet-db-credentials"
DB_SECRET_KEY = "password"
TRIAL_SERVICE_ACCOUNT = "tunefleet-trial"
DEFAULT_TRIAL_IMAGE = "ghcr.io/tunefleet/tunefleet-worker:0.1.0"
GPU_RESOURCE = "nvidia.com/gpu"
JOB_TTL_SECONDS = 3600
TERMINATION_GRACE_SECONDS = 30
# Seconds added to maxDuration for the pod deadline: the worker ends its own trial at maxDuration
# (and stores the reason); the kubelet's hard kill is the backstop.
DEADLINE_GRACE_SECONDS = 30
# Reserved beyond the pod's deadline and kill grace: the kubelet notices a passed deadline on its
# next sync (about a second) and timestamps are whole seconds, so a hung pod can bill a little more.
KUBELET_REACTION_SECONDS = 5


def owner_references(study: StudyRef, controller: bool = True) -> list[dict[str, Any]]:
    """The Study as owner, so Kubernetes deletes the object with it; ``controller`` for the objects
    the Study's controller manages (its Jobs), which also block the Study's foreground deletion."""
    owner: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Study",
        "name": study.name,
        "uid": study.uid,
    }
    if controller:
        owner.update(controller=True, blockOwnerDeletion=True)
    return [owner]


def termination_grace(spec: StudySpec) -> int:
    """The trial pod's termination grace: the template's, if it sets one, else ours.

    The budget's worst case adds it, so a longer grace asked for checkpointing is reserved too.
    """
    pod = (spec.trial.template or {}).get("spec") or {}
    value = pod.get("terminationGracePeriodSeconds")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return TERMINATION_GRACE_SECONDS


_RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass(frozen=True)
class StudyRef:
    """The Study a trial belongs to; ``uid`` makes the owner reference (empty: none, offline).

    ``key`` is its Optuna study and ledger key (:func:`controller.studies.identity.study_key`);
    empty: ``<namespace>/<name>``, the key of objects from before keys carried the uid.
    """

    name: str
    namespace: str
    uid: str = ""
    key: str = ""

    def owns(self, obj: dict[str, Any]) -> bool:
        """Whether a trial Job or pod labelled with this Study's name is this object's: not one
        left by an earlier object of the same name (Jobs from before the uid label count as ours)."""
        labelled = ((obj.get("metadata") or {}).get("labels") or {}).get(STUDY_UID_LABEL)
        return labelled is None or not self.uid or labelled == self.uid


@dataclass(frozen=True)
class TrialPodSettings:
    """Cluster-wide choices the chart makes for trial pods."""

    service_account: str = TRIAL_SERVICE_ACCOUNT
    db_secret_name: str = DB_SECRET_NAME
    default_image: str = DEFAULT_TRIAL_IMAGE
    job_ttl_seconds: int = JOB_TTL_SECONDS
    # maxDuration plus this is the pod's activeDeadlineSeconds, and part of every reservation.
    deadline_grace_seconds: int = DEADLINE_GRACE_SECONDS
    # Set (TUNEFLEET_GATEWAY_ADDRESS): trial pods reach storage through the gateway with a token.
    gateway: GatewayAccess | None = None

    def trial_storage_env(self, job: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        """How the trial container of Job ``job`` logs in: its token, or the mirrored password."""
        if self.gateway is not None:
            return gateway_env(job, labels)
        secret = {"secretKeyRef": {"name": self.db_secret_name, "key": DB_SECRET_KEY}}
        return [{"name": DB_PASSWORD_ENV, "valueFrom": secret}]


def optuna_study_name(study: StudyRef) -> str:
    """The shared Optuna study's name and the ledger's study key (see :class:`StudyRef`)."""
    return study.key or f"{study.namespace}/{study.name}"


def job_name(study_name: str, trial_number: int) -> str:
    """Deterministic, so a restarted controller finds (adopts) the Job instead of duplicating it."""
    return f"{study_name}-t{trial_number}"


def reservation_key(study: StudyRef, trial_number: int) -> str:
    return f"{optuna_study_name(study)}/{trial_number}"


def study_selector(study_name: str) -> str:
    return f"{STUDY_LABEL}={study_name}"


def build_assignment(
    spec: StudySpec,
    study: StudyRef,
    trial_number: int,
    seed: int,
    storage_url: str,
    pruner: PrunerConfig,
    segment: SegmentAssignment | None = None,
    active_params: list[str] | None = None,
) -> Assignment:
    """The worker's assignment; ``storage_url`` must carry no password (it is in a Secret).

    ``active_params`` names the parameters that apply to the trial: the worker refuses to run it
    without any of them.
    """
    entry = spec.trial
    objective = (
        PythonObjective(entry=entry.python)
        if entry.python
        else CommandObjective(argv=list(entry.command or []))
    )
    return Assignment(
        storage_url=storage_url,
        study_name=optuna_study_name(study),
        trial_number=trial_number,
        objective=objective,
        metrics=[MetricDirection(name=m.name, direction=m.direction) for m in spec.objective.metrics],
        constraints=list(spec.objective.constraints),
        pruner=pruner,
        seed=seed,
        max_duration_s=entry.maxDuration,
        deterministic=spec.reproducibility.deterministic,
        segment=segment,
        active_params=active_params,
    )


def trial_job(
    spec: StudySpec,
    study: StudyRef,
    assignment: Assignment,
    settings: TrialPodSettings | None = None,
    attempt: int = 0,
) -> dict[str, Any]:
    """The batch/v1 Job that runs one trial."""
    settings = settings or TrialPodSettings()
    number = assignment.trial_number
    name = job_name(study.name, number)
    labels = {
        STUDY_LABEL: study.name,
        TRIAL_LABEL: str(number),
        ATTEMPT_LABEL: str(attempt),
        MANAGED_BY_LABEL: "tunefleet",
    }
    if study.uid:
        labels[STUDY_UID_LABEL] = study.uid
    metadata: dict[str, Any] = {"name": name, "namespace": study.namespace, "labels": dict(labels)}
    if spec.trial.queueName:
        metadata["labels"][KUEUE_QUEUE_LABEL] = spec.trial.queueName
    if study.uid:
        metadata["ownerReferences"] = owner_references(study)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 0,  # the controller decides retries, with the same params
            # Never a second pod for the same trial while the first is still terminating.
            "podReplacementPolicy": "Failed",
            "ttlSecondsAfterFinished": settings.job_ttl_seconds,
            "template": trial_pod_template(spec, labels, assignment, settings),
        },
    }
    return spread_over_nodes(job, spec, TRIAL_CONTAINER)  # trial.nodes > 1: an Indexed Job


def trial_pod_template(
    spec: StudySpec, labels: dict[str, str], assignment: Assignment, settings: TrialPodSettings
) -> dict[str, Any]:
    """The user's template with the controller's fields laid over it (see the module docstring)."""
    template = copy.deepcopy(spec.trial.template or {})
    meta = template.setdefault("metadata", {}) or {}
    template["metadata"] = meta
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    meta["finalizers"] = [
        *[f for f in meta.get("finalizers") or [] if f != ACCOUNTING_FINALIZER],
        ACCOUNTING_FINALIZER,
    ]
    for field in ("name", "namespace", "ownerReferences", "uid", "resourceVersion"):
        meta.pop(field, None)

    pod = template.setdefault("spec", {}) or {}
    template["spec"] = pod
    pod["restartPolicy"] = "Never"
    pod["activeDeadlineSeconds"] = spec.trial.maxDuration + settings.deadline_grace_seconds
    pod["serviceAccountName"] = settings.service_account
    pod["automountServiceAccountToken"] = False
    pod.pop("serviceAccount", None)  # the deprecated alias would contradict serviceAccountName
    pod["terminationGracePeriodSeconds"] = termination_grace(spec)
    for unsafe in ("hostNetwork", "hostPID", "hostIPC"):
        pod.pop(unsafe, None)
    pod_security = dict(pod.get("securityContext") or {})
    pod_security["runAsNonRoot"] = True
    pod_security["seccompProfile"] = {"type": "RuntimeDefault"}
    if pod_security.get("runAsUser") == 0:
        pod_security.pop("runAsUser")
    pod["securityContext"] = pod_security

    containers = [dict(c) for c in pod.get("containers") or []]
    trial_index = next((i for i, c in enumerate(containers) if c.get("name") == TRIAL_CONTAINER), None)
    user_trial = containers.pop(trial_index) if trial_index is not None else {}
    storage_env = settings.trial_storage_env(job_name(labels[STUDY_LABEL], assignment.trial_number), labels)
    trial = _trial_container(spec, user_trial, assignment, settings, storage_env)
    mount_checkpoints(spec, pod, trial)  # population-based training's volume, when the spec names one
    pod["containers"] = [trial, *(_harden(c) for c in containers)]
    if pod.get("initContainers"):
        pod["initContainers"] = [_harden(dict(c)) for c in pod["initContainers"]]
    return template


def _trial_container(
    spec: StudySpec,
    user: dict[str, Any],
    assignment: Assignment,
    settings: TrialPodSettings,
    storage_env: list[dict[str, Any]],
) -> dict[str, Any]:
    container = copy.deepcopy(user)
    container["name"] = TRIAL_CONTAINER
    container["image"] = spec.trial.image or container.get("image") or settings.default_image
    container["command"] = [WORKER_COMMAND]
    container.pop("args", None)
    reserved = {ASSIGNMENT_ENV, DB_PASSWORD_ENV, TOKEN_ENV, CA_ENV}
    env = [e for e in container.get("env") or [] if e.get("name") not in reserved]
    env.append({"name": ASSIGNMENT_ENV, "value": assignment.model_dump_json()})
    env.extend(storage_env)
    container["env"] = env
    container["resources"] = _resources(spec, container.get("resources") or {})
    return _harden(container)


def _resources(spec: StudySpec, user: dict[str, Any]) -> dict[str, Any]:
    """cpu/memory requests from the spec; GPUs as limits (and equal requests), never more."""
    requests = dict(user.get("requests") or {})
    limits = dict(user.get("limits") or {})
    requests["cpu"] = _cpu_quantity(spec.trial.cpus)
    if spec.trial.memory:
        requests["memory"] = spec.trial.memory
        limits.setdefault("memory", spec.trial.memory)
    requests.pop(GPU_RESOURCE, None)
    limits.pop(GPU_RESOURCE, None)
    if spec.trial.gpus:
        limits[GPU_RESOURCE] = str(spec.trial.gpus)
        requests[GPU_RESOURCE] = str(spec.trial.gpus)
    resources: dict[str, Any] = {"requests": requests}
    if limits:
        resources["limits"] = limits
    return resources


def _cpu_quantity(cpus: float) -> str:
    millis = round(cpus * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def _harden(container: dict[str, Any]) -> dict[str, Any]:
    security = dict(container.get("securityContext") or {})
    security.update(copy.deepcopy(_RESTRICTED_CONTAINER))
    if security.get("runAsUser") == 0:
        security.pop("runAsUser")
    for unsafe in ("procMount", "windowsOptions"):
        security.pop(unsafe, None)
    container["securityContext"] = security
    return container


def trial_service_account(namespace: str, settings: TrialPodSettings | None = None) -> dict[str, Any]:
    """The identity of trial pods: no API token mounted, no permissions granted."""
    settings = settings or TrialPodSettings()
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": settings.service_account,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: "tunefleet"},
        },
        "automountServiceAccountToken": False,
    }


def db_credentials_secret(
    namespace: str, password: str, settings: TrialPodSettings | None = None
) -> dict[str, Any]:
    """The database password mirrored into a study namespace, for trial pods' secretKeyRef."""
    settings = settings or TrialPodSettings()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": settings.db_secret_name,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: "tunefleet"},
        },
        "type": "Opaque",
        "stringData": {DB_SECRET_KEY: password},
    }


def best_config_map(study: StudyRef, best: dict[str, Any], yaml_text: str) -> dict[str, Any]:
    """ConfigMap ``<study>-best``: the best trial's params as JSON and YAML."""
    import json

    metadata: dict[str, Any] = {
        "name": f"{study.name}-best",
        "namespace": study.namespace,
        "labels": {STUDY_LABEL: study.name, MANAGED_BY_LABEL: "tunefleet"},
    }
    if study.uid:
        metadata["ownerReferences"] = owner_references(study, controller=False)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {
            "best_config.json": json.dumps(best, indent=2, sort_keys=True),
            "best_config.yaml": yaml_text,
        },
    }


EXPORT_LABEL = "tunefleet.dev/export"
EXPORT_VOLUME = "export"
EXPORT_MOUNT_PATH = "/tunefleet-export"
EXPORT_DEADLINE_SECONDS = 1800


def export_job_name(study_name: str) -> str:
    return f"{study_name}-export"


def export_job(
    spec: StudySpec,
    study: StudyRef,
    storage_url: str,
    settings: TrialPodSettings | None = None,
    mount_path: str = EXPORT_MOUNT_PATH,
) -> dict[str, Any]:
    """A short-lived Job that mounts ``spec.export``'s PVC and runs ``tunefleet export`` into it.

    The controller pod mounts no volume; this Job runs in the Study's namespace (where the PVC
    is), with the trial image (it holds ``tunefleet``) and the trial ServiceAccount (no token).
    With the trial gateway (``settings.gateway``) it reads through the gateway: ``storage_url`` is
    replaced by the gateway's, and its env takes a read-only token and the CA from the Secret the
    controller creates after it (:func:`controller.kube.trial_access.export_secret`), no password.
    Without it, the mirrored database password. It carries the export label, not the study label,
    so it is never taken for a trial. ``storage_url`` must carry no password.
    """
    if spec.export is None:
        raise ValueError("export: the spec sets no export (spec.export.persistentVolumeClaim)")
    if ".." in spec.export.path.split("/"):
        raise ValueError(f"export.path: {spec.export.path!r} must stay inside the volume (no '..')")
    settings = settings or TrialPodSettings()
    target = f"{mount_path.rstrip('/')}/{spec.export.path.strip('/')}".rstrip("/") or "/"
    labels = {EXPORT_LABEL: study.name, MANAGED_BY_LABEL: "tunefleet"}
    if study.uid:
        labels[STUDY_UID_LABEL] = study.uid  # names its gateway Secret apart from an earlier object's
    name = export_job_name(study.name)
    if settings.gateway is not None:
        storage_url = settings.gateway.storage_url
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": study.namespace,
        "labels": dict(labels),
    }
    if study.uid:
        metadata["ownerReferences"] = owner_references(study)
    container = _harden(
        {
            "name": "export",
            "image": spec.trial.image or settings.default_image,
            "command": [
                "tunefleet",
                "export",
                "--storage",
                storage_url,
                "--study",
                optuna_study_name(study),
                "--out",
                target,
            ],
            "env": [*settings.trial_storage_env(name, labels), {"name": "HOME", "value": "/tmp"}],
            "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
            "volumeMounts": [{"name": EXPORT_VOLUME, "mountPath": mount_path}],
        }
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": EXPORT_DEADLINE_SECONDS,
            "ttlSecondsAfterFinished": settings.job_ttl_seconds,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": settings.service_account,
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [
                        {
                            "name": EXPORT_VOLUME,
                            "persistentVolumeClaim": {"claimName": spec.export.persistentVolumeClaim},
                        }
                    ],
                },
            },
        },
    }
