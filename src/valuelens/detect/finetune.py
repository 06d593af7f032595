"""Fine-tune an encoder for the 20 ValueEval'23 categories (multi-label), save it, load it back.

Model: any Hugging Face encoder (``AutoModel``) → pooled vector (mean over tokens by default, or the hidden
state at the ``[MASK]`` token of a hard template) → dropout → linear layer to 20 logits. Optional: a trainable
soft prompt prepended to the token embeddings, a frozen encoder, or training only its top ``k`` layers (see
:mod:`.prompt_tune`, which reuses this class).

A saved detector is a folder::

    detector.json        config (encoder name, pooling, template, max_len, categories, training summary)
    encoder/             the (fine-tuned) encoder and tokenizer, ``save_pretrained`` format
    head.safetensors     head (and soft prompt) weights
    thresholds.json      per-category decision thresholds, and how they were tuned

and loads with :meth:`ValueDetector.from_pretrained` (``ValueDetector.from_pretrained(folder)``).

Honest thresholds: by default a held-out part of *training* (grouped by conclusion, like the official
splits) is used for early stopping and threshold tuning, so the validation score is not tuned on itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..runio import atomic_path, atomic_write_json, file_sha256
from ..values import VALUEEVAL_CATEGORIES
from .data import ValueEvalSplit
from .encoders import resolve_encoder
from .measure import Scores, apply_thresholds, evaluate, tune_thresholds

__all__ = ["EnsembleDetector", "TfidfMember", "TrainConfig", "ValueDetector", "build_ensemble", "calibrate_detector",
           "heldout_of", "heldout_split", "load_detector", "predict_proba", "train_detector"]

N_CAT = len(VALUEEVAL_CATEGORIES)


@dataclass
class TrainConfig:
    """Everything that determines a training run (saved in the checkpoint and the detector folder)."""

    encoder: str = "minilm"
    epochs: int = 4
    batch_size: int = 32
    lr: float = 5e-5
    head_lr: float | None = None  # defaults to lr; prompt tuning wants a much larger one
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of steps with linear warm-up
    max_len: int = 128
    seed: int = 0
    dropout: float = 0.1
    loss: str = "bce"  # bce | bce-pos (positive weights sqrt(neg/pos)) | focal
    pooling: str = "mean"  # mean | cls | mask
    template: str | None = None  # e.g. "{text} The value behind this is {mask}."
    prompt_len: int = 0  # soft prompt tokens (0 = none)
    train_layers: int | None = None  # None = all; 0 = frozen encoder; k = top k layers
    bf16: bool = False
    patience: int = 2  # early stopping: epochs without dev macro-F1 gain
    threshold_source: str = "heldout"  # heldout | validation | crossfit | none (0.5)
    heldout_frac: float = 0.1
    heldout_seed: int | None = None  # seed of the held-out split (default: seed); fix it to ensemble seeds
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0 = end of epoch only)
    max_train: int | None = None  # use only the first n training arguments (tests, quick looks)
    eval_batch_size: int = 64
    # Start the head's bias at each category's log prior odds: with a zero bias the first few hundred steps
    # are spent learning base rates (~17 % positives) at the encoder's small learning rate.
    prior_bias: bool = True
    # What the per-category thresholds maximise: the official macro F1 (coordinate ascent) or each category's F1.
    threshold_objective: str = "macro"
    # Batches of similar length (sorted within chunks of 50 batches, batch order shuffled): arguments are
    # ~39 tokens on average but a random batch of 32 pads to ~96, so this cuts the tokens computed ~2.5x.
    length_buckets: bool = False
    # Score the held-out part after every epoch (early stopping). Off: train all epochs, keep the last.
    eval_each_epoch: bool = True
    # Multi-task heads on the pooled vector: "values" (the 10 Schwartz values, OR of their categories) and/or
    # "level1" (the 54 level-1 values of the data set), comma-separated; their BCE is added times aux_weight.
    aux_heads: str = ""
    aux_weight: float = 0.5
    # Hierarchy consistency at inference: p_c <- p_c^(1-w) * p_value(c)^w with the "values" head, w chosen on
    # the held-out part from (0, 0.25, 0.5) (0 = off).
    hierarchy: bool = False
    # Calibration of the saved probabilities, fitted on the held-out part (calibration.Calibrator).
    calibration: str = "platt"

    def aux_names(self) -> list[str]:
        return [a.strip() for a in self.aux_heads.split(",") if a.strip()]

    def validate(self) -> None:
        if self.loss not in ("bce", "bce-pos", "focal"):
            raise ConfigError(f"unknown loss {self.loss!r}; choose bce, bce-pos or focal")
        if self.pooling not in ("mean", "cls", "mask"):
            raise ConfigError(f"unknown pooling {self.pooling!r}; choose mean, cls or mask")
        if self.pooling == "mask" and not self.template:
            raise ConfigError("pooling 'mask' needs a --template containing {mask}")
        if self.template and ("{text}" not in self.template):
            raise ConfigError(f"template must contain {{text}}: {self.template!r}")
        if self.threshold_objective not in ("macro", "category"):
            raise ConfigError(f"unknown threshold objective {self.threshold_objective!r}; choose macro or category")
        if self.threshold_source not in ("heldout", "validation", "crossfit", "none"):
            raise ConfigError(f"unknown threshold source {self.threshold_source!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.max_len < 8:
            raise ConfigError("epochs and batch size must be >= 1, max_len >= 8")
        bad = [a for a in self.aux_names() if a not in ("values", "level1")]
        if bad:
            raise ConfigError(f"unknown auxiliary head(s) {bad}; choose values and/or level1")
        if self.hierarchy and "values" not in self.aux_names():
            raise ConfigError("hierarchy consistency needs the 'values' auxiliary head (aux_heads='values')")
        from .calibration import CALIBRATION_METHODS

        if self.calibration not in CALIBRATION_METHODS:
            raise ConfigError(f"unknown calibration {self.calibration!r}; choose {', '.join(CALIBRATION_METHODS)}")
        if not self.eval_each_epoch and self.threshold_source != "heldout":
            raise ConfigError("eval_each_epoch=False needs threshold_source='heldout'")


class ValueDetector(nn.Module):
    """Encoder + pooling + linear multi-label head (+ optional soft prompt), with per-category thresholds."""

    def __init__(self, encoder: nn.Module, tokenizer: Any, *, pooling: str = "mean", template: str | None = None,
                 prompt_len: int = 0, dropout: float = 0.1, max_len: int = 128, prefix: str = "",
                 encoder_name: str = "", categories: Sequence[str] = VALUEEVAL_CATEGORIES,
                 aux: dict[str, int] | None = None, hierarchy_weight: float = 0.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.template = template
        self.max_len = max_len
        self.prefix = prefix
        self.encoder_name = encoder_name
        self.categories = list(categories)
        hidden = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, len(self.categories))
        # Multi-task heads (training signal; "values" also feeds hierarchy consistency at inference).
        self.aux = dict(aux or {})
        self.aux_heads = nn.ModuleDict({f"{k}_head": nn.Linear(hidden, n) for k, n in self.aux.items()})  # "values" is a method name
        self.hierarchy_weight = float(hierarchy_weight)
        self.calibrator: Any = None
        self.prompt_len = prompt_len
        if prompt_len > 0:
            emb = encoder.get_input_embeddings().weight
            # Initialise the soft prompt from real token embeddings (Lester et al. 2021: better than random).
            g = torch.Generator().manual_seed(1234)
            idx = torch.randint(1000, min(emb.shape[0], 20000), (prompt_len,), generator=g)
            self.soft_prompt = nn.Parameter(emb[idx].detach().clone())
        else:
            self.register_parameter("soft_prompt", None)
        self.thresholds = np.full(len(self.categories), 0.5)
        self.info: dict[str, Any] = {}

    # ---------------------------------------------------------------- building and loading

    @classmethod
    def build(cls, encoder: str, **kwargs: Any) -> ValueDetector:
        """A fresh detector on top of a pre-trained encoder (short name, hub id or folder)."""
        from transformers import AutoModel, AutoTokenizer

        spec = resolve_encoder(encoder)
        try:
            tok = AutoTokenizer.from_pretrained(spec.path)
            enc = AutoModel.from_pretrained(spec.path, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load encoder {encoder!r} from {spec.path}: {str(exc).splitlines()[0]}") from None
        return cls(enc, tok, prefix=spec.prefix, encoder_name=spec.name, **kwargs)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str]) -> ValueDetector:
        """Load a detector saved by :meth:`save_pretrained`."""
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder).expanduser()
        cfg_path = folder / "detector.json"
        if not cfg_path.exists():
            raise ModelError(f"{folder}: not a valuelens detector folder (no detector.json)")
        cfg = json.loads(cfg_path.read_text())
        tok = AutoTokenizer.from_pretrained(folder / "encoder")
        enc = AutoModel.from_pretrained(folder / "encoder", dtype=torch.float32)
        det = cls(enc, tok, pooling=cfg["pooling"], template=cfg.get("template"), prompt_len=cfg.get("prompt_len", 0),
                  max_len=cfg["max_len"], prefix=cfg.get("prefix", ""), encoder_name=cfg.get("encoder", ""),
                  categories=cfg["categories"], aux=cfg.get("aux"), hierarchy_weight=cfg.get("hierarchy_weight", 0.0))
        sd = load_file(str(folder / "head.safetensors"))
        det.head.load_state_dict({k[len("head."):]: v for k, v in sd.items() if k.startswith("head.")})
        if det.aux:
            det.aux_heads.load_state_dict({k[len("aux_heads."):]: v for k, v in sd.items()
                                           if k.startswith("aux_heads.")})
        from .calibration import Calibrator

        det.calibrator = Calibrator.load(folder)
        if det.soft_prompt is not None:
            det.soft_prompt.data.copy_(sd["soft_prompt"])
        th = json.loads((folder / "thresholds.json").read_text())
        det.thresholds = np.array([th["thresholds"][c] for c in det.categories], dtype=np.float64)
        det.info = cfg.get("info", {})
        det.eval()
        return det

    def save_pretrained(self, folder: str | os.PathLike[str], *, threshold_info: dict[str, Any] | None = None
                        ) -> Path:
        """Write the detector folder (each file atomically)."""
        from safetensors.torch import save_file

        folder = Path(folder).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(folder / "encoder")
        self.tokenizer.save_pretrained(folder / "encoder")
        tensors = {f"head.{k}": v.detach().contiguous() for k, v in self.head.state_dict().items()}
        tensors.update({f"aux_heads.{k}": v.detach().contiguous() for k, v in self.aux_heads.state_dict().items()})
        if self.soft_prompt is not None:
            tensors["soft_prompt"] = self.soft_prompt.detach().contiguous()
        with atomic_path(folder / "head.safetensors") as tmp:
            save_file(tensors, str(tmp))
        atomic_write_json(folder / "thresholds.json", {
            "thresholds": {c: float(t) for c, t in zip(self.categories, self.thresholds, strict=True)},
            **(threshold_info or {}),
        })
        atomic_write_json(folder / "detector.json", {
            "format": "valuelens-detector/1", "encoder": self.encoder_name, "pooling": self.pooling,
            "template": self.template, "prompt_len": self.prompt_len, "max_len": self.max_len,
            "prefix": self.prefix, "categories": self.categories, "info": self.info,
            "aux": self.aux, "hierarchy_weight": self.hierarchy_weight,
            "loader": "valuelens.detect.finetune.ValueDetector.from_pretrained(folder)",
        })
        if self.calibrator is not None:
            self.calibrator.save(folder)
        return folder

    # ---------------------------------------------------------------- forward

    def render(self, text: str) -> str:
        """Text as fed to the tokenizer: encoder prefix and optional hard template."""
        if self.template:
            mask = self.tokenizer.mask_token or "[MASK]"
            text = self.template.replace("{text}", text).replace("{mask}", mask)
        return self.prefix + text

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        rendered = [self.render(t) for t in texts]
        if self.template and "{mask}" in self.template:
            # Truncate the argument, not the template, so the [MASK] token is never cut off.
            rendered = [self._fit_template(t) for t in texts]
        return self.tokenizer(rendered, padding=True, truncation=True, max_length=self.max_len - self.prompt_len,
                              return_tensors="pt")

    def _fit_template(self, text: str) -> str:
        assert self.template is not None
        budget = self.max_len - self.prompt_len - 2
        empty = len(self.tokenizer.tokenize(self.render("")))
        ids = self.tokenizer.tokenize(text)
        if len(ids) + empty > budget:
            text = self.tokenizer.convert_tokens_to_string(ids[: max(budget - empty, 1)])
        return self.render(text)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> torch.Tensor:
        """Logits ``[B, C]``."""
        return self.head(self.dropout(self.features(input_ids, attention_mask)))

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled encoder output ``[B, H]`` (float32), the head's input."""
        if self.soft_prompt is not None:
            emb = self.encoder.get_input_embeddings()(input_ids)
            b = input_ids.shape[0]
            # Insert the prompt right after the first ([CLS]/<s>) token so that token keeps its role.
            sp = self.soft_prompt.to(emb.dtype).unsqueeze(0).expand(b, -1, -1)
            emb = torch.cat([emb[:, :1], sp, emb[:, 1:]], dim=1)
            ones = attention_mask.new_ones((b, self.prompt_len))
            mask = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)
            out = self.encoder(inputs_embeds=emb, attention_mask=mask)
            ids_for_mask = torch.cat([input_ids[:, :1], input_ids.new_zeros((b, self.prompt_len)),
                                      input_ids[:, 1:]], dim=1)
        else:
            mask = attention_mask
            out = self.encoder(input_ids=input_ids, attention_mask=mask)
            ids_for_mask = input_ids
        h = out.last_hidden_state
        if self.pooling == "cls":
            pooled = h[:, 0]
        elif self.pooling == "mask":
            mid = self.tokenizer.mask_token_id
            where = (ids_for_mask == mid).float()
            # Rows without a mask token (should not happen) fall back to the first token.
            where[where.sum(1) == 0, 0] = 1.0
            pooled = (h * where.unsqueeze(-1)).sum(1) / where.sum(1, keepdim=True)
        else:
            m = mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return pooled.float()

    @torch.no_grad()
    def predict_proba(self, texts: Sequence[str], *, batch_size: int = 64, bf16: bool = False,
                      progress: bool = False, hierarchy_weight: float | None = None) -> np.ndarray:
        """Probabilities ``[N, C]`` (sigmoid of the logits, combined with the values head when the detector
        uses hierarchy consistency; ``hierarchy_weight`` overrides its weight), batched by length for speed."""
        return predict_proba(self, texts, batch_size=batch_size, bf16=bf16, progress=progress,
                             hierarchy_weight=hierarchy_weight)

    def predict(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        """0/1 labels ``[N, C]`` with the detector's per-category thresholds."""
        return apply_thresholds(self.predict_proba(texts, **kw), self.thresholds)

    def combine_hierarchy(self, probs: torch.Tensor, value_logits: torch.Tensor, weight: float) -> torch.Tensor:
        """Hierarchy consistency: ``p_c^(1-w) · p_value(c)^w`` (a category is only as likely as its value)."""
        if weight <= 0:
            return probs
        from ..values import valueeval_to_schwartz_matrix

        m = torch.as_tensor(valueeval_to_schwartz_matrix(), dtype=torch.float32)  # [20, 10]
        pv = torch.sigmoid(value_logits.float()) @ m.T  # each category gets its value's probability
        return probs.clamp_min(1e-9) ** (1 - weight) * pv.clamp_min(1e-9) ** weight

    def fingerprint(self) -> str:
        """sha256 over head weights and thresholds (cheap identity for manifests)."""
        h = hashlib.sha256()
        for v in self.head.state_dict().values():
            h.update(v.detach().cpu().numpy().tobytes())
        h.update(np.asarray(self.thresholds, dtype=np.float64).tobytes())
        return h.hexdigest()


def predict_proba(model: ValueDetector, texts: Sequence[str], *, batch_size: int = 64, bf16: bool = False,
                  progress: bool = False, hierarchy_weight: float | None = None) -> np.ndarray:
    """Batched inference; ``no_grad`` (not ``inference_mode``) so bf16 autocast can cache weight copies."""
    from ..progress import bar as tqdm

    was_training = model.training
    model.eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), len(model.categories)), dtype=np.float32)
    starts = range(0, len(texts), batch_size)
    with torch.no_grad():
        for s in tqdm(starts, desc="predict", disable=not progress, leave=False):
            idx = order[s:s + batch_size]
            enc = model.tokenize([texts[i] for i in idx])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                feats = model.features(enc["input_ids"], enc["attention_mask"])
                logits = model.head(feats)
                p = torch.sigmoid(logits.float())
                if hierarchy_weight is None:
                    hierarchy_weight = model.hierarchy_weight
                if hierarchy_weight > 0 and "values" in model.aux:
                    p = model.combine_hierarchy(p, model.aux_heads["values_head"](feats), hierarchy_weight)
            out[idx] = p.float().numpy()
    model.train(was_training)
    return out


# ------------------------------------------------------------------------------------------------ training

def _cached_features(model: ValueDetector, texts: Sequence[str], *, batch_size: int, bf16: bool,
                     progress: bool) -> torch.Tensor:
    """Pooled features of a frozen encoder, computed once (eval mode: no dropout inside the encoder)."""
    from ..progress import bar as tqdm

    was = model.training
    model.eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = torch.zeros((len(texts), int(model.encoder.config.hidden_size)))
    with torch.no_grad():
        for s in tqdm(range(0, len(texts), batch_size), desc="features", disable=not progress, leave=False):
            idx = order[s:s + batch_size]
            enc = model.tokenize([texts[i] for i in idx])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out[torch.as_tensor(idx)] = model.features(enc["input_ids"], enc["attention_mask"]).float()
    model.train(was)
    return out


def heldout_split(split: ValueEvalSplit, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held-out) with whole conclusions held out (like the official splits, so no leakage)."""
    conclusions = sorted({a.conclusion for a in split.arguments})
    rng = np.random.default_rng(seed)
    rng.shuffle(conclusions)
    n_hold = max(1, round(len(conclusions) * frac))
    hold = set(conclusions[:n_hold])
    is_hold = np.array([a.conclusion in hold for a in split.arguments])
    return np.flatnonzero(~is_hold), np.flatnonzero(is_hold)


def _split_seed(seed: int, heldout_seed: int | None) -> int:
    return seed if heldout_seed is None else heldout_seed


def _freeze(model: ValueDetector, train_layers: int | None) -> None:
    """Train all (None), none (0) or only the top ``k`` transformer layers of the encoder."""
    if train_layers is None:
        return
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    if train_layers <= 0:
        return
    layers = None
    for attr in ("encoder.layer", "layers", "encoder.layers", "transformer.layer"):
        obj: Any = model.encoder
        try:
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        layers = obj
        break
    if layers is None:
        raise ConfigError(f"--train-layers: cannot find the layer list of {type(model.encoder).__name__}")
    for layer in list(layers)[-train_layers:]:
        for p in layer.parameters():
            p.requires_grad_(True)


def _loss_fn(kind: str, pos_weight: torch.Tensor | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if kind == "focal":
        def focal(logits: torch.Tensor, y: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
            bce = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
            p = torch.sigmoid(logits)
            pt = p * y + (1 - p) * (1 - y)
            return ((1 - pt) ** gamma * bce).mean()
        return focal
    pw = pos_weight if kind == "bce-pos" else None
    return lambda logits, y: nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=pw)


def _save_checkpoint(path: Path, model: ValueDetector, opt: torch.optim.Optimizer,
                     sched: torch.optim.lr_scheduler.LambdaLR, state: dict[str, Any]) -> None:
    """Model + optimizer + RNG state as one safetensors file (atomic), metadata as JSON inside it."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {f"model.{k}": v.detach().contiguous().clone()
                                        for k, v in model.state_dict().items()}
    opt_sd = opt.state_dict()
    scalars: dict[str, Any] = {}
    for pid, st in opt_sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.ndim > 0:
                tensors[f"opt.{pid}.{k}"] = v.contiguous()
            else:
                scalars[f"{pid}.{k}"] = float(v)
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"state": json.dumps(state), "opt_scalars": json.dumps(scalars),
            "opt_groups": json.dumps(opt_sd["param_groups"]), "sched": json.dumps(sched.state_dict())}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _load_checkpoint(path: Path, model: ValueDetector, opt: torch.optim.Optimizer,
                     sched: torch.optim.lr_scheduler.LambdaLR) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    scalars = json.loads(meta["opt_scalars"])
    groups = json.loads(meta["opt_groups"])
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for k, v in scalars.items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = torch.tensor(v)
    opt.load_state_dict({"state": state, "param_groups": groups})
    sched.load_state_dict(json.loads(meta["sched"]))
    torch.set_rng_state(tensors["rng.torch"])
    return json.loads(meta["state"])


@dataclass
class TrainResult:
    """What :func:`train_detector` returns; ``scores`` are on the evaluation split with the saved thresholds."""

    model: ValueDetector
    history: list[dict[str, Any]] = field(default_factory=list)
    scores: dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0
    out_dir: Path | None = None


def _bucketed(perm: np.ndarray, lengths: np.ndarray, batch_size: int, seed: int) -> list[np.ndarray]:
    """Batches of similar length: sort each chunk of 50 batches of ``perm`` by length, cut it into batches,
    shuffle the batch order (deterministic in ``seed``, so a resumed epoch sees the same batches)."""
    chunk = batch_size * 50
    batches: list[np.ndarray] = []
    for s in range(0, len(perm), chunk):
        part = perm[s:s + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    order = np.random.default_rng(seed).permutation(len(batches))
    return [batches[i] for i in order]


def _aux_targets(split: ValueEvalSplit, names: list[str]) -> dict[str, torch.Tensor]:
    """Targets of the auxiliary heads: Schwartz values (OR of their categories) and level-1 labels."""
    from ..values import valueeval_to_schwartz_matrix

    assert split.labels is not None
    out: dict[str, torch.Tensor] = {}
    for n in names:
        if n == "values":
            out[n] = torch.tensor((split.labels @ valueeval_to_schwartz_matrix()) > 0, dtype=torch.float32)
        else:
            if split.level1 is None:
                raise ConfigError("aux head 'level1' needs the level-1 labels (level1-labels-<split>.tsv, "
                                  "load_split(..., level1=True))")
            out[n] = torch.tensor(split.level1, dtype=torch.float32)
    return out


def _same_config(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Configs match; a field the old run did not know yet matches when the new run keeps its default."""
    defaults = asdict(TrainConfig())
    return all(old.get(k, defaults[k]) == v for k, v in new.items()) and set(old) <= set(new)


def train_detector(train: ValueEvalSplit, valid: ValueEvalSplit | None, config: TrainConfig,
                   out_dir: str | os.PathLike[str], *, progress: bool = True, stop_after_steps: int | None = None,
                   log: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or resume) a detector; write ``out_dir/checkpoint.safetensors`` while training and the final
    detector folder to ``out_dir/model``. ``valid`` is the evaluation split: scored at the end when it has
    labels; without labels (e.g. a test split) its predictions are written as an official run file
    ``out_dir/run-<split>.tsv``; ``None`` skips it (needs held-out thresholds).

    ``stop_after_steps`` stops after that many optimiser steps, leaving a checkpoint (used to test resuming).
    """
    from ..progress import bar as tqdm

    config.validate()
    if train.labels is None:
        raise ConfigError("the training split needs labels")
    if (valid is None or valid.labels is None) and config.threshold_source != "heldout":
        raise ConfigError(f"thresholds from {config.threshold_source!r} need a labelled evaluation split")
    say = log or (lambda s: None)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.safetensors"
    cfg_path = out / "train_config.json"
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        if not _same_config(old, asdict(config)) and ckpt.exists():
            raise ConfigError(f"{out} holds a checkpoint of a different configuration; use another --out "
                              f"or delete {ckpt}")
    atomic_write_json(cfg_path, asdict(config))

    torch.manual_seed(config.seed)
    train = train.head(config.max_train)
    if config.threshold_source == "heldout":
        tr_idx, dev_idx = heldout_split(train, config.heldout_frac, _split_seed(config.seed, config.heldout_seed))
        fit, dev = train.subset(tr_idx), train.subset(dev_idx)
    else:
        assert valid is not None
        fit, dev = train, valid
    assert fit.labels is not None and dev.labels is not None
    aux_names = config.aux_names()
    aux_y = _aux_targets(fit, aux_names)

    model = ValueDetector.build(config.encoder, pooling=config.pooling, template=config.template,
                                prompt_len=config.prompt_len, dropout=config.dropout, max_len=config.max_len,
                                aux={n: int(t.shape[1]) for n, t in aux_y.items()})
    _freeze(model, config.train_layers)
    model.info = {"train_config": asdict(config)}
    head_params = list(model.head.parameters()) + list(model.aux_heads.parameters()) + (
        [model.soft_prompt] if model.soft_prompt is not None else [])
    head_ids = {id(p) for p in head_params}
    enc_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": head_params, "lr": config.head_lr or config.lr}]
    if enc_params:
        groups.append({"params": enc_params, "lr": config.lr})
    opt = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(fit) / config.batch_size)
    total = steps_per_epoch * config.epochs
    warm = max(1, int(total * config.warmup))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    y = torch.tensor(fit.labels, dtype=torch.float32)
    pos = y.sum(0).clamp(min=1.0)
    if config.prior_bias:
        with torch.no_grad():
            for lin, t in [(model.head, y)] + [(model.aux_heads[f"{n}_head"], aux_y[n]) for n in aux_names]:
                prior = (t.sum(0).clamp(min=1.0) / len(t)).clamp(1e-3, 1 - 1e-3)  # no positive counts as one
                lin.bias.copy_(torch.log(prior / (1 - prior)))
    loss_fn = _loss_fn(config.loss, torch.sqrt((len(y) - pos) / pos))
    texts = fit.texts()
    lengths = np.array([len(t) for t in texts])  # characters: a cheap, monotone-enough proxy for tokens
    # A frozen encoder without a soft prompt gives the same features every epoch: compute them once and
    # train only the head on them (hard template, linear probe). Dropout inside the encoder is then off.
    cache = config.train_layers == 0 and config.prompt_len == 0
    fit_feats = dev_feats = None
    t_feat = time.time()
    if cache:
        fit_feats = _cached_features(model, texts, batch_size=config.eval_batch_size, bf16=config.bf16,
                                     progress=progress)
        dev_feats = _cached_features(model, dev.texts(), batch_size=config.eval_batch_size, bf16=config.bf16,
                                     progress=progress)
    # Feature extraction is part of the training cost of a frozen-encoder method (recomputed on resume).
    feature_seconds = time.time() - t_feat if cache else 0.0

    state: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_f1": -1.0,
                             "best_epoch": -1, "bad_epochs": 0, "history": [], "train_seconds": 0.0,
                             "done": False}
    if ckpt.exists():
        state = _load_checkpoint(ckpt, model, opt, sched)
        say(f"resumed from {ckpt} at epoch {state['epoch'] + 1}, step {state['step_in_epoch']}")
    best_path = out / "best.safetensors"

    steps_done_now = 0
    while not state["done"] and state["epoch"] < config.epochs:
        epoch = state["epoch"]
        # The order of an epoch depends only on (seed, epoch): a resumed run sees the same batches.
        perm = np.random.default_rng(config.seed * 1000 + epoch).permutation(len(fit))
        batches = (_bucketed(perm, lengths, config.batch_size, config.seed * 1000 + epoch + 1)
                   if config.length_buckets else
                   [perm[b * config.batch_size:(b + 1) * config.batch_size] for b in range(steps_per_epoch)])
        model.train()
        t0 = time.time()
        bar = tqdm(total=steps_per_epoch, initial=state["step_in_epoch"], desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not progress, leave=False)
        losses: list[float] = state.get("epoch_losses", [])
        for b in range(state["step_in_epoch"], steps_per_epoch):
            idx = batches[b]
            if fit_feats is not None:
                feats = model.dropout(fit_feats[torch.as_tensor(idx)])
                logits = model.head(feats)
                aux_logits = {n: model.aux_heads[f"{n}_head"](feats) for n in aux_names}
            else:
                enc = model.tokenize([texts[i] for i in idx])
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                    feats = model.dropout(model.features(enc["input_ids"], enc["attention_mask"]))
                    logits = model.head(feats)
                    aux_logits = {n: model.aux_heads[f"{n}_head"](feats) for n in aux_names}
            loss = loss_fn(logits.float(), y[idx])
            for n, lg in aux_logits.items():
                loss = loss + config.aux_weight * nn.functional.binary_cross_entropy_with_logits(
                    lg.float(), aux_y[n][idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            state["step_in_epoch"] = b + 1
            state["global_step"] += 1
            steps_done_now += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            stop = stop_after_steps is not None and steps_done_now >= stop_after_steps
            mid = config.checkpoint_every and state["global_step"] % config.checkpoint_every == 0
            if (stop or mid) and b + 1 < steps_per_epoch:
                state["epoch_losses"] = losses
                state["train_seconds"] += time.time() - t0
                t0 = time.time()
                _save_checkpoint(ckpt, model, opt, sched, state)
            if stop and b + 1 < steps_per_epoch:
                bar.close()
                return TrainResult(model=model, history=state["history"], out_dir=out)
        bar.close()
        state["train_seconds"] += time.time() - t0
        # End of epoch: score the dev set with thresholds tuned on it (the early-stopping criterion).
        if not config.eval_each_epoch:
            rec = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                   "epoch_seconds": state["train_seconds"] - (state["history"][-1]["train_seconds"]
                                                              if state["history"] else 0.0),
                   "train_seconds": state["train_seconds"]}
            state["history"].append(rec)
            say(f"epoch {epoch + 1}: loss {rec['train_loss']:.4f} ({state['train_seconds'] / 60:.1f} min so far)")
            state["best_epoch"] = epoch + 1  # no early stopping: the last epoch is kept
            state["epoch"] = epoch + 1
            state["step_in_epoch"] = 0
            state["epoch_losses"] = []
            if state["epoch"] < config.epochs:  # the final weights are saved as the model right below
                _save_checkpoint(ckpt, model, opt, sched, state)
            continue
        if dev_feats is not None:
            model.eval()
            with torch.no_grad():
                probs = torch.sigmoid(model.head(dev_feats)).numpy()
        else:
            probs = predict_proba(model, dev.texts(), batch_size=config.eval_batch_size, bf16=config.bf16)
        th = tune_thresholds(probs, dev.labels, objective=config.threshold_objective)
        dev_f1 = evaluate(dev.labels, apply_thresholds(probs, th)).f1
        rec = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
               "first_loss": losses[0] if losses else float("nan"), "dev_f1_tuned": dev_f1,
               # Training time only (no evaluation), robust to resuming mid-epoch.
               "epoch_seconds": state["train_seconds"] - (state["history"][-1]["train_seconds"]
                                                          if state["history"] else 0.0),
               "train_seconds": state["train_seconds"]}
        state["history"].append(rec)
        say(f"epoch {epoch + 1}: loss {rec['train_loss']:.4f}, dev macro-F1 {dev_f1:.4f} "
            f"({state['train_seconds'] / 60:.1f} min so far)")
        if dev_f1 > state["best_f1"]:
            state["best_f1"], state["best_epoch"], state["bad_epochs"] = dev_f1, epoch + 1, 0
            from safetensors.torch import save_file

            with atomic_path(best_path) as tmp:
                save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
        else:
            state["bad_epochs"] += 1
            if state["bad_epochs"] >= config.patience:
                say(f"early stop: no dev gain for {config.patience} epochs")
                state["done"] = True
        state["epoch"] = epoch + 1
        state["step_in_epoch"] = 0
        state["epoch_losses"] = []
        _save_checkpoint(ckpt, model, opt, sched, state)
        stop = stop_after_steps is not None and steps_done_now >= stop_after_steps
        if stop and not state["done"] and state["epoch"] < config.epochs:
            return TrainResult(model=model, history=state["history"], out_dir=out)

    # Restore the best epoch, then fix thresholds and score the evaluation split.
    from safetensors.torch import load_file

    if best_path.exists() and config.eval_each_epoch:
        model.load_state_dict(load_file(str(best_path)))
    model.eval()
    t_fin = time.time()
    dev_probs = None
    if config.threshold_source == "heldout":
        dev_probs, hier_info = _choose_hierarchy(model, config, dev)
        model.info["hierarchy"] = hier_info
    scores: dict[str, Any] = {}
    val_probs = None
    inf_seconds = 0.0
    if valid is not None:
        t_inf = time.time()
        val_probs = predict_proba(model, valid.texts(), batch_size=config.eval_batch_size, bf16=config.bf16,
                                  progress=progress)
        inf_seconds = time.time() - t_inf
    if valid is not None and valid.labels is not None:
        assert val_probs is not None
        scores, th, th_info = finalize_thresholds(model, config, dev, valid, val_probs, dev_probs)
    else:
        assert dev_probs is not None
        th = tune_thresholds(dev_probs, dev.labels, objective=config.threshold_objective)
        th_info = {"source": "heldout", "objective": config.threshold_objective,
                   "tuned_on": f"{len(dev)} held-out training arguments (whole conclusions)"}
    model.thresholds = th
    if config.calibration != "none" and dev_probs is not None:
        from .calibration import Calibrator

        model.calibrator = Calibrator.fit(dev_probs, dev.labels, config.calibration, model.categories)
        model.calibrator.info["fitted_on"] = th_info.get("tuned_on", "held-out training arguments")
        if val_probs is not None and valid is not None and valid.labels is not None:
            scores["calibration"] = calibration_report(val_probs, valid.labels, model.calibrator)
    train_seconds = state["train_seconds"] + feature_seconds
    # What a user waits for in total: training plus the held-out pass (thresholds, hierarchy, calibration);
    # scoring the evaluation split is excluded.
    finish_seconds = time.time() - t_fin - inf_seconds
    model.info.update({"history": state["history"], "best_epoch": state["best_epoch"],
                       "train_seconds": train_seconds, "feature_seconds": feature_seconds,
                       "finish_seconds": finish_seconds, "scores": scores})
    model.save_pretrained(out / "model", threshold_info=th_info)
    if val_probs is not None and valid is not None:
        np.save(out / f"{'valid' if valid.name == 'validation' else valid.name}_probs.npy", val_probs)
        scores["inference_per_second"] = len(valid) / max(inf_seconds, 1e-9)
        if valid.labels is None:  # e.g. a test split: an official run file, nothing to score
            from .data import write_labels_tsv

            write_labels_tsv(out / f"run-{valid.name}.tsv", valid.ids, apply_thresholds(val_probs, th))
    scores["train_seconds"] = train_seconds
    scores["finish_seconds"] = finish_seconds
    atomic_write_json(out / "scores.json", scores)
    return TrainResult(model=model, history=state["history"], scores=scores, train_seconds=train_seconds,
                       out_dir=out)


def _choose_hierarchy(model: ValueDetector, config: TrainConfig, dev: ValueEvalSplit
                      ) -> tuple[np.ndarray, dict[str, Any]]:
    """Held-out probabilities with the hierarchy weight chosen on the held-out part (0 when off)."""
    assert dev.labels is not None
    texts = dev.texts()
    if not config.hierarchy:
        model.hierarchy_weight = 0.0
        return predict_proba(model, texts, batch_size=config.eval_batch_size, bf16=config.bf16), {"weight": 0.0}
    tried: dict[str, float] = {}
    best: tuple[float, float, np.ndarray] | None = None
    for w in HIERARCHY_WEIGHTS:
        p = predict_proba(model, texts, batch_size=config.eval_batch_size, bf16=config.bf16, hierarchy_weight=w)
        f = evaluate(dev.labels, apply_thresholds(p, tune_thresholds(p, dev.labels,
                                                                     objective=config.threshold_objective))).f1
        tried[str(w)] = f
        if best is None or f > best[0] + 1e-9:
            best = (f, w, p)
    assert best is not None
    model.hierarchy_weight = best[1]
    return best[2], {"weight": best[1], "heldout_f1_by_weight": tried}


HIERARCHY_WEIGHTS = (0.0, 0.25, 0.5)


def calibration_report(probs: np.ndarray, gold: np.ndarray, calibrator: Any) -> dict[str, Any]:
    """Expected calibration error per category on a labelled split, raw and calibrated."""
    from .calibration import expected_calibration_error

    raw = expected_calibration_error(probs, gold)
    cal = expected_calibration_error(calibrator.transform(probs), gold)
    cats = calibrator.categories
    return {"method": calibrator.method, "ece_raw_mean": float(raw.mean()), "ece_mean": float(cal.mean()),
            "ece_raw": dict(zip(cats, map(float, raw), strict=True)),
            "ece": dict(zip(cats, map(float, cal), strict=True))}


def finalize_thresholds(model: ValueDetector, config: TrainConfig, dev: ValueEvalSplit, valid: ValueEvalSplit,
                        val_probs: np.ndarray, dev_probs: np.ndarray | None = None
                        ) -> tuple[dict[str, Any], np.ndarray, dict[str, Any]]:
    """Pick the saved thresholds and compute every honest/optimistic validation score.

    Returns (scores dict, thresholds to save, threshold info for thresholds.json). Reported keys:
    ``f1_at_0.5`` (no tuning), ``heldout`` (thresholds from held-out training, when available),
    ``crossfit`` (tuned on one half of validation, applied to the other, both ways), and
    ``validation_tuned`` (tuned and scored on validation: the paper's optimistic setup).
    """
    assert valid.labels is not None and dev.labels is not None
    vy = valid.labels
    out: dict[str, Any] = {"n_valid": len(valid)}
    out["at_0.5"] = evaluate(vy, apply_thresholds(val_probs, 0.5)).as_dict()
    obj = config.threshold_objective
    out["threshold_objective"] = obj
    th_val = tune_thresholds(val_probs, vy, objective=obj)
    out["validation_tuned"] = evaluate(vy, apply_thresholds(val_probs, th_val)).as_dict()
    out["crossfit"] = crossfit_scores(val_probs, vy, seed=config.seed, objective=obj).as_dict()
    th_dev = None
    if config.threshold_source == "heldout":
        if dev_probs is None:
            dev_probs = predict_proba(model, dev.texts(), batch_size=config.eval_batch_size, bf16=config.bf16)
        th_dev = tune_thresholds(dev_probs, dev.labels, objective=obj)
        out["dev_f1_self_tuned"] = evaluate(dev.labels, apply_thresholds(dev_probs, th_dev)).f1
        out["heldout"] = evaluate(vy, apply_thresholds(val_probs, th_dev)).as_dict()
    choice = {"heldout": th_dev, "validation": th_val, "crossfit": th_val, "none": np.full(N_CAT, 0.5)}
    th = choice[config.threshold_source]
    assert th is not None
    main_key = {"heldout": "heldout", "validation": "validation_tuned", "crossfit": "crossfit",
                "none": "at_0.5"}[config.threshold_source]
    out["main"] = main_key
    out["precision"], out["recall"], out["f1"] = (out[main_key][k] for k in ("precision", "recall", "f1"))
    info = {"source": config.threshold_source, "objective": obj,
            "tuned_on": {"heldout": f"{len(dev)} held-out training arguments (whole conclusions)",
                         "validation": f"{len(valid)} validation arguments",
                         "crossfit": f"{len(valid)} validation arguments (saved: tuned on all of them)",
                         "none": "fixed 0.5"}[config.threshold_source]}
    return out, np.asarray(th, dtype=np.float64), info


def retune_detector(folder: str | os.PathLike[str], train: ValueEvalSplit, valid: ValueEvalSplit, *,
                    objective: str = "macro", bf16: bool = False) -> dict[str, Any]:
    """Re-tune a saved detector's thresholds with ``objective`` on the *same* data its training used for them
    (the held-out conclusions rebuilt from its train config, or validation), rewrite ``thresholds.json``
    atomically, and return the validation scores. The weights are untouched."""
    folder = Path(folder).expanduser()
    det = ValueDetector.from_pretrained(folder)
    saved = dict(det.info.get("train_config") or {})
    if not saved:
        raise ConfigError(f"{folder}: no train_config in detector.json; cannot rebuild its threshold data")
    known = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in saved.items() if k in known})
    cfg.threshold_objective = objective
    cfg.bf16 = bf16
    cfg.validate()
    if valid.labels is None or train.labels is None:
        raise ConfigError("retuning needs labelled training and validation splits")
    sub = train.head(cfg.max_train)
    dev = valid
    if cfg.threshold_source == "heldout":
        _, dev_idx = heldout_split(sub, cfg.heldout_frac, _split_seed(cfg.seed, cfg.heldout_seed))
        dev = sub.subset(dev_idx)
    val_probs = predict_proba(det, valid.texts(), batch_size=cfg.eval_batch_size, bf16=bf16)
    scores, th, info = finalize_thresholds(det, cfg, dev, valid, val_probs)
    det.thresholds = th
    atomic_write_json(folder / "thresholds.json", {
        "thresholds": {c: float(t) for c, t in zip(det.categories, th, strict=True)}, **info})
    meta = json.loads((folder / "detector.json").read_text())  # keep the recorded scores in step
    meta.setdefault("info", {})["scores"] = scores
    meta["info"]["retuned"] = {"objective": objective}
    atomic_write_json(folder / "detector.json", meta)
    return scores


def heldout_of(det: ValueDetector | EnsembleDetector, train: ValueEvalSplit) -> ValueEvalSplit:
    """The held-out training arguments a saved detector tuned its thresholds on (rebuilt from its train config;
    an ensemble's is its first neural member's, shared by construction)."""
    member = det if isinstance(det, ValueDetector) else next(
        (m for m in det.members if isinstance(m, ValueDetector)), None)
    tc = dict(member.info.get("train_config") or {}) if member is not None else {}
    if not tc or tc.get("threshold_source", "heldout") != "heldout":
        raise ConfigError("this detector has no held-out training part recorded (train_config with "
                          "threshold_source=heldout); calibrate needs one")
    base = train.head(tc.get("max_train"))
    _, dev_idx = heldout_split(base, tc.get("heldout_frac", 0.1), _split_seed(tc.get("seed", 0),
                                                                             tc.get("heldout_seed")))
    return base.subset(dev_idx)


def calibrate_detector(folder: str | os.PathLike[str], train: ValueEvalSplit, *, method: str = "platt",
                       valid: ValueEvalSplit | None = None, bf16: bool = False) -> dict[str, Any]:
    """Fit (or refit) a saved detector's calibration on its held-out training part; write ``calibration.json``.
    With a labelled ``valid`` the returned dict holds the expected calibration error there, raw and calibrated."""
    from .calibration import Calibrator

    folder = Path(folder).expanduser()
    det = load_detector(folder)
    dev = heldout_of(det, train)
    assert dev.labels is not None
    cal = Calibrator.fit(det.predict_proba(dev.texts(), bf16=bf16), dev.labels, method, det.categories)
    cal.info["fitted_on"] = f"{len(dev)} held-out training arguments (whole conclusions)"
    cal.save(folder)
    out: dict[str, Any] = {"method": method, "n_fit": len(dev)}
    if valid is not None and valid.labels is not None:
        out.update(calibration_report(det.predict_proba(valid.texts(), bf16=bf16), valid.labels, cal))
    return out


def crossfit_scores(probs: np.ndarray, gold: np.ndarray, seed: int = 0, objective: str = "macro") -> Scores:
    """Tune thresholds on one random half and predict the other, both ways; score the combined predictions."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(gold))
    a, b = perm[: len(perm) // 2], perm[len(perm) // 2:]
    pred = np.zeros_like(gold, dtype=np.int64)
    pred[b] = apply_thresholds(probs[b], tune_thresholds(probs[a], gold[a], objective=objective))
    pred[a] = apply_thresholds(probs[a], tune_thresholds(probs[b], gold[b], objective=objective))
    return evaluate(gold, pred)


def detector_hash(folder: str | os.PathLike[str]) -> str:
    """sha256 over every file of a detector folder (relative path + content hash, in sorted order)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(folder)).encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()


class TfidfMember:
    """A TF-IDF + logistic-regression model as an ensemble member (``predict_proba`` on rendered texts).

    Saved without pickle (:class:`~valuelens.detect.baselines.TfidfModel`: JSON + safetensors) with a
    ``detector.json``.
    """

    encoder_name = "tfidf"

    def __init__(self, model: Any) -> None:
        from .baselines import TfidfLogReg, TfidfModel

        # A freshly fitted TfidfLogReg is converted at once, so saved and in-memory members predict alike.
        self.model = TfidfModel.from_pipeline(model.model_, model.thresholds) if isinstance(model, TfidfLogReg) \
            else model
        self.categories = list(VALUEEVAL_CATEGORIES)

    def predict_proba(self, texts: Sequence[str], **_: Any) -> np.ndarray:
        return np.asarray(self.model.predict_proba(list(texts)), dtype=np.float64)

    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        folder = Path(folder)
        self.model.save(folder)
        atomic_write_json(folder / "detector.json", {"format": "valuelens-tfidf/2", "categories": self.categories})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str]) -> TfidfMember:
        from .baselines import TfidfModel

        return cls(TfidfModel.load(folder))


class EnsembleDetector:
    """Weighted mean of the member detectors' probabilities, with its own per-category thresholds.

    Members are :class:`ValueDetector` s or a :class:`TfidfMember`. Saved as a folder with ``detector.json``
    (format ``valuelens-ensemble/1``, member weights), ``thresholds.json`` and the members in ``members/0``,
    ``members/1``, … so it is self-contained; load it with :func:`load_detector`.
    """

    def __init__(self, members: list[Any], thresholds: np.ndarray | None = None,
                 weights: Sequence[float] | None = None) -> None:
        if not members:
            raise ConfigError("an ensemble needs at least one member")
        cats = members[0].categories
        if any(m.categories != cats for m in members):
            raise ConfigError("ensemble members disagree on their categories")
        self.members = members
        self.categories = list(cats)
        w = np.ones(len(members)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(members),) or (w < 0).any() or w.sum() <= 0:
            raise ConfigError(f"ensemble weights must be {len(members)} non-negative numbers, got {weights}")
        self.weights = w / w.sum()
        self.thresholds = np.full(len(cats), 0.5) if thresholds is None else np.asarray(thresholds, float)
        self.encoder_name = "+".join(m.encoder_name for m in members)
        self.info: dict[str, Any] = {}
        self.calibrator: Any = None

    def predict_proba(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        return np.tensordot(self.weights, np.stack([m.predict_proba(texts, **kw) for m in self.members]), axes=1)

    def predict(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        return apply_thresholds(self.predict_proba(texts, **kw), self.thresholds)

    def save_pretrained(self, folder: str | os.PathLike[str], *, threshold_info: dict[str, Any] | None = None,
                        member_dirs: Sequence[str | os.PathLike[str] | None] | None = None) -> Path:
        """Write the ensemble; members are copied from ``member_dirs`` (their saved folders) when given."""
        import shutil

        folder = Path(folder).expanduser()
        (folder / "members").mkdir(parents=True, exist_ok=True)
        for i, m in enumerate(self.members):
            dst = folder / "members" / str(i)
            if dst.exists():
                shutil.rmtree(dst)
            src = None if member_dirs is None else member_dirs[i]
            if src is not None:
                shutil.copytree(src, dst)
            else:
                m.save_pretrained(dst)
        atomic_write_json(folder / "thresholds.json", {
            "thresholds": {c: float(t) for c, t in zip(self.categories, self.thresholds, strict=True)},
            **(threshold_info or {})})
        atomic_write_json(folder / "detector.json", {
            "format": "valuelens-ensemble/1", "members": len(self.members), "weights": self.weights.tolist(),
            "categories": self.categories, "encoder": self.encoder_name, "info": self.info,
            "loader": "valuelens.detect.finetune.load_detector(folder)"})
        if self.calibrator is not None:
            self.calibrator.save(folder)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike[str]) -> EnsembleDetector:
        folder = Path(folder).expanduser()
        cfg = json.loads((folder / "detector.json").read_text())
        members: list[Any] = []
        for i in range(cfg["members"]):
            sub = folder / "members" / str(i)
            fmt = json.loads((sub / "detector.json").read_text()).get("format", "")
            members.append(TfidfMember.from_pretrained(sub) if fmt.startswith("valuelens-tfidf/")
                           else ValueDetector.from_pretrained(sub))
        th = json.loads((folder / "thresholds.json").read_text())["thresholds"]
        ens = cls(members, np.array([th[c] for c in cfg["categories"]]), weights=cfg.get("weights"))
        ens.info = cfg.get("info", {})
        from .calibration import Calibrator

        ens.calibrator = Calibrator.load(folder)
        return ens


def load_detector(folder: str | os.PathLike[str]) -> ValueDetector | EnsembleDetector:
    """Load any saved detector folder: a single :class:`ValueDetector` or an :class:`EnsembleDetector`."""
    folder = Path(folder).expanduser()
    cfg_path = folder / "detector.json"
    if not cfg_path.exists():
        raise ModelError(f"{folder}: not a valuelens detector folder (no detector.json)")
    fmt = json.loads(cfg_path.read_text()).get("format", "")
    if fmt.startswith("valuelens-ensemble/"):
        return EnsembleDetector.from_pretrained(folder)
    return ValueDetector.from_pretrained(folder)


def build_ensemble(model_dirs: Sequence[str | os.PathLike[str]], train: ValueEvalSplit,
                   valid: ValueEvalSplit | None, out: str | os.PathLike[str], *, bf16: bool = False,
                   tfidf: bool = False, tfidf_weights: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
                   calibration: str = "platt") -> tuple[EnsembleDetector, dict[str, Any]]:
    """Average trained detectors; tune thresholds on the members' shared held-out training part.

    All members must have been trained with ``threshold_source=heldout`` and the same seed, held-out
    fraction and ``max_train`` (so they share the held-out arguments, none of which any member trained on).
    ``tfidf``: also fit a TF-IDF + logistic-regression member on the same training part; its weight is the
    one of ``tfidf_weights`` with the best held-out macro-F1 (validation is never used for choices); at weight 0
    (ties go to the smaller weight) the TF-IDF member is left out.
    ``calibration``: per-category calibration fitted on the held-out part (``none`` to skip). ``valid``
    (labelled) is scored at the end; ``None`` skips scoring. The returned scores hold ``eval_seconds``, the
    time spent on ``valid``.
    """
    members = [ValueDetector.from_pretrained(d) for d in model_dirs]
    keys = ("split_seed", "heldout_frac", "max_train", "threshold_source")
    cfgs = []
    for m in members:
        tc = m.info.get("train_config", {})
        cfgs.append({"split_seed": _split_seed(tc.get("seed", 0), tc.get("heldout_seed")),
                     **{k: tc.get(k) for k in keys[1:]}})
    if any(c != cfgs[0] for c in cfgs) or cfgs[0]["threshold_source"] != "heldout":
        raise ConfigError(f"ensemble members must share a held-out split (same {', '.join(keys[:3])}, "
                          f"thresholds=heldout); got {cfgs}")
    base = train.head(cfgs[0]["max_train"])
    _, dev_idx = heldout_split(base, cfgs[0]["heldout_frac"], cfgs[0]["split_seed"])
    dev = base.subset(dev_idx)
    assert dev.labels is not None
    all_members: list[Any] = list(members)
    dirs: list[str | os.PathLike[str] | None] = list(model_dirs)
    weights = [1.0] * len(members)
    if tfidf:
        from .baselines import TfidfLogReg

        fit_idx = np.setdiff1d(np.arange(len(base)), dev_idx)
        fit = base.subset(fit_idx)
        tf = TfidfMember(TfidfLogReg().fit(fit.arguments, fit.labels, tune=False))  # ensemble tunes its own
        neural = EnsembleDetector(list(members))
        dev_texts = dev.texts()
        pn, pt = neural.predict_proba(dev_texts, bf16=bf16), tf.predict_proba(dev_texts)

        def dev_f1(w: float) -> float:
            p = (1 - w) * pn + w * pt
            return evaluate(dev.labels, apply_thresholds(p, tune_thresholds(p, dev.labels))).f1

        tried = {float(w): dev_f1(w) for w in sorted(tfidf_weights)}
        w_best = max(tried, key=lambda w: tried[w])  # the first (smallest) of equal scores
        tfidf_info = {"weight": w_best, "heldout_f1_by_weight": {f"{w:g}": round(f, 4) for w, f in tried.items()}}
        if w_best > 0:
            # Neural members share (1 - w) equally; the TF-IDF member gets w.
            weights = [(1 - w_best) / len(members)] * len(members) + [w_best]
            all_members.append(tf)
            dirs.append(None)
    ens = EnsembleDetector(all_members, weights=weights)
    dev_probs = ens.predict_proba(dev.texts(), bf16=bf16)
    ens.thresholds = tune_thresholds(dev_probs, dev.labels)
    if calibration != "none":
        from .calibration import Calibrator

        ens.calibrator = Calibrator.fit(dev_probs, dev.labels, calibration, ens.categories)
        ens.calibrator.info["fitted_on"] = f"{len(dev)} held-out training arguments (whole conclusions)"
    scores: dict[str, Any] = {}
    t_eval = time.time()
    if valid is not None and valid.labels is not None:
        probs = ens.predict_proba(valid.texts(), bf16=bf16)
        inf_s = time.time() - t_eval
        held = evaluate(valid.labels, apply_thresholds(probs, ens.thresholds))
        scores = {
            "heldout": held.as_dict(),
            "crossfit": crossfit_scores(probs, valid.labels).as_dict(),
            "validation_tuned": evaluate(valid.labels, apply_thresholds(probs, tune_thresholds(probs, valid.labels))
                                         ).as_dict(),
            "precision": held.precision, "recall": held.recall, "f1": held.f1, "main": "heldout",
            "inference_per_second": len(valid) / max(inf_s, 1e-9),
        }
        if ens.calibrator is not None:
            scores["calibration"] = calibration_report(probs, valid.labels, ens.calibrator)
    eval_seconds = time.time() - t_eval
    ens.info = {"members": [str(d) for d in model_dirs] + (["tfidf"] if len(all_members) > len(members) else []),
                "weights": ens.weights.tolist(), "scores": scores}
    if tfidf:
        ens.info["tfidf"] = tfidf_info
    ens.save_pretrained(out, member_dirs=dirs, threshold_info={
        "source": "heldout", "tuned_on": f"{len(dev)} held-out training arguments (whole conclusions)"})
    return ens, {**scores, "eval_seconds": eval_seconds}
