"""The one training loop, for every backbone and every mixer: encode, mix, head, loss, backward, clip, step."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from msmix_cli import signals
from msmix_cli.data.cache import CacheFile, SplitData
from msmix_cli.data.loading import load_dataset
from msmix_cli.data.specs import DATASETS
from msmix_cli.errors import BadInput, Interrupted, MsmixError, RunFailed, first_line
from msmix_cli.metrics import METRIC_NAMES, regression_metrics
from msmix_cli.mixing import MIXERS, Mix, Mixer, build_mixer, mix_loss
from msmix_cli.models import Backbone, build_backbone, count_parameters, task_loss
from msmix_cli.naming import run_identity
from msmix_cli.recipes import Recipe
from msmix_cli.training import distributed
from msmix_cli.training.diagnostics import EpochLog, intensity_correlations, parameter_parts, term_grad_norms
from msmix_cli.training.device import (amp_dtype, autocast, compile_backbone, configure_threads, keep_freed_memory,
                                       resolve_device, to_device)
from msmix_cli.training.events import BatchDone, EpochDone, Listener, RunStarted, ignore
from msmix_cli.training.rundir import COMPLETE, FAILED, INTERRUPTED, RunDir, load_checkpoint
from msmix_cli.training.seeding import capture_rng, restore_rng, seed_everything
from msmix_cli.types import Batch, DataShape, Multimodal


FUSED_ADAM_DEVICES = ("cpu", "cuda")
IN_MEMORY_LIMIT = 2 * 1024**3  # bytes of float32 features above which a split is read from the cache file per batch


@dataclass
class Setup:
    """Everything a run trains or evaluates, built from a recipe."""

    recipe: Recipe
    data: CacheFile
    model: Backbone
    mixer: Mixer
    device: torch.device
    metric_set: str


def build(recipe: Recipe, data_root: Path, device_name: str | None = None) -> Setup:
    device = distributed.rank_device(resolve_device(device_name or recipe.train.device))
    configure_threads(recipe.train.threads, distributed.ranks().local_world)
    data = load_dataset(recipe.data.dataset, setting=recipe.data.setting, data_root=data_root,
                        samples=recipe.data.samples, data_seed=recipe.data.data_seed,
                        in_memory=keeps_in_memory(recipe, data_root))
    model, mixer = build_networks(recipe, data.shape)
    if recipe.train.compile:
        compile_backbone(model)
    metric_set = DATASETS.get(recipe.data.dataset, data_root).metric_set
    return Setup(recipe, data, model.to(device), mixer.to(device), device, metric_set)


def keeps_in_memory(recipe: Recipe, data_root: Path | None = None) -> bool:
    """`data.in_memory`, or by default: in memory unless the features would take more than IN_MEMORY_LIMIT."""
    if recipe.data.in_memory is not None:
        return recipe.data.in_memory
    spec = DATASETS.get(recipe.data.dataset, data_root)
    lengths = spec.seq_lens.get(recipe.data.setting or spec.settings[0], {})
    samples = recipe.data.samples or sum(spec.splits.values())
    return samples * sum(steps * spec.dims[m] for m, steps in lengths.items()) * 4 <= IN_MEMORY_LIMIT


def published_shape(recipe: Recipe) -> DataShape:
    """The shape of the recipe's dataset as FORMATS.md publishes it: enough to build the networks without the data."""
    spec = DATASETS.get(recipe.data.dataset)
    setting = recipe.data.setting or spec.settings[0]
    return DataShape(dict(spec.dims), dict(spec.seq_lens[setting]), spec.label_range, aligned=setting == "aligned")


def build_networks(recipe: Recipe, shape: DataShape) -> tuple[Backbone, Mixer]:
    """The recipe's backbone and mixer for data of `shape`, on the CPU."""
    config = recipe.backbone_config()
    try:
        model = build_backbone(recipe.backbone, config, shape)
        mixer_dims = model.latent_dims if MIXERS.get(recipe.mix.name).point == "latent" else shape.dims
        return model, build_mixer(recipe.mix, mixer_dims, shape.label_range)
    except (ValueError, AssertionError, RuntimeError, TypeError, OverflowError) as error:
        # torch's layers check their own sizes (a width of 0, heads that do not divide the width, a tensor
        # too large to allocate): those come from the recipe's numbers, so they are the recipe's error
        raise BadInput(f"cannot build {recipe.backbone} with the recipe's model and mix settings: {first_line(error)}") from None


def step_loss(model: Backbone, mixer: Mixer, batch: Batch, rng: np.random.Generator, w_mix: float,
              mixing: bool = True) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Total loss of one batch, its terms, and the mixer's statistics (detached; empty when nothing was mixed).

    The batch is encoded once; the head sees originals and mixed samples together. `mixing` False trains the
    batch clean (the warm-up epochs before a mixer starts).
    """
    size = batch.size
    mix: Mix | None = None
    if mixer.point == "input":
        mix = mixer(batch.inputs, batch.label, rng) if mixing else None
        latents = model.encode(batch if mix is None else replace(batch, inputs=batch.inputs.cat(mix.views)))
        views = latents.views
    else:
        latents = model.encode(batch)
        mix = mixer(latents.views, batch.label, rng) if mixing else None
        views = latents.views if mix is None else latents.views.cat(mix.views)
    out = model.head(views)
    prediction = out.prediction.float()
    terms = {"task": task_loss(model.task_loss, prediction[:size], batch.label)}
    if mix is not None:
        kind = model.task_loss if mixer.config.mix_loss == "task" else "mse"
        terms["mix"] = w_mix * mix_loss(prediction[size:], mix, kind)
        terms["sal"] = torch.as_tensor(mix.loss, device=prediction.device, dtype=torch.float32)
    terms["aux"] = torch.as_tensor(latents.aux_loss + out.aux_loss, device=prediction.device, dtype=torch.float32)
    return sum(terms.values()), terms, {} if mix is None else mix.stats


class TrainingStep(nn.Module):
    """The backbone and the mixer as one module whose forward is `step_loss`: DistributedDataParallel hooks
    gradients through a module's forward, and the mixer's intensity predictors train with the backbone."""

    def __init__(self, model: Backbone, mixer: Mixer) -> None:
        super().__init__()
        self.model = model
        self.mixer = mixer

    def forward(self, batch: Batch, rng: np.random.Generator, w_mix: float,
                mixing: bool = True) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        return step_loss(self.model, self.mixer, batch, rng, w_mix, mixing)


Perturbation = Callable[[Batch], Batch]


Probe = Callable[[Multimodal], dict[str, Tensor]]


@torch.no_grad()
def predict(model: Backbone, split: SplitData, batch_size: int, device: torch.device, dtype: torch.dtype | None = None,
            perturb: Perturbation | None = None, probe: Probe | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, list[Tensor]]]:
    """Predictions and labels of a split, in its stored order (never shuffled); `perturb` alters each batch first.

    `probe` reads each batch's latents (the mixer's intensity predictors, say); its outputs are gathered per key.
    """
    model.eval()
    predictions = []
    probed: dict[str, list[Tensor]] = {}
    for batch in split.batches(batch_size, shuffle=False):
        batch = batch.to(device)
        if perturb is not None:
            batch = perturb(batch)
        with autocast(device, dtype):
            latents = model.encode(batch)
            predictions.append(model.head(latents.views).prediction.float().reshape(-1).cpu())
            for key, value in (probe(latents.views) if probe is not None else {}).items():
                probed.setdefault(key, []).append(value.float().reshape(-1).cpu())
    return torch.cat(predictions).numpy().astype(np.float64), split.labels.astype(np.float64), probed


def evaluate(setup: Setup, split_name: str, perturb: Perturbation | None = None,
             probe: Probe | None = None) -> tuple[dict[str, float], float, dict[str, float]]:
    """The dataset's metrics on a split, the backbone's task loss there, and corr(|I^m|, |y|) when probed."""
    dtype = amp_dtype(setup.device, setup.recipe.train.amp)
    split = setup.data.split(split_name)
    pred, label, probed = predict(setup.model, split, setup.recipe.train.batch_size, setup.device, dtype, perturb, probe)
    if not np.isfinite(pred).all():
        raise RunFailed(f"the model predicts non-finite values on the {split_name} split; the run has diverged")
    loss = float(np.abs(pred - label).mean() if setup.model.task_loss == "l1" else ((pred - label) ** 2).mean())
    return regression_metrics(pred, label, setup.metric_set), loss, intensity_correlations(probed, label, pred)


def make_optimizer(recipe: Recipe, model: Backbone, mixer: Mixer) -> torch.optim.Optimizer:
    t = recipe.train
    groups = model.param_groups(t.lr, t.weight_decay)
    mixer_params = [p for p in mixer.parameters() if p.requires_grad]
    if mixer_params:
        groups.append({"params": mixer_params, "lr": t.lr, "weight_decay": t.weight_decay})
    optimizer = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    # torch's default on the CPU steps one tensor at a time in Python: 82 ms for TFN's 9M-parameter layer on
    # one thread, against 8 ms for the fused kernel (torch has it for CPU and CUDA parameters)
    fused = all(p.device.type in FUSED_ADAM_DEVICES for group in groups for p in group["params"])
    return optimizer(groups, lr=t.lr, weight_decay=t.weight_decay, fused=fused or None)


def make_scheduler(setup: Setup, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    t = setup.recipe.train
    if t.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", patience=t.plateau_patience, factor=0.1)
    if t.scheduler == "cosine":
        total = max(1, steps_per_epoch * t.max_epochs)
        warm = int(t.warmup * total)
        shape = lambda step: (step + 1) / max(1, warm) if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))  # noqa: E731
        return torch.optim.lr_scheduler.LambdaLR(optimizer, shape)
    return None


def fit(recipe: Recipe, run: RunDir, *, data_root: Path, command: str = "msmix train", on_event: Listener = ignore,
        resume: bool = False, test: bool = True) -> dict[str, Any]:
    """Train a recipe into `run`; returns the test metrics of the best-validation checkpoint.

    With `test` False (a tuning trial) the test split is never predicted and no metrics.json is written: the
    result holds the validation metrics of the best-validation epoch instead.

    With `resume`, training continues from `last.pt` (the last complete epoch: weights, optimiser, scheduler,
    early-stopping state and every RNG), so a resumed run ends with the same metrics as an uninterrupted one.
    """
    started = time.perf_counter()
    run, on_event = distributed.for_rank(run, on_event)
    try:
        return _fit(recipe, run, data_root, command, on_event, resume, test, started)
    except KeyboardInterrupt:  # a signal outside the epochs' safe points: while starting, or at the test evaluation
        mark_stopped(run, INTERRUPTED, started)
        raise Interrupted(f"stopped by {signals.name()}; {resume_hint(run)}") from None


def _fit(recipe: Recipe, run: RunDir, data_root: Path, command: str, on_event: Listener, resume: bool, test: bool,
         started: float) -> dict[str, Any]:
    rng = seed_everything(recipe.train.seed)
    setup = build(recipe, data_root)
    model, mixer, device, t = setup.model, setup.mixer, setup.device, recipe.train
    if device.type == "cpu":
        keep_freed_memory()
    training_step = distributed.replicate(TrainingStep(model, mixer), device, unused_parameters=count_parameters(mixer) > 0)
    train_split = setup.data.split("train")
    if len(train_split) < 2:  # a batch of one cannot train (BatchNorm), nor mix
        raise BadInput(f"{setup.data.path}: the training split holds a single sample; training needs at least 2")
    if t.log_grad_norms and distributed.ranks().world > 1:
        raise BadInput("train.log_grad_norms works in a single process; drop it or --nproc")
    trained = distributed.trained_per_epoch(distributed.shard_size(len(train_split)), t.batch_size)
    batches_per_epoch = math.ceil(trained / t.batch_size)
    optimizer = make_optimizer(recipe, model, mixer)
    scheduler = make_scheduler(setup, optimizer, math.ceil(batches_per_epoch / t.accumulation))
    dtype = amp_dtype(device, t.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {"epoch": 0, "best_loss": math.inf, "best_epoch": 0, "history": []}
    if resume and run.last_file.is_file():
        state = checkpoint_into(run.last_file, device, lambda saved: restore(saved, model, mixer, optimizer, scheduler, scaler, rng))
    description = describe(setup)  # loads every split: a damaged one is refused before the run directory is written
    run.start(recipe, command, device, resumed_from=state["epoch"] if resume else None)
    on_event(RunStarted(run.path, t.max_epochs, batches_per_epoch, count_parameters(model), str(device), description,
                        resumed_from=state["epoch"] if resume else None))

    history: list[dict[str, Any]] = state["history"]
    best_loss, best_epoch = state["best_loss"], state["best_epoch"]
    probe = getattr(mixer, "intensities", None) if recipe.mix.sig or recipe.mix.sal else None
    parts = None  # encoder / head / predictors parameters, found on the first batch when gradient norms are logged
    try:
        with stop_requests() as stop:
            for epoch in range(state["epoch"] + 1, t.max_epochs + 1):
                if epoch - best_epoch > t.early_stop and epoch > t.min_epochs:
                    break
                epoch_started = time.perf_counter()
                model.train()
                mixer.train()
                log = EpochLog()
                mixing_on = epoch > recipe.mix.warmup_epochs
                mixing = distributed.mixing_generator(t.seed, epoch)
                for index, batch in enumerate(distributed.epoch_batches(train_split, t.batch_size, rng), start=1):
                    if distributed.any_rank(stop.requested is not None):
                        raise Interrupted(f"stopped by {stop.requested or 'a signal to another rank'} at epoch {epoch}; "
                                          f"{resume_hint(run)}")
                    batch = to_device(batch, device)
                    with autocast(device, dtype):
                        loss, terms, mix_stats = training_step(batch, mixing, recipe.mix.w_mix, mixing_on)
                    if distributed.any_rank(not torch.isfinite(loss)):
                        bad = ", ".join(k for k, v in terms.items() if not torch.isfinite(v)) or "total"
                        if t.nonfinite == "skip":
                            optimizer.zero_grad(set_to_none=True)
                            continue
                        raise RunFailed(f"non-finite loss at epoch {epoch}, batch {index} (term: {bad}); the last good checkpoint is kept in {run.path}")
                    if t.log_grad_norms:
                        parts = parts or parameter_parts(model, mixer, batch)
                        log.add_grad_norms(term_grad_norms(terms, parts))
                    scaler.scale(loss / t.accumulation).backward()
                    if index % t.accumulation == 0 or index == batches_per_epoch:
                        if t.grad_clip:
                            scaler.unscale_(optimizer)
                            nn.utils.clip_grad_norm_(params, t.grad_clip)
                        scaler.step(optimizer)
                        scaler.update()
                        optimizer.zero_grad(set_to_none=True)
                        if scheduler is not None and t.scheduler == "cosine":
                            scheduler.step()
                    log.add_terms({"loss": loss, **terms}, batch.size)
                    if mix_stats:
                        log.add_mix(mix_stats, batch.label)
                    on_event(BatchDone(epoch, index, log.mean("train_loss")))

                train_row = distributed.average_across(log.row())
                valid_metrics, valid_loss, valid_probe = distributed.from_main(evaluate(setup, "valid", probe=probe))
                if scheduler is not None and t.scheduler == "plateau":
                    scheduler.step(valid_loss)
                improved = valid_loss < best_loss
                if improved:
                    best_loss, best_epoch = valid_loss, epoch
                    run.save_best({"model": model.state_dict(), "mixer": mixer.state_dict(), "epoch": epoch, "valid_loss": valid_loss})
                history.append({"epoch": epoch, **train_row, "valid_loss": valid_loss,
                                **{f"valid_{k}": v for k, v in valid_metrics.items()},
                                **{f"valid_{k}": v for k, v in valid_probe.items()},
                                "lr": optimizer.param_groups[0]["lr"], "best": improved,
                                "epoch_time_s": round(time.perf_counter() - epoch_started, 3)})
                run.write_history(history)
                run.save_last({"model": model.state_dict(), "mixer": mixer.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": None if scheduler is None else scheduler.state_dict(), "scaler": scaler.state_dict(),
                               "epoch": epoch, "best_loss": best_loss, "best_epoch": best_epoch, "history": history,
                               "rng": capture_rng(rng)})
                on_event(EpochDone(epoch, train_row["train_loss"], valid_loss, valid_metrics["MAE"], improved, best_epoch,
                                   row=history[-1]))

        if test:
            distributed.barrier()  # rank 0 has written the best checkpoint
            checkpoint_into(run.best_file, device, lambda saved: model.load_state_dict(saved["model"]))
            metrics, _, _ = evaluate(setup, "test")
        else:
            metrics = valid_metrics_at(history, best_epoch, setup.metric_set)
        result = {**run_identity(recipe), "split": "test" if test else "valid", "best_epoch": best_epoch, "epochs_run": len(history),
                  "metrics": metrics}
        if test:
            run.write_metrics(json_safe(result))
        draw_curves(run, history, recipe)
    except Interrupted:
        mark_stopped(run, INTERRUPTED, started)
        raise
    except KeyboardInterrupt:
        raise  # not a failure: `fit` marks the run interrupted
    except BaseException:
        mark_stopped(run, FAILED, started)
        raise
    run.update_info(status=COMPLETE, best_epoch=best_epoch, wall_time_s=round(time.perf_counter() - started, 3))
    if not t.keep_last:  # a complete run is never resumed: its resume point is only disk used
        run.last_file.unlink(missing_ok=True)
    return result


def valid_metrics_at(history: list[dict[str, Any]], epoch: int, metric_set: str) -> dict[str, float]:
    """The validation metrics history.csv recorded for `epoch` (the best one: its checkpoint is the one kept)."""
    row = next(row for row in history if row["epoch"] == epoch)
    return {name: row[f"valid_{name}"] for name in METRIC_NAMES[metric_set]}


def resume_hint(run: RunDir) -> str:
    """The one command that goes on with a stopped run."""
    if run.started:
        return f"resume with: msmix train --resume {run.path}"
    return f"nothing was written yet: run the same command again, which starts it in {run.path}"


def draw_curves(run: RunDir, history: list[dict[str, Any]], recipe: Recipe) -> None:
    """curves.png in the run directory, when matplotlib is installed (an optional extra) and this rank writes."""
    from msmix_cli.curves import CURVES_FILE, curves_from_history, plot_curves
    from msmix_cli.plots import PlotUnavailable

    if not distributed.ranks().is_main:
        return
    title = f"{run.path.name}: {recipe.backbone} on {recipe.data.dataset}, {recipe.mix.name}, seed {recipe.train.seed}"
    with contextlib.suppress(PlotUnavailable):
        plot_curves([curves_from_history(run.path.name, history)], run.path / CURVES_FILE, title)


def mark_stopped(run: RunDir, status: str, started: float) -> None:
    """Record why a run stopped, if the disk still lets us: on a full disk the error that stopped the run is
    the one to report, not the status file that could not be written after it. A run stopped before it wrote
    its recipe gets no status file: its folder stays one that the same command starts again."""
    if not run.started:
        return
    with contextlib.suppress(MsmixError):
        run.update_info(status=status, wall_time_s=round(time.perf_counter() - started, 3))


def restore(checkpoint: dict[str, Any], model: Backbone, mixer: Mixer, optimizer: torch.optim.Optimizer, scheduler: Any,
            scaler: torch.amp.GradScaler, rng: np.random.Generator) -> dict[str, Any]:
    """Load a `last.pt` into the training objects; returns the loop state it recorded."""
    model.load_state_dict(checkpoint["model"])
    mixer.load_state_dict(checkpoint["mixer"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None and checkpoint.get("scheduler") is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    restore_rng(checkpoint["rng"], rng)
    return {k: checkpoint[k] for k in ("epoch", "best_loss", "best_epoch", "history")}


T = TypeVar("T")


def checkpoint_into(path: Path, device: torch.device | str, apply: Callable[[Any], T]) -> T:
    """`apply(the checkpoint at path)`; a checkpoint torch reads but whose contents do not fit (another recipe's
    shapes, missing keys, a list) is bad input that names the file, not an internal error."""
    saved = load_checkpoint(path, device)
    try:
        return apply(saved)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        detail = " ".join(str(error).split())  # load_state_dict's message spans lines
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise BadInput(f"checkpoint {path} does not match this run's recipe: {type(error).__name__}: {detail}") from None


class StopRequest:
    requested: str | None = None


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """SIGINT/SIGTERM ask the loop to stop before its next batch, so `last.pt` stays a clean resume point."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request(signum: int, _frame: Any) -> None:
        stop.requested = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def evaluate_run(run: RunDir, *, data_root: Path, split: str = "test", device: str = "cpu",
                 perturb: Perturbation | None = None) -> dict[str, Any]:
    """Reload a run's best checkpoint with its saved recipe and compute the metrics on a split."""
    recipe = run.recipe()
    setup = build(recipe, data_root, device)
    checkpoint_into(run.best_file, setup.device, lambda saved: setup.model.load_state_dict(saved["model"]))
    metrics, _, _ = evaluate(setup, split, perturb)
    return json_safe({**run_identity(recipe), "split": split, "best_epoch": run.info().get("best_epoch"), "metrics": metrics})


def describe(setup: Setup) -> str:
    data = setup.data
    sizes = "/".join(str(len(data.split(s))) for s in ("train", "valid", "test"))
    source = data.provenance.get("source", data.dataset) if isinstance(data.provenance, dict) else data.dataset
    return f"{data.dataset} ({data.setting}, {sizes} segments, from {source})"


def json_safe(value: Any) -> Any:
    """NaN/inf become None so metrics.json is strict JSON (Corr of a constant prediction is NaN)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
