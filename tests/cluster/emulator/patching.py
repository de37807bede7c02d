"""The three patch flavours of the Kubernetes API: merge, JSON and (simplified) strategic merge."""

from __future__ import annotations

import copy
from typing import Any

from .errors import ApiError

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# patchMergeKey of the list fields that matter for pods, jobs and object metadata.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "conditions": "type",
    "ownerReferences": "uid",
    "tolerations": "key",
    "containerStatuses": "name",
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, field: str = "") -> Any:
    """Merge patch, except lists with a known merge key merge item by item.

    Supports the `$patch: delete` / `$patch: replace` directives on map items; other directives
    (`$setElementOrder`, `$retainKeys`, `$deleteFromPrimitiveList`) are dropped.
    """
    if isinstance(patch, dict):
        directive = patch.get("$patch")
        if directive == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
        result = dict(target) if isinstance(target, dict) else {}
        for key, value in patch.items():
            if key.startswith("$"):
                continue
            if value is None:
                result.pop(key, None)
            else:
                result[key] = strategic_merge_patch(result.get(key), value, key)
        return result
    if isinstance(patch, list) and field in _MERGE_KEYS and isinstance(target, list):
        return _merge_list(target, patch, _MERGE_KEYS[field])
    return copy.deepcopy(patch)


def _merge_list(target: list[Any], patch: list[Any], key: str) -> list[Any]:
    if not all(isinstance(item, dict) for item in target + patch):
        return copy.deepcopy(patch)
    result = [copy.deepcopy(item) for item in target]
    for item in patch:
        index = next((i for i, old in enumerate(result) if old.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append({k: copy.deepcopy(v) for k, v in item.items() if not k.startswith("$")})
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"invalid JSON pointer: {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _resolve(doc: Any, parts: list[str]) -> Any:
    node = doc
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise ApiError(422, "Invalid", f"the server rejected our request due to an error in "
                           f"our request: path /{'/'.join(parts)} does not exist")
    return node


def _add(doc: Any, parts: list[str], value: Any, replace: bool) -> Any:
    if not parts:
        return value
    parent = _resolve(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise ApiError(422, "Invalid", f"replace operation does not apply: doc is missing "
                           f"key: /{'/'.join(parts)}")
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(last)] = value
            else:
                parent.insert(int(last), value)
        else:
            raise ApiError(422, "Invalid", f"index out of range: /{'/'.join(parts)}")
    else:
        raise ApiError(422, "Invalid", f"cannot add to a scalar at /{'/'.join(parts)}")
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    parent = _resolve(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise ApiError(422, "Invalid", f"unable to remove nonexistent key: /{'/'.join(parts)}")


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 on a deep copy; a failed `test` answers 422 like the real API."""
    if not isinstance(operations, list):
        raise ApiError.bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for operation in operations:
        op = operation.get("op")
        parts = _pointer(operation.get("path", ""))
        if op == "add":
            doc = _add(doc, parts, copy.deepcopy(operation.get("value")), replace=False)
        elif op == "replace":
            doc = _add(doc, parts, copy.deepcopy(operation.get("value")), replace=True)
        elif op == "remove":
            _remove(doc, parts)
        elif op in ("move", "copy"):
            source = _pointer(operation.get("from", ""))
            value = _remove(doc, source) if op == "move" else copy.deepcopy(_resolve(doc, source))
            doc = _add(doc, parts, value, replace=False)
        elif op == "test":
            if _resolve(doc, parts) != operation.get("value"):
                raise ApiError(422, "Invalid", f"testing value /{'/'.join(parts)} failed")
        else:
            raise ApiError.bad_request(f"unexpected json patch operation {op!r}")
    return doc


def apply_patch(current: dict[str, Any], body: Any, content_type: str, custom: bool) -> Any:
    """Dispatch on the request's Content-Type, answering 415 where the real API does."""
    if content_type == MERGE_PATCH or content_type == "application/json":
        return merge_patch(current, body)
    if content_type == JSON_PATCH:
        return json_patch(current, body)
    if content_type == STRATEGIC_MERGE_PATCH:
        if custom:
            # Custom resources have no Go struct tags, so the real API refuses this flavour.
            raise ApiError(415, "UnsupportedMediaType",
                           f'the body of the request was in an unknown format - accepted media '
                           f'types include: {JSON_PATCH}, {MERGE_PATCH}, {APPLY_PATCH}')
        return strategic_merge_patch(current, body)
    raise ApiError(415, "UnsupportedMediaType",
                   f"the emulator does not support patches of type {content_type!r}")
