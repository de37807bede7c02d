"""Discriminated unions in a CRD: one merged object schema, and CEL rules for what the merge loses.

A structural schema has no ``oneOf``, so the search space's parameter types (float, int,
categorical) become one object holding every variant's properties. What OpenAPI then no longer
says per type comes back as CEL rules keyed on the discriminator (``self.type``):

- each variant's own rules (``spec_rules`` of its model), guarded by its type;
- a variant's required properties (``is required but missing``);
- properties of other variants (``unknown field; allowed here: ...``), as pydantic says it;
- integer properties merged into ``number`` (``must be a valid integer, ...``).

A property CEL cannot see (untyped values, like categorical choices) gets no rule: it is listed
in :attr:`MergedUnion.unchecked` and stays with the controller's ``Invalid`` condition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from controller.spec.rules import VALIDATIONS

Schema = dict[str, Any]

INT_OR_STRING = "x-kubernetes-int-or-string"
PRESERVE_UNKNOWN = "x-kubernetes-preserve-unknown-fields"
# Every double this large is a whole number, and int() of a larger one overflows in CEL.
_EXACT_INTEGERS = 9007199254740992.0


@dataclass
class MergedUnion:
    """The merged object schema of a discriminated union and what its CEL cannot check."""

    schema: Schema
    unchecked: list[str] = field(default_factory=list)


def cel_visible(schema: Schema) -> bool:
    """Whether CEL rules can see values of this schema (Kubernetes' ``SchemaDeclType``).

    Untyped nodes that keep unknown fields are invisible, and so are lists and maps of them.
    """
    if schema.get(INT_OR_STRING):
        return True
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items")
        return isinstance(items, dict) and cel_visible(items)
    if kind == "object":
        extra = schema.get("additionalProperties")
        return cel_visible(extra) if isinstance(extra, dict) else True
    return kind in ("string", "boolean", "number", "integer")


def merge_union(variants: list[Schema], discriminator: str | None) -> MergedUnion:
    """One object schema for the union; with a discriminator, CEL rules restore each variant."""
    properties: dict[str, Schema] = {}
    for variant in variants:
        for name, prop in variant.get("properties", {}).items():
            properties[name] = merge_property(properties[name], prop) if name in properties else prop
    required = set.intersection(*(set(v.get("required", [])) for v in variants))
    merged: Schema = {"type": "object", "properties": properties}
    if required:
        merged["required"] = [name for name in properties if name in required]
    result = MergedUnion(merged)
    if discriminator is not None:
        rules = _variant_rules(variants, merged, discriminator, result.unchecked)
        if rules:
            merged[VALIDATIONS] = rules
    return result


def merge_property(left: Schema, right: Schema) -> Schema:
    """A property two variants declare: what both accept (the looser bounds, number over integer)."""
    if left == right:
        return left
    if "enum" in left and "enum" in right and left.get("type") == right.get("type"):
        # The discriminator: each variant contributes its constant.
        values = list(left["enum"]) + [v for v in right["enum"] if v not in left["enum"]]
        return {**left, "enum": values}
    kinds = {left.get("type"), right.get("type")}
    if len(kinds) == 1 and None not in kinds:
        return {k: v for k, v in left.items() if right.get(k) == v}
    if kinds == {"integer", "number"}:
        merged: Schema = {"type": "number"}
        if left.get("description") == right.get("description") and "description" in left:
            merged["description"] = left["description"]
        merged.update(_looser_minimum(left, right))
        return merged
    return {PRESERVE_UNKNOWN: True}


def _looser_minimum(left: Schema, right: Schema) -> Schema:
    """The lower bound both variants satisfy (an integer's ``>= 1`` is a number's ``> 0``)."""
    bounds = [bound for side in (left, right) if (bound := _lower_bound(side)) is not None]
    if len(bounds) < 2:
        return {}
    low, exclusive = min(bounds)  # the lower value; at a tie, the inclusive bound (False < True)
    return {"minimum": low, "exclusiveMinimum": True} if exclusive else {"minimum": low}


def _lower_bound(schema: Schema) -> tuple[float, bool] | None:
    if "minimum" not in schema:
        return None
    low, exclusive = schema["minimum"], bool(schema.get("exclusiveMinimum"))
    if schema.get("type") == "integer" and not exclusive:
        return (low - 1, True)  # for integers, >= n is > n - 1
    return (low, exclusive)


def _variant_rules(
    variants: list[Schema], merged: Schema, discriminator: str, unchecked: list[str]
) -> list[Schema]:
    rules: list[Schema] = []
    shared: dict[str, tuple[Schema, list[str], list[set[str]]]] = {}
    for variant in variants:
        tag = variant["properties"][discriminator]["enum"][0]
        own = variant.get("properties", {})
        needed = {name for name in variant.get("required", []) if name != discriminator}
        is_tag = f"self.{discriminator} == '{tag}'"
        for name in sorted(needed - set(merged.get("required", []))):
            if not cel_visible(own[name]):
                unchecked.append(f"{tag}: {name} is required")
                continue
            rules.append(
                _rule(
                    f"!({is_tag}) || has(self.{name})", "is required but missing", name, "FieldValueRequired"
                )
            )
        allowed = ", ".join(own)
        for name in merged["properties"]:
            if name in own:
                continue
            if not cel_visible(merged["properties"][name]):
                unchecked.append(f"{tag}: {name} is not allowed")
                continue
            message = f"unknown field; allowed here: {allowed}"
            rules.append(_rule(f"!({is_tag}) || !has(self.{name})", message, name, "FieldValueForbidden"))
        for name, prop in own.items():
            if prop.get("type") == "integer" and merged["properties"][name].get("type") == "number":
                rules.append(_whole_number_rule(is_tag, name))
            _check_bounds_kept(tag, name, prop, merged["properties"][name])
        for entry in variant.get(VALIDATIONS, []):
            key = json.dumps(entry, sort_keys=True)
            visible_needed = {name for name in needed if cel_visible(own[name])}
            if key in shared:
                shared[key][1].append(tag)
                shared[key][2].append(visible_needed)
            else:
                shared[key] = (entry, [tag], [visible_needed])
    for entry, tags, needs in shared.values():
        rules.append(_guarded(entry, discriminator, tags, set.intersection(*needs)))
    return rules


def _rule(cel: str, message: str, name: str, reason: str) -> Schema:
    return {"rule": cel, "message": message, "fieldPath": f".{name}", "reason": reason}


def _whole_number_rule(is_tag: str, name: str) -> Schema:
    value = f"self.{name}"
    whole = (
        f"{value} >= {_EXACT_INTEGERS} || {value} <= -{_EXACT_INTEGERS} || double(int({value})) == {value}"
    )
    return {
        "rule": f"!({is_tag}) || !has({value}) || {whole}",
        "message": "must be a valid integer, got a number with a fractional part",
        "fieldPath": f".{name}",
    }


def _check_bounds_kept(tag: str, name: str, own: Schema, merged: Schema) -> None:
    """Refuse to build a CRD that silently drops a variant's bound (add a rule for it instead)."""
    if own.get("type") not in ("integer", "number") or own == merged:
        return
    lost: list[str] = [
        k for k in ("maximum", "exclusiveMaximum", "multipleOf") if k in own and own.get(k) != merged.get(k)
    ]
    mine = _lower_bound(own)
    if mine is not None and _lower_bound(merged) != mine:
        lost.append("minimum")
    if lost:
        raise ValueError(f"merging {tag}.{name} into one schema loses {lost}; give it a CEL rule")


def _guarded(entry: Schema, discriminator: str, tags: list[str], needed: set[str]) -> Schema:
    """A variant's own rule, applied only to objects of its type that have its required fields."""
    if len(tags) == 1:
        conditions = [f"self.{discriminator} != '{tags[0]}'"]
    else:
        conditions = [f"!(self.{discriminator} in {json.dumps(tags).replace(chr(34), chr(39))})"]
    conditions += [f"!has(self.{name})" for name in sorted(needed)]
    return {**entry, "rule": " || ".join([*conditions, f"({entry['rule']})"])}
