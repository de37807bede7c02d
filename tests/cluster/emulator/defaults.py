"""Per-kind defaulting and validation that the real API server does and clients rely on.

Only what a controller can observe is reproduced: defaulted fields it reads, and the
rejections (422) it must handle. Schemas of built-in kinds are otherwise not validated.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

from .errors import ApiError
from .resources import ResourceType

JOB_TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"


def default_on_create(rt: ResourceType, obj: dict[str, Any]) -> None:
    """Fill in server-side defaults after metadata (uid, timestamps) is set."""
    handler = _CREATE.get(rt.key)
    if handler is not None:
        handler(obj)


def validate_update(rt: ResourceType, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Reject updates the real API rejects; internal writers (kubelet, controllers) skip this."""
    if rt.key == ("", "pods"):
        _validate_pod_update(old, new)
    elif rt.key == ("batch", "jobs"):
        for path in ("template", "selector", "completions", "completionMode"):
            if (old.get("spec") or {}).get(path) != (new.get("spec") or {}).get(path):
                raise ApiError.invalid("Job", _name(new), f"spec.{path}: Invalid value: "
                                       f"field is immutable")
    elif rt.key == ("", "secrets"):
        _fold_string_data(new)


def _name(obj: dict[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


def _namespace(obj: dict[str, Any]) -> None:
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
    obj["status"] = {"phase": "Active"}
    labels = obj["metadata"].setdefault("labels", {})
    labels["kubernetes.io/metadata.name"] = _name(obj)


def _validate_containers(kind: str, name: str, pod_spec: dict[str, Any], prefix: str) -> None:
    containers = pod_spec.get("containers") or []
    if not containers:
        raise ApiError.invalid(kind, name, f"{prefix}.containers: Required value")
    for index, container in enumerate(containers):
        for key in ("name", "image"):
            if not container.get(key):
                raise ApiError.invalid(kind, name, f"{prefix}.containers[{index}].{key}: "
                                       "Required value")
    deadline = pod_spec.get("activeDeadlineSeconds")
    if deadline is not None and (not isinstance(deadline, int) or deadline <= 0):
        raise ApiError.invalid(kind, name, f"{prefix}.activeDeadlineSeconds: Invalid value: "
                               f"{deadline}: must be between 1 and 2147483647, inclusive")


def _default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("securityContext", {})
    for container in spec.get("containers") or []:
        container.setdefault("imagePullPolicy",
                             "Always" if str(container.get("image", "")).endswith(":latest")
                             or ":" not in str(container.get("image", "")) else "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        resources = container.setdefault("resources", {})
        for section in ("limits", "requests"):
            # Quantities come back as strings (`1`, `500m`), whatever JSON number was sent.
            if isinstance(resources.get(section), dict):
                resources[section] = {k: str(v) for k, v in resources[section].items()}


def _qos_class(spec: dict[str, Any]) -> str:
    resources = [c.get("resources") or {} for c in spec.get("containers") or []]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        r.get("limits", {}).get(k) is not None
        and r.get("requests", {}).get(k, r["limits"][k]) == r["limits"][k]
        for r in resources for k in ("cpu", "memory")
    )
    return "Guaranteed" if guaranteed else "Burstable"


def _pod(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    _validate_containers("Pod", _name(obj), spec, "spec")
    _default_pod_spec(spec)
    obj["status"] = {"phase": "Pending", "qosClass": _qos_class(spec)}


def _job(obj: dict[str, Any]) -> None:
    name = _name(obj)
    uid = obj["metadata"]["uid"]
    spec = obj.setdefault("spec", {})
    template = spec.setdefault("template", {})
    pod_spec = template.setdefault("spec", {})
    _validate_containers("Job", name, pod_spec, "spec.template.spec")
    if pod_spec.get("restartPolicy") not in ("Never", "OnFailure"):
        raise ApiError.invalid("Job", name, 'spec.template.spec.restartPolicy: Required value: '
                               'valid values: "OnFailure", "Never"')
    _default_pod_spec(pod_spec)
    for key, default in (("backoffLimit", 6), ("completions", 1), ("parallelism", 1),
                         ("completionMode", "NonIndexed"), ("suspend", False),
                         ("manualSelector", False), ("podReplacementPolicy", "TerminatingOrFailed")):
        spec.setdefault(key, default)
    controller_labels = {"batch.kubernetes.io/controller-uid": uid, "controller-uid": uid,
                         "batch.kubernetes.io/job-name": name, "job-name": name}
    spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
    template.setdefault("metadata", {}).setdefault("labels", {}).update(controller_labels)
    obj["metadata"].setdefault("labels", {}).update(
        {k: v for k, v in controller_labels.items() if "job-name" in k or k.endswith("uid")})
    obj["status"] = {}


def _fold_string_data(obj: dict[str, Any]) -> None:
    string_data = obj.pop("stringData", None) or {}
    if string_data:
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()


def _secret(obj: dict[str, Any]) -> None:
    obj.setdefault("type", "Opaque")
    _fold_string_data(obj)


def _crd(obj: dict[str, Any]) -> None:
    spec = obj.get("spec") or {}
    names = spec.get("names") or {}
    expected = f"{names.get('plural')}.{spec.get('group')}"
    if _name(obj) != expected:
        raise ApiError.invalid("CustomResourceDefinition", _name(obj),
                               f'metadata.name: Invalid value: "{_name(obj)}": must be '
                               f'spec.names.plural+"."+spec.group')
    if not spec.get("versions"):
        raise ApiError.invalid("CustomResourceDefinition", _name(obj),
                               "spec.versions: Invalid value: must have exactly one version "
                               "marked as storage version")
    accepted = copy.deepcopy(names)
    accepted.setdefault("singular", str(names.get("kind", "")).lower())
    accepted.setdefault("listKind", f"{names.get('kind')}List")
    conditions = [
        {"type": t, "status": "True", "reason": r, "message": m,
         "lastTransitionTime": obj["metadata"]["creationTimestamp"]}
        for t, r, m in (("NamesAccepted", "NoConflicts", "no conflicts found"),
                        ("Established", "InitialNamesAccepted", "the initial names have been accepted"))
    ]
    obj["status"] = {"acceptedNames": accepted, "conditions": conditions,
                     "storedVersions": [v["name"] for v in spec["versions"] if v.get("storage")]}


_CREATE = {
    ("", "namespaces"): _namespace,
    ("", "pods"): _pod,
    ("batch", "jobs"): _job,
    ("", "secrets"): _secret,
    ("apiextensions.k8s.io", "customresourcedefinitions"): _crd,
}

# Pod spec fields a client may change after creation (the real API refuses everything else).
_MUTABLE_POD_FIELDS = {"activeDeadlineSeconds", "tolerations", "schedulingGates"}


def _validate_pod_update(old: dict[str, Any], new: dict[str, Any]) -> None:
    old_spec = copy.deepcopy(old.get("spec") or {})
    new_spec = copy.deepcopy(new.get("spec") or {})
    for spec in (old_spec, new_spec):
        for key in _MUTABLE_POD_FIELDS:
            spec.pop(key, None)
        for container in spec.get("containers") or []:
            container.pop("image", None)
    if old_spec != new_spec:
        raise ApiError.invalid("Pod", _name(new), "spec: Forbidden: pod updates may not change "
                               "fields other than `spec.containers[*].image`, "
                               "`spec.activeDeadlineSeconds`, `spec.tolerations` (only additions "
                               "to existing tolerations)")
