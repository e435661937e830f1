"""SIGINT and SIGTERM from the first instant of a command, before its seconds of imports.

Outside a command's own code (imports, Typer parsing the command line) and inside any import, a signal ends the
process at once: one line, exit 130. A KeyboardInterrupt raised there is not safe: Typer turns it into a silent
exit 130; an import it interrupts can swallow it or leave a module half-made (seen: RecursionError, exit 0); and
one that escapes code run by `exec` (how `dataclass` makes every `__init__`) leaves CPython 3.11 killing itself
with SIGINT at exit, whatever exit code we chose. Nothing of the user's is half-written by an import, a run
folder's lock is an flock the system lets go of, worker processes are sent SIGTERM, as the command would, and a
file being written atomically may leave its temporary beside the target, never a half-written target.

Inside a command (`raising`) a signal becomes KeyboardInterrupt, so that `finally` blocks remove temporary files
and the command can say how to go on; the training loop replaces this with its own handler, which stops at a
safe point. Which signal it was is kept for the message. Imports nothing heavy, on purpose.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from types import FrameType
from typing import Iterator, NoReturn

STOPPING = (signal.SIGINT, signal.SIGTERM)
received: str | None = None
_in_command = False


def _stop(signum: int, frame: FrameType | None) -> NoReturn:
    global received
    received = signal.Signals(signum).name
    if _in_command and not _importing(frame):
        raise KeyboardInterrupt(received)
    _stop_children()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a stream this signal interrupted mid-write refuses a reentrant flush
            stream.flush()
    os.write(2, f"error: stopped by {received}\n".encode())
    os._exit(130)


def _importing(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _stop_children() -> None:
    """SIGTERM to this process's children (an ablation's or a tuning's workers), whose training loops then stop
    at a safe point, as when the command itself stops them: none goes on alone. Linux lists them in /proc."""
    with contextlib.suppress(OSError):
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as listing:
                for child in listing.read().split():
                    with contextlib.suppress(OSError):
                        os.kill(int(child), signal.SIGTERM)


def install() -> None:
    for sig in STOPPING:
        signal.signal(sig, _stop)


@contextlib.contextmanager
def raising() -> Iterator[None]:
    """While a command's own code runs: signals raise KeyboardInterrupt, which the command turns into its message."""
    global _in_command
    outer, _in_command = _in_command, True
    try:
        yield
    finally:
        _in_command = outer


def name() -> str:
    return received or "SIGINT"
