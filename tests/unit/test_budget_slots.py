"""Local GPU slots for trials with ``gpus: k``."""

from __future__ import annotations

import pytest

from controller.budget.slots import GpuSlots, local_gpu_ids
from controller.spec import SpecInvalid


def test_visible_devices_come_from_the_environment() -> None:
    assert local_gpu_ids({"CUDA_VISIBLE_DEVICES": "0, 2,3"}) == ["0", "2", "3"]
    assert local_gpu_ids({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert local_gpu_ids({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_slots_are_disjoint_groups_of_k_gpus_handed_out_and_back() -> None:
    slots = GpuSlots.for_trial(2, {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4"})
    assert slots is not None and slots.capacity == 2
    first, second = slots.take(), slots.take()
    assert {first, second} == {"0,1", "2,3"}
    with pytest.raises(RuntimeError, match="all 2 GPU slots are in use"):
        slots.take()
    slots.give_back(first)
    assert slots.take() == first


def test_cpu_only_trials_need_no_slots() -> None:
    assert GpuSlots.for_trial(0, {}) is None


def test_too_few_gpus_is_an_error_naming_the_field() -> None:
    with pytest.raises(
        SpecInvalid, match=r"spec.trial.gpus: each trial needs 2 GPUs but this machine offers 1"
    ):
        GpuSlots.for_trial(2, {"CUDA_VISIBLE_DEVICES": "0"})
