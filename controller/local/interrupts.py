"""Ctrl-C for the local runner: the first asks for a stop, the second aborts.

A KeyboardInterrupt raised at an arbitrary bytecode can land between creating a trial and handing
it to its worker, leaving a RUNNING trial that nothing runs (the next round calls it lost) and its
budget reservation half made. So the first Ctrl-C only sets a flag that the runner's loop reads at
its next round (within a second); only a second Ctrl-C raises, to abort at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def first_interrupt_as_request(on_first: Callable[[], None]) -> Iterator[None]:
    """Within the block, the first SIGINT calls ``on_first``; later ones raise KeyboardInterrupt.

    Outside the main thread, or where SIGINT is ignored (a background job), nothing changes.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is signal.SIG_IGN:
        yield
        return
    requested = False

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal requested
        if requested:
            raise KeyboardInterrupt
        requested = True
        on_first()

    signal.signal(signal.SIGINT, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
