"""Local mode: the same planner, with trials as worker processes on this machine."""

from __future__ import annotations
