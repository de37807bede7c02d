"""The pbt sampler in the spec: its settings, the rules of a PBT study, and ``auto``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.cli import main
from controller.kube.checkpoints import CHECKPOINT_MOUNT_PATH, segment_for_job
from controller.kube.manifests import StudyRef, build_assignment, trial_job
from controller.planner.segments import ATTR_SEGMENT, Segment
from controller.spec import SpecInvalid, StudySpec, parse_study_text, validate_spec
from controller.strategies import choose_strategy
from controller.studies.segments import segment_assignment
from trial_worker.contract import CHECKPOINT_ROOT_ENV, PrunerConfig


def pbt_document(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "objective": {"metrics": [{"name": "loss", "direction": "minimize"}], "steps": 20},
        "searchSpace": {
            "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True, "mutable": True},
            "width": {"type": "int", "low": 8, "high": 64},
        },
        "strategy": {"sampler": "pbt", "seed": 1, "settings": {"population": 4, "interval": 5}},
        "trial": {"python": "train:objective"},
    }
    for key, value in spec.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    header = {"apiVersion": "tunefleet.dev/v1alpha1", "kind": "Study", "metadata": {"name": "pbt"}}
    return {**header, "spec": base}


def errors_of(document: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecInvalid) as caught:
        parse_study_text(yaml.safe_dump(document, sort_keys=False), "study.yaml")
    return [str(e) for e in caught.value.errors]


def spec_of(document: dict[str, Any]) -> StudySpec:
    return parse_study_text(yaml.safe_dump(document)).spec


def test_a_pbt_study_is_valid_and_population_based() -> None:
    spec = spec_of(pbt_document())
    assert spec.is_population_based and spec.searchSpace["lr"].mutable and spec.objective.steps == 20


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        ({"objective": {"metrics": [{"name": "loss", "direction": "minimize"}]}}, "spec.objective.steps",
         "pbt needs intermediate values"),
        ({"searchSpace": {"lr": {"type": "float", "low": 0.1, "high": 1.0}}}, "spec.searchSpace",
         "at least one parameter marked mutable"),
        ({"objective": {"metrics": [{"name": "a", "direction": "minimize"},
                                    {"name": "b", "direction": "minimize"}], "steps": 20}},
         "spec.objective.metrics", "one metric"),
        ({"strategy": {"sampler": "pbt", "pruner": "median"}}, "spec.strategy.pruner", "replaces pruning"),
        ({"strategy": {"sampler": "pbt", "settings": {"interval": 30}}}, "spec.strategy.settings.interval",
         "exceeds objective.steps (20)"),
        ({"confirm": {"topK": 2}}, "spec.confirm", "schedule"),
        ({"warmStart": {"params": [{"lr": 0.1}]}}, "spec.warmStart", "not supported"),
    ],
)
def test_pbt_rules_name_the_field(change: dict[str, Any], path: str, words: str) -> None:
    errors = errors_of(pbt_document(**change))
    assert len(errors) == 1 and errors[0].startswith(path) and words in errors[0], errors


@pytest.mark.parametrize(
    ("settings", "path", "words"),
    [
        ({"populaton": 4}, "spec.strategy.settings.populaton", "is not an option of the pbt sampler"),
        ({"population": 1}, "spec.strategy.settings.population", "greater than or equal to 2"),
        ({"population": "8"}, "spec.strategy.settings.population", "valid integer"),
        ({"quantile": 0.7}, "spec.strategy.settings.quantile", "less than or equal to 0.5"),
        ({"resample_probability": 1.5}, "spec.strategy.settings.resample_probability", "less than or equal"),
        ({"perturbFactors": [1.2, -0.8]}, "spec.strategy.settings.perturbFactors", "positive"),
        ({"perturbFactors": []}, "spec.strategy.settings.perturbFactors", "at least 1"),
    ],
)
def test_pbt_settings_are_checked_like_the_other_samplers(
    settings: dict[str, Any], path: str, words: str
) -> None:
    errors = errors_of(pbt_document(strategy={"sampler": "pbt", "settings": settings}))
    assert len(errors) == 1 and errors[0].startswith(path) and words in errors[0], errors


def test_snake_and_camel_case_settings_both_work() -> None:
    spec = spec_of(pbt_document(strategy={"sampler": "pbt", "settings": {"resample_probability": 0.5,
                                                                          "perturbFactors": [0.5, 2]}}))
    assert spec.strategy.settings["resample_probability"] == 0.5


def test_mutable_needs_population_based_training() -> None:
    errors = errors_of(pbt_document(strategy={"sampler": "tpe"}))
    assert len(errors) == 1 and errors[0].startswith("spec.searchSpace"), errors
    assert "'lr' is mutable, but only population-based training" in errors[0]


def test_a_parameter_others_depend_on_cannot_be_mutable() -> None:
    space = {
        "optimizer": {"type": "categorical", "choices": ["adam", "sgd"], "mutable": True},
        "momentum": {"type": "float", "low": 0.8, "high": 0.99, "when": {"optimizer": "sgd"}},
    }
    errors = errors_of(pbt_document(searchSpace=space))
    assert len(errors) == 1 and errors[0].startswith("spec.searchSpace.optimizer.mutable"), errors


def test_auto_chooses_pbt_only_when_parameters_are_marked_mutable() -> None:
    marked = spec_of(pbt_document(strategy={"sampler": "auto", "seed": 1}))
    choice = choose_strategy(marked)
    assert (choice.sampler, choice.pruner) == ("pbt", "none")
    assert any("mutable" in reason for reason in choice.reasons)
    # auto uses the defaults: 8 members, objective.steps (20) in segments of 2
    assert "pbt: 8 members x 10 segments of 2 steps = 80 segments (trials) at most" in choice.reasons
    unmarked = pbt_document(strategy={"sampler": "auto", "seed": 1})
    unmarked["spec"]["searchSpace"]["lr"].pop("mutable")
    plain = spec_of(unmarked)
    assert not plain.is_population_based and choose_strategy(plain).sampler != "pbt"


def test_plan_says_how_many_segments_the_population_trains_and_whether_the_budget_covers_them() -> None:
    named = choose_strategy(spec_of(pbt_document(budget={"maxTrials": 10})))
    assert "pbt: 4 members x 4 segments of 5 steps = 16 segments (trials) at most; the budget affords 10, " \
        "so members stop before objective.steps" in named.reasons


def test_validate_rejects_pbt_without_intermediate_values_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = pbt_document(objective={"metrics": [{"name": "loss", "direction": "minimize"}]})
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    assert main(["validate", str(path)]) == 1
    captured = capsys.readouterr()
    assert "spec.objective.steps (line 6): pbt needs intermediate values" in captured.out + captured.err


def test_a_cluster_pbt_study_needs_a_checkpoint_volume() -> None:
    with pytest.raises(SpecInvalid) as caught:
        validate_spec(pbt_document()["spec"])
    assert str(caught.value.errors[0]).startswith("spec.checkpoints")
    spec = validate_spec(pbt_document(checkpoints={"persistentVolumeClaim": "ckpt", "path": "pbt"})["spec"])
    assert spec.checkpoints is not None and spec.checkpoints.persistentVolumeClaim == "ckpt"


def test_command_placeholders_of_segments_are_allowed_only_for_pbt() -> None:
    command = ["python", "train.py", "--lr", "{{lr}}", "--resume", "{{checkpoint.load}}"]
    spec_of(pbt_document(trial={"command": command}))
    plain = pbt_document(strategy={"sampler": "tpe"}, trial={"command": command})
    plain["spec"]["searchSpace"]["lr"].pop("mutable")
    errors = errors_of(plain)
    assert len(errors) == 1 and "checkpoint.load" in errors[0]


def test_trial_pods_mount_the_checkpoint_volume_and_assignments_name_the_segment() -> None:
    spec = validate_spec(pbt_document(checkpoints={"persistentVolumeClaim": "ckpt", "path": "/runs"})["spec"])
    ref = StudyRef("pbt", "team-a", "uid-1")
    attrs = {ATTR_SEGMENT: Segment(member=2, index=3, start=15, end=20, parent=1, load=9,
                                    decision="exploit").to_attr()}
    segment = segment_for_job(spec, ref.name, 14, attrs)
    assert segment is not None
    assert (segment.load, segment.save) == ("runs/pbt/member-1/trial-9", "runs/pbt/member-2/trial-14")
    assert segment.root is None  # the worker reads TUNEFLEET_CHECKPOINT_ROOT: the mount
    assignment = build_assignment(spec, ref, 14, 5, "postgresql://u@db/x", PrunerConfig(), segment)
    pod = trial_job(spec, ref, assignment)["spec"]["template"]["spec"]
    claim = {"claimName": "ckpt"}
    assert pod["volumes"][-1] == {"name": "tunefleet-checkpoints", "persistentVolumeClaim": claim}
    container = pod["containers"][0]
    assert {"name": "tunefleet-checkpoints", "mountPath": CHECKPOINT_MOUNT_PATH} in container["volumeMounts"]
    assert {"name": CHECKPOINT_ROOT_ENV, "value": CHECKPOINT_MOUNT_PATH} in container["env"]
    local = segment_assignment(attrs, 14, root="/tmp/ck")
    assert local is not None and (local.root, local.load) == ("/tmp/ck", "member-1/trial-9")
