"""msmix against MMSA on the same data: training samples/s of TFN, LMF and MulT, one table.

    python benchmarks/vs_mmsa.py --mmsa-python /path/to/mmsa-venv/bin/python            # writes a MOSI-shaped pickle
    python benchmarks/vs_mmsa.py --mmsa-python PY --pickle ~/MOSI/unaligned_50.pkl --rounds 5

MMSA is never a dependency of msmix: it runs in its own Python (`--mmsa-python`, with MMSA 2.2.1 installed)
through `mmsa_side.py`; msmix runs in this Python. Both train one epoch of the same pickle (MMSA reads it
directly, msmix imports it with `msmix preprocess --from`'s code), with each tool's MOSI configuration of the
backbone, the same batch size, the same number of intra-op threads and no DataLoader workers. Timed are the
training batches after the first `--warmup` (forward, loss, backward, optimiser step and producing the
batch), in CPU seconds of the process (time.process_time) and in wall seconds; evaluation is not timed. The
tools' runs alternate (MMSA, msmix none, msmix msmix, MMSA, ...) so a busy spell of the machine hits them
alike; the table shows each configuration's median over `--rounds`.

MMSA's MulT trainer passes `verbose=` to ReduceLROnPlateau, which torch 2 removed: `mmsa_side.py` drops the
argument (and the table says so). The pickle is unaligned, MOSI-shaped: text 50 x 768, audio 375 x 5,
vision 500 x 20, random features and lengths; speed does not depend on what the values mean.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
MOSI_UNALIGNED = {"text": (50, 768), "audio": (375, 5), "vision": (500, 20)}
MOSI_SPLITS = {"train": 1284, "valid": 229, "test": 686}
BATCH = {"tfn": 32, "lmf": 64, "mult": 16}  # MMSA's MOSI batch sizes
TRAIN_SAMPLES = {"tfn": 1284, "lmf": 1284, "mult": 64}  # MulT: about a minute per MMSA epoch on one thread
TARGETS = {"none": 2.0, "msmix": 1.5}  # x MMSA's samples/s (CPU time)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mmsa-python", type=Path, help="a Python with MMSA 2.2.1 installed")
    parser.add_argument("--pickle", type=Path, help="an MMSA-layout unaligned pickle (default: a MOSI-shaped one is written)")
    parser.add_argument("--backbones", default="tfn,lmf,mult")
    parser.add_argument("--mixers", default="none,msmix", help="msmix's mixers to time (none, msmix)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="training batches left out of the timing")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-samples", default=None,
                        help="training samples per backbone, e.g. tfn=1284,mult=64 (default: those)")
    parser.add_argument("--side", choices=("msmix",), help=argparse.SUPPRESS)  # one timed msmix epoch (internal)
    parser.add_argument("--data-root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--mixer", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "msmix":
        print(json.dumps(msmix_epoch(args.data_root, args.dataset, args.backbone, args.mixer, args.batch, args.threads,
                                     args.warmup)))
        return 0
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the first batch pays for lazy set-up)")
    if args.mmsa_python is None or not args.mmsa_python.is_file():
        parser.error("--mmsa-python must name a Python with MMSA installed")
    backbones = [b for b in args.backbones.split(",") if b]
    mixers = [m for m in args.mixers.split(",") if m]
    if not set(backbones) <= set(BATCH) or not set(mixers) <= set(TARGETS):
        parser.error(f"backbones are {', '.join(BATCH)}; mixers are {', '.join(TARGETS)}")
    samples = {**TRAIN_SAMPLES, **parse_counts(args.train_samples)}
    short = [b for b in backbones if samples[b] <= args.warmup * BATCH[b]]
    if short:
        parser.error(f"{', '.join(short)}: --train-samples must leave batches after the --warmup ones")
    with tempfile.TemporaryDirectory(prefix="vs-mmsa-") as folder:
        work = Path(folder)
        source = args.pickle or write_mosi_pickle(work / "mosi-shaped.pkl")
        rows = []
        for backbone in backbones:
            rows.append(compare(args, work, source, backbone, samples[backbone], mixers))
            print(render(rows[-1:], args, source if args.pickle else None).splitlines()[2], file=sys.stderr, flush=True)
    print(render(rows, args, source if args.pickle else None))
    return 0


def parse_counts(text: str | None) -> dict[str, int]:
    pairs = [item.split("=") for item in (text or "").split(",") if item]
    return {name: int(count) for name, count in pairs}


# ---------------------------------------------------------------------------------------------- the data


def write_mosi_pickle(path: Path, seed: int = 0) -> Path:
    """MMSA's unaligned MOSI layout with random features, zero-padded after each sample's length."""
    rng = np.random.default_rng(seed)
    content = {}
    for split, n in MOSI_SPLITS.items():
        arrays: dict[str, Any] = {}
        for m, (steps, width) in MOSI_UNALIGNED.items():
            lengths = rng.integers(steps // 5, steps + 1, size=n)
            x = rng.normal(size=(n, steps, width)).astype(np.float32)
            x[np.arange(steps)[None, :] >= lengths[:, None]] = 0.0
            arrays[m] = x
            if m != "text":
                arrays[f"{m}_lengths"] = lengths
        arrays["regression_labels"] = np.round(rng.uniform(-3, 3, size=n), 1).astype(np.float32)
        arrays["id"] = np.array([f"video{i // 10}$_${i % 10}" for i in range(n)], dtype=object)
        arrays["raw_text"] = np.array([f"words of sample {i}" for i in range(n)], dtype=object)
        content[split] = arrays
    with open(path, "wb") as handle:
        pickle.dump(content, handle, protocol=4)
    return path


def subset_pickle(source: Path, target: Path, train: int, others: int) -> Path:
    """The first `train` training samples and the first `others` of valid and test: evaluation is not timed,
    so it is kept short."""
    with open(source, "rb") as handle:
        content = pickle.load(handle)  # the user's own file, or the one written above
    keep = {"train": train, "valid": others, "test": others}
    cut = {split: {key: value[:keep[split]] for key, value in content[split].items()} for split in keep}
    with open(target, "wb") as handle:
        pickle.dump(cut, handle, protocol=4)
    return target


# ---------------------------------------------------------------------------------------------- the runs


def compare(args: argparse.Namespace, work: Path, source: Path, backbone: str, train: int,
            mixers: list[str]) -> dict[str, Any]:
    from msmix_cli.data.imported import import_pickle

    batch = BATCH[backbone]
    data = subset_pickle(source, work / f"{backbone}.pkl", train, batch)
    name = f"vs-mmsa-{backbone}"
    import_pickle(name, data, data_root=work / "data")
    runs: dict[str, list[dict[str, Any]]] = {"mmsa": [], **{m: [] for m in mixers}}
    for round_ in range(args.rounds):
        print(f"{backbone}: round {round_ + 1} of {args.rounds}", file=sys.stderr, flush=True)
        runs["mmsa"].append(run_json([str(args.mmsa_python), str(HERE / "mmsa_side.py"), "--model", backbone,
                                      "--pickle", str(data), "--batch", str(batch), "--threads", str(args.threads),
                                      "--warmup", str(args.warmup)]))
        for mixer in mixers:
            runs[mixer].append(run_json([sys.executable, str(Path(__file__).resolve()), "--side", "msmix",
                                         "--data-root", str(work / "data"), "--dataset", name, "--backbone", backbone,
                                         "--mixer", mixer, "--batch", str(batch), "--threads", str(args.threads),
                                         "--warmup", str(args.warmup)]))
    return {"backbone": backbone, "batch": batch, "train": train, "runs": runs}


def run_json(command: list[str]) -> dict[str, Any]:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} ... failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def msmix_epoch(data_root: Path, dataset: str, backbone: str, mixer: str, batch: int, threads: int,
                warmup: int) -> dict[str, Any]:
    """One msmix training epoch through `fit`; the batches after the first `warmup` timed from fit's events."""
    import torch

    from msmix_cli.data.specs import DATASETS
    from msmix_cli.recipes import resolve_recipe
    from msmix_cli.training.events import BatchDone, Event, RunStarted
    from msmix_cli.training.loop import fit
    from msmix_cli.training.rundir import RunDir

    DATASETS.use_data_root(data_root)
    recipe = resolve_recipe(None, dataset=dataset, backbone=backbone, assignments=[
        f"mix.name={mixer}", f"train.batch_size={batch}", "train.max_epochs=1", f"train.threads={threads}"])
    stamps: list[tuple[float, float]] = []
    started: list[RunStarted] = []

    def listen(event: Event) -> None:
        if isinstance(event, RunStarted):
            started.append(event)
        elif isinstance(event, BatchDone) and event.epoch == 1:
            stamps.append((time.process_time(), time.perf_counter()))

    with tempfile.TemporaryDirectory(prefix="vs-mmsa-run-") as folder:
        fit(recipe, RunDir.create(Path(folder), "run"), data_root=data_root, on_event=listen)
    (cpu0, wall0), (cpu1, wall1) = stamps[warmup - 1], stamps[-1]
    train = DATASETS.get(dataset, data_root).splits["train"]
    return {"cpu_s": cpu1 - cpu0, "wall_s": wall1 - wall0, "samples": train - warmup * batch,
            "batches": len(stamps) - warmup, "parameters": started[0].parameters, "batch": batch,
            "threads": torch.get_num_threads(), "torch": torch.__version__}


# ---------------------------------------------------------------------------------------------- the table


def rates(runs: list[dict[str, Any]], clock: str) -> list[float]:
    """Samples/s of each round, by CPU (`cpu_s`) or wall (`wall_s`) seconds."""
    return [run["samples"] / run[clock] for run in runs]


def speed(runs: list[dict[str, Any]]) -> str:
    """Median samples/s over the rounds, CPU (wall)."""
    cpu, wall = (statistics.median(rates(runs, clock)) for clock in ("cpu_s", "wall_s"))
    return f"{cpu:.3g} ({wall:.3g})" if cpu < 10 else f"{cpu:.1f} ({wall:.1f})"


def render(rows: list[dict[str, Any]], args: argparse.Namespace, pickle_path: Path | None) -> str:
    mixers = [m for m in TARGETS if rows and m in rows[0]["runs"]]
    head = ["backbone", "B", "train samples", "parameters MMSA / msmix", "MMSA samples/s CPU (wall)",
            *[f"msmix `{m}` CPU (wall)" for m in mixers], *[f"`{m}` / MMSA: median (range) (target)" for m in mixers]]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        runs = row["runs"]
        cells = [row["backbone"], str(row["batch"]), str(row["train"]),
                 f"{runs['mmsa'][0]['parameters']:,} / {runs[mixers[0]][0]['parameters']:,}" if mixers else "",
                 speed(runs["mmsa"]), *[speed(runs[m]) for m in mixers]]
        for m in mixers:
            # per round: the two runs of a round are neighbours in time, so a slow spell of the machine cancels
            ratios = [a / b for a, b in zip(rates(runs[m], "cpu_s"), rates(runs["mmsa"], "cpu_s"))]
            ratio = statistics.median(ratios)
            cells.append(f"{ratio:.2f} ({min(ratios):.2f}–{max(ratios):.2f}) "
                         f"(≥ {TARGETS[m]}: {'met' if ratio >= TARGETS[m] else 'MISSED'})")
        lines.append("| " + " | ".join(cells) + " |")
    first = rows[0]["runs"]["mmsa"][0] if rows else {}
    mine = next((r["runs"][m][0] for r in rows for m in mixers), {})
    lines += ["", f"Data: {pickle_path or 'a MOSI-shaped unaligned pickle written by this script (random features)'}; "
              f"valid and test cut to one batch (not timed).",
              f"Timing: training batches after the first {args.warmup} of one epoch, CPU time of each process "
              f"(wall in brackets), median of {args.rounds} interleaved rounds (a ratio: the median of the rounds' "
              f"ratios, and their range); {args.threads} intra-op thread(s) on both sides, no DataLoader workers.",
              f"MMSA {first.get('version', '?')} on torch {first.get('torch', '?')}, its MOSI configuration; "
              f"shims: {'; '.join(sorted({s for r in rows for s in r['runs']['mmsa'][0]['shims']})) or 'none'}.",
              f"msmix on torch {mine.get('torch', '?')}, its MOSI recipe at MMSA's batch size "
              "(`msmix` = MS-Mix with the default preset; its mixed samples go through the head too)."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
