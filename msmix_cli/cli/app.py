"""The Typer app and the one place where errors become a one-line message and an exit code."""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import typer
from rich.console import Console

from msmix_cli.errors import MsmixError

app = typer.Typer(
    name="msmix",
    help="MS-Mix and its baselines for multimodal sentiment analysis (CMU-MOSI, CMU-MOSEI, CH-SIMS).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()  # tables and machine-readable output (stdout)
err = Console(stderr=True)  # progress, messages and errors (stderr)

F = TypeVar("F", bound=Callable)


def reports_errors(command: F) -> F:
    """Turn an MsmixError into `error: <message>` on stderr and its exit code (2 bad input, 1 failed run)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except MsmixError as error:
            err.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted", highlight=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
