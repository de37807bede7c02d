"""The local runner's Ctrl-C: the first asks for a stop without raising, the second aborts."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from controller.local.interrupts import first_interrupt_as_request


@pytest.fixture
def in_a_terminal() -> Iterator[None]:
    """Python's own Ctrl-C handler, as in a terminal (a test session run with ``&`` ignores SIGINT)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)  # delivered to the main thread before kill returns


@pytest.mark.usefixtures("in_a_terminal")
def test_the_first_ctrl_c_only_asks_and_the_second_aborts() -> None:
    requests: list[int] = []
    with pytest.raises(KeyboardInterrupt), first_interrupt_as_request(lambda: requests.append(1)):
        _ctrl_c()
        assert requests == [1]  # no exception: the code that was running went on
        _ctrl_c()
        pytest.fail("the second Ctrl-C did not abort")
    assert requests == [1]


@pytest.mark.usefixtures("in_a_terminal")
def test_the_previous_handler_is_back_after_the_block() -> None:
    before = signal.getsignal(signal.SIGINT)
    with first_interrupt_as_request(lambda: None):
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before


def test_an_ignored_sigint_stays_ignored() -> None:
    """A runner started as a background job (``&``, nohup) takes no Ctrl-C, as before."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        requests: list[int] = []
        with first_interrupt_as_request(lambda: requests.append(1)):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            _ctrl_c()
        assert requests == []
    finally:
        signal.signal(signal.SIGINT, before)
