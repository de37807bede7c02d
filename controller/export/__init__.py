"""The export directory: best configuration, trials table and (with the analysis) the report."""

from __future__ import annotations

from controller.export.writer import ExportResult, describe_export, write_export

__all__ = ["ExportResult", "describe_export", "write_export"]
