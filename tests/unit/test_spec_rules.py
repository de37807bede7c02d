"""One source of truth: every check the spec models make in code is a Rule, and every Rule has its
CEL in the generated CRDs, or a documented reason why the API server cannot check it.

A new cross-field check written as ``raise field_error(...)`` or ``raise ValueError(...)`` fails
here, and so does a Rule that is declared but never raised, never reaches the CRD, or is missing
from docs/validation.md.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from controller.kube.crd import build_crds, unchecked_at_admission
from controller.spec import StudySpec
from controller.spec.rules import RULES, VALIDATIONS, Rule
from tests.conftest import REPO_ROOT

SPEC_DIR = REPO_ROOT / "controller" / "spec"
# Machinery, not validation code: reading files (SpecInvalid), building errors and rules, parsing
# the pbt sampler's free-form settings (they surface through strategy-settings-match-optuna).
NOT_VALIDATION_CODE = {"__init__.py", "loading.py", "errors.py", "rules.py", "population_settings.py"}
DOCS = (REPO_ROOT / "docs" / "validation.md").read_text(encoding="utf-8")


def validation_modules() -> list[Path]:
    return sorted(p for p in SPEC_DIR.glob("*.py") if p.name not in NOT_VALIDATION_CODE)


def module_globals(path: Path) -> dict[str, Any]:
    module = __import__(f"controller.spec.{path.stem}", fromlist=["_"])
    return vars(module)


def raised_rules(path: Path) -> tuple[list[Rule], list[str]]:
    """The rules raised in a module, and every raise that is not a rule's error."""
    names = module_globals(path)
    rules: list[Rule] = []
    strays: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Raise) or node.exc is None:
            continue
        call = node.exc
        owners: list[ast.expr] = []
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "error":
            owner = call.func.value
            owners = [owner.body, owner.orelse] if isinstance(owner, ast.IfExp) else [owner]
        found = [names.get(o.id) for o in owners if isinstance(o, ast.Name)]
        if owners and len(found) == len(owners) and all(isinstance(r, Rule) for r in found):
            rules += [r for r in found if isinstance(r, Rule)]
        else:
            strays.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return rules, strays


def crd_validations() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            entries.extend(node.get(VALIDATIONS, []))
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    for crd in build_crds():
        visit(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    return entries


@pytest.mark.parametrize("path", validation_modules(), ids=lambda p: p.name)
def test_every_check_in_the_spec_models_raises_a_rule(path: Path) -> None:
    _, strays = raised_rules(path)
    assert not strays, (
        "declare these checks as controller.spec.rules.Rule (with its CEL, or why CEL cannot "
        f"check it) and raise RULE.error(...): {strays}"
    )


def test_every_rule_is_raised_by_a_model() -> None:
    raised = {rule.id for path in validation_modules() for rule in raised_rules(path)[0]}
    assert set(RULES) == raised, f"declared but never raised: {sorted(set(RULES) - raised)}"


def test_rules_say_how_the_api_server_checks_them() -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        Rule("no-admission-story", field="x", message="x is wrong")
    with pytest.raises(ValueError, match="message_expression"):
        Rule("names-a-value", field="x", message="{name} is wrong", cel="self.x > 0")
    with pytest.raises(ValueError, match="declared twice"):
        Rule("trial-python-or-command", field="command", message="other", cel="true")


def test_every_cel_rule_reaches_the_crd_with_its_message() -> None:
    entries = crd_validations()
    for rule in RULES.values():
        if rule.cel is None:
            continue
        wanted = rule.validation()
        matching = [
            e
            for e in entries
            if (e["rule"] == rule.cel or e["rule"].endswith(f"({rule.cel})"))
            and e.get("message") == wanted["message"]
            and e.get("messageExpression") == wanted.get("messageExpression")
            and e.get("fieldPath") == wanted.get("fieldPath")
        ]
        assert matching, f"{rule.id} is not in the CRDs: add it to its model's spec_rules"


def _section(title: str) -> str:
    start = DOCS.index(f"## {title}")
    end = DOCS.find("\n## ", start + 1)
    return DOCS[start : end if end != -1 else None]


def test_docs_list_every_rule_where_it_is_checked() -> None:
    admission = _section("Refused at admission")
    controller_time = _section("Checked by the controller")
    schema = _section("Covered by the schema")
    for rule in RULES.values():
        section = admission if rule.cel else controller_time if rule.condition_time else schema
        assert f"`{rule.id}`" in section, f"docs/validation.md does not list {rule.id} where it belongs"


def test_docs_name_what_the_parameter_union_cannot_check() -> None:
    unchecked = unchecked_at_admission(StudySpec)
    assert unchecked == [
        "float: choices is not allowed",
        "int: choices is not allowed",
        "categorical: choices is required",
    ]
    for item in unchecked:
        assert f"`{item}`" in _section("Checked by the controller")


def test_the_generated_rules_are_json_and_keep_their_order() -> None:
    for entry in crd_validations():
        assert next(iter(entry)) == "rule", entry
        json.dumps(entry)
