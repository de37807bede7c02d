"""Label and field selectors, parsed once and matched against stored objects.

The grammar follows k8s.io/apimachinery/pkg/labels: comma-separated requirements, each one of
``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k`` (exists) and ``!k``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ApiError

_SET_RE = re.compile(r"^\s*([^\s!=()]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_CMP_RE = re.compile(r"^\s*([^\s!=()]+)\s*(==|=|!=)\s*([^\s,()]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)\s*([^\s!=()]+)\s*$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "=":
            return present and value in self.values
        if self.op == "!=":
            # Like the real API: a missing key satisfies inequality.
            return not present or value not in self.values
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            return not present or value not in self.values
        if self.op == "exists":
            return present
        return not present


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses (set-based values contain commas)."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


def parse_label_selector(text: str | None) -> list[Requirement]:
    if not text:
        return []
    requirements: list[Requirement] = []
    for part in _split_top_level(text):
        if match := _SET_RE.match(part):
            values = frozenset(v.strip() for v in match.group(3).split(",") if v.strip())
            requirements.append(Requirement(match.group(1), match.group(2), values))
        elif match := _CMP_RE.match(part):
            op = "!=" if match.group(2) == "!=" else "="
            requirements.append(Requirement(match.group(1), op, frozenset([match.group(3)])))
        elif match := _EXISTS_RE.match(part):
            op = "!exists" if match.group(1) else "exists"
            requirements.append(Requirement(match.group(2), op))
        else:
            raise ApiError.bad_request(f"unable to parse requirement: {part.strip()!r}")
    return requirements


def labels_match(requirements: list[Requirement], obj: Mapping[str, Any]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(req.matches(labels) for req in requirements)


# Field selectors the real API accepts, per resource plural; every kind accepts these two.
_COMMON_FIELDS = {"metadata.name", "metadata.namespace"}
_EXTRA_FIELDS: dict[str, set[str]] = {
    "pods": {
        "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
        "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName",
    },
    "events": {
        "involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
        "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
        "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type",
    },
    "secrets": {"type"},
    "namespaces": {"status.phase"},
    "jobs": {"status.successful"},
    "nodes": {"spec.unschedulable"},
}


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    negate: bool
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        node: Any = obj
        for part in self.path.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        actual = "" if node is None else str(node).lower() if isinstance(node, bool) else str(node)
        return (actual != self.value) if self.negate else (actual == self.value)


def parse_field_selector(text: str | None, plural: str, custom: bool) -> list[FieldRequirement]:
    if not text:
        return []
    allowed = _COMMON_FIELDS | _EXTRA_FIELDS.get(plural, set()) if not custom else _COMMON_FIELDS
    requirements: list[FieldRequirement] = []
    for part in _split_top_level(text):
        match = _CMP_RE.match(part)
        if not match:
            raise ApiError.bad_request(f"invalid selector: {text!r}; can't understand {part!r}")
        path, op, value = match.group(1), match.group(2), match.group(3)
        if path not in allowed:
            raise ApiError.bad_request(f'field label not supported: {path}')
        requirements.append(FieldRequirement(path, op == "!=", value))
    return requirements


def fields_match(requirements: list[FieldRequirement], obj: Mapping[str, Any]) -> bool:
    return all(req.matches(obj) for req in requirements)


def make_filter(
    namespace: str | None,
    label_selector: str | None,
    field_selector: str | None,
    plural: str,
    custom: bool,
) -> Callable[[Mapping[str, Any]], bool]:
    """Build one predicate for list and watch; raises ApiError(400) on bad selectors."""
    labels = parse_label_selector(label_selector)
    fields = parse_field_selector(field_selector, plural, custom)

    def predicate(obj: Mapping[str, Any]) -> bool:
        if namespace is not None and obj.get("metadata", {}).get("namespace") != namespace:
            return False
        return labels_match(labels, obj) and fields_match(fields, obj)

    return predicate
