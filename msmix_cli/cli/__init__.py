"""The `msmix` command line: each module registers its commands on the one Typer app."""

from msmix_cli.cli.app import app
from msmix_cli.cli import ablate, train  # noqa: F401  (registers ablate, train, evaluate; data joins as it lands)


def main() -> None:
    app()
