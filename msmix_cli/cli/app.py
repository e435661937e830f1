"""The Typer app and the one place where errors become a one-line message and an exit code."""

from __future__ import annotations

import functools
import os
from typing import Callable, TypeVar

import click
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
    """Turn an MsmixError into `error: <message>` on stderr and its exit code (2 bad input, 1 failed run, 130 stopped)."""

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
        except (typer.Exit, click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as error:  # a bug, not the user's input: one line, the traceback only on request
            if os.environ.get("MSMIX_DEBUG"):
                raise
            err.print(f"[bold red]internal error:[/] {type(error).__name__}: {error} "
                      "(set MSMIX_DEBUG=1 for the traceback, and please report it)", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]
