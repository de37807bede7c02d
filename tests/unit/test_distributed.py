"""Trials that span several nodes: the spec, the rendezvous environment, and one voice per trial."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from controller.spec import SpecInvalid, parse_study_text
from tests.support.specs import study_document
from trial_worker.contract import Assignment, MetricDirection, PythonObjective, Rendezvous
from trial_worker.distributed import FollowerTrial, current_rendezvous, rendezvous_environment


def spec_of(**trial: Any) -> Any:
    document = study_document(trial={"python": "m:f", **trial})
    return parse_study_text(yaml.safe_dump(document)).spec


def test_nodes_default_to_one_and_a_trial_holds_nodes_times_gpus() -> None:
    assert spec_of().trial.nodes == 1
    trial = spec_of(nodes=4, gpus=8, cpus=2).trial
    assert (trial.gpus_held, trial.cpus_held) == (32, 8)


@pytest.mark.parametrize(
    ("trial", "budget", "field", "words"),
    [
        ({"nodes": 0}, {}, "spec.trial.nodes", "greater than or equal to 1"),
        ({"nodes": 65}, {}, "spec.trial.nodes", "less than or equal to 64"),
        ({"nodes": 2, "template": {"spec": {"hostname": "h"}}}, {}, "spec.trial.template", "spec.hostname"),
        ({"nodes": 4, "gpus": 8, "maxDuration": "2h"}, {"gpuHours": 40}, "spec.trial.nodes", "32 GPUs"),
    ],
)
def test_a_bad_nodes_value_or_combination_names_the_field(
    trial: dict[str, Any], budget: dict[str, Any], field: str, words: str
) -> None:
    document = study_document(trial={"python": "m:f", **trial}, budget=budget)
    with pytest.raises(SpecInvalid) as raised:
        parse_study_text(yaml.safe_dump(document))
    text = str(raised.value)
    assert field in text and words in text


def test_one_node_may_name_its_pod_and_use_any_budget() -> None:
    assert spec_of(template={"spec": {"hostname": "h"}}).trial.nodes == 1
    assert spec_of(nodes=2, gpus=1, maxDuration="1h").trial.gpus_held == 2


def test_the_environment_torchrun_and_torch_distributed_read() -> None:
    env = Rendezvous(nodes=3, node_rank=2, master_addr="s-t4-0.s-t4", master_port=29500).environment()
    assert env == {
        "MASTER_ADDR": "s-t4-0.s-t4",
        "MASTER_PORT": "29500",
        "WORLD_SIZE": "3",
        "RANK": "2",
        "NODE_RANK": "2",
        "NNODES": "3",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "PET_NNODES": "3",
        "PET_NODE_RANK": "2",
        "PET_MASTER_ADDR": "s-t4-0.s-t4",
        "PET_MASTER_PORT": "29500",
        "TUNEFLEET_NODE_RANK": "2",
        "TUNEFLEET_NNODES": "3",
    }


def test_a_pod_finds_its_rank_in_its_environment_and_the_assignment_wins_locally() -> None:
    place = Rendezvous(nodes=2, node_rank=1, master_addr="a", master_port=1234)
    assert Rendezvous.from_env(place.environment()) == place
    assert Rendezvous.from_env({}) is None
    assert Rendezvous.from_env({"TUNEFLEET_NNODES": "1"}) is None
    local = Rendezvous(nodes=2, node_rank=0, master_addr="127.0.0.1", master_port=4321)
    assignment = Assignment(
        storage_url="sqlite://",
        study_name="s",
        trial_number=0,
        objective=PythonObjective(entry="m:f"),
        metrics=[MetricDirection(name="loss", direction="minimize")],
        seed=1,
        max_duration_s=10,
        rendezvous=local,
    )
    assert current_rendezvous(assignment) == local
    assert Assignment.model_validate_json(assignment.model_dump_json()) == assignment


def test_the_environment_is_set_while_the_objective_runs_and_restored_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MASTER_PORT", "1")
    monkeypatch.delenv("RANK", raising=False)
    with rendezvous_environment(Rendezvous(nodes=2, node_rank=1, master_addr="h", master_port=2)):
        assert (os.environ["MASTER_PORT"], os.environ["RANK"]) == ("2", "1")
    assert os.environ["MASTER_PORT"] == "1" and "RANK" not in os.environ


def stored(state: TrialState = TrialState.RUNNING, **params: float) -> FrozenTrial:
    distributions = {name: FloatDistribution(-10, 10) for name in params}
    trial = create_trial(state=TrialState.COMPLETE, params=params, distributions=distributions, value=0.0)
    trial.state = state
    trial.number = 5
    return trial


def test_a_follower_reads_rank_0s_params_and_its_writes_go_nowhere() -> None:
    trial = FollowerTrial(stored(x=1.5, y=-2.0), lambda: stored(x=1.5, y=-2.0))
    assert trial.suggest_float("x", -10, 10) == 1.5
    assert trial.params == {"x": 1.5, "y": -2.0}  # a command sees every parameter
    assert trial.number == 5
    trial.report(3.0, step=1)
    trial.set_user_attr("k", "v")
    assert not trial.should_prune()


def test_a_follower_waits_for_a_parameter_rank_0_samples_in_the_objective(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("trial_worker.distributed.PARAM_POLL_S", 0.0)
    reads = iter([stored(x=1.0), stored(x=1.0, n=3.0)])
    trial = FollowerTrial(stored(x=1.0), lambda: next(reads))
    assert trial.suggest_int("n", 1, 5) == 3


def test_a_follower_stops_when_rank_0_ended_the_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("trial_worker.distributed.PRUNE_CHECK_EVERY_S", 0.0)
    states = iter([TrialState.RUNNING, TrialState.PRUNED])
    trial = FollowerTrial(stored(x=1.0), lambda: stored(next(states), x=1.0))
    assert not trial.should_prune()
    assert trial.should_prune()


def test_plan_counts_a_trials_gpus_and_cpus_as_nodes_times_each() -> None:
    from controller.strategies.choice import TrialCost, affordable_trials

    def affordable(nodes: int) -> dict[str, int]:
        document = study_document(
            trial={"python": "m:f", "nodes": nodes, "gpus": 2, "cpus": 1, "maxDuration": "1h"},
            budget={"gpuHours": 16, "cpuHours": 8, "maxTrials": None},
        )
        spec = parse_study_text(yaml.safe_dump(document)).spec
        return affordable_trials(spec, TrialCost(3600.0, "maxDuration")).limits

    assert affordable(1) == {"gpuHours": 8, "cpuHours": 8}
    assert affordable(2) == {"gpuHours": 4, "cpuHours": 4}


def test_a_local_rendezvous_port_is_free_and_outside_the_range_outgoing_connections_take() -> None:
    """Another process's outgoing connection can never take rank 0's port before it binds it."""
    from controller.local.gang import _ephemeral_low, local_rendezvous

    ports = {local_rendezvous(2).master_port for _ in range(20)}
    assert all(1024 <= port < _ephemeral_low() for port in ports)
    assert len(ports) > 1  # picked at random: two runs at once do not race for one port
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", port))
