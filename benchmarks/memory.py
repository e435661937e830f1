"""Peak memory of training on a MOSEI-sized cache: `python benchmarks/memory.py` (about 10 minutes, 2 cores).

Writes a MOSEI-shaped unaligned cache to a temporary folder under /tmp (16,326 training segments; sequence
lengths text 50 / audio 500 / vision 500; widths 768 / 74 / 35: 6.1 GB of float32 in the training split, plus
small validation and test splits), trains TFN on it for one epoch in a child process with the data streamed
from the file and with the data loaded whole, prints each child's peak resident memory, and deletes the cache.
Target: peak RSS <= 3 GB when streaming (the default for a cache this size).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from msmix_cli.data.cache import FORMAT, SPLITS, VERSION, cache_path
from msmix_cli.data.specs import DATASETS
from msmix_cli.types import MODALITIES

MOSEI = DATASETS.get("mosei")
SETTING = "unaligned"
ROWS_PER_WRITE = 512  # bounds the writer's own memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=MOSEI.splits["train"], help="training segments")
    parser.add_argument("--eval", type=int, default=256, help="segments in each of valid and test")
    parser.add_argument("--tmp", type=Path, default=Path("/tmp"), help="where the cache is written (and deleted)")
    parser.add_argument("--skip-in-memory", action="store_true", help="only the streamed run")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="msmix-memory-", dir=args.tmp))
    try:
        started = time.perf_counter()
        path = write_mosei_shaped_cache(folder / "data", {"train": args.train, "valid": args.eval, "test": args.eval})
        print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - started:.0f} s\n")
        print("| data | peak RSS GB | epoch wall s |")
        print("| --- | --- | --- |")
        modes = {"streamed (default: data.in_memory unset)": [], "in memory (data.in_memory=true)": ["--set", "data.in_memory=true"]}
        for label, extra in modes.items():
            if args.skip_in_memory and extra:
                continue
            peak, wall = train_child(folder, extra)
            print(f"| {label} | {peak / 1e9:.2f} | {wall:.0f} |")
        print("\nTarget: streamed peak RSS <= 3 GB.")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_mosei_shaped_cache(data_root: Path, sizes: dict[str, int]) -> Path:
    """A cache in the layout of msmix_cli/data/cache.py, filled a few hundred rows at a time."""
    path = cache_path(data_root, MOSEI.name, SETTING)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lengths = MOSEI.seq_lens[SETTING]
    with h5py.File(path, "w") as handle:
        handle.attrs.update({"format": FORMAT, "version": VERSION, "dataset": MOSEI.name, "setting": SETTING,
                             "label_range": float(MOSEI.label_range),
                             "provenance": json.dumps({"source": "benchmarks/memory.py", "random": True})})
        for split in SPLITS:
            group, count = handle.create_group(split), sizes[split]
            for m in MODALITIES:
                steps = lengths[m]
                features = group.create_dataset(m, shape=(count, steps, MOSEI.dims[m]), dtype=np.float32)
                valid = rng.integers(steps // 4, steps + 1, size=count)
                for start in range(0, count, ROWS_PER_WRITE):
                    block = rng.standard_normal((min(ROWS_PER_WRITE, count - start), steps, MOSEI.dims[m]), dtype=np.float32)
                    block[np.arange(steps)[None, :] >= valid[start:start + len(block), None]] = 0.0
                    features[start:start + len(block)] = block
                group.create_dataset(f"{m}_lengths", data=valid.astype(np.int32))
            group.create_dataset("label", data=rng.uniform(-3, 3, size=count).astype(np.float32))
            ids = np.array([f"{split}{row:05d}" for row in range(count)], dtype=object)
            group.create_dataset("id", data=ids, dtype=h5py.string_dtype("utf-8"))
    return path


def train_child(folder: Path, extra: list[str]) -> tuple[int, float]:
    """Peak RSS (bytes) and wall time of `msmix train` on the cache for one epoch, in its own process."""
    command = [sys.executable, "-m", "msmix_cli", "train", "--dataset", MOSEI.name, "--backbone", "tfn",
               "--data-root", str(folder / "data"), "--out", str(folder / "runs"), "--max-epochs", "1",
               "--set", f"data.setting={SETTING}", "--device", "cpu", "--format", "json", *extra]
    log = folder / "train.log"
    started = time.perf_counter()
    with log.open("w") as stderr:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the largest of all children
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"training failed: {log.read_text()[-2000:]}")
    return usage.ru_maxrss * 1024, wall


if __name__ == "__main__":
    main()
