"""GPU- and CPU-second budgets: the ledger of reservations and settlements beside the study."""

from __future__ import annotations
