"""The training job: configuration -> data -> model -> loop -> artifact and reports."""

from __future__ import annotations

import itertools
import logging
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Sampler

from container_train import checkpoint, distributed, profiling, reports
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
    evaluate,
    train_one_epoch,
)
from container_train.errors import TrainingError
from container_train.feature_cache import make_feature_loaders
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
from model_artifact.manifest import ArtifactError, Manifest, manifest_sha256
from model_artifact.network import file_sha256
from model_artifact.preprocess import EvalPreprocessing

log = logging.getLogger("container_train")
FAILURE_REASON_CHARS = 1024  # what SageMaker shows as FailureReason


def _check_writable(directory: Path, what: str) -> None:
    """Fail before any compute is spent when an output cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TrainingError(f"{what} {directory} is not writable: {exc.strerror or exc}") from None


def _make_optimizer(params: list[nn.Parameter], hp: Hyperparameters) -> torch.optim.Optimizer:
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum,
                               weight_decay=hp.weight_decay)
    return torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)


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


def write_artifact(model_dir: Path, model: nn.Module, manifest: Manifest) -> Manifest:
    """model.pt (state_dict) + manifest.json with the weights' sha256."""
    weights = model_dir / manifest.weights_file
    try:
        torch.save(model.state_dict(), weights)
        manifest = Manifest(**{**manifest.__dict__, "weights_sha256": file_sha256(weights)})
        manifest.write(model_dir)
    except OSError as exc:
        raise TrainingError(f"cannot write the model to {model_dir}: {exc.strerror or exc}"
                            ) from None
    return manifest


INT8_CALIBRATION_IMAGES = 64
INT8_CHECK_IMAGES = 128


def _write_int8(model_dir: Path, net: nn.Module, manifest: Manifest, splits: dict[str, Split],
                seed: int) -> Manifest:
    """The optional int8 variant (model_artifact.quantize), calibrated on training images.

    A failure here is logged and leaves the fp32 artifact as written: serving with
    SERVE_PRECISION=int8 then refuses to start and says the variant is missing. Returns the
    manifest as written.
    """
    import random

    from model_artifact.quantize import agreement_warning, write_int8_variant

    rng = random.Random(seed)
    train = [path for path, _ in splits["train"].samples]
    calibration = sorted(rng.sample(train, min(INT8_CALIBRATION_IMAGES, len(train))))
    held_out = [path for path, _ in splits["valid"].samples] if "valid" in splits else []
    check = sorted(rng.sample(held_out, min(INT8_CHECK_IMAGES, len(held_out))))
    try:
        written = write_int8_variant(model_dir, net, manifest, calibration, check)
    except Exception as exc:  # quantization is optional; the fp32 artifact stays usable
        log.error("int8 variant not written: %s: %s", type(exc).__name__, exc)
        return manifest
    variant = written.variants["int8"]
    log.info("int8 variant %s: calibrated on %d training images, top-1 agreement with fp32 "
             "%.4f on %d %s images", variant.file, variant.calibration_images,
             variant.top1_agreement, variant.agreement_images, "valid" if check else "train")
    warning = agreement_warning(variant)
    if warning:
        log.warning(warning)
    return written


COMPILED_CHECK_IMAGES = 32


def _write_compiled(model_dir: Path, net: nn.Module, manifest: Manifest,
                    splits: dict[str, Split], seed: int) -> None:
    """The optional compiled variant (model_artifact.compiled), checked against fp32 on
    held-out images. A failure is logged; serving then uses its TorchScript graph."""
    import random

    from model_artifact.compiled import write_compiled_variant

    split = "valid" if "valid" in splits else "train"
    paths = [path for path, _ in splits[split].samples]
    check = sorted(random.Random(seed).sample(paths, min(COMPILED_CHECK_IMAGES, len(paths))))
    start = time.perf_counter()
    try:
        written = write_compiled_variant(model_dir, net, manifest, check)
    except Exception as exc:  # optional: the fp32 artifact stays usable
        log.error("compiled variant not written: %s: %s", type(exc).__name__, exc)
        return
    variant = written.variants["compiled"]
    log.info("compiled variant %s in %.0f s: top-1 agreement with fp32 %.4f on %d %s images, "
             "largest logit difference %.2g", variant.file, time.perf_counter() - start,
             variant.top1_agreement, variant.agreement_images, split,
             variant.max_logit_difference)


def _reduce(stats: EpochStats, ctx: distributed.Context, gather: bool = False) -> EpochStats:
    """Per-rank totals -> job-wide metrics (identity on one process)."""
    loss_sum, correct, images = distributed.all_reduce_sums(
        ctx, stats.loss * stats.images, stats.accuracy * stats.images, stats.images)
    labels = distributed.gather_lists(ctx, stats.labels) if gather else stats.labels
    preds = distributed.gather_lists(ctx, stats.predictions) if gather else stats.predictions
    return EpochStats(loss_sum / max(images, 1), correct / max(images, 1), int(images),
                      stats.seconds, labels, preds)


class _Skipping(Sampler[int]):
    """The rest of an epoch's sampler: its first ``skip`` indices left out."""

    def __init__(self, sampler: Sampler[int], skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)  # type: ignore[arg-type]


def _remaining(loader: DataLoader, steps_done: int, seed: int) -> DataLoader:
    """The batches of a stopped epoch after ``steps_done``, with the loader's settings. Its
    own generator: starting its iterator draws a seed, which must not move the restored
    global generator that the augmentation draws from."""
    return DataLoader(loader.dataset, batch_size=loader.batch_size,
                      sampler=_Skipping(loader.sampler, steps_done * (loader.batch_size or 1)),
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                      generator=torch.Generator().manual_seed(seed))


def _resume_point(state: checkpoint.TrainingState, ctx: distributed.Context,
                  epoch: int) -> EpochProgress | None:
    """This process's progress in ``epoch`` when the checkpoint stopped inside it (its random
    generators restored), else None."""
    mid = state.mid_epoch
    if mid is None or mid.epoch != epoch:
        return None
    if len(mid.progress) != ctx.world_size:
        log.warning("epoch %d was stopped with %d process(es) and this job has %d: it restarts "
                    "from its first batch with the weights reached", epoch, len(mid.progress),
                    ctx.world_size)
        return None
    checkpoint.restore_rng(mid.rng[ctx.rank])
    return mid.progress[ctx.rank]


def _save_stopped(config: JobConfig, ctx: distributed.Context, state: checkpoint.TrainingState,
                  epoch: int, progress: EpochProgress, **objects) -> None:
    """Mid-epoch checkpoint (every rank's progress and generators, written by rank 0), then
    Interrupted."""
    start = time.perf_counter()
    ranks = distributed.gather_lists(ctx, [(progress, checkpoint.rng_states())])
    state.mid_epoch = checkpoint.MidEpoch(epoch, [p for p, _ in ranks], [r for _, r in ranks])
    if config.checkpoint_dir is None:
        raise Interrupted(f"stopped in epoch {epoch} after step {progress.steps}, no "
                          "checkpoint dir: the progress is lost")
    if ctx.is_main:
        path = checkpoint.save(config.checkpoint_dir, state=state, **objects)
        log.info("checkpoint %s written in %.1f s: epoch %d stopped after step %d", path,
                 time.perf_counter() - start, epoch, progress.steps)
    raise Interrupted(f"stopped in epoch {epoch} after step {progress.steps}; "
                      f"{config.checkpoint_dir / checkpoint.CHECKPOINT_FILE} holds the progress "
                      "and a job started on it resumes there")


def run(config: JobConfig, callbacks: list[Callback] | None = None,
        ctx: distributed.Context | None = None, figures: bool = True,
        keep_model: Callable[[dict[str, float]], bool] | None = None,
        stop: StopSignal = NEVER) -> dict[str, float]:
    """One training job; ``figures=False`` leaves out the plots and report.html, and
    ``keep_model(final_metrics)`` returning False leaves out the artifact (local tuning keeps
    both for its best trial only). ``stop`` (installed by main) turns SIGTERM into a
    mid-epoch checkpoint and :class:`Interrupted`."""
    callbacks = callbacks or []
    ctx = ctx or distributed.Context(
        device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    hp = config.hyperparameters
    log.info("configuration: %s", describe(config))
    _check_writable(config.model_dir, "model dir")
    _check_writable(config.output_data_dir, "output data dir")
    if config.checkpoint_dir is not None:
        _check_writable(config.checkpoint_dir, "checkpoint dir")

    torch.manual_seed(hp.seed)
    device = ctx.device
    precision = Precision.for_device(device, hp.precision)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels once
    log.info("device %s, precision %s (precision=%s)", describe_device(device), precision.name,
             hp.precision)
    workers = resolve_num_workers(hp.num_workers, device,
                                  procs_per_host=torch.cuda.device_count() or 1)
    pre = EvalPreprocessing.for_image_size(hp.image_size)
    classes, splits = _load_splits(config, pre, workers)

    weights = resolve_auto_weights(hp.weights)  # the manifest records what auto became
    net = create_model(len(classes), initial_weights_path(weights, config.pretrained_dir))
    params = apply_freezing(net, hp.trainable_stages)
    trainable, total = count_parameters(net)
    log.info("resnet50, %d classes, trainable-layers=%s: %d of %d parameters train",
             len(classes), hp.trainable_layers, trainable, total)
    net = net.to(device, memory_format=torch.channels_last)
    criterion = nn.CrossEntropyLoss()
    optimizer = _make_optimizer(params, hp)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=hp.epochs)
    hp_dict = {**hp.to_dict(), "weights": weights}
    state = checkpoint.load_if_compatible(
        config.checkpoint_dir, model=net, optimizer=optimizer, scheduler=scheduler,
        class_names=classes, hyperparameters=hp_dict, scaler=precision.scaler,
    ) or checkpoint.TrainingState()
    if hp.trainable_stages == 0 and hp.feature_cache:
        # Fast path: backbone features once, then only the head runs each epoch.
        loaders = make_feature_loaders(
            net, splits, pre, views=hp.cache_views if hp.augment else 1, seed=hp.seed,
            batch_size=hp.batch_size,
            num_workers=workers, device=device, cache_dir=config.feature_cache_dir,
            rank=ctx.rank, world_size=ctx.world_size)
        step_module: nn.Module = net.fc
    else:
        loaders = {name: make_loader(split, pre, train=name == "train",
                                     batch_size=hp.batch_size, num_workers=workers,
                                     seed=hp.seed, augment=hp.augment, rank=ctx.rank,
                                     world_size=ctx.world_size)
                   for name, split in splits.items()}
        step_module = net
    # `model` trains (DDP-wrapped when distributed); `net` is the whole network, which
    # checkpoints and the artifact hold.
    model: nn.Module = step_module
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[ctx.local_rank] if device.type == "cuda" else None)
    for cb in callbacks:
        cb.on_train_begin(step_module, criterion)  # the module whose forward runs each step

    saved = dict(model=net, optimizer=optimizer, scheduler=scheduler, class_names=classes,
                 hyperparameters=hp_dict, scaler=precision.scaler)

    def should_stop() -> bool:  # every rank stops after the same step
        return distributed.any_rank(ctx, stop.received)

    stopped_early = False
    with stop.deferred():
        for epoch in range(state.epoch + 1, hp.epochs + 1):
            torch.manual_seed(hp.seed + epoch)  # augmentation depends on (seed, epoch) only
            loaders["train"].sampler.set_epoch(epoch)
            if hasattr(loaders["train"].dataset, "set_epoch"):  # feature views per epoch
                loaders["train"].dataset.set_epoch(epoch)
            if ctx.distributed:
                shard = list(loaders["train"].sampler)
                log.info("epoch %d: train shard of %d images starts %s", epoch, len(shard),
                         shard[:6])
            progress = _resume_point(state, ctx, epoch)
            train_loader = (loaders["train"] if progress is None else
                            _remaining(loaders["train"], progress.steps, hp.seed + epoch))
            progress = progress or EpochProgress()
            trained = train_one_epoch(
                model, criterion, optimizer, train_loader, device, epoch=epoch,
                epochs=hp.epochs, log_interval=hp.log_interval, callbacks=callbacks,
                set_mode=lambda: set_train_mode(net, hp.trainable_stages), precision=precision,
                normalize=pre.normalize, progress=progress, should_stop=should_stop)
            # Valid shards may differ by a batch across ranks: only one process stops in it.
            validated = None if trained is None else evaluate(
                step_module, criterion, loaders["valid"], device, callbacks, precision,
                pre.normalize, should_stop=should_stop if not ctx.distributed else lambda: False)
            if trained is None or validated is None:
                _save_stopped(config, ctx, state, epoch, progress, **saved)
            train, valid = _reduce(trained, ctx), _reduce(validated, ctx)
            state.mid_epoch = None
            scheduler.step()
            row = {"train_loss": train.loss, "train_accuracy": train.accuracy,
                   "valid_loss": valid.loss, "valid_accuracy": valid.accuracy,
                   "epoch_time": train.seconds + valid.seconds,
                   "images_per_sec": train.images_per_sec}
            if ctx.is_main:
                print(format_metric_line(row, tag=f"epoch={epoch}"), flush=True)
            state.history.append({"epoch": epoch, **row})
            if valid.loss < state.best_valid_loss:
                state.best_epoch, state.best_valid_loss, state.bad_epochs = epoch, valid.loss, 0
                state.best_state = {k: v.detach().to("cpu", copy=True)
                                    for k, v in net.state_dict().items()}
            else:
                state.bad_epochs += 1
            state.epoch = epoch
            if config.checkpoint_dir is not None and ctx.is_main:
                checkpoint.save(config.checkpoint_dir, state=state, **saved)
            for cb in callbacks:
                cb.on_epoch_end(epoch, row)
            if hp.early_stopping_patience and state.bad_epochs >= hp.early_stopping_patience:
                log.info("early stopping: no better valid loss for %d epochs", state.bad_epochs)
                stopped_early = True
                break
    for cb in callbacks:
        cb.on_train_end()

    if state.best_state is not None:
        net.load_state_dict(state.best_state)
    best = state.history[state.best_epoch - 1] if state.best_epoch else {}
    final: dict[str, float] = {"best_epoch": state.best_epoch}
    if best:
        final.update(valid_loss=best["valid_loss"], valid_accuracy=best["valid_accuracy"])
    eval_split = "test" if "test" in loaders else "valid"
    scored = _reduce(evaluate(step_module, criterion, loaders[eval_split], device, [],
                              precision, pre.normalize), ctx, gather=True)
    if eval_split == "test":
        final.update(test_loss=scored.loss, test_accuracy=scored.accuracy)
    if not ctx.is_main:
        return final  # rank 0 writes the metric lines, the artifact and the reports
    print(format_metric_line(final, tag="final"), flush=True)
    log.info("best epoch %d of %d%s", state.best_epoch, state.epoch,
             " (stopped early)" if stopped_early else "")

    if keep_model is not None and not keep_model(final):
        log.info("model not written: the caller keeps only better models")
        reports.write_reports(config.output_data_dir, class_names=classes, history=state.history,
                              final=final, eval_split=eval_split, labels=scored.labels,
                              predictions=scored.predictions, figures=figures)
        return final
    manifest = Manifest(
        architecture="resnet50",
        class_names=tuple(classes),
        preprocessing=pre,
        metrics={k: float(v) for k, v in final.items()},
        hyperparameters=hp_dict,
        versions={"python": platform.python_version(), "torch": torch.__version__,
                  "torchvision": torchvision.__version__},
        training={"device": describe_device(device), "precision": precision.short_name},
    )
    manifest = write_artifact(
        config.model_dir, net.to("cpu", memory_format=torch.contiguous_format), manifest)
    if hp.int8:
        manifest = _write_int8(config.model_dir, net, manifest, splits, hp.seed)
    if hp.compile:
        _write_compiled(config.model_dir, net, manifest, splits, hp.seed)
    # The value a deployer pins from outside the archive (scripts/deploy.py --manifest-sha256).
    log.info("manifest_sha256=%s", manifest_sha256(config.model_dir))
    reports.write_reports(config.output_data_dir, class_names=classes, history=state.history,
                          final=final, eval_split=eval_split, labels=scored.labels,
                          predictions=scored.predictions, figures=figures)
    return final


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
            run(config, profiling.make_callbacks(config, is_main=ctx.is_main,
                                                 device=ctx.device), ctx=ctx, stop=stop)
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
