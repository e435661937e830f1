"""A full disk while msmix writes: checkpoints, caches, metrics and CSV files.

The disk fills for chosen files only: their temporary file (every output goes through `io.atomic_path`) is
made a link to /dev/full, so the kernel itself answers ENOSPC to whichever library writes it (Python, torch's
zip writer, HDF5), or the final fsync reports ENOSPC, as it can on a file system that delays allocation. For
every case: exit code 1, one line naming the file and "No space left on device", the previous good file
byte-identical, no temporary file left behind.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from typer.testing import CliRunner

from formats import mmsa_split, write_pickle
from msmix_cli.cli import app
from msmix_cli.data.specs import DATASETS

DEV_FULL = Path("/dev/full")
pytestmark = pytest.mark.skipif(not DEV_FULL.exists(), reason="needs /dev/full (Linux) to fill the disk")

runner = CliRunner()
TRAIN = ["train", "--backbone", "lmf", "--samples", "40", "--max-epochs", "2", "--seed", "7", "--set", "train.threads=1",
         "--format", "json"]
FULL = "No space left on device"
Rule = Callable[[Path, Counter], bool]  # (file being written, writes asked for so far by file name) -> disk full?


@dataclass
class FullDisk:
    """Decides, write by write, whether the disk is full; remembers what each refused file held before."""

    is_full: Rule
    writes: Counter = field(default_factory=Counter)
    kept: dict[Path, bytes | None] = field(default_factory=dict)

    def refuses(self, target: Path) -> bool:
        self.writes[target.name] += 1
        if not self.is_full(target, self.writes):
            return False
        self.kept.setdefault(target, target.read_bytes() if target.exists() else None)
        return True


@pytest.fixture
def fill_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[[Rule], FullDisk]:
    """`fill_disk(rule)`: from now on, an atomic write of a file for which `rule` holds fails with ENOSPC."""

    def install(rule: Rule) -> FullDisk:
        disk = FullDisk(rule)
        make_temporary = tempfile.mkstemp

        def mkstemp(suffix: str | None = None, prefix: str | None = None, dir: str | os.PathLike[str] | None = None,
                    text: bool = False) -> tuple[int, str]:
            # atomic_path names its temporary file ".<target name>.<pid>.<random>.tmp" beside the target
            atomic = re.fullmatch(r"\.(.+)\.\d+\.", prefix or "") if suffix == ".tmp" and dir is not None else None
            refused = atomic is not None and disk.refuses(Path(dir) / atomic.group(1))
            fd, name = make_temporary(suffix=suffix, prefix=prefix, dir=dir, text=text)
            if refused:
                os.close(fd)
                os.unlink(name)
                os.symlink(DEV_FULL, name)
                fd = os.open(name, os.O_WRONLY)
            return fd, name

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        return disk

    return install


@pytest.fixture
def fail_flush(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """`fail_flush(name)`: the data of file `name` reaches the page cache, then its fsync reports ENOSPC."""

    def install(name: str) -> None:
        flush = os.fsync

        def fsync(fd: int) -> None:
            if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{name}."):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            flush(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    return install


def msmix(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def train(root: Path, *extra: object):
    return msmix(*TRAIN, "--data-root", root / "data", "--out", root / "runs", "--name", "run", *extra)


def one_line_error(result, exit_code: int = 1) -> str:
    """The error: one line, the last on stderr (the progress of what ran before may precede it)."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:], result.stderr
    return errors[0]


def temporary_files(root: Path) -> list[Path]:
    return [path for path in root.rglob(".*.tmp")]


def status(run: Path) -> str:
    return json.loads((run / "run.json").read_text())["status"]


# ---------------------------------------------------------------------------------------------- checkpoints

def test_a_full_disk_at_the_second_last_pt_keeps_the_first_and_the_run_resumes(tmp_path, fill_disk) -> None:
    disk = fill_disk(lambda target, writes: target.name == "last.pt" and writes["last.pt"] >= 2)
    run = tmp_path / "runs" / "run"

    message = one_line_error(train(tmp_path))

    assert message == f"error: could not write {run / 'last.pt'}: {FULL}"
    kept = disk.kept[run / "last.pt"]
    assert kept is not None and (run / "last.pt").read_bytes() == kept  # epoch 1's resume point, byte for byte
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    assert status(run) == "failed" and not temporary_files(tmp_path)

    disk.is_full = lambda target, writes: False  # space freed: the run goes on from epoch 1 and completes
    resumed = msmix("train", "--resume", run, "--data-root", tmp_path / "data", "--format", "json")
    assert resumed.exit_code == 0, resumed.output
    assert status(run) == "complete" and (run / "metrics.json").is_file()


def test_a_full_disk_for_the_first_checkpoint_leaves_none_half_written(tmp_path, fail_flush) -> None:
    fail_flush("checkpoint.pt")
    run = tmp_path / "runs" / "run"

    message = one_line_error(train(tmp_path))

    assert message == f"error: could not write {run / 'checkpoint.pt'}: {FULL}"
    assert not (run / "checkpoint.pt").exists() and not temporary_files(tmp_path)
    assert status(run) == "failed"


def test_when_every_write_fails_the_error_is_the_first_not_the_status_file(tmp_path, fill_disk) -> None:
    """Once epoch 1's last.pt is in place nothing fits: the run cannot even record that it failed, and says what
    failed first."""
    run = tmp_path / "runs" / "run"
    epoch_one: dict[str, bytes] = {}

    def full_after_epoch_one(target: Path, writes: Counter) -> bool:
        full = writes["last.pt"] >= 2 or (writes["last.pt"] == 1 and target.name != "last.pt")
        if full and not epoch_one:
            epoch_one.update({path.name: path.read_bytes() for path in run.iterdir()})
        return full

    disk = fill_disk(full_after_epoch_one)

    message = one_line_error(train(tmp_path))

    first_refused = next(iter(disk.kept))
    assert first_refused.name in ("checkpoint.pt", "history.csv")  # whichever epoch 2 writes first
    assert message == f"error: could not write {first_refused}: {FULL}"
    assert "run.json" in {path.name for path in disk.kept}  # marking the run failed was tried, and did not fit
    assert {path.name: path.read_bytes() for path in run.iterdir()} == epoch_one  # epoch 1's files, untouched
    assert status(run) == "running" and not temporary_files(tmp_path)


# ---------------------------------------------------------------------------------------------- caches

SIZES = {"train": 4, "valid": 2, "test": 3}


def mosi_pickle(root: Path) -> Path:
    mosi = DATASETS.get("mosi")
    content = {split: mmsa_split(n, mosi.seq_lens["aligned"], mosi.dims, aligned=True, seed=i, prefix=split)
               for i, (split, n) in enumerate(SIZES.items())}
    return write_pickle(root / "raw" / "mosi" / "aligned_50.pkl", content)


@pytest.mark.parametrize("how", ["write", "flush"])
def test_a_full_disk_while_preprocessing_leaves_no_cache(tmp_path, fill_disk, fail_flush, how: str) -> None:
    source = mosi_pickle(tmp_path)
    original = source.read_bytes()
    if how == "write":
        fill_disk(lambda target, writes: target.name == "mosi-aligned.h5")
    else:
        fail_flush("mosi-aligned.h5")

    message = one_line_error(msmix("preprocess", "--dataset", "mosi", "--data-root", tmp_path))

    assert message == f"error: could not write {tmp_path / 'cache' / 'mosi-aligned.h5'}: {FULL}"
    assert not list((tmp_path / "cache").iterdir())  # neither a cache nor its temporary file
    assert source.read_bytes() == original


def test_a_full_disk_while_preprocessing_again_keeps_the_previous_cache(tmp_path, fill_disk) -> None:
    mosi_pickle(tmp_path)
    assert msmix("preprocess", "--dataset", "mosi", "--data-root", tmp_path).exit_code == 0
    cache = tmp_path / "cache" / "mosi-aligned.h5"
    previous = cache.read_bytes()
    fill_disk(lambda target, writes: target.name == "mosi-aligned.h5")

    message = one_line_error(msmix("preprocess", "--dataset", "mosi", "--normalize", "--data-root", tmp_path))

    assert message == f"error: could not write {cache}: {FULL}"
    assert cache.read_bytes() == previous and not temporary_files(tmp_path)


def test_a_full_disk_while_generating_synth_fails_before_the_run_starts(tmp_path, fill_disk) -> None:
    fill_disk(lambda target, writes: target.name.startswith("synth-"))

    message = one_line_error(train(tmp_path))

    cache_folder = tmp_path / "data" / "cache"
    assert re.fullmatch(rf"error: could not write {re.escape(str(cache_folder))}/synth-[0-9a-f]+\.h5: {FULL}", message)
    assert not list(cache_folder.iterdir())
    assert not [path for path in (tmp_path / "runs").rglob("*") if path.is_file()]  # nothing of the run either


# ---------------------------------------------------------------------------------------------- metrics and CSV

@pytest.mark.parametrize("name", ["metrics.json", "history.csv"])
def test_a_full_disk_for_metrics_or_history_fails_the_run(tmp_path, fill_disk, name: str) -> None:
    fill_disk(lambda target, writes: target.name == name)
    run = tmp_path / "runs" / "run"

    message = one_line_error(train(tmp_path))

    assert message == f"error: could not write {run / name}: {FULL}"
    assert not (run / name).exists() and not temporary_files(tmp_path)
    assert status(run) == "failed" and (run / "checkpoint.pt").is_file()  # epoch 1's best, written before either


def test_a_full_disk_for_the_ablation_summary_keeps_the_runs_for_the_next_try(tmp_path, fill_disk) -> None:
    ablate = ["ablate", "--backbone", "lmf", "--drop", "sal", "--seeds", "1", "--samples", "40", "--max-epochs", "1",
              "--set", "train.threads=1", "--out", tmp_path / "ablation", "--data-root", tmp_path / "data", "--format", "json"]
    disk = fill_disk(lambda target, writes: target.name == "summary.csv")

    message = one_line_error(msmix(*ablate))

    out = tmp_path / "ablation"
    assert message == f"error: could not write {out / 'summary.csv'}: {FULL}"
    assert (out / "ablation.csv").is_file() and not (out / "summary.csv").exists() and not temporary_files(tmp_path)

    disk.is_full = lambda target, writes: False
    again = msmix(*ablate)
    assert again.exit_code == 0, again.output
    assert "2 reused" in again.stderr and (out / "summary.csv").is_file()


# ---------------------------------------------------------------------------------------------- unwritable paths

def test_a_read_only_file_system_is_a_path_that_cannot_be_written(tmp_path, monkeypatch) -> None:
    """EROFS is the path the user chose, not the machine failing: one line and exit 2."""
    make_temporary = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).parent == tmp_path / "runs":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return make_temporary(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    message = one_line_error(train(tmp_path), exit_code=2)
    run = tmp_path / "runs" / "run"
    assert message == f"error: could not write {run / 'recipe.yaml'}: Read-only file system"
    assert not any(run.glob("*"))  # left empty, or removed with its lock


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission bits")
def test_a_folder_without_write_permission_is_a_path_that_cannot_be_written(tmp_path) -> None:
    mosi_pickle(tmp_path)
    (tmp_path / "cache").mkdir(mode=0o500)
    try:
        message = one_line_error(msmix("preprocess", "--dataset", "mosi", "--data-root", tmp_path), exit_code=2)
    finally:
        (tmp_path / "cache").chmod(0o700)
    assert message == f"error: could not write {tmp_path / 'cache' / 'mosi-aligned.h5'}: Permission denied"
