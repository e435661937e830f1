"""How fast and how lean is `preprocess` on a MOSEI-sized SDK dataset? Not part of the tests.

    .venv/bin/python benchmarks/preprocess.py [--videos 3200] [--loop-videos 40] [--workdir DIR] [--keep]
    .venv/bin/python benchmarks/preprocess.py --reuse DIR   # time again on files a --keep run left

Builds synthetic `.csd` files in the exact SDK layout (gzip-compressed, as released) with MOSEI's scale:
~3,200 videos, ~23,000 labelled segments, ~2.5 words/s of 300-d word vectors, 74-d COVAREP at 100 Hz and
35-d FACET at 30 Hz over the whole video. Then it runs `msmix preprocess --source mmsdk` in a child
process (wall time and peak RSS of that process alone) and times the alignment + segmentation compute on
a subset of videos both ways, best of 3: vectorised (msmix) and with a straightforward per-interval loop
(the SDK's rule applied word by word and segment by segment), checking both give the same numbers. Everything is
written under a temporary folder that is removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from msmix_cli.data.mmsdk import EPSILON, Track, clean_track, overlap_mean, segment_rows, standard_folds
from msmix_cli.data.specs import DATASETS

SPEC = DATASETS.get("mosei")
ROLES = {f.role: f.name for f in SPEC.sources["mmsdk"]}
WIDTHS = {"text": 300, "audio": 74, "vision": 35, "labels": 7}
RATES = {"audio": 100.0, "vision": 30.0}
WORDS_PER_SECOND = 2.5
L = SPEC.seq_lens["aligned"]


def synthetic_video(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """role -> (features, intervals) of one video: segments of 3-12 s with 0.5-2 s gaps, frames everywhere."""
    count = int(np.clip(rng.poisson(7.2), 1, 20))
    lengths, gaps = rng.uniform(3, 12, count), rng.uniform(0.5, 2.0, count)
    starts = np.cumsum(gaps) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    segments = np.stack([starts, starts + lengths], axis=1)
    duration = float(segments[-1, 1] + 1.0)
    word_edges = np.sort(rng.uniform(0, duration, int(duration * WORDS_PER_SECOND) + 1))
    video = {"labels": (_features(rng, count, WIDTHS["labels"], scale=1.5), segments),
             "text": (_features(rng, len(word_edges) - 1, WIDTHS["text"]),
                      np.stack([word_edges[:-1], word_edges[1:]], axis=1))}
    for role, rate in RATES.items():
        edges = np.arange(int(duration * rate) + 1) / rate
        video[role] = (_features(rng, len(edges) - 1, WIDTHS[role]), np.stack([edges[:-1], edges[1:]], axis=1))
    video["labels"][0][:, 0] = np.clip(video["labels"][0][:, 0], -3, 3)
    video["audio"][0][rng.random(len(video["audio"][0])) < 0.01, 0] = -np.inf  # COVAREP's -inf
    return video


def _features(rng: np.random.Generator, rows: int, width: int, scale: float = 1.0) -> np.ndarray:
    # half precision values, stored as float32: about as compressible as real features, unlike white noise
    return (rng.standard_normal((rows, width), dtype=np.float32) * scale).astype(np.float16).astype(np.float32)


def build_dataset(folder: Path, videos: list[str], seed: int) -> dict[str, int]:
    """Write the four .csd files; return row counts."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    counts = {role: 0 for role in ROLES}
    handles = {role: h5py.File(folder / name, "w") for role, name in ROLES.items()}
    try:
        groups = {role: handle.create_group(name.removesuffix(".csd")) for (role, name), handle
                  in zip(ROLES.items(), handles.values())}
        for role, group in groups.items():
            meta = group.create_group("metadata")
            for key, value in (("root name", group.name[1:]), ("dataset name", "synthetic MOSEI"),
                               ("dimension names", [f"d{i}" for i in range(WIDTHS[role])])):
                meta.create_dataset(key, (1,), dtype=h5py.special_dtype(vlen=str))[0] = json.dumps(value)
            group.create_group("data")
        for number, video_id in enumerate(videos):
            for role, (features, intervals) in synthetic_video(rng).items():
                entry = groups[role]["data"].create_group(video_id)
                entry.create_dataset("features", data=features, compression="gzip", compression_opts=1)
                entry.create_dataset("intervals", data=intervals, compression="gzip", compression_opts=1)
                counts[role] += len(features)
            if number % 400 == 0:
                print(f"  generated {number}/{len(videos)} videos", flush=True)
    finally:
        for handle in handles.values():
            handle.close()
    return counts


def fold_videos(count: int) -> list[str]:
    """`count` video ids of the standard folds, each fold in its published proportion."""
    folds = standard_folds("mosei")
    total = sum(len(ids) for ids in folds.values())
    return [v for ids in folds.values() for v in ids[: max(1, round(len(ids) * count / total))]]


def run_preprocess(root: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of `preprocess` in a child process of its own."""
    code = ("import sys; from pathlib import Path; from msmix_cli.data.preprocess import preprocess; "
            "r = preprocess('mosei', data_root=Path(sys.argv[1]), source='mmsdk', setting='aligned'); "
            "print(r.samples, r.notes)")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(root)], check=True)
    wall = time.perf_counter() - start
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux


def loop_align(words: np.ndarray, times: np.ndarray, features: np.ndarray) -> np.ndarray:
    """The SDK's rule, one word at a time: overlapping rows, clipped, pieces <= EPSILON dropped, averaged."""
    out = np.zeros((len(words), features.shape[1]), np.float32)
    for i, (r0, r1) in enumerate(words):
        hit = (times[:, 0] < r1 + EPSILON) & (times[:, 1] > r0 - EPSILON)
        clipped = np.minimum(times[hit, 1], r1) - np.maximum(times[hit, 0], r0)
        rows = features[hit][np.abs(clipped) > EPSILON]
        if len(rows):
            out[i] = rows.mean(axis=0)
    return out


def loop_segments(segments: np.ndarray, times: np.ndarray, features: np.ndarray) -> np.ndarray:
    out = np.zeros((len(segments), L["text"], features.shape[1]), np.float32)
    for i, (s0, s1) in enumerate(segments):
        overlap = np.minimum(times[:, 1], s1) - np.maximum(times[:, 0], s0)
        rows = features[overlap > EPSILON][: L["text"]]
        out[i, : len(rows)] = rows
    return out


def read_subset(folder: Path, videos: list[str]) -> list[dict[str, tuple[np.ndarray, np.ndarray]]]:
    subset = [{} for _ in videos]
    for role, name in ROLES.items():
        with h5py.File(folder / name, "r") as handle:
            data = handle[name.removesuffix(".csd")]["data"]
            for entry, video in zip(subset, videos):
                entry[role] = (data[video]["features"][()], data[video]["intervals"][()])
    return subset


def vectorised(subset: list[dict[str, tuple[np.ndarray, np.ndarray]]]) -> list[dict[str, np.ndarray]]:
    outputs = []
    for video in subset:
        words, _ = clean_track(video["text"][1], video["text"][0])
        tracks = {m: clean_track(video[m][1], video[m][0])[0] for m in RATES}
        aligned = {m: Track(words.intervals, overlap_mean(words.intervals, tracks[m])) for m in RATES}
        outputs.append({m: segment_rows(video["labels"][1], aligned[m], L[m])[0] for m in RATES})
    return outputs


def looped(subset: list[dict[str, tuple[np.ndarray, np.ndarray]]]) -> list[dict[str, np.ndarray]]:
    outputs = []
    for video in subset:
        words, _ = clean_track(video["text"][1], video["text"][0])  # the same clean input for both
        aligned = {}
        for m in RATES:
            track = clean_track(video[m][1], video[m][0])[0]
            aligned[m] = loop_segments(video["labels"][1], words.intervals,
                                       loop_align(words.intervals, track.intervals, track.features))
        outputs.append(aligned)
    return outputs


def best_time(run, subset, repeats: int) -> tuple[float, list[dict[str, np.ndarray]]]:
    """The fastest of `repeats` runs: the machine's other load only ever adds time."""
    best, outputs = np.inf, []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = run(subset)
        best = min(best, time.perf_counter() - start)
    return best, outputs


def compare_on_subset(subset: list[dict[str, tuple[np.ndarray, np.ndarray]]],
                      repeats: int = 3) -> tuple[float, float, float]:
    """Seconds for the vectorised and the loop alignment + segmentation of `subset`, and their largest gap."""
    fast, fast_outputs = best_time(vectorised, subset, repeats)
    loop, loop_outputs = best_time(looped, subset, repeats)
    gap = max(float(np.abs(f[m] - s[m]).max()) for f, s in zip(fast_outputs, loop_outputs) for m in RATES)
    return fast, loop, gap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=3200)
    parser.add_argument("--loop-videos", type=int, default=40, help="videos the per-interval loop is timed on")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the files (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--reuse", type=Path, default=None, help="a folder a --keep run left: skip building")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    root = args.reuse or Path(tempfile.mkdtemp(prefix="msmix-bench-", dir=args.workdir))
    keep = args.keep or args.reuse is not None
    try:
        videos = fold_videos(args.videos)
        folder = root / "raw" / "mosei"
        if args.reuse is None:
            print(f"building {len(videos)} synthetic videos in {folder}", flush=True)
            start = time.perf_counter()
            counts = build_dataset(folder, videos, args.seed)
            print(f"built in {time.perf_counter() - start:.0f} s: {counts['labels']} segments, {counts['text']} "
                  f"words, {counts['audio']} audio frames, {counts['vision']} vision frames", flush=True)
        size = sum(p.stat().st_size for p in folder.iterdir()) / 2**30
        print(f"input: {size:.2f} GiB of .csd files", flush=True)

        wall, peak = run_preprocess(root)
        print(f"preprocess (read, align, segment, hash, write cache): {wall:.1f} s, peak RSS {peak:.2f} GiB")

        subset = read_subset(folder, videos[: args.loop_videos])
        fast, loop, gap = compare_on_subset(subset)
        per_video_fast, per_video_loop = fast / len(subset), loop / len(subset)
        print(f"alignment + segmentation on {len(subset)} videos: vectorised {fast:.3f} s, per-interval loop "
              f"{loop:.3f} s, ratio {loop / fast:.0f}x, largest difference {gap:.2e}")
        print(f"the loop extrapolated to all {len(videos)} videos: {per_video_loop * len(videos):.0f} s of compute "
              f"(vectorised: {per_video_fast * len(videos):.1f} s)")
    finally:
        if keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
