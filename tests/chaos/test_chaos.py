"""Each fixed seed: four studies under random faults, every invariant holding throughout.

A failing seed prints the faults it injected, each broken invariant with examples, the
controllers' log tails, and the one-line command that replays it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import replay_command, run_chaos
from tests.support.postgres import PostgresServer

# A short fixed seed for CI (2-3 minutes on a loaded machine); bench/soak.py runs many, longer.
CI_SEEDS = (3,)  # its schedule kills the leader, a crash point, a node and an eviction
CI_WINDOW_S = 25.0


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "chaos_seed" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--chaos-seed")
        metafunc.parametrize("chaos_seed", [chosen] if chosen is not None else list(CI_SEEDS))


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_studies_keep_every_invariant_under_random_faults(
    chaos_seed: int, request: pytest.FixtureRequest, postgres_server: PostgresServer, postgres_url: str,
    tmp_path: Path,
) -> None:
    window = float(request.config.getoption("--chaos-window") or CI_WINDOW_S)
    result = run_chaos(chaos_seed, tmp_path, postgres_server, postgres_url, window_s=window)
    print(result.summary())
    if not result.ok:
        pytest.fail(
            f"{result.summary()}\n\ncontroller logs (tails):\n{result.log_tail}\n\n"
            f"replay: {replay_command(chaos_seed, window)}",
            pytrace=False,
        )
