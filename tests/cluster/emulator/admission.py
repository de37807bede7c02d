"""What the API server checks before it stores a custom resource: the CRD's schema and CEL rules.

Reproduced for the emulated API server and for unit tests of the generated CRDs:

- the OpenAPI v3 schema (checked with jsonschema, so the wording of these errors is jsonschema's,
  not the API server's; the field paths agree);
- ``x-kubernetes-list-type: map`` keys (``Duplicate value``);
- every ``x-kubernetes-validations`` rule, run by CEL's C++ implementation (cel-expr-python) on
  the values CEL sees: ``number`` fields as doubles, ``integer`` as ints, undeclared or untyped
  fields absent. Like the API server, CEL is skipped when a value has the wrong type. ``find`` and
  ``findAll`` (the Kubernetes regex library) are added here; tunefleet uses no other Kubernetes
  extension. ``self`` is typed ``dyn``, so a rule naming a field CEL cannot see fails when it runs
  (the API server refuses it when the CRD is created).

Errors come back as the API server's ``Status`` causes (reason, ``Invalid value: "object": ...``
body, field path with ``[key]`` for map keys and list indices).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import dataclass
from typing import Any

import jsonschema
from cel_expr_python import cel

Schema = dict[str, Any]

VALIDATIONS = "x-kubernetes-validations"
INT_OR_STRING = "x-kubernetes-int-or-string"
PRESERVE_UNKNOWN = "x-kubernetes-preserve-unknown-fields"
_BODY_PREFIX = {
    "FieldValueInvalid": "Invalid value: ",
    "FieldValueRequired": "Required value: ",
    "FieldValueForbidden": "Forbidden: ",
    "FieldValueDuplicate": "Duplicate value: ",
}
# Errors after which the API server runs no CEL rule (apiextensions' hasBlockingErr).
_BLOCKING = {
    "FieldValueNotSupported",
    "FieldValueRequired",
    "FieldValueTooLong",
    "FieldValueTooMany",
    "FieldValueTypeInvalid",
}
_NOT_CHECKED = (
    "some validation rules were not checked because the object was invalid; "
    "correct the existing errors to complete validation"
)


@dataclass(frozen=True)
class Cause:
    """One entry of a 422 ``Status``'s ``details.causes`` (``rule``: the CEL rule, if one failed)."""

    reason: str
    message: str
    field: str
    rule: str | None = None

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"

    def as_status(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}


# -- CEL ---------------------------------------------------------------------------------------


def _find(text: str, pattern: str) -> str:
    match = re.search(pattern, text)
    return match.group(0) if match else ""


def _find_all(text: str, pattern: str) -> list[str]:
    return [match.group(0) for match in re.finditer(pattern, text)]


_STRING = cel.Type.STRING
_ENVIRONMENT = cel.NewEnv(
    variables={"self": cel.Type.DYN},
    functions=[
        cel.FunctionDecl(
            "find",
            [
                cel.Overload(
                    "string_find_string",
                    return_type=_STRING,
                    parameters=[_STRING, _STRING],
                    is_member=True,
                    impl=_find,
                )
            ],
        ),
        cel.FunctionDecl(
            "findAll",
            [
                cel.Overload(
                    "string_find_all_string",
                    return_type=cel.Type.List(_STRING),
                    parameters=[_STRING, _STRING],
                    is_member=True,
                    impl=_find_all,
                )
            ],
        ),
    ],
)


class CelError(Exception):
    """A CEL expression that does not compile, or fails when evaluated."""


@functools.lru_cache(maxsize=1024)
def compile_rule(expression: str) -> cel.Expression:
    """A compiled CEL expression (``self`` typed dyn), compiled once per process."""
    try:
        return _ENVIRONMENT.compile(expression)
    except Exception as error:  # noqa: BLE001 - the binding raises plain exceptions
        raise CelError(f"{expression}: {error}") from None


def run(expression: str, self_value: Any) -> Any:
    """The value of ``expression`` for ``self``; :class:`CelError` if evaluation fails."""
    result = compile_rule(expression).eval(data={"self": self_value})
    if result.type() == cel.Type.ERROR:
        raise CelError(f"{expression}: {result.value()}")
    return result.value()


_ABSENT = object()


def cel_value(value: Any, schema: Schema) -> Any:
    """``value`` as CEL sees it under ``schema`` (doubles for ``number``), or ``_ABSENT``."""
    if schema.get(INT_OR_STRING):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            return _ABSENT
        return value
    kind = schema.get("type")
    if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if (kind, type(value)) in (("integer", int), ("string", str), ("boolean", bool)):
        return value
    if kind == "array" and isinstance(value, list) and isinstance(schema.get("items"), dict):
        items = [cel_value(item, schema["items"]) for item in value]
        return _ABSENT if any(item is _ABSENT for item in items) else items
    if kind == "object" and isinstance(value, dict):
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            entries = {key: cel_value(item, extra) for key, item in value.items()}
            return _ABSENT if any(item is _ABSENT for item in entries.values()) else entries
        fields = {}
        for name, sub in (schema.get("properties") or {}).items():
            if name in value and (converted := cel_value(value[name], sub)) is not _ABSENT:
                fields[name] = converted
        return fields
    return _ABSENT


def evaluate(rule: Schema, self_value: Any) -> tuple[bool, str]:
    """Whether ``rule`` holds for ``self_value``, and its message if it does not."""
    try:
        holds = run(rule["rule"], self_value)
    except CelError as error:
        return False, f"evaluation error: {error}"
    if holds is True:
        return True, ""
    message = rule.get("message") or f"failed rule: {rule['rule']}"
    if "messageExpression" in rule:
        try:
            built = run(rule["messageExpression"], self_value)
        except CelError:
            built = None  # like the API server: the static message stands in
        if isinstance(built, str) and built.strip():
            message = built
    return False, message


def _join(path: str, field_path: str) -> str:
    return path + field_path if field_path.startswith("[") else f"{path}{field_path}"


def _cel_causes(value: Any, schema: Schema, path: str) -> list[Cause]:
    causes: list[Cause] = []
    rules = schema.get(VALIDATIONS) or []
    if rules:
        self_value = cel_value(value, schema)
        self_value = None if self_value is _ABSENT else self_value
        for rule in rules:
            holds, message = evaluate(rule, self_value)
            if holds:
                continue
            reason = rule.get("reason", "FieldValueInvalid")
            prefix = _BODY_PREFIX.get(reason, "")
            if reason == "FieldValueInvalid" and not isinstance(value, (dict, list)):
                prefix += f"{json.dumps(value)}: "  # objects and lists are not printed
            field = _join(path, rule.get("fieldPath", ""))
            causes.append(Cause(reason, prefix + message, field, rule["rule"]))
    if isinstance(value, dict):
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if isinstance(extra, dict):
                causes += _cel_causes(item, extra, f"{path}[{key}]")
            elif key in (schema.get("properties") or {}):
                causes += _cel_causes(item, schema["properties"][key], f"{path}.{key}" if path else key)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            causes += _cel_causes(item, schema["items"], f"{path}[{index}]")
    return causes


# -- OpenAPI and list-map keys -----------------------------------------------------------------


def _bound_text(error: jsonschema.ValidationError) -> str:
    """The API server's words for a bound or pattern that a value breaks."""
    schema, limit = error.schema, error.validator_value
    if error.validator == "minimum":
        return (
            f"should be greater than {limit}"
            if schema.get("exclusiveMinimum")
            else (f"should be greater than or equal to {limit}")
        )
    if error.validator == "maximum":
        return (
            f"should be less than {limit}"
            if schema.get("exclusiveMaximum")
            else (f"should be less than or equal to {limit}")
        )
    if error.validator == "pattern":
        return f"should match '{limit}'"
    if error.validator == "minItems":
        return f"should have at least {limit} items"
    if error.validator == "minLength":
        return f"should be at least {limit} chars long"
    return str(error.message)


def _schema_causes(document: dict[str, Any], schema: Schema) -> list[Cause]:
    """What the OpenAPI schema refuses (the wording of rarer keywords is jsonschema's)."""
    causes: list[Cause] = []
    for error in jsonschema.Draft4Validator(schema).iter_errors(document):
        parts = list(error.absolute_path)
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
        value = error.instance
        if error.validator == "required":
            missing = error.message.split("'")[1]
            causes.append(Cause("FieldValueRequired", "Required value", f"{field}.{missing}".lstrip(".")))
        elif error.validator == "enum":
            allowed = ", ".join(json.dumps(v) for v in error.validator_value)
            body = f"Unsupported value: {json.dumps(value)}: supported values: {allowed}"
            causes.append(Cause("FieldValueNotSupported", body, field))
        elif error.validator in ("type", "anyOf"):
            causes.append(Cause("FieldValueTypeInvalid", f"Invalid value: {error.message}", field))
        elif error.validator in ("maxItems", "maxProperties"):
            body = f"Too many: {len(value)}: must have at most {error.validator_value} items"
            causes.append(Cause("FieldValueTooMany", body, field))
        elif error.validator == "maxLength":
            body = f"Too long: may not be more than {error.validator_value} bytes"
            causes.append(Cause("FieldValueTooLong", body, field))
        else:
            shown = len(value) if isinstance(value, (list, dict)) else json.dumps(value)
            body = f"Invalid value: {shown}: {field} in body {_bound_text(error)}"
            causes.append(Cause("FieldValueInvalid", body, field))
    return causes


def _duplicate_keys(value: Any, schema: Schema, path: str) -> list[Cause]:
    causes: list[Cause] = []
    if isinstance(value, list) and schema.get("x-kubernetes-list-type") == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen: set[str] = set()
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                continue
            key = json.dumps({k: item.get(k) for k in keys}, sort_keys=True)
            if key in seen:
                shown = json.dumps({k: item.get(k) for k in keys}, separators=(",", ":"))
                causes.append(Cause("FieldValueDuplicate", f"Duplicate value: {shown}", f"{path}[{index}]"))
            seen.add(key)
    if isinstance(value, dict):
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = extra if isinstance(extra, dict) else (schema.get("properties") or {}).get(key)
            if isinstance(sub, dict):
                causes += _duplicate_keys(item, sub, f"{path}.{key}" if path else key)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            causes += _duplicate_keys(item, schema["items"], f"{path}[{index}]")
    return causes


def _without_metadata(schema: Schema) -> Schema:
    """The served schema minus metadata, which the API server validates as ObjectMeta itself."""
    trimmed = copy.deepcopy(schema)
    trimmed.get("properties", {}).pop("metadata", None)
    return trimmed


def admission_causes(document: dict[str, Any], schema: Schema) -> list[Cause]:
    """Every reason the API server would refuse ``document`` under the CRD version's ``schema``."""
    body = {k: v for k, v in document.items() if k != "metadata"}
    causes = _schema_causes(body, _without_metadata(schema))
    name = (document.get("metadata") or {}).get("name")
    name_schema = schema.get("properties", {}).get("metadata", {}).get("properties", {}).get("name")
    pattern = (name_schema or {}).get("pattern")
    if isinstance(name, str) and pattern and not re.search(pattern, name):
        body_text = f"Invalid value: \"{name}\": metadata.name in body should match '{pattern}'"
        causes.append(Cause("FieldValueInvalid", body_text, "metadata.name"))
    causes += _duplicate_keys(body, schema, "")
    if VALIDATIONS not in json.dumps(schema):
        return causes  # no CEL validator at all, so nothing to skip either
    if any(cause.reason in _BLOCKING for cause in causes):
        causes.append(Cause("FieldValueInvalid", f"Invalid value: null: {_NOT_CHECKED}", "<nil>"))
    else:
        causes += _cel_causes(body, _without_metadata(schema), "")
    return causes


def invalid_message(qualified_kind: str, name: str, causes: list[Cause]) -> str:
    """The ``Status.message`` of a 422 from these causes, as the API server words it."""
    errors = [f"{c.field}: {c.message}" for c in causes]
    listed = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
    return f'{qualified_kind} "{name}" is invalid: {listed}'
