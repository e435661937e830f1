"""Several processes, one model: DistributedDataParallel under torchrun (`msmix train --nproc N` launches it).

torchrun starts N copies of `msmix train`; each joins the process group, trains a replica on its share of
every batch, and DDP averages the gradients. What each rank does:

- data: every rank draws the same seeded permutation of the training split each epoch and takes the positions
  rank, rank + N, ... of it, padded to equal length as DistributedSampler does. `train.batch_size` is per
  rank: batch k of the N ranks together is batch k of one process with batch N x batch_size, so with
  `--mix none` one step of N processes equals one step of one process (tests/test_distributed.py).
- mixing: a mixer pairs samples inside its own rank's batch (pairs never cross ranks). Each rank draws its
  mixing randomness and its dropout from generators derived from (seed, epoch, rank), so ranks differ while
  the data order, drawn from the run's generator, stays the same on all of them (as it does for every mixer
  on one seed in a single process).
- BatchNorm (the TFN and LMF subnets) becomes SyncBatchNorm on CUDA, so its statistics cover the whole
  batch; PyTorch's SyncBatchNorm has no CPU kernel, so on CPU (gloo) each rank uses its own shard's statistics.
- validation and test: every rank evaluates the whole split itself (the replicas are identical, so no
  predictions need gathering), and rank 0's numbers are broadcast so every rank takes the same decisions.
- files and progress: rank 0 only; the other ranks read rank 0's checkpoint at the end.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from msmix_cli.data.cache import SplitData
from msmix_cli.errors import MsmixError
from msmix_cli.training.device import available_cores
from msmix_cli.training.events import Listener, ignore
from msmix_cli.training.rundir import RunDir
from msmix_cli.types import Batch

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
HOST = torch.device("cpu")  # small collectives (flags, objects) go through gloo, whatever the GPU backend


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1  # processes in the job
    local_world: int = 1  # processes on this machine

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def ranks() -> Ranks:
    """This process's place in the job; a single process is rank 0 of 1."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    world = dist.get_world_size()
    return Ranks(dist.get_rank(), world, int(os.environ.get("LOCAL_WORLD_SIZE", world)))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched_by_torchrun() -> bool:
    """True in one of several processes started by torchrun (it sets WORLD_SIZE for each)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def joins_process_group(command: F) -> F:
    """Decorator: a command started by torchrun joins the job's process group while it runs.

    CPU tensors communicate through gloo, CUDA tensors through NCCL; each rank's GPU is cuda:LOCAL_RANK.
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not launched_by_torchrun() or dist.is_initialized():
            return command(*args, **kwargs)
        cuda = torch.cuda.is_available() and local_rank() < torch.cuda.device_count()
        if cuda:
            torch.cuda.set_device(local_rank())
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
        try:
            return command(*args, **kwargs)
        finally:
            dist.destroy_process_group()

    return wrapper  # type: ignore[return-value]


def launch(nproc: int, argv: list[str]) -> int:
    """Run `msmix <argv>` (without its --nproc) as `nproc` processes under torchrun on this machine; the exit code.

    The cores are shared among the processes (OMP_NUM_THREADS), unless the user set it.
    """
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, available_cores() // nproc)))}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "msmix_cli", *without_option(argv, "--nproc")]
    return subprocess.run(command, env=env, check=False).returncode


def without_option(argv: list[str], name: str) -> list[str]:
    """argv less `name VALUE` and `name=VALUE`."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            kept.append(arg)
    return kept


def rank_device(device: torch.device) -> torch.device:
    """Under torchrun each rank computes on its own GPU, cuda:LOCAL_RANK."""
    if device.type == "cuda" and ranks().world > 1:
        return torch.device("cuda", local_rank())
    return device


def replicate(module: nn.Module, device: torch.device, *, unused_parameters: bool) -> nn.Module:
    """The module a rank trains through: itself in a single process, else wrapped in DDP.

    `unused_parameters`: some parameters may get no gradient in a step (MS-Mix's intensity predictors rest
    when a batch yields no mixed sample), which DDP must then search for after each forward.
    """
    if ranks().world == 1:
        return module
    if device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return DistributedDataParallel(module, device_ids=None, find_unused_parameters=unused_parameters)


def shard_size(samples: int) -> int:
    return math.ceil(samples / ranks().world)


def shard(order: np.ndarray, where: Ranks) -> np.ndarray:
    """This rank's positions rank, rank + N, ... of `order`, padded from its start to a multiple of N."""
    padded = np.resize(order, math.ceil(len(order) / where.world) * where.world)
    return padded[where.rank::where.world]


def trained_per_epoch(samples: int, batch_size: int) -> int:
    """How many of an epoch's `samples` are trained on: all but one when the last batch would hold a single sample.

    BatchNorm (TFN, LMF, MISA) cannot train on a batch of one; the sample left out differs every epoch.
    """
    return samples - 1 if samples > 1 and samples % batch_size == 1 else samples


def epoch_batches(split: SplitData, batch_size: int, rng: np.random.Generator) -> Iterator[Batch]:
    """One epoch of shuffled training batches: all of them in a single process, this rank's share under DDP."""
    where = ranks()
    order = rng.permutation(len(split))
    if where.world > 1:
        order = shard(order, where)
    return split.batches(batch_size, shuffle=False, indices=order[:trained_per_epoch(len(order), batch_size)])


def mixing_generator(seed: int, epoch: int) -> np.random.Generator:
    """The generator the mixer draws from in `epoch`, derived from (seed, epoch, rank); it also reseeds torch (dropout).

    Shuffling draws from the run's own generator and nothing else does, so every mixer trained on one seed sees
    the same batches in the same order (a paired comparison), and under DDP the data order stays the same on
    every rank while each rank mixes and drops out differently.
    """
    mixing, dropout = np.random.SeedSequence([seed, epoch, ranks().rank]).spawn(2)
    torch.manual_seed(int(dropout.generate_state(1, np.uint64)[0]))
    return np.random.default_rng(mixing)


def any_rank(flag: bool) -> bool:
    """True when `flag` holds on some rank: ranks that skip a step, or stop, must all do it or wait forever."""
    if ranks().world == 1:
        return flag
    value = torch.tensor([float(flag)], device=HOST)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def average_across(row: dict[str, float]) -> dict[str, float]:
    """Each value of an epoch's training log averaged over the ranks (their shards are the same size)."""
    if ranks().world == 1:
        return row
    keys = sorted(row)
    total = torch.tensor([row[k] for k in keys], dtype=torch.float64, device=HOST)
    dist.all_reduce(total)
    return dict(zip(keys, (total / ranks().world).tolist()))


def from_main(value: T) -> T:
    """Rank 0's `value` on every rank."""
    if ranks().world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=HOST)
    return box[0]


def on_main(make: Callable[[], T]) -> T:
    """`make()` run on rank 0 only (choosing and creating the run directory), its result or its error on every rank."""
    where = ranks()
    if where.world == 1:
        return make()
    outcome: tuple[Any, MsmixError | None] = (None, None)
    if where.is_main:
        try:
            outcome = (make(), None)
        except MsmixError as error:
            outcome = (None, error)
    result, error = from_main(outcome)
    if error is not None:
        raise error
    return result


def barrier() -> None:
    """Wait for every rank (a CPU collective, so it takes the gloo path whatever the GPU backend)."""
    if ranks().world > 1:
        dist.all_reduce(torch.zeros(1, device=HOST))


class FollowerRun(RunDir):
    """The run directory as ranks other than 0 see it: they read rank 0's files and write nothing."""

    def start(self, *args: Any, **kwargs: Any) -> None:
        return None

    def update_info(self, **values: Any) -> None:
        return None

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        return None

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        return None

    def save_best(self, state: dict[str, Any]) -> None:
        return None

    def save_last(self, state: dict[str, Any]) -> None:
        return None


def for_rank(run: RunDir, on_event: Listener) -> tuple[RunDir, Listener]:
    """The run directory and event listener this rank uses: rank 0 writes and reports for every rank."""
    if ranks().is_main:
        return run, on_event
    return FollowerRun(run.path), ignore
