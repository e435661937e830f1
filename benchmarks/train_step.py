"""Training speed, measured in one run: `python benchmarks/train_step.py` (or `make bench`).

1. Step time per backbone (MOSI-shaped batches, each backbone's MOSI recipe and batch size B): the median CPU
   time of full training steps (forward, loss, backward, msmix's optimiser step) for every mixer at B, for
   `none` at 2B, and for MS-Mix built the authors' way (the originals through the network, then the mixed
   batch through the whole network again: a second encoding). Targets: msmix(B) <= none(2B) for every
   backbone; msmix(B) <= 1.3 x none(B) where the head is cheap (LMF, ALMT, GLoMo, MISA);
   msmix(B) <= 0.8 x authors'(B).
2. Data path: the share of a TFN training epoch on MOSI-shaped data spent producing batches (target <= 5%),
   with the split in memory and streamed from the cache file.
3. Threads: a MulT training epoch on the same data at msmix's default thread count, at 1 thread and at
   twice the cores (oversubscribed).

The step table counts CPU time of this process (time.process_time) on `--threads` intra-op threads (default
1), so other jobs on the machine slow it less than they slow wall time.
Steps of all the configurations of a backbone are interleaved, so a slow spell of the machine hits them
alike. The memory benchmark writes a 6 GB cache and runs on its own: benchmarks/memory.py.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from msmix_cli.data.cache import SplitData
from msmix_cli.data.specs import DATASETS
from msmix_cli.mixing import MIXERS, Mixer, mix_loss
from msmix_cli.mixing.base import mix_pairs
from msmix_cli.models import BACKBONES, Backbone, task_loss
from msmix_cli.recipes import Recipe, resolve_recipe
from msmix_cli.training.device import configure_threads, keep_freed_memory
from msmix_cli.training.events import BatchDone, Event, RunStarted
from msmix_cli.training.loop import build_networks, fit, make_optimizer, step_loss
from msmix_cli.training.rundir import RunDir
from msmix_cli.types import MODALITIES, Batch, DataShape, Multimodal

MOSI = DATASETS.get("mosi")
SHAPE = DataShape(dict(MOSI.dims), dict(MOSI.seq_lens["aligned"]), MOSI.label_range, aligned=True)
Step = Callable[[], None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15, help="measured steps per configuration (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--backbones", default=",".join(BACKBONES.names()))
    parser.add_argument("--skip-epochs", action="store_true", help="only the step table")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of the step table")
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    keep_freed_memory()  # as `fit` does on the CPU
    print(f"torch {torch.__version__}, {threads} intra-op thread(s), CPU; step times are CPU time\n")
    step_table([b for b in args.backbones.split(",") if b], args.steps, args.warmup)
    configure_threads(None)
    if not args.skip_epochs:
        with tempfile.TemporaryDirectory(prefix="msmix-bench-") as folder:
            data_path_table(Path(folder))
            threads_table(Path(folder))


# 1. Step time ------------------------------------------------------------------------------------------

CHEAP_HEADS = ("lmf", "almt", "glomo", "misa")  # msmix(B) <= 1.3 x none(B) is promised for these


def step_table(backbones: list[str], steps: int, warmup: int) -> None:
    print("## 1. Training step, median CPU ms (MOSI-shaped, aligned 50 steps, text 768 / audio 5 / vision 20)\n")
    print("| backbone | B | step | ms | / none(B) | / none(2B) | / authors' msmix(B) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    verdicts = []
    for backbone in backbones:
        recipe = resolve_recipe(None, dataset="mosi", backbone=backbone)
        size = recipe.train.batch_size
        times = median_ms(backbone_steps(recipe, size), steps, warmup)
        for name, ms in times.items():
            print(f"| {backbone} | {size} | {name} | {ms:.1f} | {ms / times['none']:.2f} | {ms / times['none (2B)']:.2f} "
                  f"| {ms / times['msmix, authors way']:.2f} |")
        verdicts.append(verdict(backbone, times))
    print("\nTargets: msmix(B) <= none(2B); msmix(B) <= 1.3 x none(B) for " + ", ".join(CHEAP_HEADS)
          + "; msmix(B) <= 0.8 x authors'(B).")
    print("\n".join(f"- {line}" for line in verdicts) + "\n")


def verdict(backbone: str, times: dict[str, float]) -> str:
    msmix, single, double, authors = times["msmix"], times["none"], times["none (2B)"], times["msmix, authors way"]
    checks = [f"msmix(B)/none(2B) = {msmix / double:.2f} ({'ok' if msmix <= double else 'MISSED'})"]
    if backbone in CHEAP_HEADS:
        checks.append(f"msmix(B)/none(B) = {msmix / single:.2f} (<= 1.3: {'ok' if msmix <= 1.3 * single else 'MISSED'})")
    else:
        checks.append(f"msmix(B)/none(B) = {msmix / single:.2f}")
    checks.append(f"msmix(B)/authors'(B) = {msmix / authors:.2f} ({'ok' if msmix <= 0.8 * authors else 'MISSED'})")
    return f"{backbone}: " + ", ".join(checks)


def backbone_steps(recipe: Recipe, size: int) -> dict[str, Step]:
    """One training step per configuration of a backbone, each with its own network and optimiser."""
    single, double = random_batch(size, seed=0), random_batch(2 * size, seed=1)
    steps = {}
    for mixer in MIXERS.names():
        steps[mixer] = library_step(recipe, mixer, single)
    steps["none (2B)"] = library_step(recipe, "none", double)
    steps["msmix, authors way"] = library_step(recipe, "msmix", single, loss=authors_step_loss)
    return steps


def library_step(recipe: Recipe, mixer_name: str, batch: Batch, loss: Callable = step_loss) -> Step:
    torch.manual_seed(recipe.train.seed)
    model, mixer = build_networks(with_mixer(recipe, mixer_name), SHAPE)
    model.train(), mixer.train()
    optimizer = make_optimizer(recipe, model, mixer)
    rng = np.random.default_rng(0)

    def step() -> None:
        total = loss(model, mixer, batch, rng, recipe.mix.w_mix)[0]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    return step


def authors_step_loss(model: Backbone, mixer: Mixer, batch: Batch, rng: np.random.Generator, w_mix: float) -> tuple[torch.Tensor, dict]:
    """MS-Mix the way the authors' code runs it: the originals through the network; then the batch is encoded
    again and the mixed samples (same pairs and ratios) go through the head: a second encoding per step."""
    latents = model.encode(batch)
    original = model.head(latents.views).prediction.float()
    mix = mixer(latents.views, batch.label, rng)
    again = model.encode(batch)
    ratios = {m: mix.stats[f"lam_{m}"] for m in again.views.features}
    mixed = model.head(mix_pairs(again.views, mix.stats["pairs"], ratios)).prediction.float()
    total = task_loss(model.task_loss, original, batch.label) + w_mix * mix_loss(mixed, mix) + mix.loss
    return total + latents.aux_loss + again.aux_loss, {}


def with_mixer(recipe: Recipe, mixer: str) -> Recipe:
    return resolve_recipe(None, dataset="mosi", backbone=recipe.backbone, assignments=[f"mix.name={mixer}"])


def random_batch(size: int, seed: int) -> Batch:
    """MOSI-shaped features with valid lengths between a fifth of the sequence and all of it."""
    generator = torch.Generator().manual_seed(seed)
    features, lengths = {}, {}
    for m in MODALITIES:
        steps = SHAPE.seq_lens[m]
        features[m] = torch.randn(size, steps, SHAPE.dims[m], generator=generator)
        lengths[m] = torch.randint(steps // 5, steps + 1, (size,), generator=generator)
    label = (torch.rand(size, generator=generator) * 2 - 1) * SHAPE.label_range
    return Batch(Multimodal(features, lengths), label)


def median_ms(steps: dict[str, Step], repeats: int, warmup: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in steps}
    for repeat in range(warmup + repeats):
        for name, step in steps.items():
            start = time.process_time()
            step()
            if repeat >= warmup:
                times[name].append(time.process_time() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


# 2-3. Epochs -------------------------------------------------------------------------------------------

class EpochClock:
    """Listens to fit's events: the training part of epoch 1 runs from RunStarted to its last BatchDone."""

    def __init__(self) -> None:
        self.started = self.last_batch = 0.0

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.started = time.perf_counter()
        elif isinstance(event, BatchDone) and event.epoch == 1:
            self.last_batch = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.last_batch - self.started


class BatchClock:
    """Times the training batches SplitData produces (the shuffled ones; evaluation's are not counted)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.original = SplitData.batches

    def __enter__(self) -> BatchClock:
        clock, original = self, self.original

        def timed(split: SplitData, *args, **kwargs):
            batches = original(split, *args, **kwargs)
            if not (kwargs.get("shuffle") or kwargs.get("indices") is not None):
                return batches
            return clock.timed(batches)

        SplitData.batches = timed  # type: ignore[method-assign]
        return self

    def timed(self, batches):
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            self.seconds += time.perf_counter() - start
            if batch is None:
                return
            yield batch

    def __exit__(self, *exc) -> None:
        SplitData.batches = self.original  # type: ignore[method-assign]


def train_one_epoch(folder: Path, backbone: str, name: str, assignments: list[str]) -> tuple[float, float]:
    """Seconds of epoch 1's training part, and of it the seconds spent producing batches."""
    recipe = resolve_recipe(None, dataset="synth", backbone=backbone, assignments=["train.max_epochs=1", *assignments])
    clock = EpochClock()
    with BatchClock() as batches:
        fit(recipe, RunDir.create(folder / "runs", name), data_root=folder / "data", on_event=clock)
    return clock.seconds, batches.seconds


def data_path_table(folder: Path) -> None:
    print("## 2. Data path: share of a TFN training epoch spent producing batches (synth, MOSI-shaped)\n")
    print("| data | epoch s | batches s | share |")
    print("| --- | --- | --- | --- |")
    for label, in_memory in (("in memory", "true"), ("streamed from the cache", "false")):
        epoch, batches = train_one_epoch(folder, "tfn", f"tfn-{in_memory}", [f"data.in_memory={in_memory}"])
        print(f"| {label} | {epoch:.2f} | {batches:.3f} | {100 * batches / epoch:.1f}% |")
    print("\nTarget: <= 5%.\n")


def threads_table(folder: Path) -> None:
    cores = configure_threads(None)
    print("## 3. Threads: one MulT training epoch (synth, MOSI-shaped, recipe synth-mult)\n")
    print("| intra-op threads | epoch s |")
    print("| --- | --- |")
    for threads in dict.fromkeys((cores, 1, 2 * cores)):
        epoch, _ = train_one_epoch(folder, "mult", f"mult-{threads}", [f"train.threads={threads}"])
        note = " (default)" if threads == cores else ""
        print(f"| {threads}{note} | {epoch:.2f} |")
    configure_threads(None)
    print()


if __name__ == "__main__":
    main()
