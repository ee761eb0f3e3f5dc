"""The training job in three parts: :func:`setup` (configuration, data, model, devices),
:func:`fit` (the epoch loop and early stopping, then the kept weights scored) and
:func:`finish` (the artifact and the reports, written by rank 0). :func:`run` is all three;
:func:`main` is the container's entry point."""

from __future__ import annotations

import logging
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader

from container_train import checkpoint, distributed, profiling, reports, trust
from container_train.config import (
    JobConfig,
    describe,
    failure_file_path,
    parse_config,
    usage,
)
from container_train.data import (
    Split,
    discover_classes,
    make_loader,
    resolve_num_workers,
    scan_split,
)
from container_train.engine import (
    Callback,
    EpochProgress,
    EpochStats,
    Precision,
    describe_device,
    eval_pass,
    train_one_epoch,
)
from container_train.errors import TrainingError
from container_train.feature_cache import features_in_bf16, make_feature_loaders
from container_train.gpu_decode import resolve_gpu_decode
from container_train.interruption import INTERRUPTED_EXIT_CODE, NEVER, Interrupted, StopSignal
from container_train.model import (
    apply_freezing,
    count_parameters,
    create_model,
    initial_weights_path,
    resolve_auto_weights,
    set_train_mode,
)
from job_contract.hyperparameters import HyperparameterError, Hyperparameters
from job_contract.metrics import format_metric_line
from model_artifact.manifest import ArtifactError, Manifest, Novelty, manifest_sha256
from model_artifact.preprocess import EvalPreprocessing
from model_artifact.writer import (
    write_artifact,
    write_compiled,
    write_feature_novelty,
    write_int8,
    write_self_test,
)

log = logging.getLogger("container_train")
FAILURE_REASON_CHARS = 1024  # what SageMaker shows as FailureReason


@dataclass
class Job:
    """What :func:`setup` builds: everything the epochs need."""

    config: JobConfig
    ctx: distributed.Context
    precision: Precision
    num_workers: int  # DataLoader workers: what the loaders use and step_summary.json records
    pre: EvalPreprocessing
    classes: list[str]
    splits: dict[str, Split]
    net: nn.Module  # the whole network: checkpoints and the artifact hold it
    step_module: nn.Module  # what runs each step: net, or net.fc on cached features
    model: nn.Module  # step_module, DDP-wrapped when distributed
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # torch.optim.lr_scheduler.CosineAnnealingLR
    hyperparameters: dict[str, Any]  # as recorded: weights=auto resolved
    loaders: dict[str, DataLoader]
    state: checkpoint.TrainingState  # restored from the checkpoint dir, or fresh

    @property
    def hp(self) -> Hyperparameters:
        return self.config.hyperparameters

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    def checkpointed(self) -> dict[str, Any]:
        """What checkpoint.save writes besides the training state."""
        return dict(model=self.net, optimizer=self.optimizer, scheduler=self.scheduler,
                    class_names=self.classes, hyperparameters=self.hyperparameters,
                    scaler=self.precision.scaler)


@dataclass
class Trained:
    """What :func:`fit` returns: the job, its best weights back in ``job.net``, their scores."""

    job: Job
    final: dict[str, float]  # the final metric line
    eval_split: str  # test when the job has one, else valid
    scored: EpochStats  # the kept weights on eval_split, every rank's labels and predictions
    stopped_early: bool
    trust: trust.TrustFit = field(default_factory=trust.TrustFit)  # fitted on valid's logits

    @property
    def state(self) -> checkpoint.TrainingState:
        return self.job.state


# ------------------------------------------------------------------------------- setup
def _check_writable(directory: Path, what: str) -> None:
    """Fail before any compute is spent when an output cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TrainingError(f"{what} {directory} is not writable: {exc.strerror or exc}") from None


def _check_outputs(config: JobConfig) -> None:
    _check_writable(config.model_dir, "model dir")
    _check_writable(config.output_data_dir, "output data dir")
    if config.checkpoint_dir is not None:
        _check_writable(config.checkpoint_dir, "checkpoint dir")


def _precision(device: torch.device, requested: str) -> Precision:
    precision = Precision.for_device(device, requested)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels once
    log.info("device %s, precision %s (precision=%s)", describe_device(device), precision.name,
             requested)
    return precision


def _load_splits(config: JobConfig, pre: EvalPreprocessing, workers: int
                 ) -> tuple[list[str], dict[str, Split]]:
    classes = discover_classes(config.splits)
    splits = {
        name: scan_split(name, path, classes, pre=pre,
                         max_corrupt_fraction=config.hyperparameters.max_corrupt_fraction,
                         workers=max(workers, 1))
        for name, path in config.splits.items()
    }
    return classes, splits


def _network(config: JobConfig, classes: list[str], weights: str, device: torch.device
             ) -> tuple[nn.Module, list[nn.Parameter]]:
    """ResNet50 with its initial weights and new head, on ``device``; and the parameters that
    train (the rest frozen)."""
    hp = config.hyperparameters
    net = create_model(len(classes), initial_weights_path(weights, config.pretrained_dir))
    params = apply_freezing(net, hp.trainable_stages)
    trainable, total = count_parameters(net)
    log.info("resnet50, %d classes, trainable-layers=%s: %d of %d parameters train",
             len(classes), hp.trainable_layers, trainable, total)
    return net.to(device, memory_format=torch.channels_last), params


def _make_optimizer(params: list[nn.Parameter], hp: Hyperparameters) -> torch.optim.Optimizer:
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum,
                               weight_decay=hp.weight_decay)
    return torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)


def _loaders(config: JobConfig, net: nn.Module, splits: dict[str, Split],
             pre: EvalPreprocessing, workers: int, ctx: distributed.Context,
             gpu_decode: bool = False) -> tuple[dict[str, DataLoader], nn.Module]:
    """Image loaders, and the whole network runs each step; or, for a frozen backbone with the
    feature cache, loaders of backbone features computed once, and only the head runs.
    ``gpu_decode``: the train loader's images are decoded and augmented on the device."""
    hp = config.hyperparameters
    if hp.trainable_stages == 0 and hp.feature_cache:
        loaders = make_feature_loaders(
            net, splits, pre, views=hp.cache_views if hp.augment else 1, seed=hp.seed,
            batch_size=hp.batch_size, num_workers=workers, device=ctx.device,
            cache_dir=config.feature_cache_dir, rank=ctx.rank, world_size=ctx.world_size,
            bf16=features_in_bf16(ctx.device, hp.precision))
        return loaders, net.fc
    loaders = {name: make_loader(split, pre, train=name == "train", batch_size=hp.batch_size,
                                 num_workers=workers, seed=hp.seed, augment=hp.augment,
                                 rank=ctx.rank, world_size=ctx.world_size,
                                 decode_on_device=gpu_decode)
               for name, split in splits.items()}
    if gpu_decode:
        log.info("training images decoded and augmented on %s (gpu-decode=%s); valid and "
                 "test on the CPU as serving does", ctx.device, hp.gpu_decode)
    return loaders, net


def setup(config: JobConfig, ctx: distributed.Context | None = None) -> Job:
    """Everything before the first epoch: outputs checked, data scanned, model, optimizer and
    loaders built, a compatible checkpoint restored. ``ctx``: this process's place in a
    distributed job (default: a single process on :func:`distributed.training_device`)."""
    ctx = ctx or distributed.Context(device=distributed.training_device())
    hp = config.hyperparameters
    log.info("configuration: %s", describe(config))
    _check_outputs(config)
    torch.manual_seed(hp.seed)
    precision = _precision(ctx.device, hp.precision)
    workers = resolve_num_workers(hp.num_workers, ctx.device)
    gpu_decode = resolve_gpu_decode(hp.gpu_decode, ctx.device)  # true on CPU fails here
    pre = EvalPreprocessing.for_image_size(hp.image_size)
    classes, splits = _load_splits(config, pre, workers)
    weights = resolve_auto_weights(hp.weights)  # the manifest records what auto became
    net, params = _network(config, classes, weights, ctx.device)
    optimizer = _make_optimizer(params, hp)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=hp.epochs)
    hp_dict = {**hp.to_dict(), "weights": weights}
    state = checkpoint.load_if_compatible(
        config.checkpoint_dir, model=net, optimizer=optimizer, scheduler=scheduler,
        class_names=classes, hyperparameters=hp_dict, scaler=precision.scaler,
    ) or checkpoint.TrainingState()
    loaders, step_module = _loaders(config, net, splits, pre, workers, ctx, gpu_decode)
    model = step_module
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    return Job(config, ctx, precision, workers, pre, classes, splits, net, step_module, model,
               nn.CrossEntropyLoss(), optimizer, scheduler, hp_dict, loaders, state)


# --------------------------------------------------------------------------------- fit
def _reduce(stats: EpochStats, ctx: distributed.Context, gather: bool = False) -> EpochStats:
    """Per-rank totals -> job-wide metrics (identity on one process)."""
    loss_sum, correct, images = distributed.all_reduce_sums(
        ctx, stats.loss * stats.images, stats.accuracy * stats.images, stats.images)
    labels = distributed.gather_lists(ctx, stats.labels) if gather else stats.labels
    preds = distributed.gather_lists(ctx, stats.predictions) if gather else stats.predictions
    logits = distributed.gather_lists(ctx, stats.logits) if gather else stats.logits
    return EpochStats(loss_sum / max(images, 1), correct / max(images, 1), int(images),
                      stats.seconds, labels, preds, logits)


def _save_stopped(job: Job, epoch: int, progress: EpochProgress) -> None:
    """Mid-epoch checkpoint (every rank's progress and generators, written by rank 0), then
    Interrupted."""
    start = time.perf_counter()
    directory = job.config.checkpoint_dir
    ranks = distributed.gather_lists(job.ctx, [(progress, checkpoint.rng_states())])
    job.state.mid_epoch = checkpoint.MidEpoch(epoch, [p for p, _ in ranks],
                                              [r for _, r in ranks])
    if directory is None:
        raise Interrupted(f"stopped in epoch {epoch} after step {progress.steps}, no "
                          "checkpoint dir: the progress is lost")
    if job.ctx.is_main:
        path = checkpoint.save(directory, state=job.state, **job.checkpointed())
        log.info("checkpoint %s written in %.1f s: epoch %d stopped after step %d", path,
                 time.perf_counter() - start, epoch, progress.steps)
    raise Interrupted(f"stopped in epoch {epoch} after step {progress.steps}; "
                      f"{directory / checkpoint.CHECKPOINT_FILE} holds the progress "
                      "and a job started on it resumes there")


def _epoch_batches(job: Job, epoch: int) -> tuple[DataLoader, EpochProgress]:
    """The epoch's training batches and its progress so far: all of them from the start, or
    the rest of the epoch a checkpoint stopped in."""
    loader = job.loaders["train"]
    loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):  # feature views per epoch
        loader.dataset.set_epoch(epoch)
    if job.ctx.distributed:
        shard = list(loader.sampler)
        log.info("epoch %d: train shard of %d images starts %s", epoch, len(shard), shard[:6])
    progress = checkpoint.resume_point(job.state, job.ctx, epoch)
    if progress is None:
        return loader, EpochProgress()
    return checkpoint.remaining_batches(loader, progress.steps, job.hp.seed + epoch), progress


def _epoch(job: Job, epoch: int, callbacks: list[Callback],
           should_stop: Callable[[], bool]) -> dict[str, float]:
    """Train and validate one epoch -> its job-wide metric row. A stop inside it writes a
    mid-epoch checkpoint and raises Interrupted."""
    hp, ctx = job.hp, job.ctx
    torch.manual_seed(hp.seed + epoch)  # augmentation depends on (seed, epoch) only
    loader, progress = _epoch_batches(job, epoch)
    trained = train_one_epoch(
        job.model, job.criterion, job.optimizer, loader, job.device, epoch=epoch,
        epochs=hp.epochs, log_interval=hp.log_interval, callbacks=callbacks,
        set_mode=lambda: set_train_mode(job.net, hp.trainable_stages), precision=job.precision,
        normalize=job.pre.normalize, progress=progress, should_stop=should_stop)
    # Valid shards may differ by a batch across ranks: only one process stops in it.
    validated = None if trained is None else eval_pass(
        job.step_module, job.criterion, job.loaders["valid"], job.device, callbacks,
        job.precision, job.pre.normalize,
        should_stop=should_stop if not ctx.distributed else lambda: False)
    if trained is None or validated is None:
        _save_stopped(job, epoch, progress)
    train, valid = _reduce(trained, ctx), _reduce(validated, ctx)
    job.state.mid_epoch = None
    job.scheduler.step()
    return {"train_loss": train.loss, "train_accuracy": train.accuracy,
            "valid_loss": valid.loss, "valid_accuracy": valid.accuracy,
            "epoch_time": train.seconds + valid.seconds, "images_per_sec": train.images_per_sec}


def _record_epoch(job: Job, epoch: int, row: dict[str, float]) -> None:
    """The epoch's metric line, its history row, the best weights so far, the checkpoint."""
    state = job.state
    if job.ctx.is_main:
        print(format_metric_line(row, tag=f"epoch={epoch}"), flush=True)
    state.history.append({"epoch": epoch, **row})
    if row["valid_loss"] < state.best_valid_loss:
        state.best_epoch, state.best_valid_loss, state.bad_epochs = epoch, row["valid_loss"], 0
        state.best_state = {k: v.detach().to("cpu", copy=True)
                            for k, v in job.net.state_dict().items()}
    else:
        state.bad_epochs += 1
    state.epoch = epoch
    if job.config.checkpoint_dir is not None and job.ctx.is_main:
        checkpoint.save(job.config.checkpoint_dir, state=state, **job.checkpointed())


def _epochs(job: Job, callbacks: list[Callback], stop: StopSignal) -> bool:
    """The epochs from where the checkpoint left off to the last; True when early stopping
    ended them first."""
    hp, state = job.hp, job.state

    def should_stop() -> bool:  # every rank stops after the same step
        return distributed.any_rank(job.ctx, stop.received)

    with stop.deferred():
        for epoch in range(state.epoch + 1, hp.epochs + 1):
            row = _epoch(job, epoch, callbacks, should_stop)
            _record_epoch(job, epoch, row)
            for cb in callbacks:
                cb.on_epoch_end(epoch, row)
            if hp.early_stopping_patience and state.bad_epochs >= hp.early_stopping_patience:
                log.info("early stopping: no better valid loss for %d epochs", state.bad_epochs)
                return True
    return False


def _score(job: Job, stopped_early: bool) -> Trained:
    """The best epoch's weights back in ``job.net``, scored on test (valid when there is no
    test split); rank 0 prints the final metric line."""
    state = job.state
    if state.best_state is not None:
        job.net.load_state_dict(state.best_state)
    best = state.history[state.best_epoch - 1] if state.best_epoch else {}
    final: dict[str, float] = {"best_epoch": state.best_epoch}
    if best:
        final.update(valid_loss=best["valid_loss"], valid_accuracy=best["valid_accuracy"])
    eval_split = "test" if "test" in job.loaders else "valid"
    scored = _reduce(eval_pass(job.step_module, job.criterion, job.loaders[eval_split],
                               job.device, [], job.precision, job.pre.normalize,
                               keep_logits=eval_split == "valid"),
                     job.ctx, gather=True)
    if eval_split == "test":
        final.update(test_loss=scored.loss, test_accuracy=scored.accuracy)
    if job.ctx.is_main:
        print(format_metric_line(final, tag="final"), flush=True)
        log.info("best epoch %d of %d%s", state.best_epoch, state.epoch,
                 " (stopped early)" if stopped_early else "")
    return Trained(job, final, eval_split, scored, stopped_early,
                   _fit_trust(job, scored if eval_split == "valid" else None))


def _fit_trust(job: Job, valid: EpochStats | None) -> trust.TrustFit:
    """Temperature and novelty detector on the kept weights' valid logits (one more pass over
    valid when the scored split was test)."""
    if valid is None:
        valid = _reduce(eval_pass(job.step_module, job.criterion, job.loaders["valid"],
                                  job.device, [], job.precision, job.pre.normalize,
                                  keep_logits=True), job.ctx, gather=True)
    logits = torch.cat(valid.logits) if valid.logits else torch.zeros(0, len(job.classes))
    return trust.fit_trust(logits, torch.tensor(valid.labels, dtype=torch.long),
                           rate=job.hp.abstain_rate, method=job.hp.abstain_score)


def fit(job: Job, callbacks: list[Callback] | None = None, stop: StopSignal = NEVER
        ) -> Trained:
    """Train until the last epoch or early stopping, then score the best epoch's weights.
    ``stop`` (installed by main) turns SIGTERM into a mid-epoch checkpoint and
    :class:`Interrupted`."""
    callbacks = callbacks or []
    for cb in callbacks:
        cb.on_train_begin(job.step_module, job.criterion)  # the module whose forward runs
    stopped_early = _epochs(job, callbacks, stop)
    for cb in callbacks:
        cb.on_train_end()
    return _score(job, stopped_early)


# ------------------------------------------------------------------------------ finish
def export_model(trained: Trained) -> Manifest:
    """model.pt and manifest.json, then the variants the hyperparameters ask for (int8,
    compiled); logs the manifest's sha256. Returns the manifest as written."""
    job, hp, model_dir = trained.job, trained.job.hp, trained.job.config.model_dir
    manifest = Manifest(
        architecture="resnet50",
        class_names=tuple(job.classes),
        preprocessing=job.pre,
        metrics={k: float(v) for k, v in trained.final.items()},
        hyperparameters=job.hyperparameters,
        versions={"python": platform.python_version(), "torch": torch.__version__,
                  "torchvision": torchvision.__version__},
        training={"device": describe_device(job.device), "precision": job.precision.short_name},
    ).with_trust(trained.trust.calibration, _feature_novelty(trained))
    net = job.net.to("cpu", memory_format=torch.contiguous_format)
    manifest = write_artifact(model_dir, net, manifest)
    train_images = [path for path, _ in job.splits["train"].samples]
    valid_images = [path for path, _ in job.splits["valid"].samples]
    manifest = write_self_test(model_dir, net, manifest, valid_images=valid_images,
                               seed=hp.seed, log=log)
    if hp.int8:
        manifest = write_int8(model_dir, net, manifest, train_images=train_images,
                              valid_images=valid_images, seed=hp.seed, log=log)
    if hp.compile:
        manifest = write_compiled(model_dir, net, manifest, valid_images=valid_images,
                                  seed=hp.seed, log=log)
    # The value a deployer pins from outside the archive (scripts/deploy.py --manifest-sha256).
    log.info("manifest_sha256=%s", manifest_sha256(model_dir))
    return manifest


def _feature_novelty(trained: Trained) -> Novelty | None:
    """abstain-score=features: fit the features detector on the kept weights and write
    novelty.pt; the report shows it too. Otherwise (or when it cannot be fitted) the detector
    fit_trust chose."""
    job = trained.job
    if job.hp.abstain_score != "features" or trained.trust.novelty is None:
        return trained.trust.novelty
    calibration = trained.trust.calibration
    fitted = trust.fit_feature_trust(
        job.net.eval(), job.splits["train"].samples, job.splits["valid"].samples, pre=job.pre,
        device=job.device, rate=job.hp.abstain_rate, seed=job.hp.seed,
        temperature=calibration.temperature if calibration else 1.0)
    if fitted is not None:
        trained.trust.novelty = write_feature_novelty(job.config.model_dir, *fitted)
    return trained.trust.novelty


def finish(trained: Trained, *, figures: bool = True, export: bool = True) -> None:
    """Rank 0 writes the artifact (``export=False`` leaves it out: local tuning keeps only its
    best trials' models) and the reports (``figures=False`` leaves out the plots and
    report.html). Other ranks write nothing."""
    job = trained.job
    if not job.ctx.is_main:
        return
    if export:
        export_model(trained)
    else:
        log.info("model not written: the caller keeps only the models it asks for")
    reports.write_reports(job.config.output_data_dir, class_names=job.classes,
                          history=job.state.history, final=trained.final,
                          eval_split=trained.eval_split, labels=trained.scored.labels,
                          predictions=trained.scored.predictions, figures=figures,
                          calibration=trained.trust.report())


def run(config: JobConfig, callbacks: list[Callback] | None = None,
        ctx: distributed.Context | None = None, stop: StopSignal = NEVER) -> dict[str, float]:
    """One whole training job (setup, fit, finish); returns the final metrics."""
    trained = fit(setup(config, ctx), callbacks, stop)
    finish(trained)
    return trained.final


def _one_line(text: str) -> str:
    return " ".join(text.split())


def report_failure(exc: BaseException) -> None:
    """A readable reason first (SageMaker shows 1024 characters), the traceback after it."""
    if isinstance(exc, (TrainingError, HyperparameterError, ArtifactError)):
        reason = _one_line(str(exc))
    else:
        reason = _one_line(f"{type(exc).__name__}: {exc}")
    details = "".join(traceback.format_exception(exc))
    log.error("training failed: %s", reason)
    path = failure_file_path()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{reason[:FAILURE_REASON_CHARS]}\n\n{details}")
        except OSError as write_error:
            log.error("cannot write failure file %s: %s", path, write_error)
    print(details, file=sys.stderr, flush=True)


def report_interruption(exc: Interrupted) -> None:
    """A stop is not a failure of the job, but the toolkit writes a failure file for any
    non-zero exit ("ExitCode 143"): this one says where the work is."""
    reason = _one_line(f"stopped by SIGTERM: {exc}")
    log.warning(reason)
    path = failure_file_path()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(reason[:FAILURE_REASON_CHARS] + "\n")
        except OSError as write_error:
            log.error("cannot write failure file %s: %s", path, write_error)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stdout, force=True)
    args = sys.argv[1:] if argv is None else argv
    if "--help" in args or "-h" in args:
        print(usage())
        return 0
    ctx = None
    try:
        config = parse_config(args)  # bad arguments fail here, once, before any launch
        if distributed.needs_launcher():
            return distributed.launch(args)  # torchrun passes SIGTERM on to the workers
        with StopSignal().installed() as stop:
            ctx = distributed.init()
            job = setup(config, ctx)
            callbacks = profiling.make_callbacks(config, is_main=ctx.is_main, device=ctx.device,
                                                 num_workers=job.num_workers)
            finish(fit(job, callbacks, stop))
    except Interrupted as exc:
        if ctx is None or ctx.is_main:
            report_interruption(exc)
        return INTERRUPTED_EXIT_CODE
    except Exception as exc:
        report_failure(exc)
        return 1
    finally:
        if ctx is not None:
            distributed.shutdown(ctx)
    return 0
