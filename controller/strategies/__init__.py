"""Samplers and pruners: resolving ``auto`` and building Optuna objects from the spec."""

from __future__ import annotations

from controller.strategies.choice import StrategyChoice, choose_strategy
from controller.strategies.samplers import build_sampler

__all__ = ["StrategyChoice", "build_sampler", "choose_strategy"]
