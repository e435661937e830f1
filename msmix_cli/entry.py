"""The `msmix` executable: signals are handled before the command line (and torch) is even imported."""

from __future__ import annotations

import sys

from msmix_cli import signals


def main() -> None:
    signals.install()
    try:
        from msmix_cli.cli import main as run_cli

        run_cli()
    except KeyboardInterrupt:  # a signal before or after a command could catch it (imports, start-up)
        signals.ignore()
        sys.stderr.write(f"error: stopped by {signals.name()}\n")
        sys.exit(130)
