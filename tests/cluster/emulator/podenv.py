"""What the kubelet resolves before starting a container: env, env references and argv."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ApiError
from .store import Store

_VAR_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_FIELD_RE = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class ContainerConfigError(Exception):
    """Answered by the kubelet as waiting reason `CreateContainerConfigError`."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """$(VAR) expansion as the kubelet does it; `$$` escapes and unknown refs stay as written."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)
    return _VAR_RE.sub(replace, text)


def _lookup(store: Store, plural: str, namespace: str, name: str, key: str | None,
            optional: bool) -> dict[str, str] | None:
    kind = "secret" if plural == "secrets" else "configmap"
    try:
        obj = store.get(store.find_type(plural), namespace, name)
    except ApiError:
        if optional:
            return None
        raise ContainerConfigError(f'{kind} "{name}" not found') from None
    data: dict[str, str] = {}
    for k, v in (obj.get("data") or {}).items():
        data[k] = base64.b64decode(v).decode(errors="replace") if plural == "secrets" else str(v)
    for k, v in (obj.get("binaryData") or {}).items():
        data[k] = base64.b64decode(v).decode(errors="replace")
    if key is not None and key not in data and not optional:
        kind_title = "Secret" if plural == "secrets" else "ConfigMap"
        raise ContainerConfigError(f"couldn't find key {key} in {kind_title} {namespace}/{name}")
    return data


def _field(pod: Mapping[str, Any], path: str) -> str:
    meta = pod.get("metadata") or {}
    if match := _FIELD_RE.match(path):
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName"),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName"),
        "status.podIP": (pod.get("status") or {}).get("podIP"),
        "status.hostIP": (pod.get("status") or {}).get("hostIP"),
    }
    if path not in simple:
        raise ContainerConfigError(f"unsupported fieldRef fieldPath {path!r}")
    return str(simple[path] or "")


def _resource_field(container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    section, _, resource = str(ref.get("resource", "")).partition(".")
    value = ((container.get("resources") or {}).get(section) or {}).get(resource)
    return str(value) if value is not None else "0"


def container_env(store: Store, pod: Mapping[str, Any], container: Mapping[str, Any],
                  base: Mapping[str, str]) -> dict[str, str]:
    """The environment of the container's process; raises ContainerConfigError."""
    namespace = str((pod.get("metadata") or {}).get("namespace", ""))
    env = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for plural, ref_key in (("secrets", "secretRef"), ("configmaps", "configMapRef")):
            ref = source.get(ref_key)
            if ref:
                data = _lookup(store, plural, namespace, ref["name"], None,
                               bool(ref.get("optional")))
                env.update({prefix + k: v for k, v in (data or {}).items()})
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(str(item.get("value", "")), env)
            continue
        source = item["valueFrom"]
        if ref := source.get("secretKeyRef"):
            data = _lookup(store, "secrets", namespace, ref["name"], ref["key"],
                           bool(ref.get("optional")))
            if data is not None and ref["key"] in data:
                env[name] = data[ref["key"]]
        elif ref := source.get("configMapKeyRef"):
            data = _lookup(store, "configmaps", namespace, ref["name"], ref["key"],
                           bool(ref.get("optional")))
            if data is not None and ref["key"] in data:
                env[name] = data[ref["key"]]
        elif ref := source.get("fieldRef"):
            env[name] = _field(pod, ref.get("fieldPath", ""))
        elif ref := source.get("resourceFieldRef"):
            env[name] = _resource_field(container, ref)
    return env


def container_argv(container: Mapping[str, Any], env: Mapping[str, str],
                   default_entrypoint: list[str] | None) -> list[str]:
    """command + args with $(VAR) expanded; the image's ENTRYPOINT is `default_entrypoint`."""
    command = list(container.get("command") or default_entrypoint or [])
    args = list(container.get("args") or [])
    return [expand(str(part), env) for part in command + args]


def volume_mounts(store: Store, pod: Mapping[str, Any], container: Mapping[str, Any],
                  volume_root: Path) -> dict[str, Path]:
    """mountPath -> host directory, for each persistentVolumeClaim the container mounts.

    A claim is the directory `<volume_root>/<namespace>/<claimName>` (created on first use), so
    every pod mounting it shares its files, as pods sharing a ReadWriteMany volume do; `subPath`
    is a directory below it. A claim that does not exist raises ContainerConfigError (the pod
    waits and is retried). Other volume types are not emulated and are ignored.
    """
    namespace = str((pod.get("metadata") or {}).get("namespace", ""))
    volumes = {v.get("name"): v for v in (pod.get("spec") or {}).get("volumes") or []}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        claim = (volumes.get(mount.get("name")) or {}).get("persistentVolumeClaim")
        if not claim:
            continue
        name = str(claim.get("claimName", ""))
        try:
            store.get(store.find_type("persistentvolumeclaims"), namespace, name)
        except ApiError:
            raise ContainerConfigError(f'persistentvolumeclaim "{name}" not found') from None
        host = volume_root / namespace / name / str(mount.get("subPath", ""))
        host.mkdir(parents=True, exist_ok=True)
        mounts[str(mount["mountPath"]).rstrip("/") or "/"] = host
    return mounts


def on_host(text: str, mounts: Mapping[str, Path]) -> str:
    """A path under a mountPath, as the process on this host can reach it (other text unchanged).

    A local process cannot see a mount at the container's path, so the kubelet rewrites env
    values and arguments that are a mountPath or start with one.
    """
    for mount_path in sorted(mounts, key=len, reverse=True):
        if text == mount_path or text.startswith(mount_path + "/"):
            return str(mounts[mount_path]) + text[len(mount_path):]
    return text
