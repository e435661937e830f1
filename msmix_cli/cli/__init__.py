"""The `msmix` command line: each module registers its commands on the one Typer app."""

from msmix_cli.cli.app import app
from msmix_cli.cli import ablate, data, tools, train  # noqa: F401  (each module registers its commands)
from msmix_cli.cli import tune  # noqa: F401


def main() -> None:
    app()
