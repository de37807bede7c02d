"""The trial gateway (issue 12): trial pods reach their study through it, never the database."""

from __future__ import annotations
