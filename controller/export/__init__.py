"""The export directory: best configuration, trials table and (with the analysis) the report.

The writer pulls in the analysis (scipy, scikit-learn through Optuna's importance, plotly); it
is loaded on first use, so a controller or CLI that only needs ``best_config`` starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.export.writer import ExportResult, describe_export, write_export

__all__ = ["ExportResult", "describe_export", "write_export"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("controller.export.writer"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
