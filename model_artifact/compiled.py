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
  AVX2 endpoint;
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
import os
import platform
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from model_artifact.agreement import measure_agreement
from model_artifact.manifest import COMPILED, MANIFEST_FILE, ArtifactError, Manifest, Variant
from model_artifact.preprocess import image_batches
from model_artifact.torch_warnings import quiet

COMPILED_FILE = "model_compiled.pt2"
COMPILED_FORMAT = "aotinductor-x86-64-v3-batch1"
MARCH = "x86-64-v3"
# CPU capabilities (torch.backends.cpu.get_cpu_capability()) that can run x86-64-v3 code.
CAPABLE = ("AVX2", "AVX512")


@contextlib.contextmanager
def _inductor_settings(cache_dir: str) -> Iterator[None]:
    """Portable, frozen compilation; the compiler's scratch files in ``cache_dir``."""
    import torch._inductor.config as config

    saved = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    try:
        with config.patch({"freezing": True, "cpp.march": MARCH, "cpp.simdlen": 256}):
            yield
    finally:
        if saved is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved


@contextlib.contextmanager
def _isa_comparison_quieted() -> Iterator[None]:
    """The loader compares this CPU's ISA list with the compiling one's and warns when they
    differ; the package targets x86-64-v3 on purpose (checked in load_compiled), so the
    difference is expected and the note is silenced. torch finds the list by compiling a probe
    program per ISA (seconds per worker where a C++ compiler is installed); for a comparison
    that is only logged, the CPU's flags answer it without compiling (``cpp.vec_isa_ok``)."""
    import logging

    import torch._inductor.config as inductor_config

    note = logging.getLogger("torch.export.pt2_archive._package")
    level = note.level
    note.setLevel(logging.ERROR)
    try:
        with inductor_config.patch({"cpp.vec_isa_ok": True}):
            yield
    finally:
        note.setLevel(level)


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
                    threads: int = SERVING_THREADS) -> Path:
    """fp32 model -> AOTInductor package at ``path`` (batch 1, channels_last, x86-64-v3),
    specialised for ``threads`` intra-op threads.

    Raises ArtifactError when this machine cannot compile it (not x86-64, no C++ compiler).
    """
    model = model.to("cpu", memory_format=torch.channels_last).eval()
    example = torch.zeros(1, 3, crop_size, crop_size).contiguous(memory_format=torch.channels_last)
    with quiet(), torch.no_grad():
        exported = torch.export.export(model, (example,))
    return compile_exported(exported, path, threads)


def compile_exported(exported: torch.export.ExportedProgram, path: str | os.PathLike[str],
                     threads: int = SERVING_THREADS) -> Path:
    """An exported program (fp32, or int8 from model_artifact.quantize) -> AOTInductor package
    at ``path`` (x86-64-v3, frozen), specialised for ``threads`` intra-op threads: the one
    compile step both variants share.

    Raises ArtifactError when this machine cannot compile it (not x86-64, no C++ compiler).
    """
    if platform.machine() not in ("x86_64", "AMD64"):
        raise ArtifactError(f"compiling for {MARCH} needs an x86-64 host, not "
                            f"{platform.machine()}")
    with tempfile.TemporaryDirectory(prefix="inductor-") as scratch, \
            _inductor_settings(scratch), _threads(threads), torch.no_grad():
        try:
            written = torch._inductor.aoti_compile_and_package(
                exported, package_path=str(path))
        except Exception as exc:  # no g++, missing headers: say what failed, not the stack
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise ArtifactError(f"AOTInductor compilation failed: {type(exc).__name__}: "
                                f"{first}") from None
    return Path(written)


def _load_package(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The package's runner, loaded once. ``aoti_load_package`` first tries the newer pt2
    reader, which loads the package and then, to compare this machine with the compiling one
    for a warning, lists the CPU's ISAs; on a CPU with AVX512-BF16 or AMX that compiles probe
    programs even under ``cpp.vec_isa_ok``. The serving image has no C++ compiler, so the
    attempt failed after the load, logged "Loading outdated pt2 file. Please regenerate your
    package." and loaded the same package again with the loader used here. Nothing is
    outdated: the file is what torch 2.14's ``aoti_compile_and_package`` writes."""
    from torch._inductor.package.package import AOTICompiledModel

    loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
    return AOTICompiledModel(loader)


class BatchOne(nn.Module):
    """Runs a batch-1 package over a batch, one image at a time."""

    def __init__(self, runner: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.runner = runner

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.shape[0] == 1:
            return self.runner(batch.contiguous(memory_format=torch.channels_last))
        return torch.cat([self.runner(image.unsqueeze(0).contiguous(
            memory_format=torch.channels_last)) for image in batch])


def load_compiled(model_dir: str | os.PathLike[str], manifest: Manifest,
                  threads: int = SERVING_THREADS) -> BatchOne:
    """The manifest's compiled variant, checked (file, hash, torch, CPU, thread count), ready
    to call with ``threads`` intra-op threads.

    ArtifactError says which check failed; serving then uses the TorchScript graph instead.
    """
    variant = manifest.variants.get(COMPILED)
    if variant is None:
        raise ArtifactError(f"{Path(model_dir) / MANIFEST_FILE}: no compiled variant (train "
                            "with the hyperparameter compile=true)")
    if variant.format != COMPILED_FORMAT:
        raise ArtifactError(f"compiled variant format {variant.format!r} is not "
                            f"{COMPILED_FORMAT!r}")
    return load_package_variant(model_dir, COMPILED, variant, threads)


def load_package_variant(model_dir: str | os.PathLike[str], name: str, variant: Variant,
                         threads: int = SERVING_THREADS) -> BatchOne:
    """Any AOTInductor variant of the manifest (``name``: compiled, int8) whose format the
    caller has checked: torch version, thread count, CPU and sha256 checked here, in that
    order, so that no native code is loaded before every check has passed."""
    if variant.torch != torch.__version__:
        raise ArtifactError(f"{name} variant was built by torch {variant.torch or '?'}; "
                            f"this is torch {torch.__version__}")
    if variant.threads and variant.threads != threads:
        raise ArtifactError(f"{name} variant is specialised for {variant.threads} thread(s) "
                            f"per worker; this worker runs {threads}")
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in CAPABLE:
        raise ArtifactError(f"{name} variant needs AVX2; this CPU offers {capability}")
    from model_artifact.network import verified_file

    path = verified_file(Path(model_dir) / variant.file, variant.required_sha256(name),
                         f"{name} model file")
    try:
        with quiet(), _isa_comparison_quieted():
            runner = _load_package(path)
    except Exception as exc:  # not a package, truncated zip, unresolved symbols
        raise ArtifactError(f"{path}: cannot be loaded as an AOTInductor package: "
                            f"{type(exc).__name__}: {str(exc)[:300]}") from None
    return BatchOne(runner)


def write_compiled_variant(
    model_dir: str | os.PathLike[str],
    model: nn.Module,
    manifest: Manifest,
    check_paths: Sequence[str | os.PathLike[str]],
) -> Manifest:
    """Compile, save ``model_compiled.pt2``, check it against the fp32 model on
    ``check_paths`` (top-1 agreement and the largest logit difference), rewrite manifest.json.
    Returns the manifest as written."""
    from model_artifact.network import file_sha256

    if not check_paths:
        raise ArtifactError("checking the compiled model needs at least one image")
    model = model.to("cpu", memory_format=torch.channels_last).eval()
    pre = manifest.preprocessing
    path = compile_package(model, pre.crop_size, Path(model_dir) / COMPILED_FILE)
    variant = Variant(file=COMPILED_FILE, format=COMPILED_FORMAT, sha256=file_sha256(path),
                      torch=torch.__version__, threads=SERVING_THREADS)
    compiled = load_compiled(model_dir, manifest.with_variant(COMPILED, variant))
    with _threads(SERVING_THREADS):
        agreement = measure_agreement(model, compiled, image_batches(check_paths, pre))
    variant = replace(variant, top1_agreement=agreement.top1,
                      agreement_images=agreement.images,
                      max_logit_difference=agreement.max_logit_difference)
    written = manifest.with_variant(COMPILED, variant)
    written.write(model_dir)
    return written
