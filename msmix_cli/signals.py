"""SIGINT and SIGTERM from the first instant of a command, before its seconds of imports.

Both become KeyboardInterrupt wherever they land (the training loop replaces this with its own handler, which
stops at a safe point); which signal it was is kept for the message. Imports nothing heavy, on purpose.
"""

from __future__ import annotations

import signal
from typing import Any, NoReturn

STOPPING = (signal.SIGINT, signal.SIGTERM)
received: str | None = None


def _interrupt(signum: int, _frame: Any) -> NoReturn:
    global received
    received = signal.Signals(signum).name
    raise KeyboardInterrupt(received)


def install() -> None:
    for sig in STOPPING:
        signal.signal(sig, _interrupt)


def ignore() -> None:
    """While a stopped command says why and exits: a second Ctrl-C must not cut that one line short."""
    for sig in STOPPING:
        signal.signal(sig, signal.SIG_IGN)


def name() -> str:
    return received or "SIGINT"
