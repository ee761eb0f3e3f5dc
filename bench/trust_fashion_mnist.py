"""Calibration and "none of my classes" measured on a network trained from scratch.

No ImageNet weights can be downloaded here, so the bench trains ResNet50 from scratch with the
project's own training job (in this process) on Fashion-MNIST (Debian's dataset-fashion-mnist,
installed when missing; written as an image folder under --cache, never into the repository)
with two classes held out of every split the job sees. Then, on the test split, through the
artifact and serving's preprocessing:

- expected calibration error before and after the temperature fitted on valid (goal: halved),
- the abstain score's AUROC for held-out-class test images vs known-class test images (goal
  >= 0.85), and the false-abstain rate on known test images at the threshold chosen on valid
  for the target rate (goal: the target, within the sampling error of the valid split),
- known-class test accuracy.

The temperature and the abstain threshold are the manifest's when the training job wrote them,
else fitted here on valid with the same functions. ``--data DIR --held-out CLASS`` runs the
same measurement on an image folder (train/valid/test/<class>/) with one class held out.
``--abstain-score features`` trains with the served features score (novelty.pt) and adds its
row as SERVED: every test image sent through serving's load_served and predict_fn (JPEG/PNG
bytes in, the answer's novelty score out), the threshold the job chose.

    .venv/bin/python bench/trust_fashion_mnist.py [--held-out shirt,ankle_boot] [--strict]
    .venv/bin/python bench/trust_fashion_mnist.py --data sample_data/photos5 --held-out fishes
    .venv/bin/python bench/trust_fashion_mnist.py --abstain-score features
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from bench.fashion_mnist import CLASSES, Layout, SetupError, TrainSettings, prepare, train
from container_serve.inference import ServedModel, load_served, predict_fn
from container_serve.settings import ServeSettings
from model_artifact.calibration import expected_calibration_error, fit_temperature
from model_artifact.manifest import Manifest, Novelty
from model_artifact.network import load_artifact
from model_artifact.novelty import (
    auroc,
    fit_class_gaussian,
    fit_novelty,
    mahalanobis_score,
    novelty_scores,
    threshold_for_false_abstain,
)
from model_artifact.preprocess import EvalPreprocessing, image_batches

CACHE = Path.home() / ".cache" / "sagemaker-resnet50-bench"
TARGET_AUROC = 0.85
TARGET_ECE_RATIO = 0.5  # ECE after temperature at most half of before
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class Logits:
    logits: torch.Tensor
    labels: torch.Tensor  # -1 for held-out classes
    features: torch.Tensor  # (N, 2048) pooled features: the input of the head


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


@torch.no_grad()
def logits_of(model: torch.nn.Module, pre: EvalPreprocessing, folder: Path,
              classes: tuple[str, ...]) -> Logits:
    """Logits of every image under folder/<class>/, preprocessed as serving does; labels are
    indices into ``classes`` (-1 for a class the model does not know)."""
    outputs, labels, pooled = [], [], []
    head = model.fc  # torchvision ResNet: the head's input is the pooled feature vector
    hook = head.register_forward_hook(lambda _m, args, _out: pooled.append(args[0].float()))
    try:
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            paths = _images(class_dir)
            for batch in image_batches(paths, pre, batch_size=256):
                outputs.append(model(batch).float())
            index = classes.index(class_dir.name) if class_dir.name in classes else -1
            labels += [index] * len(paths)
    finally:
        hook.remove()
    return Logits(torch.cat(outputs), torch.tensor(labels), torch.cat(pooled))


def _temperature(manifest: Manifest, valid: Logits) -> tuple[float, str]:
    calibration = manifest.calibration
    if calibration is not None:
        return calibration.temperature, "manifest"
    return fit_temperature(valid.logits, valid.labels), "fitted here on valid"


def _novelty(manifest: Manifest, valid: Logits, method: str, rate: float,
             temperature: float) -> tuple[Novelty, str]:
    stored = manifest.novelty
    if stored is not None and stored.method == method:
        return stored, "manifest"
    fitted = fit_novelty(valid.logits, valid.labels, rate=rate, temperature=temperature,
                         method=method)
    return fitted, "fitted here on valid"


def _abstain_rows(manifest: Manifest, train: Logits, valid: Logits, test: Logits,
                  unknown: Logits, rate: float, temperature: float) -> list[dict]:
    stored = manifest.novelty
    methods = ["energy", "mahalanobis"]
    if stored is not None:  # the job's method first: it is what serving runs
        methods.sort(key=lambda m: m != stored.method)
    rows = []
    for method in methods:
        novelty, source = _novelty(manifest, valid, method, rate, temperature)
        known, other = novelty_scores(test.logits, novelty), novelty_scores(unknown.logits,
                                                                            novelty)
        rows.append({"method": method, "source": source, "auroc": auroc(known, other),
                     "false_abstain": float((known > novelty.threshold).double().mean()),
                     "abstain_unknown": float((other > novelty.threshold).double().mean())})
    return [*rows, _feature_row(train, valid, test, unknown, rate)]


def _feature_row(train: Logits, valid: Logits, test: Logits, unknown: Logits,
                 rate: float) -> dict:
    """The class-conditional Gaussian score on the 2048-d pooled features instead of the
    logits (same functions): a candidate the served graphs cannot compute today (they return
    logits only), measured here to see whether it is worth serving. 2048 dimensions need more
    images than the valid split has, and a threshold taken on the images the Gaussians were
    fitted on is far too low (those score closer than any new image): so the Gaussians are
    fitted on the training split and the threshold on valid."""
    num_classes = int(train.labels.max()) + 1
    means, precision = fit_class_gaussian(train.features, train.labels, num_classes)

    def scores(features: torch.Tensor) -> torch.Tensor:  # in chunks: (N, C, 2048) doubles
        return torch.cat([mahalanobis_score(chunk, means, precision)
                          for chunk in features.split(256)])

    threshold = threshold_for_false_abstain(scores(valid.features), rate)
    known, other = scores(test.features), scores(unknown.features)
    return {"method": "features-mahalanobis",
            "source": "bench only, fitted on train, threshold on valid",
            "auroc": auroc(known, other),
            "false_abstain": float((known > threshold).double().mean()),
            "abstain_unknown": float((other > threshold).double().mean())}


def _served_scores(served: ServedModel, folder: Path) -> torch.Tensor:
    """Serving's novelty score for every image under ``folder``, 16 images per request."""
    paths, scores = _images(folder), []
    for start in range(0, len(paths), 16):
        prediction = predict_fn([p.read_bytes() for p in paths[start:start + 16]], served)
        scores.append(prediction.novelty_scores)
    return torch.cat(scores)


def _served_row(model_dir: Path, folders: dict[str, Path]) -> list[dict]:
    """The features score as an endpoint answers it (frozen graph, serving's preprocessing,
    novelty.pt and the job's threshold); [] when the artifact's method is not features."""
    threads = torch.get_num_threads()
    served = load_served(str(model_dir), replace(ServeSettings(), graph="frozen",
                                                 threads_per_worker=threads))
    novelty = served.manifest.novelty
    if novelty is None or novelty.method != "features":
        return []
    known, other = _served_scores(served, folders["test"]), _served_scores(served,
                                                                          folders["unknown"])
    return [{"method": "features", "source": "SERVED: load_served + predict_fn, novelty.pt",
             "auroc": auroc(known, other),
             "false_abstain": float((known > novelty.threshold).double().mean()),
             "abstain_unknown": float((other > novelty.threshold).double().mean())}]


def measure(model_dir: Path, folders: dict[str, Path], rate: float) -> dict:
    """Everything the table shows, for the artifact in ``model_dir``; ``folders``: data (its
    valid split), test and unknown (image folders of known and held-out classes)."""
    model, manifest = load_artifact(model_dir)
    pre, classes = manifest.preprocessing, tuple(manifest.class_names)
    train = logits_of(model, pre, folders["data"] / "train", classes)
    valid = logits_of(model, pre, folders["data"] / "valid", classes)
    test = logits_of(model, pre, folders["test"], classes)
    unknown = logits_of(model, pre, folders["unknown"], classes)
    temperature, t_source = _temperature(manifest, valid)
    probs = torch.softmax(test.logits.double(), dim=1)
    scaled = torch.softmax(test.logits.double() / temperature, dim=1)
    return {
        "classes": classes, "valid_n": len(valid.labels), "test_n": len(test.labels),
        "unknown_n": len(unknown.labels),
        "accuracy": float((test.logits.argmax(1) == test.labels).double().mean()),
        "temperature": temperature, "temperature_source": t_source,
        "ece_before": expected_calibration_error(probs, test.labels),
        "ece_after": expected_calibration_error(scaled, test.labels),
        # The served features row first when the job fitted it: it is what serving runs.
        "abstain": _served_row(model_dir, folders)
        + _abstain_rows(manifest, train, valid, test, unknown, rate, temperature),
    }


def hold_out_folder(source: Path, held_out: str, root: Path) -> dict[str, Path]:
    """An image folder without class ``held_out`` (links to the source's files) and, beside
    it, that class's images from every split (a tiny set needs them all to say anything).
    Same folders as :func:`bench.fashion_mnist.prepare`; test stays in data (a tiny job
    scores it in no time) and is also returned as ``test``."""
    classes = sorted(p.name for p in (source / "train").iterdir() if p.is_dir())
    if held_out not in classes:
        raise SetupError(f"--held-out {held_out!r} is not a class of {source}: {classes}")
    shutil.rmtree(root, ignore_errors=True)
    for split in ("train", "valid", "test"):
        for class_name in classes:
            target = (root / "unknown" / held_out if class_name == held_out
                      else root / "data" / split / class_name)
            target.mkdir(parents=True, exist_ok=True)
            for path in _images(source / split / class_name):
                (target / f"{split}-{path.name}").symlink_to(path.resolve())
    return {"data": root / "data", "test": root / "data" / "test", "unknown": root / "unknown"}


def false_abstain_tolerance(rate: float, valid_n: int) -> float:
    """Three standard errors of a rate estimated on ``valid_n`` images: the threshold is a
    quantile of the valid split, so the test split's rate scatters around the target by this."""
    return 3 * math.sqrt(rate * (1 - rate) / max(valid_n, 1))


def report(result: dict, rate: float, what: str) -> bool:
    """Print the table and the RESULT line; True when every goal is met."""
    job = result["abstain"][0]
    tolerance = false_abstain_tolerance(rate, result["valid_n"])
    goals = {"ece": result["ece_after"] <= TARGET_ECE_RATIO * result["ece_before"],
             "auroc": job["auroc"] >= TARGET_AUROC,
             "false_abstain": job["false_abstain"] <= rate + tolerance}
    print(f"\ntrust_fashion_mnist: {what}; {len(result['classes'])} known classes, valid "
          f"{result['valid_n']}, test {result['test_n']} known + {result['unknown_n']} held-out")
    print(f"known-class test accuracy {result['accuracy']:.3f}; temperature "
          f"{result['temperature']:.3f} ({result['temperature_source']})")
    print("| measure (test split) | value | goal |")
    print("|---|---|---|")
    print(f"| ECE before temperature | {result['ece_before']:.4f} | |")
    print(f"| ECE after temperature | {result['ece_after']:.4f} | <= "
          f"{TARGET_ECE_RATIO * result['ece_before']:.4f} |")
    for row in result["abstain"]:
        print(f"| {row['method']} ({row['source']}): AUROC held-out vs known | "
              f"{row['auroc']:.3f} | >= {TARGET_AUROC} |")
        print(f"| {row['method']}: false-abstain on known test | {row['false_abstain']:.3f} | "
              f"{rate:.2f} +- {tolerance:.3f} |")
        print(f"| {row['method']}: abstains on held-out test | {row['abstain_unknown']:.3f} | |")
    ok = all(goals.values())
    print(f"RESULT trust_fashion_mnist accuracy={result['accuracy']:.3f} "
          f"ece_before={result['ece_before']:.4f} ece_after={result['ece_after']:.4f} "
          f"method={job['method']} auroc={job['auroc']:.3f} "
          f"false_abstain={job['false_abstain']:.3f} target_false_abstain={rate:g} "
          f"pass={str(ok).lower()} missed={','.join(k for k, v in goals.items() if not v)}")
    return ok


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held-out", default="shirt,ankle_boot",
                        help=f"classes kept out of training, comma-separated: of {CLASSES}, "
                             "or one class of --data")
    parser.add_argument("--data", type=Path, help="an image folder instead of Fashion-MNIST")
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--valid-per-class", type=int, default=60)
    parser.add_argument("--test-per-class", type=int, default=250)
    defaults = TrainSettings()
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--abstain-score", default="energy",
                        choices=("energy", "mahalanobis", "features"),
                        help="the training job's abstain-score (features: its row is served)")
    parser.add_argument("--rate", type=float, default=0.05,
                        help="target false-abstain rate, when fitted here")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default, one per core); 1 runs much "
                             "faster on a CPU that other jobs keep busy")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--retrain", action="store_true", help="ignore a cached model")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    return parser.parse_args()


def _setup(args: argparse.Namespace) -> tuple[dict[str, Path], Path, str]:
    """(the folders of :func:`measure`, cache folder of this run, what it is)."""
    held_out = tuple(args.held_out.split(","))
    if args.data is not None:
        root = args.cache / f"folder-{args.data.resolve().name}-heldout-{held_out[0]}"
        folders = hold_out_folder(args.data, held_out[0], root / "images")
        return folders, root, f"{args.data} without {held_out[0]}"
    layout = Layout(held_out, args.train_per_class, args.valid_per_class,
                    args.test_per_class)
    root = args.cache / "fashion_mnist" / f"heldout-{'+'.join(held_out)}"
    folders = prepare(root / "images", layout)
    what = (f"Fashion-MNIST without {'+'.join(held_out)}, {args.train_per_class} train images "
            "per class")
    return folders, root, what


def main() -> int:
    args = _arguments()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        folders, root, what = _setup(args)
    except SetupError as exc:
        print(f"trust_fashion_mnist: {exc}", file=sys.stderr)
        return 2
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             image_size=args.image_size, abstain_score=args.abstain_score)
    model_dir, seconds = train(folders["data"], root / "run", settings, retrain=args.retrain)
    result = measure(model_dir, folders, args.rate)
    trained = f"trained {seconds:.0f} s" if seconds else "cached model"
    ok = report(result, args.rate, f"{what}; {settings}; {trained}, "
                f"{torch.get_num_threads()} threads")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
