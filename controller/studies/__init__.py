"""The shared Optuna study: storage, the reproducibility record, asking trials, observing them."""

from __future__ import annotations
