"""A study's GPU-hour ledger figures, copied into its Optuna study for the export to read.

The trial gateway serves Optuna's storage API only, not the ledger's tables. So before the
export Job runs through the gateway, the controller (which holds the database) writes each
trial's charge and the study's totals into the study as one system attribute, :data:`ATTR_LEDGER`;
:func:`controller.analysis.data.load_study_data` reads them back from there. Pure: encoding and
decoding only.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from controller.budget.accounting import Charge
from controller.budget.ledger import Totals

ATTR_LEDGER = "tunefleet.ledger"  # study system attribute
SNAPSHOT_VERSION = 1


class _Seconds(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    gpu_seconds: int
    cpu_seconds: int

    @classmethod
    def of(cls, charge: Charge) -> _Seconds:
        return cls(gpu_seconds=charge.gpu_seconds, cpu_seconds=charge.cpu_seconds)

    def charge(self) -> Charge:
        return Charge(self.gpu_seconds, self.cpu_seconds)


class LedgerSnapshot(BaseModel):
    """What ``load_study_data`` takes from the ledger: charges per trial number and the totals."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = SNAPSHOT_VERSION
    charges: dict[int, _Seconds]  # JSON object keys are strings; validation makes them ints again
    settled: _Seconds
    reserved: _Seconds
    gpu_seconds_limit: int | None
    cpu_seconds_limit: int | None


def encode_ledger(charges: dict[int, Charge], totals: Totals) -> dict[str, Any]:
    """The attribute's JSON value."""
    snapshot = LedgerSnapshot(
        charges={number: _Seconds.of(charge) for number, charge in charges.items()},
        settled=_Seconds.of(totals.settled),
        reserved=_Seconds.of(totals.reserved),
        gpu_seconds_limit=totals.gpu_seconds_limit,
        cpu_seconds_limit=totals.cpu_seconds_limit,
    )
    return snapshot.model_dump(mode="json")


def decode_ledger(value: object) -> tuple[dict[int, Charge], Totals]:
    """The charges and totals an :func:`encode_ledger` value holds; raises ValueError if malformed
    (pydantic's ValidationError is one)."""
    snapshot = LedgerSnapshot.model_validate(value)
    if snapshot.version != SNAPSHOT_VERSION:
        raise ValueError(f"{ATTR_LEDGER}: version {snapshot.version} is not {SNAPSHOT_VERSION}")
    totals = Totals(
        settled=snapshot.settled.charge(),
        reserved=snapshot.reserved.charge(),
        gpu_seconds_limit=snapshot.gpu_seconds_limit,
        cpu_seconds_limit=snapshot.cpu_seconds_limit,
    )
    return {number: seconds.charge() for number, seconds in snapshot.charges.items()}, totals
