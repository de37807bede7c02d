"""The ledger figures the controller copies into a study for the export through the gateway."""

from __future__ import annotations

import json

import pytest

from controller.analysis.ledger_snapshot import decode_ledger, encode_ledger
from controller.budget.ledger import Charge, Totals


def test_charges_and_totals_survive_the_json_round_trip() -> None:
    charges = {0: Charge(3600, 7200), 7: Charge(0, 120), 12: Charge(5, 0)}
    totals = Totals(settled=Charge(3605, 7320), reserved=Charge(0, 0), gpu_seconds_limit=36000,
                    cpu_seconds_limit=None)
    # Optuna stores the attribute as JSON: trial numbers come back as strings before decoding.
    stored = json.loads(json.dumps(encode_ledger(charges, totals)))
    assert decode_ledger(stored) == (charges, totals)


def test_a_study_without_charges_keeps_its_totals() -> None:
    totals = Totals(Charge(), Charge(), None, None)
    assert decode_ledger(json.loads(json.dumps(encode_ledger({}, totals)))) == ({}, totals)


@pytest.mark.parametrize("value", [None, "text", {"charges": {}}, {"charges": {"x": {}}}])
def test_a_malformed_attribute_is_a_value_error(value: object) -> None:
    with pytest.raises(ValueError):
        decode_ledger(value)

