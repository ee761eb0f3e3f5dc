"""The frozen-backbone feature cache: reuse, invalidation, and the same result as no cache."""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from PIL import Image

from container_train.config import JobConfig
from container_train.main import run
from tests.conftest import TINY_VALUES

pytestmark = pytest.mark.slow


def _run(data, root, caplog, cache=None, values=None):
    caplog.clear()
    with caplog.at_level("INFO"):
        run(JobConfig.from_values({**TINY_VALUES, "image-size": 32, "epochs": 3, "lr": 0.01,
                                   **(values or {})},
                                  data_dir=data, model_dir=root / "model",
                                  output_data_dir=root / "out", feature_cache_dir=cache))
    computed = {m.group(1): int(m.group(2)) for m in re.finditer(
        r"(\w+) features: (\d+) image-views computed", caplog.text)}
    return torch.load(root / "model" / "model.pt", weights_only=True), computed


def test_cache_is_reused_and_invalidated_by_content_and_size(color_data, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(color_data, data)
    cache = tmp_path / "cache"
    first, computed = _run(data, tmp_path / "r1", caplog, cache)
    assert computed == {"train": 64, "valid": 12, "test": 12}  # 32 images x 2 views

    second, computed = _run(data, tmp_path / "r2", caplog, cache)
    assert computed == {"train": 0, "valid": 0, "test": 0}
    assert torch.equal(first["fc.weight"], second["fc.weight"])  # cached == computed

    image = data / "train" / "red" / "0.jpg"
    Image.new("RGB", (48, 48), (250, 250, 0)).save(image)  # same name, new content
    _, computed = _run(data, tmp_path / "r3", caplog, cache)
    assert computed == {"train": 2, "valid": 0, "test": 0}

    _, computed = _run(data, tmp_path / "r4", caplog, cache, {"image-size": 40})
    assert computed == {"train": 64, "valid": 12, "test": 12}


def test_fast_path_trains_the_same_head_as_the_full_forward(color_data, tmp_path, caplog):
    # Centre view only on both paths, so both see the same inputs in the same order.
    # precision=fp32: on a CPU with AMX the default computes the features in bf16 (below).
    fast, computed = _run(color_data, tmp_path / "fast", caplog,
                          values={"augment": False, "precision": "fp32"})
    assert computed["train"] == 32
    slow, computed = _run(color_data, tmp_path / "slow", caplog,
                          values={"augment": False, "feature-cache": False, "precision": "fp32"})
    assert computed == {}
    for key in ("fc.weight", "fc.bias"):
        # Same maths; only BLAS blocking differs with batch layout (float32 noise).
        assert torch.allclose(fast[key], slow[key], atol=1e-4, rtol=1e-4), key
    assert torch.equal(fast["layer4.0.conv1.weight"], slow["layer4.0.conv1.weight"])


def test_on_an_amx_cpu_the_default_feature_pass_runs_in_bf16_and_caches_apart(
        color_data, tmp_path, caplog, monkeypatch):
    """precision=auto on a CPU with AMX (stood in for: bf16 also runs, slower, on others):
    bf16 features, in their own cache folder, within bf16 rounding of the fp32 ones;
    precision=fp32 keeps fp32 there."""
    from container_train import feature_cache

    monkeypatch.setattr(feature_cache, "has_amx", lambda: True)
    cache = tmp_path / "cache"
    values = {"augment": False}
    _, computed = _run(color_data, tmp_path / "bf16", caplog, cache, values)
    assert computed["train"] == 32 and "features: 32 image-views computed" in caplog.text
    assert re.search(r"train features: .* s, bf16 \(AMX\)", caplog.text)
    _, computed = _run(color_data, tmp_path / "fp32", caplog, cache,
                       {**values, "precision": "fp32"})
    assert computed["train"] == 32  # not the bf16 entries
    assert "bf16 (AMX)" not in caplog.text
    folders = sorted(p.name for p in cache.iterdir())
    assert len(folders) == 2 and folders[1] == folders[0] + "-bf16"
    entries = sorted((cache / folders[0]).rglob("*.pt"))
    assert len(entries) == 32 + 12 + 12  # train (centre view only), valid, test
    for entry in entries:  # the same key in both folders: the same image and view
        exact = torch.load(entry, weights_only=True)
        rounded = torch.load(cache / folders[1] / entry.relative_to(cache / folders[0]),
                             weights_only=True)
        relative = float((rounded - exact).abs().max() / exact.abs().max())
        assert 0 < relative < 0.05, (entry.name, relative)


def test_the_process_remembers_entries_but_not_deleted_ones(tmp_path):
    """Content-addressed entries are kept in memory for the next job in the process (local
    tuning); a file removed from disk is not served from memory."""
    from container_train.feature_cache import FeatureStore

    store = FeatureStore(tmp_path, "fingerprint")
    key = "ab" + "0" * 62
    store.put(key, torch.arange(4.0))
    path = tmp_path / "fingerprint" / "ab" / f"{key}.pt"
    path.write_bytes(b"torn")  # memory answers: no unpickling of a broken file
    assert torch.equal(FeatureStore(tmp_path, "fingerprint").get(key), torch.arange(4.0))
    path.unlink()
    assert FeatureStore(tmp_path, "fingerprint").get(key) is None
