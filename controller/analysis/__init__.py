"""The analysis behind the export: importance, intervals, plots, the report and the record.

Everything works from one :class:`~controller.analysis.data.StudyData`, read from the storage once.
"""

from __future__ import annotations

from controller.analysis.data import StudyData, load_study_data

__all__ = ["StudyData", "load_study_data"]
