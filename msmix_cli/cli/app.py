"""The Typer app and the one place where errors become a one-line message and an exit code."""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from typer.core import TyperGroup

from msmix_cli import __version__, signals
from msmix_cli.errors import MsmixError
from msmix_cli.report import drop_to_fit
from msmix_cli.io import os_failure


class OneLineUsageErrors(TyperGroup):
    """A command line Click cannot parse (a value of the wrong type, an unknown option, a missing argument) is
    bad input like any other: one `error:` line and Click's exit code 2, not Typer's boxed usage panel."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for command in self.commands.values():
            command.get_params = flags_without_value(command.get_params)  # type: ignore[method-assign]

    def get_params(self, ctx: Any) -> list[Any]:
        return flags_without_value(super().get_params)(ctx)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as error:
            # Click's own errors carry `format_message` and `exit_code` (their class moved into Typer in 0.26);
            # the commands' errors never get here, `reports_errors` has turned them into an exit already.
            message = getattr(error, "format_message", None)
            if not callable(message) or not isinstance(getattr(error, "exit_code", None), int):
                raise
            command = getattr(getattr(error, "ctx", None), "command_path", None)
            hint = f" (see {command} --help)" if command else ""
            print_error(" ".join(str(message()).split()) + hint)
            raise typer.Exit(error.exit_code) from None


def flags_without_value(get_params: Callable[[Any], list[Any]]) -> Callable[[Any], list[Any]]:
    """A command's parameters as its help shows them. Typer labels a flag `<bool>`, which reads as if
    `--no-sig=true` were accepted: a flag takes no value, so its label is empty. An argument named by its
    metavar (RUN) needs no Python type beside it (`<list[Path]>`)."""

    def params(ctx: Any) -> list[Any]:
        found = get_params(ctx)
        for param in found:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
            if param.param_type_name == "argument" and param.metavar:
                param.display_type_rich = lambda ctx: None
        return found

    return params


app = typer.Typer(
    name="msmix",
    help="MS-Mix and its baselines for multimodal sentiment analysis (CMU-MOSI, CMU-MOSEI, CH-SIMS).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=OneLineUsageErrors,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# No emoji codes: a message naming "cuda:x:" or a file ":smile:.pkl" must print as written. Soft wrap: a line is
# never broken inside a path or a number; a terminal wraps what it must, a file keeps each line whole.
out = Console(emoji=False, soft_wrap=True)  # tables and machine-readable output (stdout)
err = Console(stderr=True, emoji=False, soft_wrap=True)  # progress, messages and errors (stderr)


def show_version(value: bool) -> None:
    if value:
        out.print(f"msmix {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=show_version, help="Print msmix's version and exit."),
) -> None:
    """MS-Mix and its baselines for multimodal sentiment analysis (CMU-MOSI, CMU-MOSEI, CH-SIMS).

    Shell completion: msmix --install-completion (bash, zsh, fish, PowerShell).
    """


def print_table(table: Table, metric_names: Sequence[str] = (), all_columns: bool = False) -> None:
    """A table on stdout, never with a number or a name cut short. Into a file or a pipe it takes the width it
    needs; on a terminal too narrow for it, the least read metric columns are left out (named on stderr), and
    what still does not fit wraps at spaces."""
    if not out.is_terminal:  # a console of its own: `print(width=)` cannot exceed the console's width
        Console(file=out.file, width=WIDE, emoji=False).print(table)
        return
    dropped = [] if all_columns else drop_to_fit(table, metric_names, lambda t: narrowest(t) <= out.width)
    out.print(table)
    if dropped:
        err.print(f"[dim]note:[/] {len(dropped)} metric column(s) left out to fit {out.width} columns "
                  f"({', '.join(dropped)}); --columns all shows every one, as a file or a pipe always gets", highlight=False)


def narrowest(table: Table) -> int:
    """The fewest columns `table` fits in with every word whole (Console.measure stops at the terminal's width)."""
    return Measurement.get(out, out.options.update_width(WIDE), table).minimum


WIDE = 100_000  # columns of a table written to a file or pipe: no width limit in practice

F = TypeVar("F", bound=Callable)


# What str.splitlines breaks on: a name or value holding one must not break the message's single line.
LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def print_error(message: str, label: str = "error") -> None:
    """`error: <message>` on one line of stderr; the message is the user's text (paths, values), never markup."""
    err.print(f"[bold red]{label}:[/] {escape(message.translate(LINE_BREAKS))}", highlight=False, soft_wrap=True)


def reports_errors(command: F) -> F:
    """Turn an MsmixError into `error: <message>` on stderr and its exit code (2 bad input, 1 failed run, 130 stopped)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            with signals.raising():
                return command(*args, **kwargs)
        except MsmixError as error:
            print_error(str(error))
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:  # a signal outside the places that stop at a safe point
            print_error(f"stopped by {signals.name()}")
            raise typer.Exit(130) from None
        except OSError as error:
            # The system refused something no reader reported more precisely, mostly a path the user gave (a name
            # too long, a file where a folder should be): one line, exit 2, or 1 when the disk is full or failing.
            failure = os_failure(f"cannot use {error.filename}" if error.filename else "a file operation failed", error)
            print_error(str(failure))
            raise typer.Exit(failure.exit_code) from None
        except Exception as error:  # a bug, not the user's input: one line, the traceback only on request
            if is_framework_exit(error) or os.environ.get("MSMIX_DEBUG"):
                raise
            print_error(f"{type(error).__name__}: {error} (set MSMIX_DEBUG=1 for the traceback, and please report it)",
                        label="internal error")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def is_framework_exit(error: BaseException) -> bool:
    """Typer's and Click's own exits and usage errors, which they turn into an exit code themselves. Matched by
    module because Typer 0.26 moved Click inside itself (`typer._click`): `click` may not be installed at all."""
    return type(error).__module__.split(".")[0] in ("typer", "click")
