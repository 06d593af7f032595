"""Convert value vectors to and from repeng / llama.cpp control-vector GGUF and steering-vectors' SteeringVector.

All three tools add a vector to the **output of decoder block l** (repeng's ``ControlModule``, llama.cpp's
``direction.l``, steering-vectors' ``"decoder_block"`` layer type), which is also valuelens's convention, so
layers map one to one. They differ in the unit of strength: repeng's ``coeff``, llama.cpp's
``--control-vector-scaled FILE SCALE`` and steering-vectors' ``multiplier`` multiply the stored vector as is.

``scale="relative"`` (default) stores ``mean‖h_l‖ · v̂_l`` per layer, so that those multipliers *are*
valuelens's relative α (``coeff = 0.1`` steers like ``"alpha": 0.1`` in the server). ``scale="raw"`` stores the
difference-in-means vector unchanged. The GGUF also carries ``valuelens.*`` keys (value, kind, scale, model
hash, layer count, guard α) that repeng and llama.cpp ignore and :func:`from_control_vector_gguf` reads back.
llama.cpp rejects ``direction.0`` (block 0 cannot be steered there), so layer 0 is never written.

Neither package is imported here: the GGUF is written with ``gguf`` and a SteeringVector is built only when
:func:`to_steering_vector` is called (``pip install steering-vectors``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from ..errors import ConfigError, DataError
from ..runio import atomic_path

__all__ = ["from_control_vector_gguf", "from_steering_vector", "layer_rows", "load_steering_vector",
           "save_steering_vector", "to_control_vector_gguf", "to_steering_vector"]

Scale = Literal["relative", "raw"]


def layer_rows(art: Any, value: str, kind: str, *, layers: Sequence[int] | None = None,
               scale: Scale = "relative") -> dict[int, torch.Tensor]:
    """``{layer: [D] float32}`` of one vector of an artifact, raw or scaled to the relative-α unit."""
    vv = art.vectors
    full = vv.get(value, kind)
    want = list(vv.layers) if layers is None else [int(x) % vv.n_layers for x in layers]
    if scale not in ("relative", "raw"):
        raise ConfigError(f"scale must be 'relative' or 'raw', got {scale!r}")
    if scale == "relative" and art.residual_norms is None:
        raise ConfigError("relative scale needs the residual norms (not in these vectors); use scale='raw'")
    out: dict[int, torch.Tensor] = {}
    for layer in want:
        v = full[vv.layer_row(layer)].to(torch.float32)
        if scale == "relative":
            n = float(v.norm())
            if n == 0 or not math.isfinite(n):
                continue
            v = v / n * float(art.residual_norms[layer])
        out[layer] = v.contiguous()
    return out


# --------------------------------------------------------------------------------------------- control vectors


def to_control_vector_gguf(art: Any, value: str, kind: str, path: str | Path, *, layers: Sequence[int] | None = None,
                           scale: Scale = "relative", model_hint: str | None = None) -> dict[str, Any]:
    """Write a repeng / llama.cpp control-vector GGUF of one vector; returns ``{"path", "layers", "scale"}``.

    ``model_hint``: the model's architecture name (default: the family recorded with the vectors, e.g. llama).
    """
    import gguf
    import numpy as np

    from ..values import get_value

    rows = layer_rows(art, value, kind, layers=layers, scale=scale)
    rows = {k: v for k, v in rows.items() if k != 0 and bool(torch.any(v != 0))}
    if not rows:
        raise ConfigError("nothing to export: llama.cpp cannot steer layer 0 and the other layers are zero")
    hint = model_hint or art.info.get("family") or ""
    if not hint:
        raise ConfigError("model_hint is required (the model's architecture name, e.g. 'llama')")
    path = Path(path)
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), "controlvector")
        w.add_string("controlvector.model_hint", hint)
        w.add_uint32("controlvector.layer_count", len(rows))
        w.add_string("valuelens.value", get_value(value).name)
        w.add_string("valuelens.kind", kind)
        w.add_string("valuelens.scale", scale)
        w.add_string("valuelens.model_hash", art.vectors.model_hash)
        w.add_string("valuelens.model_id", art.model_id or "")
        w.add_uint32("valuelens.n_layers", int(art.vectors.n_layers))
        if art.guard_alpha is not None:
            w.add_float32("valuelens.guard_alpha", float(art.guard_alpha))
        for layer in sorted(rows):
            w.add_tensor(f"direction.{layer}", np.ascontiguousarray(rows[layer].numpy()))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return {"path": str(path), "layers": sorted(rows), "scale": scale}


def _field(reader: Any, key: str) -> Any:
    f = reader.get_field(key)
    if f is None or not len(f.parts):
        return None
    data = f.parts[f.data[0]] if f.data else f.parts[-1]
    if f.types and f.types[0].name == "STRING":
        return bytes(data).decode("utf-8", errors="replace")
    return data.tolist()[0] if hasattr(data, "tolist") else data


def from_control_vector_gguf(path: str | Path, *, value: str | None = None, kind: str | None = None,
                             n_layers: int | None = None, model_hash: str | None = None) -> Any:
    """Read a control-vector GGUF (ours, repeng's or any llama.cpp one) into a VectorArtifact.

    Files written by valuelens name their value, kind, model and layer count; for others give ``value``,
    ``kind`` (default ``"control"``), ``n_layers`` (default: the highest direction + 1) and ``model_hash``.
    The stored layers are the file's ``direction.N`` tensors.
    """
    import gguf

    from ..vectors import ValueVectors
    from .artifacts import VectorArtifact

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such control-vector file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:
        raise DataError(f"{path}: not a GGUF file ({exc})") from None
    arch = _field(reader, "general.architecture")
    if arch != "controlvector":
        raise DataError(f"{path}: not a control vector (general.architecture = {arch!r})")
    dirs: dict[int, torch.Tensor] = {}
    for t in reader.tensors:
        if not t.name.startswith("direction."):
            continue
        try:
            layer = int(t.name.split(".")[1])
        except (IndexError, ValueError):
            raise DataError(f"{path}: bad tensor name {t.name!r}") from None
        dirs[layer] = torch.tensor(t.data.copy(), dtype=torch.float32).flatten()
    if not dirs:
        raise DataError(f"{path}: no direction.N tensors")
    dims = {v.shape[0] for v in dirs.values()}
    if len(dims) != 1:
        raise DataError(f"{path}: directions of different sizes {sorted(dims)}")
    value = value or _field(reader, "valuelens.value")
    if not value:
        raise ConfigError(f"{path} does not name its value; pass value=")
    kind = kind or _field(reader, "valuelens.kind") or "control"
    n = n_layers or _field(reader, "valuelens.n_layers") or max(dirs) + 1
    layers = sorted(dirs)
    vv = ValueVectors(model_hash=model_hash or _field(reader, "valuelens.model_hash") or "", n_layers=int(n),
                      d_model=dims.pop(), layers=layers, judge="")
    vv.set(value, kind, torch.stack([dirs[i] for i in layers]))
    guard = _field(reader, "valuelens.guard_alpha")
    return VectorArtifact(vv, model_id=_field(reader, "valuelens.model_id") or "",
                          guard_alpha=None if guard is None else float(guard),
                          info={"family": _field(reader, "controlvector.model_hint"),
                                "made_from": {"control_vector_gguf": str(path),
                                              "scale": _field(reader, "valuelens.scale")}},
                          source=str(path))


# --------------------------------------------------------------------------------------------- steering-vectors


def to_steering_vector(art: Any, value: str, kind: str, *, layers: Sequence[int] | None = None,
                       scale: Scale = "relative") -> Any:
    """A ``steering_vectors.SteeringVector`` (layer type ``decoder_block``); its ``multiplier`` is the relative α
    when ``scale="relative"``."""
    try:
        from steering_vectors import SteeringVector
    except ImportError:
        raise ConfigError("this needs the steering-vectors package: pip install steering-vectors") from None
    return SteeringVector(layer_activations=layer_rows(art, value, kind, layers=layers, scale=scale),
                          layer_type="decoder_block")


def from_steering_vector(sv: Any, value: str, kind: str = "steering_vector", *, n_layers: int,
                         model_hash: str = "", model_id: str = "") -> Any:
    """A VectorArtifact from a SteeringVector (``decoder_block`` layers only; stored as raw vectors)."""
    from ..vectors import ValueVectors
    from .artifacts import VectorArtifact

    if getattr(sv, "layer_type", "decoder_block") != "decoder_block":
        raise ConfigError(f"only decoder_block steering vectors map to the residual stream, got {sv.layer_type!r}")
    acts = {int(k): torch.as_tensor(v).detach().to(torch.float32).flatten() for k, v in sv.layer_activations.items()}
    if not acts:
        raise ConfigError("the steering vector has no layers")
    layers = sorted(acts)
    vv = ValueVectors(model_hash=model_hash, n_layers=n_layers, d_model=int(acts[layers[0]].shape[0]), layers=layers)
    vv.set(value, kind, torch.stack([acts[i] for i in layers]))
    return VectorArtifact(vv, model_id=model_id, info={"made_from": {"steering_vector": True}})


def save_steering_vector(sv: Any, path: str | Path, **metadata: str) -> Path:
    """A SteeringVector as safetensors (``layer.N`` tensors, ``layer_type`` in the metadata) — no pickle."""
    from safetensors.torch import save_file

    tensors = {f"layer.{int(k)}": torch.as_tensor(v).detach().to(torch.float32).contiguous().flatten()
               for k, v in sv.layer_activations.items()}
    meta = {"format": "steering_vectors.SteeringVector", "layer_type": str(sv.layer_type),
            **{k: str(v) for k, v in metadata.items()}}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_steering_vector(path: str | Path) -> tuple[Any, dict[str, str]]:
    """Read a file written by :func:`save_steering_vector` → ``(SteeringVector, metadata)``."""
    from safetensors import safe_open
    from steering_vectors import SteeringVector

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            acts = {int(k.split(".", 1)[1]): fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:
        raise DataError(f"{path}: not a steering-vector safetensors file ({exc})") from None
    if meta.get("format") != "steering_vectors.SteeringVector":
        raise DataError(f"{path}: not a steering-vector file (format={meta.get('format')!r})")
    return SteeringVector(layer_activations=acts, layer_type=meta.get("layer_type", "decoder_block")), meta


def describe(art: Any) -> str:
    return json.dumps({"values": art.values, "kinds": art.kinds, "layers": list(art.vectors.layers)})
