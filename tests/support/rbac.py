"""Kubernetes RBAC, evaluated as the API server's RBAC authorizer does, for tests.

Given Roles, ClusterRoles, RoleBindings and ClusterRoleBindings (the chart's, or those stored in
the emulated API server), says whether a user may make one request. Used by the chart tier (what
the chart grants the controller) and by the emulated API server (which answers 403 like a real one).

Covered: rules by apiGroups, resources (``resource/subresource``), verbs and resourceNames,
``*`` wildcards, RoleBindings to Roles or ClusterRoles (namespaced effect), ClusterRoleBindings,
subjects of kind ServiceAccount, User and Group (``system:serviceaccounts``,
``system:serviceaccounts:<ns>``, ``system:authenticated``). Not covered: aggregated ClusterRoles,
nonResourceURLs (discovery is open to every authenticated user on a real server too), and the
``resourceNames`` exception for list/watch with a ``metadata.name`` field selector.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

RBAC_GROUP = "rbac.authorization.k8s.io"


@dataclass(frozen=True)
class Subject:
    """Who asks: a user name and its groups, as the authenticator sets them."""

    user: str
    groups: tuple[str, ...] = ("system:authenticated",)

    @classmethod
    def service_account(cls, namespace: str, name: str) -> Subject:
        return cls(
            f"system:serviceaccount:{namespace}:{name}",
            ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
        )


@dataclass(frozen=True)
class Request:
    """One API request in the authorizer's terms."""

    verb: str
    group: str
    resource: str
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None

    def describe(self, subject: Subject) -> str:
        """The message a real API server puts in its 403 Status."""
        resource = self.resource + (f"/{self.subresource}" if self.subresource else "")
        what = f'{resource} "{self.name}"' if self.name else resource
        where = f' in the namespace "{self.namespace}"' if self.namespace else " at the cluster scope"
        return (
            f'{what} is forbidden: User "{subject.user}" cannot {self.verb} resource "{resource}" '
            f'in API group "{self.group}"{where}'
        )


def rule_allows(rule: Mapping[str, Any], request: Request) -> bool:
    verbs, groups = rule.get("verbs") or [], rule.get("apiGroups") or []
    if "*" not in verbs and request.verb not in verbs:
        return False
    if "*" not in groups and request.group not in groups:
        return False
    resources = rule.get("resources") or []
    wanted = f"{request.resource}/{request.subresource}" if request.subresource else request.resource
    if "*" not in resources and wanted not in resources:
        return False
    names = rule.get("resourceNames") or []
    return not names or (request.name is not None and request.name in names)


class Authorizer:
    """The RBAC objects of one moment; ``allows`` answers one request."""

    def __init__(self, objects: Iterable[Mapping[str, Any]]) -> None:
        self.roles: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
        self.cluster_roles: dict[str, list[Mapping[str, Any]]] = {}
        self.bindings: list[Mapping[str, Any]] = []
        self.cluster_bindings: list[Mapping[str, Any]] = []
        for obj in objects:
            kind, meta = obj.get("kind"), obj.get("metadata") or {}
            if kind == "Role":
                self.roles[(meta.get("namespace") or "", meta["name"])] = list(obj.get("rules") or [])
            elif kind == "ClusterRole":
                self.cluster_roles[meta["name"]] = list(obj.get("rules") or [])
            elif kind == "RoleBinding":
                self.bindings.append(obj)
            elif kind == "ClusterRoleBinding":
                self.cluster_bindings.append(obj)

    def _rules(self, ref: Mapping[str, Any], namespace: str) -> list[Mapping[str, Any]]:
        if ref.get("kind") == "ClusterRole":
            return self.cluster_roles.get(ref.get("name", ""), [])
        return self.roles.get((namespace, ref.get("name", "")), [])

    @staticmethod
    def _binds(binding: Mapping[str, Any], subject: Subject) -> bool:
        for entry in binding.get("subjects") or []:
            kind, name = entry.get("kind"), entry.get("name")
            if kind == "ServiceAccount":
                if subject.user == f"system:serviceaccount:{entry.get('namespace')}:{name}":
                    return True
            elif (kind == "User" and name == subject.user) or (kind == "Group" and name in subject.groups):
                return True
        return False

    def rules_for(self, subject: Subject, namespace: str | None) -> list[Mapping[str, Any]]:
        """Every rule that applies to ``subject`` for a request in ``namespace`` (None: cluster scope)."""
        rules: list[Mapping[str, Any]] = []
        for binding in self.cluster_bindings:
            if self._binds(binding, subject):
                rules += self._rules(binding.get("roleRef") or {}, "")
        if namespace is not None:
            for binding in self.bindings:
                in_namespace = (binding.get("metadata") or {}).get("namespace") == namespace
                if in_namespace and self._binds(binding, subject):
                    rules += self._rules(binding.get("roleRef") or {}, namespace)
        return rules

    def allows(self, subject: Subject, request: Request) -> bool:
        if "system:masters" in subject.groups:
            return True
        return any(rule_allows(rule, request) for rule in self.rules_for(subject, request.namespace))
