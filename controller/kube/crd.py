"""The Study and GPUBudget CustomResourceDefinitions, generated from the pydantic spec models.

The pydantic models in :mod:`controller.spec` are the single source of truth. Their JSON schema is
turned into a *structural* OpenAPI v3 schema, the subset Kubernetes accepts for CRDs: every node
typed, references inlined, no ``oneOf``. What OpenAPI cannot say (cross-field rules such as
``low <= high``) the models declare as :class:`controller.spec.rules.Rule` objects; their CEL
reaches the schema as ``x-kubernetes-validations``, so the API server refuses what the CLI and
the controller refuse. The few rules CEL cannot express stay with the controller (docs/validation.md).

Example:
    >>> crds = build_crds()
    >>> [crd["metadata"]["name"] for crd in crds]
    ['studies.tunefleet.dev', 'gpubudgets.tunefleet.dev']
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel

from controller.kube.crd_unions import INT_OR_STRING, PRESERVE_UNKNOWN, merge_union
from controller.spec import GPUBudgetManifest, GPUBudgetSpec, StudyManifest, StudySpec
from controller.spec.rules import VALIDATIONS

GROUP = "tunefleet.dev"
VERSION = "v1alpha1"
CATEGORY = "tunefleet"

Schema = dict[str, Any]

# Validation keywords OpenAPI v3 (as Kubernetes reads it) shares with JSON schema, copied as they are.
_KEPT_KEYWORDS = (
    "description",
    "enum",
    "minimum",
    "maximum",
    "pattern",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
    "multipleOf",
    VALIDATIONS,
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
)


class _Converter:
    """Turns one pydantic JSON schema (with its ``$defs``) into a structural OpenAPI schema."""

    def __init__(self, root: Schema) -> None:
        self._defs: dict[str, Schema] = root.get("$defs", {})
        self.unchecked: list[str] = []
        """What merged unions lose that CEL cannot see (see crd_unions)."""

    def resolve(self, node: Schema) -> Schema:
        """Inline ``$ref``; sibling keys (pydantic puts descriptions there) override the target."""
        while "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            target = self._defs[name]
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            node = {**target, **siblings}
        return node

    def convert(self, node: Schema) -> Schema:
        node = self.resolve(node)
        if node.get(INT_OR_STRING):
            return self._int_or_string(node)
        variants = node.get("anyOf") or node.get("oneOf")
        if variants is not None:
            return self._union(node, [self.resolve(v) for v in variants])
        if "const" in node:
            node = {**node, "enum": [node["const"]]}
        kind = node.get("type")
        if kind is None:
            # `Any`: anything goes, and the API server must keep it as written.
            return _with_description({PRESERVE_UNKNOWN: True}, node)
        if isinstance(kind, list):
            return self._union(node, [{**node, "type": k} for k in kind])
        out: Schema = {"type": kind}
        for keyword in _KEPT_KEYWORDS:
            if keyword in node:
                out[keyword] = copy.deepcopy(node[keyword])
        if VALIDATIONS in out:
            out[VALIDATIONS] = _ordered_rules(out[VALIDATIONS])
        _convert_exclusive_bounds(node, out)
        if kind == "object":
            self._object(node, out)
        elif kind == "array":
            items = node.get("items")
            out["items"] = self.convert(items) if items else {PRESERVE_UNKNOWN: True}
        return out

    def _object(self, node: Schema, out: Schema) -> None:
        properties = node.get("properties")
        extra = node.get("additionalProperties")
        if properties:
            out["properties"] = {name: self.convert(sub) for name, sub in properties.items()}
            if node.get("required"):
                out["required"] = list(node["required"])
            # `additionalProperties: false` is not allowed beside `properties` in a CRD: unknown
            # fields are pruned, and kubectl's default strict field validation reports them.
        elif isinstance(extra, dict):
            out["additionalProperties"] = self.convert(extra)
        else:
            # dict[str, Any] (trial.template, strategy.settings): kept verbatim.
            out[PRESERVE_UNKNOWN] = True

    def _int_or_string(self, node: Schema) -> Schema:
        """Durations: whole seconds or strings like ``90m``, in the form Kubernetes expects."""
        out: Schema = {
            INT_OR_STRING: True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
        }
        # pattern only constrains strings and minimum only numbers, so both can sit on the node.
        for variant in [self.resolve(v) for v in node.get("anyOf", [])]:
            for keyword in ("pattern", "minimum", "maximum"):
                if keyword in variant:
                    out[keyword] = variant[keyword]
        if VALIDATIONS in node:
            out[VALIDATIONS] = _ordered_rules(node[VALIDATIONS])
        return _with_description(out, node)

    def _union(self, node: Schema, variants: list[Schema]) -> Schema:
        non_null = [v for v in variants if v.get("type") != "null"]
        if len(non_null) == 1:
            # `X | None`: an omitted field, which is what null means to the API server.
            return _with_description(self.convert(non_null[0]), node)
        converted = [self.convert(v) for v in non_null]
        kinds = {c.get("type") for c in converted}
        if all(c.get(INT_OR_STRING) or c.get("type") in ("integer", "string") for c in converted):
            merged: Schema = {INT_OR_STRING: True, "anyOf": [{"type": "integer"}, {"type": "string"}]}
            return _with_description(merged, node)
        if kinds == {"object"}:
            discriminator = (node.get("discriminator") or {}).get("propertyName")
            union = merge_union(converted, discriminator)
            self.unchecked.extend(union.unchecked)
            return _with_description(union.schema, node)
        if kinds == {"integer", "number"}:
            return _with_description({"type": "number"}, node)
        # Mixed scalars (categorical choices: bool, int, float or str) or scalar-or-list: OpenAPI
        # has no structural type for them, so the value is kept and pydantic checks it.
        return _with_description({PRESERVE_UNKNOWN: True}, node)


_RULE_KEYS = ("rule", "message", "messageExpression", "fieldPath", "reason")


def _ordered_rules(rules: list[Schema]) -> list[Schema]:
    """Rules with their keys in the order people read them (the JSON schema sorts them)."""
    return [{key: rule[key] for key in _RULE_KEYS if key in rule} for rule in rules]


def _with_description(out: Schema, source: Schema) -> Schema:
    if "description" in source and "description" not in out:
        out = {**out, "description": source["description"]}
    return out


def _convert_exclusive_bounds(node: Schema, out: Schema) -> None:
    """JSON schema's numeric exclusive bounds become OpenAPI v3's boolean flags."""
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = node.get(exclusive)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[bound] = value
            out[exclusive] = True


def openapi_schema(model: type[BaseModel]) -> Schema:
    """The structural OpenAPI v3 schema of a pydantic model (``by_alias``, references inlined)."""
    root = model.model_json_schema(by_alias=True)
    return _Converter(root).convert(root)


def unchecked_at_admission(model: type[BaseModel]) -> list[str]:
    """What merging the model's unions loses that CEL cannot check (the controller still does)."""
    root = model.model_json_schema(by_alias=True)
    converter = _Converter(root)
    converter.convert(root)
    return converter.unchecked


def _metadata_schema(manifest: type[BaseModel]) -> Schema:
    """metadata.name constraints from the manifest model; CRDs may restrict nothing else there."""
    root = manifest.model_json_schema(by_alias=True)
    converter = _Converter(root)
    metadata = converter.resolve(root["properties"]["metadata"])
    name = converter.convert(metadata["properties"]["name"])
    name.pop("description", None)
    return {"type": "object", "properties": {"name": name}}


def _status_schema(fields: dict[str, Schema]) -> Schema:
    """A status the controller owns: printer-column fields declared, everything else kept."""
    return {"type": "object", PRESERVE_UNKNOWN: True, "properties": fields}


def _crd(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    description: str,
    spec_model: type[BaseModel],
    manifest_model: type[BaseModel],
    status: Schema,
    columns: list[Schema],
) -> Schema:
    spec = openapi_schema(spec_model)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": _metadata_schema(manifest_model),
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def _column(name: str, json_path: str, kind: str, description: str, priority: int = 0) -> Schema:
    column: Schema = {"name": name, "type": kind, "jsonPath": json_path, "description": description}
    if priority:
        column["priority"] = priority
    return column


_AGE = _column("Age", ".metadata.creationTimestamp", "date", "Time since the object was created.")


def study_crd() -> Schema:
    """The ``studies.tunefleet.dev`` CRD."""
    status = _status_schema(
        {
            "phase": {"type": "string"},
            "trialsSummary": {"type": "string", "description": "Finished trials / maxTrials."},
            "trials": {
                "type": "object",
                PRESERVE_UNKNOWN: True,
                "properties": {"running": {"type": "integer"}},
            },
            "bestValue": {"type": "string", "description": "Best objective value(s), formatted."},
            "budget": {
                "type": "object",
                PRESERVE_UNKNOWN: True,
                "properties": {"summary": {"type": "string", "description": "GPU-hours used / budget."}},
            },
        }
    )
    return _crd(
        kind="Study",
        plural="studies",
        short_names=["stu"],
        description=(
            "A hyperparameter study: search space, objective, strategy, budget and trial pod. "
            "The controller runs one Job per trial against a shared Optuna study."
        ),
        spec_model=StudySpec,
        manifest_model=StudyManifest,
        status=status,
        columns=[
            _column("Phase", ".status.phase", "string", "Lifecycle phase of the study."),
            _column("Trials", ".status.trialsSummary", "string", "Finished trials / maxTrials."),
            _column("Running", ".status.trials.running", "integer", "Trials running now."),
            _column("Best", ".status.bestValue", "string", "Best objective value(s) so far."),
            _column("GPU-h", ".status.budget.summary", "string", "GPU-hours used / budget."),
            _AGE,
        ],
    )


def gpubudget_crd() -> Schema:
    """The ``gpubudgets.tunefleet.dev`` CRD."""
    hours = {"type": "number"}
    status = _status_schema(
        {
            "used": hours,
            "reserved": hours,
            "remaining": hours,
            "periodStart": {
                "type": "string",
                "format": "date-time",
                "description": "When the current period began (UTC).",
            },
            "message": {"type": "string", "description": "Why this GPUBudget is ignored, if it is."},
        }
    )
    return _crd(
        kind="GPUBudget",
        plural="gpubudgets",
        short_names=["gpub"],
        description="A team's GPU-hour budget, shared by every study of its namespace.",
        spec_model=GPUBudgetSpec,
        manifest_model=GPUBudgetManifest,
        status=status,
        columns=[
            _column("GPU-h", ".spec.gpuHours", "number", "GPU-hours available per period."),
            _column("Used", ".status.used", "number", "GPU-hours settled this period."),
            _column("Reserved", ".status.reserved", "number", "GPU-hours reserved by running trials."),
            _column("Remaining", ".status.remaining", "number", "GPU-hours left this period."),
            _column("Period", ".spec.period", "string", "When the budget refills."),
            _AGE,
        ],
    )


def build_crds() -> list[Schema]:
    """Both CRDs, Study first.

    Raises:
        ValueError: if a generated schema is not structural (the API server would refuse it).
    """
    crds = [study_crd(), gpubudget_crd()]
    for crd in crds:
        for version in crd["spec"]["versions"]:
            problems = structural_problems(version["schema"]["openAPIV3Schema"])
            if problems:
                name = crd["metadata"]["name"]
                raise ValueError(f"{name} schema is not structural: " + "; ".join(problems))
    return crds


# Keywords an apiextensions.k8s.io/v1 schema may not use at all.
_FORBIDDEN_KEYWORDS = (
    "$ref",
    "$defs",
    "definitions",
    "dependencies",
    "patternProperties",
    "id",
    "$schema",
    "const",
    "oneOf",
    "discriminator",
)


def structural_problems(schema: Schema, path: str = "") -> list[str]:
    """Why ``schema`` is not a structural schema in Kubernetes' sense; empty when it is.

    Every node (the root, each property, each map value and each array item) needs a type unless
    it is int-or-string or keeps unknown fields; references, ``oneOf`` and typed ``anyOf``
    branches (other than int-or-string's canonical pair) are not allowed.
    """
    where = path or "<root>"
    problems: list[str] = []
    for keyword in _FORBIDDEN_KEYWORDS:
        if keyword in schema:
            problems.append(f"{where}: {keyword} is not allowed")
    int_or_string = schema.get(INT_OR_STRING) is True
    if int_or_string:
        if "type" in schema:
            problems.append(f"{where}: an int-or-string node must not set type")
        if schema.get("anyOf", _INT_OR_STRING_BRANCHES) != _INT_OR_STRING_BRANCHES:
            problems.append(f"{where}: int-or-string anyOf must be [integer, string]")
    elif not schema.get("type") and schema.get(PRESERVE_UNKNOWN) is not True:
        problems.append(f"{where}: no type")
    elif "anyOf" in schema:
        problems.extend(_branch_problems(schema["anyOf"], where))
    if schema.get("uniqueItems") is True:
        problems.append(f"{where}: uniqueItems: true is not allowed")
    for exclusive in ("exclusiveMinimum", "exclusiveMaximum"):
        if exclusive in schema and not isinstance(schema[exclusive], bool):
            problems.append(f"{where}: {exclusive} must be a boolean in OpenAPI v3")
    extra = schema.get("additionalProperties")
    if extra is False:
        problems.append(f"{where}: additionalProperties: false is not allowed")
    if isinstance(extra, dict):
        if "properties" in schema:
            problems.append(f"{where}: properties and additionalProperties are exclusive")
        problems.extend(structural_problems(extra, f"{path}.*"))
    for name, sub in schema.get("properties", {}).items():
        problems.extend(structural_problems(sub, f"{path}.{name}"))
    if "items" in schema:
        problems.extend(structural_problems(schema["items"], f"{path}[]"))
    return problems


_INT_OR_STRING_BRANCHES = [{"type": "integer"}, {"type": "string"}]


def _branch_problems(branches: list[Schema], where: str) -> list[str]:
    return [
        f"{where}: anyOf branches may not set type, description or properties"
        for branch in branches
        if {"type", "description", "properties", "items", "additionalProperties"} & set(branch)
    ]


def render_crds_yaml() -> str:
    """Both CRDs as one multi-document YAML stream (what ``tunefleet crd`` prints)."""
    return "---\n" + "---\n".join(crd_yaml(crd) for crd in build_crds())


def crd_yaml(crd: Schema) -> str:
    """One CRD as YAML, keys in the order written (the chart's files/crds/ use this form)."""
    return yaml.safe_dump(crd, sort_keys=False, default_flow_style=False, width=100)
