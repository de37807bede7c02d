"""Sampler randomness derived from the study seed and the trial number.

An Optuna sampler draws from random states seeded once, at construction. A process that builds
the sampler again with the same seed (a restarted controller, a resumed ``tunefleet run``, any
rebuilt runtime: a spec change, suspend and resume) starts those states over, and so proposes
again what the first process already proposed for earlier trials. Reseeding every random state
the sampler holds from (study seed, trial number) just before a trial samples ties each draw to
the trial instead of to the process: a seeded sequential study still repeats exactly from
scratch, and no rebuilt sampler replays a configuration, since each new trial has a new number.

What a sampler keeps beyond its random states is rebuilt from the storage on every ask (TPE and
GP models, NSGA populations, CMA-ES's optimizer, QMC's sequence position), so it needs nothing.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import optuna
from optuna.samplers._lazy_random_state import LazyRandomState

# Random states live in the samplers' own attributes and in the strategy objects they hold
# (NSGA's child generation, CMA-ES's independent sampler): walk only into objects of these packages.
_WALKED_PACKAGES = ("optuna.", "controller.")
_MAX_DEPTH = 4


def derived_seed(study_seed: int, trial_number: int, path: str = "") -> int:
    """A 32-bit seed for one random state of one trial: distinct per trial and per state."""
    digest = hashlib.sha256(f"sampler:{study_seed}:{trial_number}:{path}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def reseed_for_trial(sampler: optuna.samplers.BaseSampler, study_seed: int, trial_number: int) -> int:
    """Reseed every random state ``sampler`` holds for ``trial_number``; returns how many.

    A random state shared by several parts of the sampler (NSGA-II hands its own to its child
    generation strategy) is reseeded once, in place, so they stay shared.
    """
    seen: set[int] = set()
    return _reseed(sampler, study_seed, trial_number, "sampler", seen, 0)


def _reseed(obj: Any, study_seed: int, trial_number: int, path: str, seen: set[int], depth: int) -> int:
    if id(obj) in seen or depth > _MAX_DEPTH:
        return 0
    seen.add(id(obj))
    if isinstance(obj, LazyRandomState):
        obj.rng.seed(derived_seed(study_seed, trial_number, path))
        return 1
    if isinstance(obj, np.random.RandomState):
        obj.seed(derived_seed(study_seed, trial_number, path))
        return 1
    if isinstance(obj, np.random.Generator):
        obj.bit_generator.state = type(obj.bit_generator)(derived_seed(study_seed, trial_number, path)).state
        return 1
    if isinstance(obj, random.Random):
        obj.seed(derived_seed(study_seed, trial_number, path))
        return 1
    if not type(obj).__module__.startswith(_WALKED_PACKAGES):
        return 0
    count = 0
    for name, value in sorted(vars(obj).items()) if hasattr(obj, "__dict__") else ():
        count += _reseed(value, study_seed, trial_number, f"{path}.{name}", seen, depth + 1)
    return count
