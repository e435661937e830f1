"""Does MS-Mix help? Every backbone × {none, mixup, manifold, MS-Mix (authors), MS-Mix (msmix), msmix + SASS} × seeds.

    python benchmarks/mixers.py                                   # six backbones on synth, 5 seeds
    python benchmarks/mixers.py --backbones tfn,lmf --pickle ~/mosi_features.pkl   # + TFN, LMF on a real pickle
    python benchmarks/mixers.py --backbones lmf --seeds 1111,1112 --samples 600 --max-epochs 5   # a smoke test: too small to rank mixers

Each run is an ordinary `msmix train` run directory under --out (complete runs are reused, so an
interrupted benchmark continues where it stopped). For each dataset × backbone it prints test MAE, Has0
Acc-2 and Corr as mean ± std over seeds, and each mixer's paired difference to `none` on the same seeds
with its two-sided paired t-test p-value; it writes mixers.csv, mixers.md and mixers.png to --out.
Every variant of one seed sees the same batches in the same order (shuffling has its own random stream),
so the pairs differ only in the mixer. Test scores are read here only to report: no setting is chosen on them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from msmix_cli.ablation import AblationSpec, Variant, mean_std, parse_names, parse_seeds, run_ablation
from msmix_cli.errors import MsmixError
from msmix_cli.io import atomic_write_text
from msmix_cli.mixing.presets import apply_preset
from msmix_cli.report import to_csv

VARIANTS = {
    "none": Variant("none", {"name": "none"}),
    "mixup": Variant("mixup", {"name": "mixup"}),
    "manifold": Variant("manifold", {"name": "manifold"}),
    "msmix-authors": Variant("msmix-authors", {"name": "msmix", **apply_preset({"preset": "authors"})}),
    "msmix": Variant("msmix", {"name": "msmix", **apply_preset({"preset": "msmix"})}),
    "msmix-sass": Variant("msmix-sass", {"name": "msmix", **apply_preset({"preset": "msmix", "sass": True})}),
}
REPORTED = {"MAE": "MAE", "Has0_acc_2": "Acc-2", "Corr": "Corr"}
HIGHER_IS_BETTER = {"MAE": False, "Has0_acc_2": True, "Corr": True}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="tfn,lmf,mult,misa,almt,glomo")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="1111,1112,1113,1114,1115")
    parser.add_argument("--samples", type=int, default=None, help="synth size (default: MOSI's 2199 segments)")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--pickle", type=Path, default=None, help="an MMSA-layout feature pickle to run as well")
    parser.add_argument("--pickle-backbones", default="tfn,lmf")
    parser.add_argument("--no-synth", action="store_true", help="only the pickle")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-mixers"))
    parser.add_argument("--data-root", type=Path, default=Path("data"))
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        variants = tuple(VARIANTS[name] for name in parse_names(args.variants) if name)
    except KeyError as error:
        parser.error(f"unknown variant {error}; choose from {', '.join(VARIANTS)}")
    seeds = parse_seeds(args.seeds)
    flags: dict[str, dict[str, Any]] = {"train": {"max_epochs": args.max_epochs}} if args.max_epochs else {}
    groups = []
    try:
        if not args.no_synth:
            synth_flags = {**flags, "data": {"samples": args.samples}} if args.samples else flags
            groups.append(run_group(args, variants, seeds, "synth", parse_names(args.backbones), synth_flags, args.data_root))
        if args.pickle is not None:
            dataset, root = import_pickle(args.pickle, args.out / "data")
            groups.append(run_group(args, variants, seeds, dataset, parse_names(args.pickle_backbones), flags, root))
    except MsmixError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = [row for group in groups for row in group]
    report(rows, args.out, seeds)
    return 0


def import_pickle(path: Path, data_root: Path) -> tuple[str, Path]:
    """The pickle as a dataset named after its file (`msmix preprocess --from`), imported once into `data_root`."""
    from msmix_cli.data.cache import cache_path
    from msmix_cli.data.imported import import_pickle as import_as_dataset
    from msmix_cli.data.specs import DATASETS

    name = "".join(c if c.isalnum() or c in "_-." else "_" for c in path.stem).lstrip(".-") or "pickle"
    DATASETS.use_data_root(data_root)
    if not any(cache_path(data_root, name, setting).is_file() for setting in ("aligned", "unaligned")):
        import_as_dataset(name, path, data_root=data_root)
    return name, data_root


def run_group(args: argparse.Namespace, variants: tuple[Variant, ...], seeds: tuple[int, ...], dataset: str,
              backbones: tuple[str | None, ...], flags: dict[str, dict[str, Any]], data_root: Path) -> list[dict[str, Any]]:
    spec = AblationSpec(variants=variants, seeds=seeds, out=args.out / dataset, data_root=data_root, datasets=(dataset,),
                        backbones=backbones, flags=flags, jobs=args.jobs, reference="none")
    result = run_ablation(spec, command="benchmarks/mixers.py", on_event=progress)
    for failure in result.failures:
        print(f"failed: {failure.name}: {failure.error}", file=sys.stderr)
    return comparison_rows(result.runs)


def progress(event: Any) -> None:
    name = getattr(event, "name", None)
    if name is not None and hasattr(event, "status"):
        print(f"  {event.status:8s} {name}  ({event.seconds:.0f} s)", file=sys.stderr, flush=True)


def comparison_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per dataset × backbone × variant: mean ± std of each reported metric, and the paired
    difference to `none` (mean over seeds) with its p-value."""
    from msmix_cli.ablation import paired_t_test

    by_key: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = {}
    for run in runs:
        by_key.setdefault((run["dataset"], run["backbone"], run["variant"]), {})[run["seed"]] = run
    rows = []
    for (dataset, backbone, variant), by_seed in by_key.items():
        none = by_key.get((dataset, backbone, "none"), {})
        row: dict[str, Any] = {"dataset": dataset, "backbone": backbone, "variant": variant, "seeds": len(by_seed)}
        for metric in REPORTED:
            mean, std, _ = mean_std([r[metric] for r in by_seed.values()])
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
            seeds = [s for s in by_seed if s in none]
            diffs = [by_seed[s][metric] - none[s][metric] for s in seeds]
            _, p, _ = paired_t_test([by_seed[s][metric] for s in seeds], [none[s][metric] for s in seeds])
            row[f"{metric}_diff"] = mean_std(diffs)[0] if variant != "none" else 0.0
            row[f"{metric}_p"] = p if variant != "none" else float("nan")
            better = [d < 0 if not HIGHER_IS_BETTER[metric] else d > 0 for d in diffs]
            row[f"{metric}_wins"] = f"{sum(better)}/{len(diffs)}" if variant != "none" else ""
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], seeds: tuple[int, ...]) -> str:
    lines = [f"Test scores, mean ± std over seeds {', '.join(map(str, seeds))}; Δ = paired difference to `none` "
             "(same seeds), p = two-sided paired t-test, wins = seeds where the variant beats `none`.", "",
             "| data | backbone | mixer | MAE | Δ MAE (p, wins) | Acc-2 % | Δ Acc-2 (p, wins) | Corr |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        mae = f"{r['MAE_mean']:.3f} ± {r['MAE_std']:.3f}"
        acc = f"{100 * r['Has0_acc_2_mean']:.1f} ± {100 * r['Has0_acc_2_std']:.1f}"
        corr = f"{r['Corr_mean']:.3f} ± {r['Corr_std']:.3f}"
        if r["variant"] == "none":
            d_mae = d_acc = "—"
        else:
            d_mae = f"{r['MAE_diff']:+.3f} ({format_p(r['MAE_p'])}, {r['MAE_wins']})"
            d_acc = f"{100 * r['Has0_acc_2_diff']:+.1f} ({format_p(r['Has0_acc_2_p'])}, {r['Has0_acc_2_wins']})"
        lines.append(f"| {r['dataset']} | {r['backbone']} | {r['variant']} | {mae} | {d_mae} | {acc} | {d_acc} | {corr} |")
    return "\n".join(lines) + "\n"


def format_p(p: float) -> str:
    return "p n/a" if p != p else f"p {p:.2f}" if p >= 0.01 else "p < .01"


def report(rows: list[dict[str, Any]], out: Path, seeds: tuple[int, ...]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, seeds)
    print(text)
    atomic_write_text(out / "mixers.md", text)
    atomic_write_text(out / "mixers.csv", to_csv(rows))
    try:
        plot(rows, out / "mixers.png")
    except ImportError:
        print("(matplotlib is not installed: no mixers.png)", file=sys.stderr)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Paired Δ MAE to `none` (lower is better) per backbone, one bar per mixer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["dataset"], r["backbone"]) for r in rows))
    mixers = [m for m in dict.fromkeys(r["variant"] for r in rows) if m != "none"]
    width = 0.8 / max(1, len(mixers))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(groups)), 4))
    for k, mixer in enumerate(mixers):
        values = [next((r["MAE_diff"] for r in rows if (r["dataset"], r["backbone"], r["variant"]) == (*g, mixer)), float("nan"))
                  for g in groups]
        ax.bar([i + k * width for i in range(len(groups))], values, width, label=mixer)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks([i + width * (len(mixers) - 1) / 2 for i in range(len(groups))])
    ax.set_xticklabels([f"{b}\n{d}" for d, b in groups])
    ax.set_ylabel("test MAE − none's (paired mean; < 0 is better)")
    if mixers:  # a run of `none` alone has no differences to show
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
