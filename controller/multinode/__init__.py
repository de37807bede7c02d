"""Trials that span several nodes on the cluster: an Indexed Job behind a headless Service."""

from __future__ import annotations
