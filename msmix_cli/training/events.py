"""What the training loop reports while it runs. The CLI renders these; tests listen or ignore them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union


@dataclass(frozen=True)
class RunStarted:
    run_dir: Path
    max_epochs: int
    batches_per_epoch: int
    parameters: int
    device: str
    description: str  # one line on the data trained on
    resumed_from: int | None = None  # a resumed run: the last epoch complete before it stopped


@dataclass(frozen=True)
class BatchDone:
    epoch: int
    batch: int  # 1-based within the epoch
    loss: float  # running mean of the epoch so far


@dataclass(frozen=True)
class EpochDone:
    epoch: int
    train_loss: float
    valid_loss: float
    valid_mae: float
    improved: bool
    best_epoch: int
    row: dict[str, Any] = field(default_factory=dict)  # the epoch's history.csv row: loss terms, metrics, lr


Event = Union[RunStarted, BatchDone, EpochDone]
Listener = Callable[[Event], None]


def ignore(_: Event) -> None:
    return None
