"""MMSA's half of `vs_mmsa.py`: run with a Python that has MMSA 2.2.1 installed, never with msmix's.

    /path/to/mmsa-venv/bin/python benchmarks/mmsa_side.py --model tfn --pickle P --batch 32 --warmup 2

Trains one epoch of MMSA's own trainer (`ATIO().getTrain`) on the pickle, with MMSA's MOSI configuration,
no DataLoader workers (so all CPU time is this process's) and validation/test cut to one batch each, and
prints one JSON line: the CPU and wall seconds of the training batches after the first `--warmup` ones,
the samples they held, and the parameter count. It imports nothing of msmix.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterator

import torch


class Clock:
    """When each training batch was asked for (CPU and wall seconds; once more after the last), and its samples."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, float]] = []
        self.samples: list[int] = []

    def stamp(self) -> None:
        self.stamps.append((time.process_time(), time.perf_counter()))

    def after(self, warmup: int) -> dict[str, float]:
        """The batches after the first `warmup`: their CPU and wall seconds, samples and count."""
        (cpu0, wall0), (cpu1, wall1) = self.stamps[warmup], self.stamps[-1]
        return {"cpu_s": cpu1 - cpu0, "wall_s": wall1 - wall0, "samples": sum(self.samples[warmup:]),
                "batches": len(self.samples) - warmup}


class FirstBatches:
    """The first `count` batches of a DataLoader, timed by `clock` when one is given."""

    def __init__(self, loader: Any, count: int, clock: Clock | None = None) -> None:
        self.loader, self.count, self.clock = loader, count, clock

    def __len__(self) -> int:
        return min(self.count, len(self.loader))

    def __iter__(self) -> Iterator[Any]:
        batches = iter(self.loader)
        for _ in range(len(self)):
            if self.clock is not None:
                self.clock.stamp()
            batch = next(batches)
            if self.clock is not None:
                self.clock.samples.append(int(batch["labels"]["M"].shape[0]))
            yield batch
        if self.clock is not None:
            self.clock.stamp()


def plateau_without_verbose() -> list[str]:
    """torch 2.x dropped ReduceLROnPlateau's `verbose` argument, which MMSA's MulT trainer passes: drop it."""
    trainer = importlib.import_module("MMSA.trains.singleTask.MULT")  # the module; the package exports the class
    original = trainer.ReduceLROnPlateau

    def plateau(*args: Any, verbose: Any = None, **kwargs: Any) -> Any:
        return original(*args, **kwargs)

    trainer.ReduceLROnPlateau = plateau
    return ["MULT.ReduceLROnPlateau called without verbose= (removed in torch 2)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=("tfn", "lmf", "mult"))
    parser.add_argument("--pickle", type=Path, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2, help="training batches left out of the timing")
    parser.add_argument("--seed", type=int, default=1111)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from MMSA.config import get_config_regression
    from MMSA.data_loader import MMDataLoader
    from MMSA.models import AMIO
    from MMSA.trains import ATIO
    from MMSA.utils import count_parameters, setup_seed

    shims = plateau_without_verbose() if args.model == "mult" else []
    config = get_config_regression(args.model, "mosi")
    with tempfile.TemporaryDirectory(prefix="mmsa-side-") as folder:
        config.update({"featurePath": str(args.pickle), "batch_size": args.batch, "device": torch.device("cpu"),
                       "train_mode": "regression", "custom_feature": None, "feature_T": None, "feature_A": None,
                       "feature_V": None, "cur_seed": 1, "early_stop": 0,  # one epoch
                       "model_save_path": Path(folder) / "model.pth"})
        setup_seed(args.seed)
        loaders = MMDataLoader(config, num_workers=0)
        model = AMIO(config)
        clock = Clock()
        loaders = {"train": FirstBatches(loaders["train"], len(loaders["train"]), clock),
                   "valid": FirstBatches(loaders["valid"], 1), "test": FirstBatches(loaders["test"], 1)}
        ATIO().getTrain(config).do_train(model, loaders)
    print(json.dumps({
        **clock.after(args.warmup), "parameters": count_parameters(model), "batch": args.batch,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "version": version("MMSA"), "shims": shims,
    }))


if __name__ == "__main__":
    sys.exit(main())
