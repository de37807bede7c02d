"""Resource types the emulator serves: the built-in ones, CRD-defined ones, and discovery."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
# Groups whose objects are Go structs in a real server (strategic merge patch allowed, list
# items without kind/apiVersion); everything else behaves as a custom resource.
BUILTIN_GROUPS = frozenset({
    "", "batch", "coordination.k8s.io", "events.k8s.io", "apiextensions.k8s.io", "apps",
    "rbac.authorization.k8s.io",
})


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    subresources: frozenset[str] = frozenset()
    # Only for CRDs: the version's openAPIV3Schema, used to prune unknown fields.
    schema: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:
        """Storage key: all versions of one group/plural share their objects."""
        return (self.group, self.plural)

    @property
    def custom(self) -> bool:
        return self.group not in BUILTIN_GROUPS

    @property
    def display(self) -> str:
        """The name kubectl would print, e.g. `pods`, `jobs.batch`, `studies.tunefleet.dev`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    def discovery(self) -> list[dict[str, Any]]:
        entry = {
            "name": self.plural,
            "singularName": self.singular or self.kind.lower(),
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(ALL_VERBS),
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        entries = [entry]
        for sub in sorted(self.subresources):
            verbs = {"log": ["get"], "token": ["create"]}.get(sub, ["get", "patch", "update"])
            kind = {"log": "Pod", "token": "TokenRequest"}.get(sub, self.kind)
            entries.append({"name": f"{self.plural}/{sub}", "singularName": "",
                            "namespaced": self.namespaced, "kind": kind, "verbs": verbs})
        return entries


def _t(api_version: str, plural: str, kind: str, namespaced: bool = True,
       subresources: Iterable[str] = (), short_names: tuple[str, ...] = ()) -> ResourceType:
    group, _, version = api_version.rpartition("/")
    return ResourceType(group, version, plural, kind, namespaced, kind.lower(), short_names,
                        frozenset(subresources))


BUILTIN_TYPES: tuple[ResourceType, ...] = (
    _t("v1", "namespaces", "Namespace", False, ["status"], ("ns",)),
    _t("v1", "nodes", "Node", False, ["status"], ("no",)),
    _t("v1", "pods", "Pod", True, ["status", "log"], ("po",)),
    _t("v1", "secrets", "Secret"),
    _t("v1", "configmaps", "ConfigMap", short_names=("cm",)),
    _t("v1", "serviceaccounts", "ServiceAccount", True, ["token"], ("sa",)),
    _t("v1", "services", "Service", True, ["status"], ("svc",)),
    _t("v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, ["status"], ("pvc",)),
    _t("v1", "events", "Event", short_names=("ev",)),
    _t("batch/v1", "jobs", "Job", True, ["status"]),
    _t("batch/v1", "cronjobs", "CronJob", True, ["status"], ("cj",)),
    _t("coordination.k8s.io/v1", "leases", "Lease"),
    _t("events.k8s.io/v1", "events", "Event", short_names=("ev",)),
    _t("apiextensions.k8s.io/v1", "customresourcedefinitions", "CustomResourceDefinition", False,
       ["status"], ("crd", "crds")),
    _t("rbac.authorization.k8s.io/v1", "roles", "Role"),
    _t("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding"),
    _t("rbac.authorization.k8s.io/v1", "clusterroles", "ClusterRole", False),
    _t("rbac.authorization.k8s.io/v1", "clusterrolebindings", "ClusterRoleBinding", False),
)

# kopf's peering resources are CRDs in a real cluster; the emulator pre-installs them as CRDs.
_PRESERVE = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
KOPF_PEERING_CRDS: tuple[dict[str, Any], ...] = tuple(
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kopf.dev"},
        "spec": {
            "group": "kopf.dev",
            "scope": scope,
            "names": {"plural": plural, "singular": plural[:-1], "kind": kind},
            "versions": [{"name": "v1", "served": True, "storage": True,
                          "schema": {"openAPIV3Schema": _PRESERVE}}],
        },
    }
    for plural, kind, scope in (
        ("kopfpeerings", "KopfPeering", "Namespaced"),
        ("clusterkopfpeerings", "ClusterKopfPeering", "Cluster"),
    )
)


def types_from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """One ResourceType per served version of a CustomResourceDefinition."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    types: list[ResourceType] = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        subresources = set((version.get("subresources") or {}).keys())
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        types.append(ResourceType(
            group=spec.get("group", ""),
            version=version["name"],
            plural=names.get("plural", ""),
            kind=names.get("kind", ""),
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            singular=names.get("singular", ""),
            short_names=tuple(names.get("shortNames") or ()),
            subresources=frozenset(subresources & {"status", "scale"}),
            schema=schema,
        ))
    return types


def prune(value: Any, schema: dict[str, Any] | None) -> Any:
    """Structural-schema pruning: drop fields the schema does not declare, like the real API.

    This is what silently loses operator state when a status schema lacks
    `x-kubernetes-preserve-unknown-fields`; the emulator reproduces it on purpose.
    """
    if schema is None or schema.get("x-kubernetes-preserve-unknown-fields"):
        if isinstance(value, dict) and schema and "properties" in schema:
            keep = {"x-kubernetes-preserve-unknown-fields": True}
            return {k: prune(v, schema["properties"].get(k, keep)) for k, v in value.items()}
        return value
    if schema.get("x-kubernetes-int-or-string") or schema.get("x-kubernetes-embedded-resource"):
        return value
    if isinstance(value, dict):
        properties = schema.get("properties")
        additional = schema.get("additionalProperties")
        if properties is not None:
            return {k: prune(v, properties[k]) for k, v in value.items() if k in properties}
        if isinstance(additional, dict):
            return {k: prune(v, additional) for k, v in value.items()}
        if additional is True:
            return value
        return {}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(item, schema["items"]) for item in value]
    return value


def prune_custom_object(obj: dict[str, Any], schema: dict[str, Any] | None) -> dict[str, Any]:
    """Prune everything but apiVersion/kind/metadata, which the server always keeps."""
    if schema is None:
        return obj
    kept = {k: obj[k] for k in ("apiVersion", "kind", "metadata") if k in obj}
    rest = {k: v for k, v in obj.items() if k not in kept}
    pruned = prune(rest, schema)
    return {**kept, **(pruned if isinstance(pruned, dict) else {})}


def api_versions() -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                            "serverAddress": "127.0.0.1"}]}


def group_list(types: Iterable[ResourceType]) -> dict[str, Any]:
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [api_group(group, versions) for group, versions in _groups(types).items()]}


def _groups(types: Iterable[ResourceType]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for rt in types:
        if rt.group and rt.version not in groups.setdefault(rt.group, []):
            groups[rt.group].append(rt.version)
    return groups


def api_group(group: str, versions: list[str]) -> dict[str, Any]:
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": entries,
            "preferredVersion": entries[0]}


def group_versions(types: Iterable[ResourceType], group: str) -> list[str]:
    return _groups(types).get(group, [])


def resource_list(types: Iterable[ResourceType], group: str, version: str) -> dict[str, Any]:
    api_version = f"{group}/{version}" if group else version
    resources = [entry for rt in types if rt.group == group and rt.version == version
                 for entry in rt.discovery()]
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api_version,
            "resources": resources}


SERVER_VERSION = {
    "major": "1", "minor": "31", "gitVersion": "v1.31.0-tunefleet-emulator",
    "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z", "goVersion": "go1.22.5", "compiler": "gc",
    "platform": "linux/amd64",
}
