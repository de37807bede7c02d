"""The shared Optuna study: storage, the reproducibility record, asking trials, observing them."""
