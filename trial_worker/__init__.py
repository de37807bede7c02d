"""The trial worker: runs one trial (or, warm, many) of a tunefleet study inside a pod or process."""

from __future__ import annotations
