"""The `msmix` executable: signals are handled before the command line (and torch) is even imported."""

from __future__ import annotations

from msmix_cli import signals


def main() -> None:
    signals.install()
    from msmix_cli.cli import main as run_cli

    run_cli()
