"""`msmix ablate`: variants × seeds (× datasets × backbones), run reuse, aggregation and a paired t-test.

One call goes plan -> train what is missing -> read every run's metrics.json -> aggregate -> write files:

    <out>/<dataset>-<backbone>-<variant>-seed<seed>/   one ordinary run directory per run
    <out>/ablation.csv                                 one row per run, every metric raw
    <out>/summary.csv, summary.json                    mean, std (ddof=1), n, delta vs the full model, t, p
    <out>/ablation.png                                 when matplotlib is installed

Every number comes from the best-validation checkpoint of its run (the metrics.json `fit` wrote): the test
split is read once per run, never to choose anything. A run directory that is complete and holds the same
resolved recipe is reused; one that was interrupted is removed and trained again, so rerunning the same
command after Ctrl-C finishes the job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import signal
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, Union

from msmix_cli import signals
from msmix_cli.data.loading import load_dataset
from msmix_cli.data.specs import DATASETS
from msmix_cli.errors import BadInput, Interrupted, MsmixError, RunFailed
from msmix_cli.io import atomic_write_text
from msmix_cli.metrics import HIGHER_IS_BETTER, KEY_METRIC, METRIC_NAMES
from msmix_cli.mixing import MIXERS
from msmix_cli.naming import MIX_PARTS
from msmix_cli.recipes import SEED_LIMIT, Recipe, resolve_recipe, same_experiment
from msmix_cli.report import to_csv, to_json
from msmix_cli.training.device import available_cores, resolve_device
from msmix_cli.training.events import Event as TrainingEvent, ignore
from msmix_cli.training.loop import fit
from msmix_cli.training.rundir import COMPLETE, RunDir

REFERENCE = "msmix"  # the full model every variant is compared with
STD_DDOF = 1  # sample standard deviation across seeds
SAME_SPREAD = 1e-9  # a spread this small relative to the differences is float rounding: 0.9-0.8 vs 0.8-0.7
SIGNIFICANCE_TEST = "paired t-test (two-sided) against {} across seeds"
# Keys each variant sets itself; a --set on them would make "the full model" something else.
VARIANT_KEYS = ("mix.name", "mix.sass", "mix.sig", "mix.sal", "train.seed")


# ---------------------------------------------------------------- variants

@dataclass(frozen=True)
class Variant:
    name: str  # also the run directory's middle part: msmix, msmix-nosig, msmix-nosig-nosal, none, ...
    mix: dict[str, Any]  # what it sets in the recipe's mix section


def full_model() -> Variant:
    return Variant(REFERENCE, {"name": "msmix", **{part: True for part in MIX_PARTS}})


def without(parts: Sequence[str]) -> Variant:
    """MS-Mix with the given parts switched off (MSMIX.md, "Ablation variants")."""
    name = REFERENCE + "".join(f"-no{part}" for part in parts)
    return Variant(name, {"name": "msmix", **{part: part not in parts for part in MIX_PARTS}})


def baseline(mixer: str) -> Variant:
    return Variant(mixer, {"name": mixer})


def variant_label(name: str) -> str:
    """How a variant reads in tables and figures: msmix -> "MS-Mix", msmix-nosig-nosal -> "MS-Mix w/o SIG+SAL"."""
    if name == REFERENCE:
        return "MS-Mix"
    if name.startswith(f"{REFERENCE}-no"):
        return "MS-Mix w/o " + "+".join(part.upper() for part in name[len(REFERENCE) + 3:].split("-no"))
    return name


def parse_variants(drop: str | None, grid: bool, baselines: bool = False) -> list[Variant]:
    """`--drop sig,sal` -> full, -SIG, -SAL; `sig+sal` drops both in one variant; `all` (= --grid) adds
    -SASS, -SIG, -SAL and every other registered mixer as a baseline; `baselines` adds only the other mixers.
    The full model always comes first."""
    tokens = [token.strip() for token in (drop or "").split(",") if token.strip()]
    if not tokens and not grid and not baselines:
        raise BadInput("say what to compare: --drop sass,sig,sal (one variant per part), --drop sig+sal, --drop all, "
                       "--grid or --baselines")
    variants = [full_model()]
    if grid or "all" in tokens:
        variants += [without([part]) for part in MIX_PARTS]
    if grid or baselines or "all" in tokens:
        variants += [baseline(name) for name in MIXERS.names() if name != "msmix"]
    for token in tokens:
        if token == "all":
            continue
        parts = [part.strip() for part in token.split("+")]
        unknown = [part for part in parts if part not in MIX_PARTS]
        if unknown:
            raise BadInput(f"unknown MS-Mix part {unknown[0]!r} in --drop; choose from: {', '.join(MIX_PARTS)}, or all")
        variants.append(without([part for part in MIX_PARTS if part in parts]))
    return list({v.name: v for v in variants}.values())  # first occurrence wins, order kept


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise BadInput(f"--seeds expects comma-separated integers (e.g. 1111,1112,1113), got {text!r}") from None
    if not seeds:
        raise BadInput("--seeds needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise BadInput(f"--seeds repeats a seed: {text}")
    if not all(0 <= seed < SEED_LIMIT for seed in seeds):
        raise BadInput(f"--seeds must lie in [0, 2**64), got {text}")
    return seeds


def parse_names(text: str | None) -> tuple[str | None, ...]:
    """`tfn,mult` -> ("tfn", "mult"); nothing -> (None,), i.e. the recipe's own choice."""
    names = tuple(dict.fromkeys(n.strip() for n in (text or "").split(",") if n.strip()))
    return names or (None,)


# ---------------------------------------------------------------- planning

@dataclass(frozen=True)
class AblationSpec:
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    out: Path
    data_root: Path
    datasets: tuple[str | None, ...] = (None,)
    backbones: tuple[str | None, ...] = (None,)
    recipe_path: Path | None = None
    flags: dict[str, dict[str, Any]] = field(default_factory=dict)  # `train`'s named flags as recipe sections
    assignments: tuple[str, ...] = ()  # --set a.b=v
    jobs: int = 1
    share_gpu: bool = False  # let --jobs N processes share one GPU
    reference: str = REFERENCE  # the variant every other one is compared with


@dataclass(frozen=True)
class PlannedRun:
    dataset: str
    backbone: str
    variant: str
    seed: int
    recipe: Recipe
    path: Path

    @property
    def name(self) -> str:
        return self.path.name


def plan(spec: AblationSpec) -> list[PlannedRun]:
    """Every run of the ablation with its resolved recipe; all names and keys are checked before any training."""
    if spec.jobs < 1:
        raise BadInput(f"--jobs must be >= 1, got {spec.jobs}")
    for assignment in spec.assignments:
        key = assignment.partition("=")[0].strip()
        if key in VARIANT_KEYS:
            raise BadInput(f"ablate sets {key} itself for each variant and seed; drop --set {assignment}")
    runs = []
    for dataset in spec.datasets:
        for backbone in spec.backbones:
            base = resolve_recipe(spec.recipe_path, dataset=dataset, backbone=backbone, overrides=spec.flags,
                                  assignments=list(spec.assignments))
            DATASETS.get(base.data.dataset)
            resolve_device(base.train.device)  # a device this host lacks would fail every run: say so once, now
            for variant in spec.variants:
                for seed in spec.seeds:
                    recipe = dataclasses.replace(base, mix=dataclasses.replace(base.mix, **variant.mix),
                                                 train=dataclasses.replace(base.train, seed=seed))
                    name = f"{recipe.data.dataset}-{recipe.backbone}-{variant.name}-seed{seed}"
                    runs.append(PlannedRun(recipe.data.dataset, recipe.backbone, variant.name, seed, recipe, spec.out / name))
    return runs


REUSE, TRAIN, REDO = "reuse", "train", "redo"


def run_state(run: PlannedRun) -> str:
    """reuse: complete with the same recipe; train: nothing there yet; redo: an interrupted run to go on with
    (or, of another recipe or half-written, to remove and train again).

    A complete run of another recipe, or a folder that is not an msmix run, is never deleted: BadInput.
    """
    folder = RunDir(run.path)
    if not folder.path.exists() or (folder.path.is_dir() and not any(folder.path.iterdir())):
        return TRAIN
    if not folder.path.is_dir() or not (folder.info_file.exists() or folder.recipe_file.exists()):
        raise BadInput(f"{run.path} exists but is not an msmix run; move it away or choose another --out")
    complete = folder.info().get("status") == COMPLETE and all(
        f.is_file() for f in (folder.recipe_file, folder.metrics_file, folder.best_file))
    if not complete:
        return REDO
    try:
        same = same_experiment(folder.recipe(), run.recipe)
    except BadInput as error:
        raise BadInput(f"cannot read the recipe of the complete run {run.path} ({error}); remove it or choose another --out") from None
    if not same:
        raise BadInput(f"{run.path} holds a complete run of another recipe; remove it or choose another --out")
    return REUSE


# ---------------------------------------------------------------- execution

@dataclass(frozen=True)
class AblationPlanned:
    runs: int
    to_train: int
    reused: int
    redone: int  # interrupted runs that are resumed (or removed and trained again)
    jobs: int
    note: str | None  # why fewer jobs than asked, if so


@dataclass(frozen=True)
class RunFinished:
    name: str
    status: str  # reused | trained | failed
    seconds: float
    key_metric: str
    value: float | None
    error: str | None = None


Event = Union[AblationPlanned, RunFinished, TrainingEvent]
Listener = Callable[[Event], None]


def effective_jobs(runs: Sequence[PlannedRun], jobs: int, share_gpu: bool) -> tuple[int, str | None]:
    """Parallel processes on CPU; on a GPU, one run at a time unless the user lets them share it."""
    if jobs == 1 or not runs:
        return 1, None
    devices = {resolve_device(run.recipe.train.device).type for run in runs}
    if "cuda" in devices and not share_gpu:
        return 1, "runs go one after another on the GPU; --share-gpu runs --jobs of them on it at once"
    return min(jobs, len(runs)), None


def prepare_data(recipes: Iterable[Recipe], data_root: Path) -> None:
    """Build or check each data set once, in this process, so parallel runs never race to write a cache."""
    seen = set()
    for recipe in recipes:
        d = recipe.data
        key = (d.dataset, d.setting, d.samples, d.data_seed)
        if key not in seen:
            seen.add(key)
            load_dataset(d.dataset, setting=d.setting, data_root=data_root, samples=d.samples, data_seed=d.data_seed)


def train_one(recipe: Recipe, path: Path, data_root: Path, command: str, on_event: Callable[[TrainingEvent], None]) -> None:
    """Train `recipe` into `path`, locked meanwhile: an interrupted run of the same experiment goes on from its last
    epoch; anything else there (`run_state` has found no complete run) is removed first."""
    run = RunDir.claim(path.parent, path.name)
    try:
        resume = resumes(run, recipe)
        if not resume:
            for entry in run.path.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        fit(run.recipe() if resume else recipe, run, data_root=data_root, command=command, on_event=on_event, resume=resume)
    finally:
        run.release()


def resumes(run: RunDir, recipe: Recipe) -> bool:
    """Whether `run` holds an interrupted run of this experiment that can go on."""
    try:
        return run.resumable and same_experiment(run.recipe(), recipe)
    except BadInput:  # its saved recipe no longer reads: train it again
        return False


def _child_init() -> None:
    """A spawned worker: Ctrl-C reaches `fit` (which stops at a safe point) and nothing else."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # outside `fit`, a stray Ctrl-C must not kill the worker mid-write


def _child_train(recipe: Recipe, path: Path, data_root: Path, command: str) -> None:
    train_one(recipe, path, data_root, command, on_event=ignore)


def with_fair_threads(recipe: Recipe, jobs: int) -> Recipe:
    """The recipe a child trains: its share of the cores (cores // jobs threads) unless the user chose a number."""
    if recipe.train.threads is not None:
        return recipe
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, threads=max(1, available_cores() // jobs)))


def execute(runs: Sequence[PlannedRun], spec: AblationSpec, *, command: str, on_event: Listener) -> list[RunFinished]:
    """Reuse what is complete, remove what was interrupted, train the rest; one RunFinished per run."""
    states = {run.path: run_state(run) for run in runs}
    pending = [run for run in runs if states[run.path] != REUSE]
    prepare_data((run.recipe for run in pending), spec.data_root)  # a missing or damaged data set is reported before the plan is announced
    jobs, note = effective_jobs(pending, spec.jobs, spec.share_gpu)
    on_event(AblationPlanned(len(runs), len(pending), len(runs) - len(pending),
                             sum(state == REDO for state in states.values()), jobs, note))
    outcomes = []
    for run in runs:
        if states[run.path] == REUSE:
            outcomes.append(finished(run, "reused"))
            on_event(outcomes[-1])
    if not pending:
        return outcomes
    if jobs == 1:
        outcomes += train_in_process(pending, spec.data_root, command, on_event)
    else:
        outcomes += train_in_pool(pending, spec.data_root, command, jobs, on_event)
    return outcomes


def train_in_process(runs: Sequence[PlannedRun], data_root: Path, command: str, on_event: Listener) -> list[RunFinished]:
    outcomes = []
    for run in runs:
        try:
            train_one(run.recipe, run.path, data_root, command, on_event)
        except Interrupted as error:
            raise Interrupted(stopped_message(str(error), runs)) from None
        except MsmixError as error:
            outcomes.append(finished(run, "failed", str(error)))
        else:
            outcomes.append(finished(run, "trained"))
        on_event(outcomes[-1])
    return outcomes


def train_in_pool(runs: Sequence[PlannedRun], data_root: Path, command: str, jobs: int, on_event: Listener) -> list[RunFinished]:
    """N spawned processes (never fork: torch's thread pools do not survive it), each with cores // N threads.

    Only N runs are handed to the pool at a time: a run waiting in the pool's queue would still start after
    Ctrl-C, when the workers are free again.
    """
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_child_init)
    waiting = list(runs)
    running: dict[Future, PlannedRun] = {}
    outcomes = []
    try:
        while waiting or running:
            while waiting and len(running) < jobs:
                run = waiting.pop(0)
                running[pool.submit(_child_train, with_fair_threads(run.recipe, jobs), run.path, data_root, command)] = run
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                run, error = running.pop(future), future.exception()
                if error is not None and not isinstance(error, MsmixError):
                    raise error  # a bug, not a failed run: show it
                outcomes.append(finished(run, "trained" if error is None else "failed", error and str(error)))
                on_event(outcomes[-1])
    except KeyboardInterrupt:
        # A Ctrl-C reaches the workers too, a SIGTERM only this process: either way each worker gets a SIGTERM,
        # stops at its next batch (leaving a resumable run) and is waited for, so none is left orphaned.
        for worker in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)
        pool.shutdown(wait=True, cancel_futures=True)
        raise Interrupted(stopped_message(f"stopped by {signals.name()}", runs)) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return outcomes


def stopped_message(reason: str, runs: Sequence[PlannedRun]) -> str:
    unfinished = sum(RunDir(run.path).info().get("status") != COMPLETE for run in runs)
    return (f"{reason.split(';')[0]}; {len(runs) - unfinished} of the {len(runs)} runs to train finished and are kept: "
            f"rerun the same command to train the other {unfinished}")


def finished(run: PlannedRun, status: str, error: str | None = None) -> RunFinished:
    """The outcome of a run, with the wall time `fit` recorded in its run.json and its key test metric."""
    key = KEY_METRIC[metric_set(run.dataset)]
    value = None if status == "failed" else read_metrics(run.path)["metrics"].get(key)
    seconds = 0.0 if status == "reused" else float(RunDir(run.path).info().get("wall_time_s", 0.0))
    return RunFinished(run.name, status, seconds, key, value, error)


def metric_set(dataset: str) -> str:
    return DATASETS.get(dataset).metric_set


def read_metrics(path: Path) -> dict[str, Any]:
    try:
        return json.loads(RunDir(path).metrics_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RunFailed(f"cannot read {RunDir(path).metrics_file}: {error}") from None


# ---------------------------------------------------------------- results

def run_rows(runs: Sequence[PlannedRun], outcomes: Sequence[RunFinished]) -> list[dict[str, Any]]:
    """ablation.csv: one row per finished run, in plan order, every metric as metrics.json holds it."""
    ok = {o.name for o in outcomes if o.status != "failed"}
    rows = []
    for run in runs:
        if run.name not in ok:
            continue
        result = read_metrics(run.path)
        rows.append({"dataset": run.dataset, "backbone": run.backbone, "variant": run.variant, "seed": run.seed,
                     "run_dir": str(run.path), "best_epoch": result.get("best_epoch"), "epochs_run": result.get("epochs_run"),
                     **{name: as_float(value) for name, value in result["metrics"].items()}})
    return rows


def as_float(value: Any) -> float:
    return math.nan if value is None else float(value)


def summarize(rows: Sequence[dict[str, Any]], reference_variant: str = REFERENCE) -> list[dict[str, Any]]:
    """summary.csv/json: one row per dataset × backbone × variant × metric (a tidy, long table)."""
    groups: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["backbone"], row["variant"]), {})[row["seed"]] = row
    summary = []
    for (dataset, backbone, variant), by_seed in groups.items():
        reference = groups.get((dataset, backbone, reference_variant), {})
        for metric in METRIC_NAMES[metric_set(dataset)]:
            values = [by_seed[s][metric] for s in by_seed]
            mean, std, n = mean_std(values)
            row = {"dataset": dataset, "backbone": backbone, "variant": variant, "metric": metric,
                   "higher_is_better": HIGHER_IS_BETTER[metric], "n": n, "mean": mean, "std": std, "std_ddof": STD_DDOF,
                   "delta": math.nan, "n_pairs": 0, "t": math.nan, "p": math.nan, "test": ""}
            if variant != reference_variant and reference:
                seeds = [s for s in by_seed if s in reference]
                row["delta"] = mean - mean_std([reference[s][metric] for s in reference])[0]
                t, p, pairs = paired_t_test([by_seed[s][metric] for s in seeds], [reference[s][metric] for s in seeds])
                row.update(n_pairs=pairs, t=t, p=p, test=significance_test(reference_variant))
            summary.append(row)
    return summary


def significance_test(reference: str) -> str:
    return SIGNIFICANCE_TEST.format(reference)


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean and sample std (ddof=1) of the finite values; NaN where undefined (a constant prediction's Corr)."""
    finite = [v for v in values if math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return math.nan, math.nan, 0
    mean = math.fsum(finite) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - STD_DDOF)) if n > STD_DDOF else math.nan
    return mean, std, n


# ---------------------------------------------------------------- significance

def paired_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, int]:
    """Two-sided paired t-test of a against b, as scipy.stats.ttest_rel: (t, p, number of pairs).

    Pairs with a non-finite value are left out. Fewer than two pairs, or differences without any spread,
    give NaN where scipy gives t = ±inf, p = 0 (or, when the differences differ only by rounding, a huge t):
    two seeds that both gained exactly one test sample are no evidence of anything.
    """
    differences = [x - y for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    n = len(differences)
    mean, std, _ = mean_std(differences)
    if n < 2 or not std > SAME_SPREAD * max(abs(d) for d in differences):
        return math.nan, math.nan, n
    t = mean / (std / math.sqrt(n))
    return t, student_t_two_sided_p(t, n - 1), n


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom: I_{df/(df+t²)}(df/2, 1/2)."""
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    return regularized_incomplete_beta(df / 2, 0.5, df / (df + t * t))


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) by its continued fraction (Lentz's method), on the side where it converges fast."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float, tolerance: float = 1e-15, max_terms: int = 500) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, max_terms + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < tolerance:
            break
    return fraction


# ---------------------------------------------------------------- the whole command

@dataclass
class AblationResult:
    runs: list[dict[str, Any]]  # the rows of ablation.csv
    summary: list[dict[str, Any]]  # the rows of summary.csv
    outcomes: list[RunFinished]
    files: list[Path]
    plot_note: str | None  # why there is no ablation.png, if there is none
    wall_s: float

    @property
    def failures(self) -> list[RunFinished]:
        return [o for o in self.outcomes if o.status == "failed"]

    def groups(self) -> list[tuple[str, str]]:
        return list(dict.fromkeys((row["dataset"], row["backbone"]) for row in self.summary))

    def comparison(self, dataset: str, backbone: str) -> list[dict[str, Any]]:
        """One dict per variant of a group: n, (mean, std) per metric, and delta/t/p on the key metric."""
        key = KEY_METRIC[metric_set(dataset)]
        variants: dict[str, dict[str, Any]] = {}
        for row in self.summary:
            if (row["dataset"], row["backbone"]) != (dataset, backbone):
                continue
            entry = variants.setdefault(row["variant"], {"variant": row["variant"], "n": row["n"]})
            entry[row["metric"]] = (row["mean"], row["std"])
            if row["metric"] == key:
                entry.update(n=row["n"], delta=row["delta"], t=row["t"], p=row["p"], n_pairs=row["n_pairs"])
        return list(variants.values())


def run_ablation(spec: AblationSpec, *, command: str = "msmix ablate", on_event: Listener = ignore) -> AblationResult:
    """Plan, train what is missing, aggregate and write every output file.

    A run that fails (non-finite loss, ...) does not stop the others: it is left out of the aggregates and
    listed in `result.failures`, for the caller to report.
    """
    started = time.perf_counter()
    runs = plan(spec)
    spec.out.mkdir(parents=True, exist_ok=True)
    outcomes = execute(runs, spec, command=command, on_event=on_event)
    rows = run_rows(runs, outcomes)
    summary = summarize(rows, spec.reference)
    files, plot_note = write_outputs(spec.out, rows, summary, spec.seeds, spec.reference)
    return AblationResult(rows, summary, outcomes, files, plot_note, round(time.perf_counter() - started, 3))


def write_outputs(out: Path, rows: list[dict[str, Any]], summary: list[dict[str, Any]],
                  seeds: Sequence[int], reference: str = REFERENCE) -> tuple[list[Path], str | None]:
    files = [out / "ablation.csv", out / "summary.csv", out / "summary.json"]
    atomic_write_text(files[0], to_csv(rows))
    atomic_write_text(files[1], to_csv(summary))
    document = {"reference": reference, "std_ddof": STD_DDOF, "test": significance_test(reference), "seeds": list(seeds),
                "key_metric": {row["dataset"]: KEY_METRIC[metric_set(row["dataset"])] for row in summary},
                "rows": summary}
    atomic_write_text(files[2], to_json(document) + "\n")
    from msmix_cli.plots import PlotUnavailable, plot_ablation  # matplotlib is optional: import only here
    try:
        files.append(plot_ablation(summary, out / "ablation.png"))
    except PlotUnavailable as error:
        return files, str(error)
    return files, None
