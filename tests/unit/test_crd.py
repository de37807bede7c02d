"""The generated CRDs: structural, complete, and as strict as OpenAPI allows.

Custom resources are validated here the way the API server does it: the CRD's OpenAPI v3 schema
(draft-4 semantics: boolean exclusiveMinimum) plus kubectl's default strict field validation, which
rejects fields the schema does not declare unless the node keeps unknown fields.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from controller.kube.crd import (
    INT_OR_STRING,
    PRESERVE_UNKNOWN,
    build_crds,
    render_crds_yaml,
    structural_problems,
)
from controller.spec import GPUBudgetManifest, StudyManifest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

CRDS = {crd["spec"]["names"]["kind"]: crd for crd in build_crds()}


def served_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def strict_field_validation(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with undeclared fields rejected, as `kubectl apply` (validate=strict) does."""
    strict = copy.deepcopy(schema)

    def visit(node: dict[str, Any]) -> None:
        if "properties" in node and not node.get(PRESERVE_UNKNOWN):
            node["additionalProperties"] = False
        for sub in node.get("properties", {}).values():
            visit(sub)
        if isinstance(node.get("additionalProperties"), dict):
            visit(node["additionalProperties"])
        if isinstance(node.get("items"), dict):
            visit(node["items"])

    visit(strict)
    # metadata is ObjectMeta, checked by the API server itself; the CRD only narrows the name.
    strict["properties"]["metadata"].pop("additionalProperties")
    return strict


def api_server_errors(document: dict[str, Any]) -> list[str]:
    """What the API server (with strict field validation) would say about a custom resource."""
    validator = jsonschema.Draft4Validator(strict_field_validation(served_schema(document["kind"])))
    return [
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def example_documents() -> list[tuple[str, dict[str, Any]]]:
    documents = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("apiVersion", "").startswith("tunefleet.dev/"):
                documents.append((path.name, document))
    return documents


def minimal_study(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "objective": {"metrics": [{"name": "loss", "direction": "minimize"}]},
        "searchSpace": {
            "lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
            "opt": {"type": "categorical", "choices": ["adam", "sgd", 3, True]},
            "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"opt": "sgd"}},
            "layers": {"type": "int", "low": 1, "high": 4, "step": 1},
        },
        "trial": {"python": "train:objective", "maxDuration": "90m"},
    }
    base.update(spec)
    return {
        "apiVersion": "tunefleet.dev/v1alpha1",
        "kind": "Study",
        "metadata": {"name": "demo", "namespace": "team-a"},
        "spec": base,
    }


def all_nodes(schema: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [schema]
    for sub in schema.get("properties", {}).values():
        nodes.extend(all_nodes(sub))
    for key in ("additionalProperties", "items"):
        if isinstance(schema.get(key), dict):
            nodes.extend(all_nodes(schema[key]))
    return nodes


def test_both_crds_are_namespaced_v1alpha1_with_status_subresource() -> None:
    assert set(CRDS) == {"Study", "GPUBudget"}
    study, budget = CRDS["Study"], CRDS["GPUBudget"]
    assert study["metadata"]["name"] == "studies.tunefleet.dev"
    assert budget["metadata"]["name"] == "gpubudgets.tunefleet.dev"
    assert study["spec"]["names"]["plural"] == "studies"
    assert budget["spec"]["names"]["shortNames"] == ["gpub"]
    for crd in CRDS.values():
        assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
        assert crd["spec"]["group"] == "tunefleet.dev"
        assert crd["spec"]["scope"] == "Namespaced"
        (version,) = crd["spec"]["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
        assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize("kind", ["Study", "GPUBudget"])
def test_schema_is_structural(kind: str) -> None:
    schema = served_schema(kind)
    assert structural_problems(schema) == []
    for node in all_nodes(schema):
        assert node.get("type") or node.get(INT_OR_STRING) or node.get(PRESERVE_UNKNOWN), node
        assert "$ref" not in node and "oneOf" not in node
        if "anyOf" in node:
            assert node.get(INT_OR_STRING) and "type" not in node, node


def test_structural_check_catches_what_the_api_server_refuses() -> None:
    untyped = {"type": "object", "properties": {"goal": {"anyOf": [{"type": "number"}]}}}
    referenced = {"type": "object", "properties": {"trial": {"$ref": "#/$defs/Trial"}}}
    json_schema_bound = {"type": "number", "exclusiveMinimum": 0}
    assert structural_problems(untyped) == [".goal: no type"]
    assert any("$ref" in p for p in structural_problems(referenced))
    assert structural_problems(json_schema_bound) == [
        "<root>: exclusiveMinimum must be a boolean in OpenAPI v3"
    ]


def test_status_keeps_unknown_fields_and_declares_printer_column_fields() -> None:
    for kind, columns in CRDS.items():
        status = served_schema(kind)["properties"]["status"]
        assert status[PRESERVE_UNKNOWN] is True
        for column in columns["spec"]["versions"][0]["additionalPrinterColumns"]:
            path = column["jsonPath"].lstrip(".").split(".")
            if path[0] != "status":
                continue
            node = served_schema(kind)
            for part in path:
                node = node["properties"][part]
            assert node["type"] == column["type"], column


def test_printer_columns_show_progress_budget_and_best_value() -> None:
    study = CRDS["Study"]["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [(c["name"], c["jsonPath"], c["type"]) for c in study] == [
        ("Phase", ".status.phase", "string"),
        ("Trials", ".status.trialsSummary", "string"),
        ("Running", ".status.trials.running", "integer"),
        ("Best", ".status.bestValue", "string"),
        ("GPU-h", ".status.budget.summary", "string"),
        ("Age", ".metadata.creationTimestamp", "date"),
    ]
    budget = CRDS["GPUBudget"]["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["jsonPath"] for c in budget] == [
        ".spec.gpuHours",
        ".status.used",
        ".status.reserved",
        ".status.remaining",
        ".spec.period",
        ".metadata.creationTimestamp",
    ]


def test_search_space_union_becomes_one_object_with_a_type_enum() -> None:
    params = served_schema("Study")["properties"]["spec"]["properties"]["searchSpace"]
    param = params["additionalProperties"]
    assert param["properties"]["type"]["enum"] == ["float", "int", "categorical"]
    assert {"low", "high", "log", "step", "choices", "when"} <= set(param["properties"])
    assert param["properties"]["low"]["type"] == "number"
    assert param["required"] == ["type"]


def test_durations_are_int_or_string_and_free_form_fields_are_kept() -> None:
    spec = served_schema("Study")["properties"]["spec"]["properties"]
    max_duration = spec["trial"]["properties"]["maxDuration"]
    assert max_duration[INT_OR_STRING] is True and "pattern" in max_duration
    assert spec["budget"]["properties"]["deadline"][INT_OR_STRING] is True
    for free_form in (spec["trial"]["properties"]["template"], spec["strategy"]["properties"]["settings"]):
        assert free_form == {**free_form, "type": "object", PRESERVE_UNKNOWN: True}


@pytest.mark.parametrize(
    ("name", "document"), example_documents(), ids=[name for name, _ in example_documents()]
)
def test_examples_are_accepted_by_the_crd_schema(name: str, document: dict[str, Any]) -> None:
    assert api_server_errors(document) == []


def test_examples_exist_for_both_kinds() -> None:
    kinds = {document["kind"] for _, document in example_documents()}
    assert kinds == {"Study", "GPUBudget"}


def test_a_minimal_study_with_every_parameter_type_is_accepted() -> None:
    assert api_server_errors(minimal_study()) == []
    assert api_server_errors(minimal_study(budget={"deadline": 3600})) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"strategy": {"sampler": "bayesian-magic"}}, "spec.strategy.sampler"),
        ({"parallelism": -1}, "spec.parallelism"),
        ({"paralelism": 4}, "spec"),
        ({"budget": {"deadline": "ninety minutes"}}, "spec.budget.deadline"),
        ({"budget": {"gpuHours": 0}}, "spec.budget.gpuHours"),
        ({"budget": {"maxFailedTrials": -1}}, "spec.budget.maxFailedTrials"),
        ({"searchSpace": {"lr": {"type": "normal", "low": 0, "high": 1}}}, "spec.searchSpace.lr.type"),
    ],
)
def test_an_obviously_bad_study_is_rejected_at_the_field(change: dict[str, Any], field: str) -> None:
    errors = api_server_errors(minimal_study(**change))
    assert errors, f"{change} was accepted"
    assert any(error.startswith(f"{field}:") for error in errors), errors


def test_a_study_name_too_long_for_its_job_names_is_rejected() -> None:
    document = minimal_study()
    document["metadata"]["name"] = "x" * 60
    assert any(error.startswith("metadata.name:") for error in api_server_errors(document))


def test_a_gpubudget_needs_positive_hours_and_a_known_period() -> None:
    budget = {
        "apiVersion": "tunefleet.dev/v1alpha1",
        "kind": "GPUBudget",
        "metadata": {"name": "team"},
        "spec": {"gpuHours": 10, "period": "monthly"},
    }
    assert api_server_errors(budget) == []
    budget["spec"] = {"gpuHours": -5, "period": "fortnightly"}
    fields = {error.split(":")[0] for error in api_server_errors(budget)}
    assert fields == {"spec.gpuHours", "spec.period"}


def test_render_crds_yaml_is_both_crds_as_a_yaml_stream() -> None:
    documents = [d for d in yaml.safe_load_all(render_crds_yaml()) if d]
    assert documents == build_crds()


@pytest.mark.parametrize(
    ("name", "document"), example_documents(), ids=[name for name, _ in example_documents()]
)
def test_examples_are_accepted_by_the_pydantic_models(name: str, document: dict[str, Any]) -> None:
    """The CRD and the models must agree on what a valid example is; the models check more."""
    model = StudyManifest if document["kind"] == "Study" else GPUBudgetManifest
    model.model_validate(document)
