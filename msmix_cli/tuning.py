"""`msmix tune`: an Optuna study over a search space of recipe keys, one ordinary run directory per trial.

    <study>/study.db                        the Optuna study (SQLite by default; any SQLAlchemy URL with --storage)
    <study>/trials/trial-0007/              trial 7: recipe.yaml, run.json, history.csv, checkpoints; no test metrics
    <study>/history.png                     `--report`: the optimisation history
    <study>/final/{tuned,default}-seed<S>/  `--final`: the best setting and the recipe's defaults on fresh seeds,
    <study>/final/ablation.csv, summary.*   compared on test with `ablate`'s paired t-test

The objective is a validation metric of each trial's best-validation epoch; the test split of a trial is never
predicted. The study, its search space and its base recipe live in the storage (the study's user attributes),
so a rerun, a second worker or another machine needs only the study's name and storage to continue it.

Optuna assigns trial numbers in the database, so two workers never run the same trial. A worker's trials send a
heartbeat; a trial whose worker was killed (kill -9, a lost machine) stops beating, is marked failed once its
heartbeat is older than HEARTBEAT_GRACE_S, and is retried with the same parameters as a new trial.
"""

from __future__ import annotations

import dataclasses
import fcntl
import math
import multiprocessing
import os
import signal
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from msmix_cli.ablation import (AblationResult, AblationSpec, PlannedRun, Event as AblationEvent, execute,
                                prepare_data, run_rows, summarize, with_fair_threads, write_outputs)
from msmix_cli.data.specs import DATASETS
from msmix_cli.errors import BadInput, Interrupted, MsmixError, RunFailed, first_line
from msmix_cli.io import atomic_path
from msmix_cli.metrics import HIGHER_IS_BETTER, METRIC_NAMES
from msmix_cli.recipes import SEED_LIMIT, Recipe, build_recipe, recipes_dir
from msmix_cli.training.events import EpochDone, Event as TrainingEvent
from msmix_cli.training.loop import fit
from msmix_cli.training.rundir import RunDir

SPEC_ATTR = "msmix"  # the study's user attribute holding its recipe, space and objective
HEARTBEAT_S = 10  # how often a running trial tells the storage it is alive
HEARTBEAT_GRACE_S = 60  # silence after which a running trial counts as dead: long enough for a busy, shared machine
PRUNE_FROM_EPOCH = 3  # the median pruner's first epoch
POLL_S = HEARTBEAT_S  # how often a worker with nothing to start looks again for finished or dead trials
# Keys a space may not tune: the seed is held fixed so that trials differ only in their setting; the data
# section decides what is being tuned on.
FIXED_KEYS = ("train.seed", "data.")
KINDS = ("float", "int", "choices")


# ---------------------------------------------------------------- search spaces

@dataclass(frozen=True)
class Param:
    key: str  # a recipe key, section.name
    kind: str  # float | int | choices
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def candidates(self) -> tuple[Any, ...]:
        """The values that bound what the trials may draw: a range's ends, or every choice."""
        return self.choices if self.kind == "choices" else (self.low, self.high)

    def suggest(self, trial: Any) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.key, list(self.choices))


def read_space(path: Path) -> dict[str, Any]:
    """A space file as a mapping; a missing, unreadable or malformed file is one line of BadInput."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"search space not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"cannot read search space {path}: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise BadInput(f"malformed YAML in search space {path}{where}: {getattr(error, 'problem', None) or first_line(error)}") from None
    if not isinstance(loaded, dict) or not loaded:
        raise BadInput(f"search space {path} must map recipe keys to distributions, e.g. 'mix.alpha: {{float: [0.1, 4], log: true}}'")
    return loaded


def default_space_path(mix: str) -> Path:
    path = recipes_dir() / "spaces" / f"{mix}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in (recipes_dir() / "spaces").glob("*.yaml"))
        raise BadInput(f"no shipped search space for mixer {mix!r} (shipped: {', '.join(shipped) or 'none'}); give --space FILE")
    return path


def parse_space(raw: dict[str, Any], base: dict[str, Any], source: str) -> tuple[Param, ...]:
    """Check every entry of a space against the base recipe: a known key, a possible range, values the recipe
    accepts at both ends of each range and for every choice. Nothing trains before this passes."""
    params = []
    for key, entry in raw.items():
        param = parse_param(str(key), entry, source)
        for value in param.candidates():
            try:
                apply_params(base, {param.key: value})
            except BadInput as error:
                raise BadInput(f"search space {source}: {param.key} = {value!r}: {error}") from None
        params.append(param)
    return tuple(params)


def parse_param(key: str, entry: Any, source: str) -> Param:
    where = f"search space {source}: {key}"
    section, dot, name = key.partition(".")
    if not dot or not section or not name or "." in name:
        raise BadInput(f"{where}: a key is section.name, e.g. mix.alpha")
    if any(key == fixed or (fixed.endswith(".") and key.startswith(fixed)) for fixed in FIXED_KEYS):
        raise BadInput(f"{where}: tune holds {key} fixed for every trial; remove it from the space")
    if not isinstance(entry, dict):
        raise BadInput(f"{where}: give a distribution, e.g. {{float: [0.1, 4], log: true}}, {{int: [1, 8]}} or {{choices: [16, 32]}}")
    kinds = [kind for kind in KINDS if kind in entry]
    unknown = sorted(set(entry) - set(KINDS) - {"log", "step"})
    if unknown:
        raise BadInput(f"{where}: unknown field {unknown[0]!r}; fields are {', '.join(KINDS)}, log, step")
    if len(kinds) != 1:
        raise BadInput(f"{where}: give exactly one of {', '.join(KINDS)}")
    kind, values = kinds[0], entry[kinds[0]]
    if kind == "choices":
        return Param(key, kind, choices=parse_choices(values, where))
    log, step = entry.get("log", False), entry.get("step")
    low, high = parse_range(values, kind, where)
    if not isinstance(log, bool):
        raise BadInput(f"{where}: log must be true or false")
    if log and low <= 0:
        raise BadInput(f"{where}: a log range must be positive, got [{low}, {high}]")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0
                             or (kind == "int" and not isinstance(step, int))):
        raise BadInput(f"{where}: step must be a positive {'integer' if kind == 'int' else 'number'}")
    if step is not None and log:
        raise BadInput(f"{where}: a log range takes no step")
    return Param(key, kind, low, high, log, step)


def parse_range(values: Any, kind: str, where: str) -> tuple[float | int, float | int]:
    number = int if kind == "int" else (int, float)
    if (not isinstance(values, list) or len(values) != 2
            or any(isinstance(v, bool) or not isinstance(v, number) for v in values)):
        raise BadInput(f"{where}: {kind} takes [low, high] ({'integers' if kind == 'int' else 'numbers'})")
    low, high = values
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise BadInput(f"{where}: impossible range [{low}, {high}]: low must be below high, both finite")
    return (float(low), float(high)) if kind == "float" else (low, high)


def parse_choices(values: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(values, list) or not values:
        raise BadInput(f"{where}: choices must be a non-empty list")
    if any(v is not None and not isinstance(v, (bool, int, float, str)) for v in values):
        raise BadInput(f"{where}: each choice must be a number, a string, true/false or null")
    if len({repr(v) for v in values}) != len(values):
        raise BadInput(f"{where}: choices repeat a value")
    return tuple(values)


def apply_params(base: dict[str, Any], params: dict[str, Any]) -> Recipe:
    """The base recipe (a dict of sections) with each `section.name` key set to its value, validated."""
    raw = {section: dict(values) for section, values in base.items()}
    for key, value in params.items():
        section, _, name = key.partition(".")
        if section not in raw:
            raise BadInput(f"unknown recipe section {section!r}; sections are: {', '.join(raw)}")
        raw[section][name] = value
    return build_recipe(raw)


# ---------------------------------------------------------------- the study

@dataclass(frozen=True)
class StudySpec:
    """What a study tunes; stored in the study itself, so every worker and machine tunes the same thing."""

    recipe: dict[str, Any]  # the base recipe, resolved, as sections
    space: dict[str, Any]  # the space file's entries
    objective: str  # valid_<metric>

    @property
    def metric(self) -> str:
        return self.objective.removeprefix("valid_")

    @property
    def direction(self) -> str:
        return "maximize" if HIGHER_IS_BETTER[self.metric] else "minimize"

    def base_recipe(self) -> Recipe:
        return build_recipe({section: dict(values) for section, values in self.recipe.items()})

    def params(self) -> tuple[Param, ...]:
        return parse_space(self.space, self.recipe, "of the study")

    def comparable(self) -> dict[str, Any]:
        """What must match when a command names an existing study: the device and threads are the machine's."""
        recipe = {section: dict(values) for section, values in self.recipe.items()}
        for key in ("device", "threads"):
            recipe["train"].pop(key, None)
        return {"recipe": recipe, "space": self.space, "objective": self.objective}


def make_spec(recipe: Recipe, space: dict[str, Any], space_source: str, objective: str) -> StudySpec:
    """Validate the objective and the space against the recipe (BadInput before any training)."""
    names = METRIC_NAMES[DATASETS.get(recipe.data.dataset).metric_set]
    if objective.removeprefix("valid_") not in names or not objective.startswith("valid_"):
        raise BadInput(f"--objective must be a validation metric: {', '.join('valid_' + n for n in names)}; got {objective!r}")
    base = yaml.safe_load(yaml.safe_dump(recipe.to_dict()))  # plain lists and scalars: JSON for the storage
    parse_space(space, base, space_source)
    return StudySpec(base, space, objective)


@dataclass(frozen=True)
class StudyPlace:
    folder: Path  # trial run directories, history.png, final/
    storage: str  # SQLAlchemy URL
    name: str

    @property
    def lock_file(self) -> Path:
        return self.folder / ".tune.lock"

    @property
    def missing(self) -> bool:
        """A default SQLite study that was never started (opening it would create an empty database)."""
        return self.storage == default_storage(self.folder) and not (self.folder / "study.db").is_file()


def default_storage(folder: Path) -> str:
    return f"sqlite:///{(folder / 'study.db').resolve()}"


def study_place(folder: Path | None, storage: str | None, name: str | None, default_folder: str) -> StudyPlace:
    if folder is None:
        folder = Path("runs/tune") / (name or default_folder)
    name = name or folder.name
    if not name.strip():
        raise BadInput("--study-name must not be empty")
    return StudyPlace(folder, storage or default_storage(folder), name)


def open_storage(url: str, heartbeat: bool = True) -> Any:
    """Optuna's RDB storage for `url`; a URL it cannot use (a typo, a database that is down, a driver that is
    not installed) is one line of BadInput. The URL is not repeated: it may hold a password."""
    import optuna

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 600}}  # workers queue for SQLite's one writer
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # msmix reports each trial itself, once, in one line
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat:
            kwargs.update(heartbeat_interval=HEARTBEAT_S, grace_period=HEARTBEAT_GRACE_S,
                          heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback())
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except Exception as error:  # SQLAlchemy's and the drivers' errors have many types
            raise BadInput(f"cannot open the study storage ({type(error).__name__}: {first_line(error)})") from None


def load_spec(place: StudyPlace) -> StudySpec | None:
    """The spec of an existing study, None when the storage holds no study of that name."""
    import optuna

    storage = open_storage(place.storage, heartbeat=False)
    try:
        study = optuna.load_study(study_name=place.name, storage=storage)
    except KeyError:
        return None
    saved = study.user_attrs.get(SPEC_ATTR)
    if not isinstance(saved, dict):
        raise BadInput(f"study {place.name!r} in that storage was not made by msmix tune; choose another --study-name")
    return StudySpec(saved["recipe"], saved["space"], saved["objective"])


def create_study(place: StudyPlace, spec: StudySpec) -> None:
    import optuna

    place.folder.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=place.name, storage=open_storage(place.storage, heartbeat=False),
                                direction=spec.direction, load_if_exists=True)
    if SPEC_ATTR not in study.user_attrs:
        study.set_user_attr(SPEC_ATTR, dataclasses.asdict(spec))


def resolve_study(place: StudyPlace, wanted: StudySpec | None) -> StudySpec:
    """The study to work on: the stored one (which `wanted`, when given, must equal), or a new one from `wanted`."""
    place.folder.mkdir(parents=True, exist_ok=True)
    stored = load_spec(place)
    if stored is None:
        if wanted is None:
            raise BadInput(f"no study {place.name!r} there yet; start one with --dataset, --backbone, --mix and --space")
        create_study(place, wanted)
        return wanted
    if wanted is not None and wanted.comparable() != stored.comparable():
        differ = next(k for k in ("recipe", "space", "objective") if wanted.comparable()[k] != stored.comparable()[k])
        raise BadInput(f"study {place.name!r} was started with another {differ}; drop the options that change it "
                       f"to continue the study, or choose another --study")
    return stored


# ---------------------------------------------------------------- trials

@dataclass(frozen=True)
class TuneJob:
    place: StudyPlace
    trials: int  # the study ends with this many finished trials (complete, pruned or failed in training)
    workers: int
    data_root: Path
    sampler: str = "tpe"
    pruner: str = "median"
    device: str | None = None  # this machine's device, over the stored recipe's
    command: str = "msmix tune"

    def __post_init__(self) -> None:
        if self.trials < 1 or self.workers < 1:
            raise BadInput(f"--trials and --workers must be >= 1, got {self.trials} and {self.workers}")


@dataclass(frozen=True)
class TrialDone:
    number: int
    state: str  # complete | pruned | failed
    value: float | None
    epochs: int
    seconds: float
    note: str = ""


TrialListener = Callable[[TrialDone], None]


def trial_dir(place: StudyPlace, number: int) -> Path:
    return place.folder / "trials" / f"trial-{number:04d}"


def make_sampler(name: str) -> Any:
    import optuna

    # No fixed seed: workers with one seed would propose the same settings to each other.
    return optuna.samplers.RandomSampler() if name == "random" else optuna.samplers.TPESampler()


def make_pruner(name: str) -> Any:
    import optuna

    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    # The first trials run to the end, and no trial stops before epoch PRUNE_FROM_EPOCH: the first epochs' loss
    # tells the learning rates apart more than the settings' final quality (a slow start is not a bad end).
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=PRUNE_FROM_EPOCH)


class Slot:
    """This machine's turn to start a trial: an exclusive lock on a file in the study folder, held from the
    budget check until the trial exists in the storage, so local workers never start more than --trials."""

    def __init__(self, path: Path) -> None:
        self.handle = open(path, "a+")
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    def release(self) -> None:
        if not self.handle.closed:
            self.handle.close()  # closing drops the lock


def counts(study: Any) -> tuple[int, int]:
    """(finished trials, trials running now): what the --trials budget counts. A trial that failed because its
    worker stopped (Ctrl-C, kill) is not finished: another trial takes its place (with its setting, when the
    heartbeat found its worker dead)."""
    from optuna.trial import TrialState

    finished = running = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (trial.state == TrialState.FAIL and "error" in trial.user_attrs):
            finished += 1
        elif trial.state == TrialState.RUNNING:
            running += 1
    return finished, running


def run_worker(job: TuneJob, on_trial: TrialListener) -> None:
    """Start trials until the study holds job.trials finished ones; wait for other workers' trials in flight
    (failing and retrying those whose worker died) rather than start more than the budget."""
    import optuna

    storage = open_storage(job.place.storage)
    study = optuna.load_study(study_name=job.place.name, storage=storage, sampler=make_sampler(job.sampler),
                              pruner=make_pruner(job.pruner))
    spec = StudySpec(**study.user_attrs[SPEC_ATTR])
    params = spec.params()
    while True:
        finished, running = counts(study)
        if finished >= job.trials:
            return
        if finished + running >= job.trials:
            time.sleep(POLL_S)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            continue
        slot = Slot(job.place.lock_file)
        try:
            if sum(counts(study)) >= job.trials:
                continue
            objective = Objective(job, spec, params, slot, on_trial)
            study.optimize(objective, n_trials=1, catch=(RunFailed, BadInput))
        finally:
            slot.release()


class Objective:
    """One trial: the sampled recipe trains into trials/trial-NNNN with no test split; the value is the chosen
    validation metric of its best-validation epoch; each epoch's validation loss goes to the pruner."""

    def __init__(self, job: TuneJob, spec: StudySpec, params: Sequence[Param], slot: Slot, on_trial: TrialListener) -> None:
        self.job, self.spec, self.params, self.slot, self.on_trial = job, spec, params, slot, on_trial

    def __call__(self, trial: Any) -> float:
        import optuna

        self.slot.release()  # the trial exists: other workers may start theirs
        started = time.perf_counter()
        worker = f"{socket.gethostname()}:{os.getpid()}"
        trial.set_user_attr("worker", worker)
        path = trial_dir(self.job.place, trial.number)
        trial.set_user_attr("run_dir", str(path.relative_to(self.job.place.folder)))
        sign = -1.0 if self.spec.direction == "maximize" else 1.0  # the pruner reads losses in the study's direction
        epochs = 0

        def on_event(event: TrainingEvent) -> None:
            nonlocal epochs
            if isinstance(event, EpochDone):
                epochs = event.epoch
                trial.report(sign * event.valid_loss, event.epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"valid loss {event.valid_loss:.4f} at epoch {event.epoch}")

        run = RunDir(path)
        try:
            recipe = self.recipe(trial)
            run = RunDir.create(path.parent, path.name)
            run.update_info(study=self.job.place.name, trial=trial.number, worker=worker)
            result = fit(recipe, run, data_root=self.job.data_root, command=f"{self.job.command}  # trial {trial.number}",
                         on_event=on_event, test=False)
        except optuna.TrialPruned as pruned:
            run.update_info(status="pruned", pruned_at_epoch=epochs)
            self.on_trial(TrialDone(trial.number, "pruned", None, epochs, time.perf_counter() - started, str(pruned)))
            raise
        except (RunFailed, BadInput) as error:
            trial.set_user_attr("error", str(error))  # a setting that cannot train counts as tried
            self.on_trial(TrialDone(trial.number, "failed", None, epochs, time.perf_counter() - started, str(error)))
            raise
        value = result["metrics"][self.spec.metric]
        if not math.isfinite(value):  # Corr of a constant prediction: Optuna fails the trial, and it counts as tried
            trial.set_user_attr("error", f"{self.spec.objective} is not a number")
        trial.set_user_attr("best_epoch", result["best_epoch"])
        trial.set_user_attr("epochs_run", result["epochs_run"])
        run.update_info(objective=self.spec.objective, objective_value=value, valid_metrics=result["metrics"])
        self.on_trial(TrialDone(trial.number, "complete", value, result["epochs_run"], time.perf_counter() - started))
        return float(value)

    def recipe(self, trial: Any) -> Recipe:
        recipe = apply_params(self.spec.recipe, {param.key: param.suggest(trial) for param in self.params})
        if self.job.device:
            recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, device=self.job.device))
        return with_fair_threads(recipe, self.job.workers)


def _worker_main(job: TuneJob, on_trial: TrialListener) -> None:
    """A spawned worker; Ctrl-C and SIGTERM reach its training loop, which stops at the next batch."""
    try:
        run_worker(job, on_trial)
    except Interrupted:
        raise SystemExit(130) from None
    except KeyboardInterrupt:  # between trials
        raise SystemExit(130) from None
    except MsmixError as error:
        on_trial(TrialDone(-1, "failed", None, 0, 0.0, str(error)))
        raise SystemExit(error.exit_code) from None


@dataclass(frozen=True)
class TuneOutcome:
    finished: int
    running: int
    dead_workers: int  # worker processes that ended by a signal or an error


def tune(job: TuneJob, spec: StudySpec, on_trial: TrialListener) -> TuneOutcome:
    """Run job.workers workers on the study until it holds job.trials finished trials."""
    job.place.folder.mkdir(parents=True, exist_ok=True)
    finished, running = study_counts(job.place)
    if finished >= job.trials:  # nothing to start: no worker is spawned, no data is read
        return TuneOutcome(finished, running, dead_workers=0)
    prepare_data([spec.base_recipe()], job.data_root)  # once, here: workers must not race to build a cache
    if job.workers == 1:
        try:
            run_worker(job, on_trial)
        except (Interrupted, KeyboardInterrupt):
            raise Interrupted(stopped_message(job)) from None
        return TuneOutcome(*study_counts(job.place), dead_workers=0)
    return run_processes(job, on_trial)


def run_processes(job: TuneJob, on_trial: TrialListener) -> TuneOutcome:
    """N spawned processes (never fork: torch's thread pools do not survive it), each a worker on the study."""
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker_main, args=(job, on_trial), daemon=False) for _ in range(job.workers)]
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    except KeyboardInterrupt:
        for worker in workers:
            if worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)  # fit stops at its next batch
        for worker in workers:
            worker.join()
        raise Interrupted(stopped_message(job)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if any(worker.exitcode == Interrupted.exit_code for worker in workers):  # a Ctrl-C that reached the workers only
        raise Interrupted(stopped_message(job))
    dead = sum(worker.exitcode != 0 for worker in workers)
    return TuneOutcome(*study_counts(job.place), dead_workers=dead)


def _raise_keyboard_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def study_counts(place: StudyPlace) -> tuple[int, int]:
    import optuna

    return counts(optuna.load_study(study_name=place.name, storage=open_storage(place.storage, heartbeat=False)))


def stopped_message(job: TuneJob) -> str:
    finished, _ = study_counts(job.place)
    return (f"stopped; {finished} of {job.trials} trials are finished and kept, the ones in flight are lost: "
            f"rerun the same command to continue")


# ---------------------------------------------------------------- report

@dataclass
class Report:
    spec: StudySpec
    rows: list[dict[str, Any]]  # the top complete trials, best first
    states: dict[str, int]  # trial count per state
    importances: dict[str, float]
    importance_note: str | None
    plot: Path | None
    plot_note: str | None


def load_study(place: StudyPlace) -> Any:
    import optuna

    if place.missing:
        raise BadInput(f"no study in {place.folder} (no study.db); start one with --dataset, --backbone, --mix and --space")
    try:
        return optuna.load_study(study_name=place.name, storage=open_storage(place.storage, heartbeat=False))
    except KeyError:
        raise BadInput(f"no study {place.name!r} there yet; start one with --dataset, --backbone, --mix and --space") from None


def report(place: StudyPlace, top: int) -> Report:
    """The top trials, Optuna's parameter importances (fANOVA) and history.png."""
    import optuna
    from optuna.trial import TrialState

    study = load_study(place)
    spec = StudySpec(**study.user_attrs[SPEC_ATTR])
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    complete.sort(key=lambda t: -t.value if spec.direction == "maximize" else t.value)
    rows = [{"trial": str(t.number), spec.objective: t.value, **{k: format_param(v) for k, v in t.params.items()},
             "epochs": str(t.user_attrs.get("epochs_run", ""))}
            for t in complete[:top]]
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    importances: dict[str, float] = {}
    importance_note = None
    try:
        importances = dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError) as error:  # fewer than two complete trials, or one constant parameter
        importance_note = f"no importances yet: {first_line(error)}"
    plot, plot_note = None, None
    if complete:
        try:
            plot = plot_history(study, place.folder / "history.png")
        except MsmixError as error:
            plot_note = str(error)
    else:
        plot_note = "no history.png: no trial is complete yet"
    return Report(spec, rows, states, importances, importance_note, plot, plot_note)


def format_param(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot_history(study: Any, path: Path) -> Path:
    """Optuna's optimisation-history figure (each trial's value and the best so far), written atomically."""
    from msmix_cli.plots import require_matplotlib

    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import optuna
    from matplotlib import pyplot

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = optuna.visualization.matplotlib.plot_optimization_history(study)
    figure = axes.figure
    try:
        figure.set_size_inches(8, 4.5)
        figure.tight_layout()
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=150)
    finally:
        pyplot.close(figure)
    return path


# ---------------------------------------------------------------- final

TUNED, DEFAULT = "tuned", "default"


def fresh_seeds(tuning_seed: int, count: int) -> tuple[int, ...]:
    """`count` seeds that no trial trained with: the ones after the tuning seed."""
    if count < 2:
        raise BadInput(f"--seeds must be >= 2 for a mean ± std and a paired test, got {count}")
    seeds = tuple(tuning_seed + i for i in range(1, count + 1))
    if seeds[-1] >= SEED_LIMIT:
        raise BadInput(f"the tuning seed {tuning_seed} leaves no room for {count} fresh seeds below 2**64")
    return seeds


def final_runs(place: StudyPlace, seeds: int, device: str | None) -> tuple[list[PlannedRun], tuple[int, ...], dict[str, Any]]:
    """The best trial's setting and the recipe's defaults, each on every fresh seed, as planned runs in final/."""
    study = load_study(place)
    spec = StudySpec(**study.user_attrs[SPEC_ATTR])
    try:
        best = study.best_trial
    except ValueError:
        raise BadInput(f"study {place.name!r} has no complete trial yet; tune first") from None
    base = spec.base_recipe()
    chosen = fresh_seeds(base.train.seed, seeds)
    runs = []
    for variant, params in ((TUNED, best.params), (DEFAULT, {})):
        recipe = apply_params(spec.recipe, params)
        if device:
            recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, device=device))
        for seed in chosen:
            seeded = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, seed=seed))
            runs.append(PlannedRun(recipe.data.dataset, recipe.backbone, variant, seed, seeded,
                                   place.folder / "final" / f"{variant}-seed{seed}"))
    return runs, chosen, {"trial": best.number, "value": best.value, "params": best.params}


def final(place: StudyPlace, seeds: int, *, data_root: Path, jobs: int, device: str | None, command: str,
          on_event: Callable[[AblationEvent], None]) -> tuple[AblationResult, dict[str, Any]]:
    """Train (or reuse) every final run, then `ablate`'s aggregation and paired t-test with the defaults as reference."""
    started = time.perf_counter()
    runs, chosen, best = final_runs(place, seeds, device)
    out = place.folder / "final"
    out.mkdir(parents=True, exist_ok=True)
    spec = AblationSpec(variants=(), seeds=chosen, out=out, data_root=data_root, jobs=jobs, reference=DEFAULT)
    outcomes = execute(runs, spec, command=command, on_event=on_event)
    rows = run_rows(runs, outcomes)
    summary = summarize(rows, DEFAULT)
    files, plot_note = write_outputs(out, rows, summary, chosen, DEFAULT)
    return AblationResult(rows, summary, outcomes, files, plot_note, round(time.perf_counter() - started, 3)), best
