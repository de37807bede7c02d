"""Spec validation: valid studies load; every kind of bad input names its field and says why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.spec import SpecInvalid, load_study_file, parse_study_text
from tests.conftest import REPO_ROOT
from tests.support.specs import study_document


def errors_of(document: dict[str, Any] | str) -> list[str]:
    text = document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False)
    with pytest.raises(SpecInvalid) as caught:
        parse_study_text(text, "study.yaml")
    return [str(e) for e in caught.value.errors]


def single_error(document: dict[str, Any] | str) -> str:
    errors = errors_of(document)
    assert len(errors) == 1, errors
    return errors[0]


def test_quickstart_and_design_examples_are_valid() -> None:
    quickstart = load_study_file(REPO_ROOT / "examples/quickstart/study.yaml")
    assert quickstart.spec.searchSpace["momentum"].when == {"optimizer": "sgd"}
    assert quickstart.spec.budget.deadline == 600
    design = study_document(
        objective={"metrics": [{"name": "val_accuracy", "direction": "maximize"}], "goal": 0.99},
        budget={"gpuHours": 40, "maxTrials": 200, "deadline": "24h"},
        trial={"python": "examples.digits.train:objective", "gpus": 1, "maxDuration": "2h", "template": {}},
    )
    manifest = parse_study_text(yaml.safe_dump(design))
    assert manifest.spec.budget.deadline == 86400
    assert manifest.spec.trial.maxDuration == 7200


def test_unknown_top_level_field_names_it_and_lists_allowed() -> None:
    document = study_document()
    document["spec"]["paralelism"] = 4
    error = single_error(document)
    assert error.startswith("spec.paralelism")
    assert "unknown field" in error and "parallelism" in error


def test_unknown_field_inside_a_parameter() -> None:
    error = single_error(
        study_document(searchSpace={"lr": {"type": "float", "low": 0.1, "high": 1, "lgo": True}})
    )
    assert error.startswith("spec.searchSpace.lr.lgo")
    assert "allowed here" in error and "log" in error


def test_yaml_syntax_error_gives_the_line() -> None:
    text = "apiVersion: tunefleet.dev/v1alpha1\nkind: Study\nspec:\n  objective: [unclosed\n"
    error = single_error(text)
    assert "YAML syntax error" in error
    assert "(line " in error


def test_errors_carry_the_yaml_line_of_the_field() -> None:
    text = yaml.safe_dump(study_document(parallelism=0), sort_keys=False)
    line = next(n for n, row in enumerate(text.splitlines(), 1) if row.strip().startswith("parallelism"))
    assert f"(line {line})" in single_error(text)


def test_missing_required_field() -> None:
    document = study_document()
    del document["spec"]["trial"]
    assert single_error(document).startswith("spec.trial")
    assert "required" in single_error(document)


def test_bad_direction_lists_the_allowed_values() -> None:
    error = single_error(study_document(objective={"metrics": [{"name": "loss", "direction": "down"}]}))
    assert error.startswith("spec.objective.metrics.0.direction")
    assert "minimize" in error and "maximize" in error and "'down'" in error


def test_low_above_high_names_the_parameter() -> None:
    error = single_error(study_document(searchSpace={"lr": {"type": "float", "low": 1.0, "high": 0.1}}))
    assert error.startswith("spec.searchSpace.lr.high")
    assert "greater than or equal to low" in error


def test_log_scale_needs_a_positive_low() -> None:
    error = single_error(
        study_document(searchSpace={"lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}})
    )
    assert error.startswith("spec.searchSpace.lr.low") and "low > 0" in error


def test_log_and_step_are_exclusive() -> None:
    document = study_document(
        searchSpace={"n": {"type": "int", "low": 1, "high": 64, "log": True, "step": 2}}
    )
    assert single_error(document).startswith("spec.searchSpace.n.step")


def test_duplicate_categorical_choice() -> None:
    error = single_error(study_document(searchSpace={"bs": {"type": "categorical", "choices": [32, 64, 32]}}))
    assert error.startswith("spec.searchSpace.bs.choices") and "listed twice" in error


def test_true_and_one_are_different_choices() -> None:
    manifest = parse_study_text(
        yaml.safe_dump(study_document(searchSpace={"flag": {"type": "categorical", "choices": [True, 1]}}))
    )
    assert manifest.spec.searchSpace["flag"].choices == [True, 1]


def test_unknown_parameter_type() -> None:
    error = single_error(study_document(searchSpace={"opt": {"type": "choice", "choices": ["a"]}}))
    assert error.startswith("spec.searchSpace.opt") and "float, int, categorical" in error


def test_condition_on_an_unknown_parameter() -> None:
    error = single_error(
        study_document(
            searchSpace={
                "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "sgd"}}
            }
        )
    )
    assert error.startswith("spec.searchSpace.momentum.when.optimizer")
    assert "not a parameter" in error


def test_condition_value_outside_the_parents_choices() -> None:
    space = {
        "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "rmsprop"}},
    }
    error = single_error(study_document(searchSpace=space))
    assert error.startswith("spec.searchSpace.momentum.when.optimizer") and "'rmsprop'" in error


def test_conditions_that_form_a_cycle() -> None:
    space = {
        "a": {"type": "categorical", "choices": ["x", "y"], "when": {"b": "x"}},
        "b": {"type": "categorical", "choices": ["x", "y"], "when": {"a": "x"}},
    }
    assert "cycle" in single_error(study_document(searchSpace=space))


def test_trial_needs_exactly_one_entry() -> None:
    both = study_document(trial={"python": "m:f", "command": ["python", "t.py"]})
    assert "exactly one of trial.python or trial.command" in single_error(both)
    neither = study_document(trial={"python": None})
    assert "exactly one" in single_error(neither)


def test_python_entry_form() -> None:
    error = single_error(study_document(trial={"python": "train.py"}))
    assert error.startswith("spec.trial.python") and "module:function" in error


def test_command_placeholder_for_an_unknown_parameter() -> None:
    document = study_document(trial={"python": None, "command": ["python", "train.py", "--lr", "{{lr}}"]})
    error = single_error(document)
    assert error.startswith("spec.trial.command") and "{{lr}}" in error


def test_bad_duration() -> None:
    error = single_error(study_document(budget={"deadline": "3 weeks"}))
    assert error.startswith("spec.budget.deadline") and "90s, 30m, 2h" in error


def test_durations_accept_compound_forms() -> None:
    manifest = parse_study_text(yaml.safe_dump(study_document(budget={"deadline": "1h30m"})))
    assert manifest.spec.budget.deadline == 5400


def test_goal_is_for_single_objective_studies() -> None:
    objective = {
        "metrics": [{"name": "a", "direction": "minimize"}, {"name": "b", "direction": "maximize"}],
        "goal": 1.0,
    }
    assert single_error(study_document(objective=objective)).startswith("spec.objective.goal")


def test_duplicate_metric_names() -> None:
    objective = {"metrics": [{"name": "a", "direction": "minimize"}, {"name": "a", "direction": "maximize"}]}
    assert "listed twice" in single_error(study_document(objective=objective))


def test_grid_needs_a_finite_space() -> None:
    document = study_document(strategy={"sampler": "grid"})
    error = single_error(document)
    assert error.startswith("spec.searchSpace") and "give float 'x' a step" in error


def test_study_name_must_be_a_dns_label() -> None:
    document = study_document()
    document["metadata"]["name"] = "My_Study"
    error = single_error(document)
    assert error.startswith("metadata.name") and "lowercase" in error


def test_numbers_out_of_range() -> None:
    errors = errors_of(study_document(parallelism=0, budget={"maxTrials": 0}))
    assert any(e.startswith("spec.parallelism") for e in errors)
    assert any(e.startswith("spec.budget.maxTrials") for e in errors)


def test_warm_start_params_are_checked_against_the_space() -> None:
    error = single_error(study_document(warmStart={"params": [{"x": 50.0}]}))
    assert error.startswith("spec.warmStart.params[0].x") and "outside" in error


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecInvalid, match="no such file"):
        load_study_file(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(SpecInvalid, match="expected a Study document"):
        load_study_file(tmp_path / "list.yaml")


def test_cli_validate_lists_every_error_and_exits_1(tmp_path: Path) -> None:
    document = study_document(parallelism=0, budget={"deadline": "soon"})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(document))
    result = subprocess.run(
        [sys.executable, "-m", "controller.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "2 errors" in result.stderr
    assert "spec.parallelism" in result.stderr and "spec.budget.deadline" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_validate_accepts_a_good_spec() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "validate",
            str(REPO_ROOT / "examples/quickstart/study.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "valid Study 'quickstart-digits'" in result.stdout
