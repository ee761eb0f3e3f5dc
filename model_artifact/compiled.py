"""The optional compiled variant of an artifact: the fp32 network as an AOTInductor package.

Why: ``torch._inductor.aoti_compile_and_package`` with ``freezing`` (BatchNorm folded, weights
prepacked for oneDNN, fused ReLUs/adds, static shapes) runs batch-1 ResNet50 on CPU faster than
the TorchScript graph serving builds otherwise, with logits within float rounding of it
(bench/README.md, serving_speed.py, has the figures). Compiling takes tens of seconds and a C++
compiler, so the training job does it once (hyperparameter ``compile``) and serving only loads
the result.

The package is tied to what compiled it, and serving checks each tie before loading:
- **CPU**: compiled for ``x86-64-v3`` (AVX2 + FMA; every x86 SageMaker instance type has it),
  never ``-march=native``, so a package built on an AVX-512 training host still runs on an
  AVX2 endpoint; a second package for ``x86-64-v4`` (variant ``compiled_avx512``) is added
  only where the training CPU runs it faster, and serving picks the best one its CPU runs
  (``TARGETS``);
- **AMX** (Xeons from Sapphire Rapids on: c7i, m7i, r7i): a third package runs the network in
  bfloat16 (variant ``compiled_amx_bf16``), where oneDNN's convolutions use the AMX tiles. It
  answers like fp32 only to bf16's 8 bits of mantissa, so the training job keeps it only when
  its top-1 answers agree with fp32's on held-out images (``agreement.AGREEMENT_BAR``) and it
  is faster; serving uses it on AMX CPUs unless ``SERVE_PRECISION=fp32``;
- **torch version**: the package's C++ ABI is that of the torch that wrote it
  (``variants.compiled.torch``); another torch refuses it;
- **shape**: batch 1 at the artifact's crop size (static shapes are what make it fast: with a
  dynamic batch dimension it was slower than TorchScript); larger batches run image by image;
- **threads**: the code is specialised for the intra-op thread count it was compiled with, and
  run with another it is slower than TorchScript. So it is compiled for serving's default, one
  thread per worker (``variants.compiled.threads``), and serving with another thread count uses
  TorchScript instead.

The package is a shared library: loading it runs native code. Serving refuses it unless the
manifest gives its sha256 and the file matches; the manifest itself can be pinned from outside
the archive (``SERVE_MANIFEST_SHA256``, docs/artifact.md "Trust model"). Trust it as much as
the training job that wrote it, or serve with ``SERVE_GRAPH=frozen``, which never opens it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model_artifact.agreement import AGREEMENT_BAR, measure_agreement
from model_artifact.manifest import (
    COMPILED,
    COMPILED_AMX_BF16,
    COMPILED_AVX512,
    MANIFEST_FILE,
    ArtifactError,
    Manifest,
    Variant,
)
from model_artifact.preprocess import image_batches
from model_artifact.torch_warnings import quiet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IsaTarget:
    """One instruction-set level a package is compiled for, and where the manifest keeps it."""

    variant: str  # the manifest's variant name
    file: str
    format: str
    march: str  # g++ -march
    simdlen: int  # Inductor's vector width in bits
    capable: tuple[str, ...]  # torch.backends.cpu.get_cpu_capability() values that run it
    bf16: bool = False  # the network in bfloat16 (AMX): answers checked for agreement, not equality

    @property
    def graph(self) -> str:
        """The served graph's name; the self-test's tolerance follows it."""
        return "compiled-bf16" if self.bf16 else "compiled"


V3 = IsaTarget(COMPILED, "model_compiled.pt2", "aotinductor-x86-64-v3-batch1", "x86-64-v3",
               256, ("AVX2", "AVX512"))
V4 = IsaTarget(COMPILED_AVX512, "model_compiled_avx512.pt2", "aotinductor-x86-64-v4-batch1",
               "x86-64-v4", 512, ("AVX512",))
AMX_BF16 = IsaTarget(COMPILED_AMX_BF16, "model_compiled_amx_bf16.pt2",
                     "aotinductor-x86-64-v4-amx-bf16-batch1", "x86-64-v4", 512, ("AVX512",),
                     bf16=True)
TARGETS = (AMX_BF16, V4, V3)  # best first; V3 is the variant every x86 endpoint can run
COMPILED_FILE = V3.file
COMPILED_FORMAT = V3.format
# A package of a novelty.method "features" artifact answers (logits, pooled features)
# (network.WithFeatures): its format is the target's with this suffix, so a reader knows the
# output from the manifest. Packages without it (every other artifact, and those written before
# the features score) answer the logits alone and still load.
FEATURES_SUFFIX = "+features"


def has_amx() -> bool:
    """The CPU has AMX tiles (and the kernel lets this process use them): bfloat16 and int8
    matrix units that oneDNN's convolutions use."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch's own CPUID check
    return bool(probe is not None and probe())


def runs_here(target: IsaTarget, capability: str) -> bool:
    """This CPU runs ``target``'s package (``capability``: torch's, e.g. AVX512)."""
    return capability in target.capable and (not target.bf16 or has_amx())


class InBfloat16(nn.Module):
    """fp32 in, fp32 out, bfloat16 inside: what the AMX package compiles, so that callers
    (preprocessing, agreement, self-test, the handler) see the fp32 interface."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).to(torch.bfloat16)

    def forward(self, batch: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.model(batch.to(torch.bfloat16))
        if isinstance(out, tuple):  # (logits, features): network.WithFeatures
            return tuple(part.float() for part in out)
        return out.float()


def package_format(base: str, features: bool) -> str:
    return base + FEATURES_SUFFIX if features else base


def known_format(found: str, base: str) -> bool:
    """``found`` is ``base``, with or without the features output."""
    return found in (base, base + FEATURES_SUFFIX)


@contextlib.contextmanager
def _inductor_settings(cache_dir: str, march: str = V3.march,
                       simdlen: int = V3.simdlen) -> Iterator[None]:
    """Frozen compilation for ``march``; the compiler's scratch files in ``cache_dir``."""
    import torch._inductor.config as config

    saved = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    try:
        with config.patch({"freezing": True, "cpp.march": march, "cpp.simdlen": simdlen}):
            yield
    finally:
        if saved is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved


SERVING_THREADS = 1  # serving's default: one worker per CPU, one thread each


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def compile_package(model: nn.Module, crop_size: int, path: str | os.PathLike[str],
                    threads: int = SERVING_THREADS, target: IsaTarget = V3) -> Path:
    """fp32 model -> AOTInductor package at ``path`` (batch 1, channels_last, ``target``'s
    instruction set), specialised for ``threads`` intra-op threads.

    Raises ArtifactError when this machine cannot compile it (not x86-64, no C++ compiler).
    """
    model = model.to("cpu", memory_format=torch.channels_last).eval()
    if target.bf16:
        model = InBfloat16(model)
    example = torch.zeros(1, 3, crop_size, crop_size).contiguous(memory_format=torch.channels_last)
    with quiet(), torch.no_grad():
        exported = torch.export.export(model, (example,))
    return compile_exported(exported, path, threads, target)


def compile_exported(exported: torch.export.ExportedProgram, path: str | os.PathLike[str],
                     threads: int = SERVING_THREADS, target: IsaTarget = V3) -> Path:
    """An exported program (fp32, or int8 from model_artifact.quantize) -> AOTInductor package
    at ``path`` (``target``'s instruction set, frozen), specialised for ``threads`` intra-op
    threads: the one compile step both variants share.

    Raises ArtifactError when this machine cannot compile it (not x86-64, no C++ compiler).
    """
    if platform.machine() not in ("x86_64", "AMD64"):
        raise ArtifactError(f"compiling for {target.march} needs an x86-64 host, not "
                            f"{platform.machine()}")
    with tempfile.TemporaryDirectory(prefix="inductor-") as scratch, \
            _inductor_settings(scratch, target.march, target.simdlen), _threads(threads), \
            torch.no_grad():
        try:
            written = torch._inductor.aoti_compile_and_package(
                exported, package_path=str(path))
        except Exception as exc:  # no g++, missing headers: say what failed, not the stack
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise ArtifactError(f"AOTInductor compilation failed: {type(exc).__name__}: "
                                f"{first}") from None
    return Path(written)


def _load_package(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The package's runner, loaded once by torch's C++ loader, without importing
    torch._inductor (and with it torch._dynamo: seconds of every worker's cold start).

    Not ``aoti_load_package``: it first tries the newer pt2 reader, which after loading lists
    the CPU's ISAs to compare them with the compiling machine's for a warning, and on a CPU
    with AVX512-BF16 or AMX compiles probe programs to do so; the serving image has no C++
    compiler, so that failed, logged "Loading outdated pt2 file" and loaded the package again.
    Nothing is outdated: the file is what torch's ``aoti_compile_and_package`` writes."""
    loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
    return _Runner(loader)


class _Runner:
    """One tensor in, one tensor out: what torch's AOTICompiledModel does for this package
    (it flattens and unflattens the same structure with pytree specs)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __call__(self, batch: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outputs = self.loader.boxed_run([batch])  # one tensor, or logits and features
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


class BatchOne(nn.Module):
    """Runs a batch-1 package over a batch, one image at a time."""

    def __init__(self, runner: Callable[[torch.Tensor], torch.Tensor], target: IsaTarget = V3):
        super().__init__()
        self.runner = runner
        self.target = target  # which instruction-set variant this is

    def forward(self, batch: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if batch.shape[0] == 1:
            return self.runner(batch.contiguous(memory_format=torch.channels_last))
        rows = [self.runner(image.unsqueeze(0).contiguous(memory_format=torch.channels_last))
                for image in batch]
        if isinstance(rows[0], tuple):  # (logits, features) per image
            return tuple(torch.cat(part) for part in zip(*rows, strict=True))
        return torch.cat(rows)


def load_fresh_package(path: str | os.PathLike[str], target: IsaTarget = V3) -> BatchOne:
    """A package this process has just compiled (compile_package), loaded without the
    manifest's checks: for benches and tests, never for a file read from an artifact."""
    return BatchOne(_load_package(Path(path)), target)


def _load_target(model_dir: str | os.PathLike[str], manifest: Manifest, threads: int,
                 target: IsaTarget, capability: str) -> BatchOne:
    """``target``'s variant, checked (file, hash, torch, CPU, thread count), loaded."""
    variant = manifest.variants.get(target.variant)
    if variant is None:
        raise ArtifactError(f"{Path(model_dir) / MANIFEST_FILE}: no {target.variant} variant "
                            "(train with the hyperparameter compile=true)")
    if not known_format(variant.format, target.format):
        raise ArtifactError(f"{target.variant} variant format {variant.format!r} is not "
                            f"{target.format!r}")
    return load_package_variant(model_dir, target.variant, variant, threads, target,
                                capability)


def load_package_variant(model_dir: str | os.PathLike[str], name: str, variant: Variant,
                         threads: int = SERVING_THREADS, target: IsaTarget = V3,
                         capability: str | None = None) -> BatchOne:
    """Any AOTInductor variant of the manifest (``name``: compiled, compiled_avx512, int8)
    whose format the caller has checked, built for ``target``'s instruction set: torch version,
    thread count, CPU and sha256 checked here, in that order, so that no native code is loaded
    before every check has passed."""
    if variant.torch != torch.__version__:
        raise ArtifactError(f"{name} variant was built by torch {variant.torch or '?'}; "
                            f"this is torch {torch.__version__}")
    if variant.threads and variant.threads != threads:
        raise ArtifactError(f"{name} variant is specialised for {variant.threads} thread(s) "
                            f"per worker; this worker runs {threads}")
    capability = capability or torch.backends.cpu.get_cpu_capability()
    if capability not in target.capable:
        raise ArtifactError(f"{name} variant needs {' or '.join(target.capable)}; this CPU "
                            f"offers {capability}")
    if target.bf16 and not has_amx():
        raise ArtifactError(f"{name} variant needs AMX; this CPU has none")
    from model_artifact.network import verified_file

    path = verified_file(Path(model_dir) / variant.file, variant.required_sha256(name),
                         f"{name} model file")
    try:
        with quiet():
            runner = _load_package(path)
    except Exception as exc:  # not a package, truncated zip, unresolved symbols
        raise ArtifactError(f"{path}: cannot be loaded as an AOTInductor package: "
                            f"{type(exc).__name__}: {str(exc)[:300]}") from None
    return BatchOne(runner, target)


def load_compiled(model_dir: str | os.PathLike[str], manifest: Manifest,
                  threads: int = SERVING_THREADS, bf16: bool = True) -> BatchOne:
    """The best compiled variant this CPU runs (TARGETS, best first; ``compiled``, x86-64-v3,
    is the last resort; the bf16 one only with ``bf16`` and a recorded agreement at the bar),
    checked (file, hash, torch, CPU, thread count), ready to call with ``threads`` intra-op
    threads. A better variant that fails a check is logged and skipped.

    ArtifactError (the ``compiled`` variant's reason) when none loads; serving then uses the
    TorchScript graph instead.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    for target in TARGETS[:-1]:
        if target.bf16 and not (bf16 and _agrees(manifest.variants.get(target.variant))):
            continue
        if target.variant in manifest.variants and runs_here(target, capability):
            try:
                return _chosen(_load_target(model_dir, manifest, threads, target, capability))
            except ArtifactError as exc:
                logger.warning("%s variant not used (%s); trying %s", target.variant, exc,
                               TARGETS[-1].variant)
    return _chosen(_load_target(model_dir, manifest, threads, TARGETS[-1], capability))


def _agrees(variant: Variant | None) -> bool:
    """The training job measured this variant's top-1 agreement with fp32 at the bar."""
    return (variant is not None and variant.top1_agreement is not None
            and variant.top1_agreement >= AGREEMENT_BAR)


def _chosen(model: BatchOne) -> BatchOne:
    logger.info("compiled variant %s (%s%s) chosen for this CPU (%s%s)", model.target.variant,
                model.target.march, ", bfloat16" if model.target.bf16 else "",
                torch.backends.cpu.get_cpu_capability(), ", AMX" if has_amx() else "")
    return model


def _write_target(model_dir: str | os.PathLike[str], model: nn.Module, manifest: Manifest,
                  check_paths: Sequence[str | os.PathLike[str]], target: IsaTarget
                  ) -> tuple[Manifest, BatchOne]:
    """Compile ``target``'s package, check it against fp32 on ``check_paths``: the manifest
    with the variant added (not yet written) and the loaded package."""
    from model_artifact.network import file_sha256, gives_features

    pre = manifest.preprocessing
    path = compile_package(model, pre.crop_size, Path(model_dir) / target.file, target=target)
    variant = Variant(file=target.file, sha256=file_sha256(path),
                      format=package_format(target.format, gives_features(manifest)),
                      torch=torch.__version__, threads=SERVING_THREADS)
    compiled = _load_target(model_dir, manifest.with_variant(target.variant, variant),
                            SERVING_THREADS, target, torch.backends.cpu.get_cpu_capability())
    with _threads(SERVING_THREADS):
        agreement = measure_agreement(model, compiled, image_batches(check_paths, pre))
    variant = replace(variant, top1_agreement=agreement.top1,
                      agreement_images=agreement.images,
                      max_logit_difference=agreement.max_logit_difference)
    return manifest.with_variant(target.variant, variant), compiled


def batch1_ms(network: Callable[[torch.Tensor], torch.Tensor], crop_size: int,
              runs: int = 9) -> float:
    """Median batch-1 forward time in ms, with serving's thread count."""
    example = torch.zeros(1, 3, crop_size, crop_size).contiguous(memory_format=torch.channels_last)
    times = []
    with _threads(SERVING_THREADS), torch.inference_mode():
        network(example)
        for _ in range(runs):
            start = time.perf_counter()
            network(example)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


FASTER = 0.97  # a better-ISA variant is kept only below this share of x86-64-v3's time


def _add_if_faster(model_dir: str | os.PathLike[str], model: nn.Module, manifest: Manifest,
                   check_paths: Sequence[str | os.PathLike[str]], baseline: BatchOne,
                   target: IsaTarget) -> Manifest:
    """``target``'s variant added when it compiles, loads and runs batch 1 faster than
    ``baseline`` on this CPU; otherwise its file is removed and the reason logged. Only where
    this CPU can run (and so check) it: serving's CPU may differ, but an unchecked or slower
    package is not shipped. A bf16 package must also agree with fp32 (``_agrees``)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if not runs_here(target, capability):
        logger.info("%s variant not built: this CPU (%s%s) cannot check it", target.variant,
                    capability, ", no AMX" if target.bf16 else "")
        return manifest
    try:
        candidate, compiled = _write_target(model_dir, model, manifest, check_paths, target)
    except ArtifactError as exc:
        logger.warning("%s variant not built: %s", target.variant, exc)
        (Path(model_dir) / target.file).unlink(missing_ok=True)
        return manifest
    if target.bf16 and not _agrees(variant := candidate.variants[target.variant]):
        logger.info("%s variant not kept: top-1 agreement with fp32 %.4f on %d images is under "
                    "the bar (%.3f)", target.variant, variant.top1_agreement,
                    variant.agreement_images, AGREEMENT_BAR)
        (Path(model_dir) / target.file).unlink(missing_ok=True)
        return manifest
    size = manifest.preprocessing.crop_size
    ours, base = batch1_ms(compiled, size), batch1_ms(baseline, size)
    if ours < FASTER * base:
        logger.info("%s variant kept: batch 1 %.1f ms, %s %.1f ms", target.variant, ours,
                    baseline.target.variant, base)
        return candidate
    logger.info("%s variant not kept: batch 1 %.1f ms is not faster than %s's %.1f ms",
                target.variant, ours, baseline.target.variant, base)
    (Path(model_dir) / target.file).unlink(missing_ok=True)
    return manifest


def write_compiled_variant(
    model_dir: str | os.PathLike[str],
    model: nn.Module,
    manifest: Manifest,
    check_paths: Sequence[str | os.PathLike[str]],
) -> Manifest:
    """Compile, save ``model_compiled.pt2`` (x86-64-v3) and, where this CPU runs them faster,
    ``model_compiled_amx_bf16.pt2`` (bf16 on AMX, when it agrees with fp32) and
    ``model_compiled_avx512.pt2`` (x86-64-v4); check each against the fp32 model on
    ``check_paths`` (top-1 agreement and the largest logit difference), rewrite manifest.json.
    Returns the manifest as written."""
    from model_artifact.network import WithFeatures, gives_features

    if not check_paths:
        raise ArtifactError("checking the compiled model needs at least one image")
    model = model.to("cpu", memory_format=torch.channels_last).eval()
    if gives_features(manifest):  # the package answers (logits, features): serving scores them
        model = WithFeatures(model)
    written, baseline = _write_target(model_dir, model, manifest, check_paths, V3)
    for target in TARGETS[:-1]:
        written = _add_if_faster(model_dir, model, written, check_paths, baseline, target)
    written.write(model_dir)
    return written
