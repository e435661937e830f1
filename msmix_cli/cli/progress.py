"""Rich rendering of the training loop's events: one progress bar, one line per epoch."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TaskID, TextColumn, TimeElapsedColumn

from msmix_cli.training.events import BatchDone, EpochDone, Event, RunStarted


class _BarsOnceThereAreBars(Progress):
    """Starts drawing with its first bar: a live display stopped before it drew one leaves a blank line, which
    would come before an error's one line (a download refused at its first request, say)."""

    def start(self) -> None:
        """Deferred to the first `add_task`."""

    def add_task(self, *args: Any, **kwargs: Any) -> TaskID:
        task = super().add_task(*args, **kwargs)
        if not self.live.is_started:
            super().start()
        return task

    def stop(self) -> None:
        if self.live.is_started:
            super().stop()


def live_bars(console: Console, *columns: ProgressColumn, transient: bool = True) -> Progress:
    """Progress bars, drawn on a terminal only and from the first bar on: on a log or a pipe, Rich ends them
    with a blank line, and their frames are of no use there."""
    return _BarsOnceThereAreBars(*columns, console=console, transient=transient, disable=not console.is_terminal)


class TrainingProgress:
    """A listener for `fit`: epoch and batch bars, running loss, validation MAE, and a line per epoch on stderr
    whatever the output format (stdout carries only the result). Use as a context manager."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = live_bars(
            console, TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("valid MAE {task.fields[mae]}"), TimeElapsedColumn(),
        )
        self.epochs = self.batches = None

    def __enter__(self) -> TrainingProgress:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.console.print(f"[dim]run[/] {escape(str(event.run_dir))}  [dim]data[/] {escape(event.description)}  "
                               f"[dim]device[/] {event.device}  [dim]parameters[/] {event.parameters:,}", highlight=False)
            if event.resumed_from is not None:
                self.console.print(f"resuming from epoch {event.resumed_from + 1} ({event.resumed_from} of "
                                   f"{event.max_epochs} epochs were complete)", highlight=False)
            self.epochs = self.progress.add_task("epochs", total=event.max_epochs, loss="-", mae="-")
            self.batches = self.progress.add_task("epoch 1", total=event.batches_per_epoch, loss="-", mae="-")
        elif isinstance(event, BatchDone):
            self.progress.update(self.batches, completed=event.batch, description=f"epoch {event.epoch}", loss=f"{event.loss:.4f}")
        elif isinstance(event, EpochDone):
            mae = f"{event.valid_mae:.4f}"
            self.progress.update(self.epochs, completed=event.epoch, loss=f"{event.train_loss:.4f}", mae=mae)
            self.progress.update(self.batches, completed=0, mae=mae)
            mark = "[green]*[/]" if event.improved else " "
            self.console.print(f"epoch {event.epoch:3d}  train loss {event.train_loss:.4f}  valid loss {event.valid_loss:.4f}  "
                               f"valid MAE {mae} {mark}", highlight=False)
