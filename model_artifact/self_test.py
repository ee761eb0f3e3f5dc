"""The artifact's self-test: a handful of held-out inputs and the fp32 logits the training job
computed for them, so that serving can prove, on its own CPU and thread count, that the graph
it is about to serve (compiled, frozen, eager, int8) answers as training's model did.

Why preprocessed tensors rather than images: the test is about the graph, not the decoder;
tensors make the reference exact (no JPEG decoder or resize in between) and need no decoding at
start. They are stored as float16 (half the bytes; at 224 px 8 inputs are 2.4 MB next to a
94 MB ``model.pt``) and the reference logits are computed from exactly those values, widened to
float32, so nothing is lost. The file is a ``torch.save`` of two tensors, read back with
``weights_only=True`` (tensors only, no code) after checking its sha256.

Which inputs: the training job sends a seeded sample of CANDIDATES validation images through
its model and keeps the SELF_TEST_IMAGES with the widest margin between their first two
classes. The self-test proves the graph, not the model's accuracy: on a near-tie, rounding
alone (int8 above all) may flip the answer, which would refuse a sound graph.

Tolerances (docs/serving-api.md, "Start-up self-test"): on every input the top-1 class must be
the reference's, and the largest |logit - reference| must stay within
``tolerance x max(1, largest |reference logit|)``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from model_artifact.manifest import ArtifactError, Manifest, SelfTest
from model_artifact.network import logits_of

SELF_TEST_FILE = "self_test.pt"
SELF_TEST_IMAGES = 8  # held-out inputs the artifact carries
CANDIDATES = 4 * SELF_TEST_IMAGES  # validation images they are chosen from
# fp32 graphs (eager, frozen, compiled) differ from training's eager fp32 by float rounding:
# BatchNorm folding, another summation order, another ISA (the compiled variant records
# max_logit_difference within 1e-4 of fp32; the frozen graph within 1e-4 as well).
FP32_TOLERANCE = 1e-3
# int8 moves logits by a few per cent of their range (agreement.AGREEMENT_BAR is about top-1);
# a variant made from other weights or with a broken recipe moves them by their whole range.
INT8_TOLERANCE = 0.15
# fp16 on the GPU (serving's cuda-fp16 graph): 11 mantissa bits, activations rounded at every
# layer of 50; logits move by a few tenths of a per cent of their range, far above fp32's
# rounding and far below what a wrong network does. Unmeasured on a GPU in this repository yet.
FP16_TOLERANCE = 0.03
# bf16 on AMX (the compiled_amx_bf16 package): 8 mantissa bits, 3 fewer than fp16; on a random
# 224-px ResNet50 its logits moved by 0.4% of their range (0.50 of 112).
BF16_TOLERANCE = 0.05

Network = Callable[[torch.Tensor], torch.Tensor]


class SelfTestError(ArtifactError):
    """The graph serving built does not answer as the training job's model did."""


@dataclass(frozen=True)
class Result:
    images: int
    max_difference: float  # largest |logit - reference| seen
    allowed: float  # the largest difference allowed
    seconds: float


def tolerance(graph: str) -> float:
    if graph.endswith("fp16"):
        return FP16_TOLERANCE
    if graph.endswith("bf16"):
        return BF16_TOLERANCE
    return INT8_TOLERANCE if graph == "int8" else FP32_TOLERANCE


def write_self_test_file(model_dir: str | os.PathLike[str], model: nn.Module,
                         manifest: Manifest, inputs: torch.Tensor) -> Manifest:
    """Of ``inputs`` (normalised [N, 3, crop, crop]), keep the SELF_TEST_IMAGES with the widest
    top-1 margin; save them as float16 with ``model``'s fp32 logits for them, add the
    ``self_test`` block to manifest.json and rewrite it. Returns the manifest as written."""
    from dataclasses import replace

    from model_artifact.network import file_sha256

    stored = inputs.detach().to("cpu", torch.float16).contiguous()
    with torch.inference_mode():  # model: fp32, eval, on the CPU (the caller's; not changed)
        logits = logits_of(model(stored.float().contiguous(
            memory_format=torch.channels_last))).float()
    if logits.shape[1] > 1:
        top2 = logits.topk(2, dim=1).values
        widest = (top2[:, 0] - top2[:, 1]).argsort(descending=True)[:SELF_TEST_IMAGES]
        keep = widest.sort().values
        stored, logits = stored[keep].contiguous(), logits[keep]
    path = Path(model_dir) / SELF_TEST_FILE
    torch.save({"inputs": stored, "logits": logits.contiguous()}, path)
    block = SelfTest(file=SELF_TEST_FILE, sha256=file_sha256(path), images=len(stored))
    written = replace(manifest, self_test=block)
    written.write(model_dir)
    return written


def load_self_test(model_dir: str | os.PathLike[str], manifest: Manifest
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(inputs as float32, reference logits), or None when the artifact carries no self-test
    (written before it existed). ArtifactError when the file is missing, altered or malformed."""
    block = manifest.self_test
    if block is None:
        return None
    from model_artifact.network import verified_file

    path = verified_file(Path(model_dir) / block.file, block.sha256, "self-test file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        inputs, logits = data["inputs"].float(), data["logits"].float()
    except Exception as exc:  # not a torch file, not a dict of two tensors
        raise ArtifactError(f"{path}: not a self-test file: {type(exc).__name__}") from None
    size = manifest.preprocessing.crop_size
    if (inputs.dim() != 4 or tuple(inputs.shape[1:]) != (3, size, size)
            or tuple(logits.shape) != (inputs.shape[0], manifest.num_classes)):
        raise ArtifactError(f"{path}: inputs {tuple(inputs.shape)} and logits "
                            f"{tuple(logits.shape)} do not fit the manifest")
    return inputs, logits


def run_self_test(model: Network, graph: str, inputs: torch.Tensor, reference: torch.Tensor
                  ) -> Result:
    """Run each input at batch 1 (what serving runs most) and compare with the reference;
    SelfTestError (one line) on the first input that drifts too far or changes its answer."""
    allowed = tolerance(graph) * max(1.0, float(reference.abs().max()))
    worst = 0.0
    start = time.perf_counter()
    with torch.inference_mode():
        for i, (image, expected) in enumerate(zip(inputs, reference, strict=True)):
            got = model(image.unsqueeze(0).contiguous(memory_format=torch.channels_last))
            got = logits_of(got).float().reshape(-1)  # a features graph answers a pair
            difference = float((got - expected).abs().max())
            worst = max(worst, difference)
            if difference > allowed or int(got.argmax()) != int(expected.argmax()):
                raise SelfTestError(
                    f"self-test failed on the {graph} graph: held-out input {i} gives class "
                    f"{int(got.argmax())} (training: {int(expected.argmax())}), logits up to "
                    f"{difference:.3g} away from training's (allowed {allowed:.3g})")
    return Result(len(inputs), worst, allowed, time.perf_counter() - start)

