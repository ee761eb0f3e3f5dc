"""The bench's baseline: a seed-style MMS handler, as a first version of the image would have it.

Per request: PIL decode, resize to 224x224 (no aspect-preserving resize + crop), to-tensor,
normalise, fp32 eager forward (no channels_last, no TorchScript), softmax, top-5 JSON. The model
is the same artifact (state_dict + manifest) that ``container_serve`` serves. Used only by
bench/serving_speed.py; MMS loads it as the function-style handler ``bench.seed_handler``
(``handle``).

Started through the same MMS launcher as the product with default settings (one worker per
CPU, one thread each, MMS's defaults):

    python -m bench.seed_handler --model-dir DIR --port N
"""

from __future__ import annotations

import io
import json
import os
import sys

_state: dict = {}


def _load(model_dir: str) -> None:
    import torch
    from torchvision import transforms

    from model_artifact.network import load_artifact

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model, manifest = load_artifact(model_dir)
    _state["model"] = model
    _state["classes"] = manifest.class_names
    _state["transform"] = transforms.Compose([
        transforms.Resize((224, 224)),
        transforms.ToTensor(),
        transforms.Normalize(manifest.preprocessing.mean, manifest.preprocessing.std),
    ])


def handle(data, context):  # MMS's function entry point: (None, context) once at load
    if data is None:
        _load(os.environ.get("SERVE_MODEL_DIR") or context.system_properties["model_dir"])
        from container_serve.transformer import mark_loaded

        mark_loaded()  # serve opens the port once a worker has loaded (the product's contract)
        return None
    import torch
    from PIL import Image

    replies = []
    for request in data:
        body = request.get("body") or request.get("data")
        image = Image.open(io.BytesIO(bytes(body))).convert("RGB")
        batch = _state["transform"](image).unsqueeze(0)
        with torch.no_grad():
            probabilities = torch.softmax(_state["model"](batch), dim=1)[0]
        values, indices = torch.topk(probabilities, min(5, len(_state["classes"])))
        replies.append(json.dumps({"predictions": [{"top_k": [
            {"label": _state["classes"][j], "index": j, "probability": p}
            for p, j in zip(values.tolist(), indices.tolist(), strict=True)]}]}))
    return replies


def main(argv: list[str] | None = None) -> int:
    """The product's launcher (MMS via sagemaker-inference), with this module as the handler."""
    from container_serve import serve

    args = serve.parse_args(argv)
    serve.HANDLER_SERVICE = "bench.seed_handler"
    return serve.serve(args.model_dir, args.port)


if __name__ == "__main__":
    sys.exit(main())
