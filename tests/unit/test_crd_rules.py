"""The CRDs' CEL rules, run by CEL's own implementation (cel-expr-python) the way the API server runs
them: every rule compiles, valid documents pass, and on every bad spec of tests/support/bad_specs.py
the API server and ``tunefleet validate`` refuse the same field with the same message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from controller.kube.crd import build_crds
from controller.spec import GPUBudgetManifest, SpecInvalid, parse_study_text
from controller.spec.loading import errors_from_validation
from controller.spec.rules import VALIDATIONS
from controller.spec.study import MAX_COMMAND_PART_LENGTH, MAX_COMMAND_PARTS, MAX_PARAMETERS
from tests.cluster.emulator.admission import Cause, admission_causes, compile_rule
from tests.support.bad_specs import EVERY_BAD_SPEC, VALID_GPUBUDGET, VALID_STUDY, BadSpec, dotted

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCHEMAS = {
    crd["spec"]["names"]["kind"]: crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for crd in build_crds()
}


def model_errors(document: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, message) of every error ``tunefleet validate`` reports."""
    if document["kind"] == "Study":
        try:
            parse_study_text(yaml.safe_dump(document, sort_keys=False))
        except SpecInvalid as error:
            return [(e.path, e.message) for e in error.errors]
        return []
    try:
        GPUBudgetManifest.model_validate(document)
    except ValidationError as error:
        return [(e.path, e.message) for e in errors_from_validation(error, GPUBudgetManifest, {})]
    return []


def api_server_causes(document: dict[str, Any]) -> list[Cause]:
    return admission_causes(document, SCHEMAS[document["kind"]])


def all_rules() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            found.extend(node.get(VALIDATIONS, []))
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(list(SCHEMAS.values()))
    return found


def example_documents() -> list[dict[str, Any]]:
    documents = [VALID_STUDY, VALID_GPUBUDGET]
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") in SCHEMAS]
    return documents


def test_every_rule_and_message_expression_compiles() -> None:
    rules = all_rules()
    assert len(rules) >= 30
    for rule in rules:
        compile_rule(rule["rule"])
        if "messageExpression" in rule:
            compile_rule(rule["messageExpression"])


@pytest.mark.parametrize("document", example_documents(), ids=lambda d: d["metadata"]["name"])
def test_valid_documents_pass_every_rule(document: dict[str, Any]) -> None:
    assert model_errors(document) == []
    assert api_server_causes(document) == []


@pytest.mark.parametrize("bad", EVERY_BAD_SPEC, ids=lambda b: b.id)
def test_the_api_server_and_the_cli_refuse_the_same_field_with_the_same_words(bad: BadSpec) -> None:
    (model_field, model_message), *more = model_errors(bad.document)
    assert not more, more
    assert model_field == bad.field
    causes = api_server_causes(bad.document)
    if not bad.at_admission:
        assert causes == [], "refused at admission: mark it at_admission in bad_specs.py"
        return
    by_rule = [c for c in causes if c.rule is not None]
    if by_rule:
        # A cross-field rule: the same field, and the same words after the API server's prefix.
        assert [dotted(c.field) for c in by_rule] == [model_field]
        assert by_rule[0].message.endswith(f": {model_message}"), (by_rule[0].message, model_message)
    else:
        # A single field: the schema refuses it, in the API server's words, at the same field.
        assert any(dotted(c.field).startswith(model_field) for c in causes), (causes, model_field)


def test_every_cel_rule_refuses_at_least_one_bad_spec() -> None:
    """A rule without a bad spec that breaks it is untested: add one to tests/support/bad_specs.py."""
    broken = {c.rule for bad in EVERY_BAD_SPEC for c in api_server_causes(bad.document)}
    untested = [rule["rule"] for rule in all_rules() if rule["rule"] not in broken]
    assert not untested, untested


def test_the_largest_spec_the_model_allows_passes_both() -> None:
    """The bounds that keep the CEL cost estimate finite are ones the model enforces as well."""
    names = [f"p{i}" for i in range(MAX_PARAMETERS)]
    space = {name: {"type": "int", "low": 0, "high": 9} for name in names}
    part = ("{{p0}}" + "x" * MAX_COMMAND_PART_LENGTH)[:MAX_COMMAND_PART_LENGTH]
    document = {**VALID_STUDY, "spec": {**VALID_STUDY["spec"], "searchSpace": space}}
    document["spec"]["trial"] = {"command": [part] * MAX_COMMAND_PARTS}
    assert model_errors(document) == []
    assert api_server_causes(document) == []
    document["spec"]["searchSpace"] = {**space, "one_more": {"type": "int", "low": 0, "high": 1}}
    assert [f for f, _ in model_errors(document)] == ["spec.searchSpace"]
    assert next(c.field for c in api_server_causes(document)) == "spec.searchSpace"
    document["spec"]["searchSpace"] = space
    document["spec"]["trial"]["command"] = [part + "x"]
    assert [f for f, _ in model_errors(document)] == ["spec.trial.command.0"]
    assert next(c.field for c in api_server_causes(document)) == "spec.trial.command[0]"
