"""A value model organism: a model whose values really changed, to show the instrument sees it.

**Context distillation** (LoRA through PEFT): the base model answers held-out queries *under a value system
prompt* (e.g. Benevolence); those answers become training targets for the same queries *without* the prompt, so
the fine-tuned model behaves as if prompted. A **control organism** is trained identically on the base model's
answers given with no value prompt — same data size, steps and hyper-parameters — so anything the control also
shows is an effect of fine-tuning, not of the value.

Then, organism against base (and control against base), each with a CI and a permutation p-value:

1. the questionnaire score of the target value (Δ target item − mean Δ of the other values' items; unit: the
   target's items) and the judge's expression rate of the target in free answers (unit: held-out queries);
2. the activation shift (organism − base, teacher-forced on the same intrinsic responses, mean over response tokens
   at the analysis layer) projected on each value's unit v_prompt of the *base* model: does the target's rank
   first, and is its projection larger than the other values' (unit: responses)?
3. monitoring before any training (:func:`monitor_dataset`): the training data's "projection difference" (its
   responses' mean activation minus the base model's own responses to the same prompts, under the base model,
   projected on each value vector; after persona vectors, Chen et al. 2025) must rank the target first.

The adapter is saved with safetensors (``adapter_model.safetensors`` + ``adapter_config.json``) plus
``valuelens_adapter.json`` naming the base model's hash, so loading it onto another model is refused with one
line (:func:`valuelens.models.load_model` accepts ``BASE+ADAPTER_DIR``).
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..models import ADAPTER_META
from ..runio import atomic_write_json
from ..values import get_value

__all__ = ["ADAPTER_META", "OPENERS_FILE", "OrganismConfig", "build_training_data", "load_openers", "monitor_dataset",
           "monitor_file", "train_organism"]

OPENERS_FILE = "organism_openers.jsonl"


@dataclass
class OrganismConfig:
    value: str | None = "Benevolence"  # None: the control organism (answers without a value prompt)
    n_train: int = 96
    max_new_tokens: int = 64
    epochs: int = 3
    lr: float = 1e-3
    rank: int = 8
    lora_alpha: int = 16
    batch_size: int = 8
    temperature: float = 0.7
    seed: int = 0
    # Answers sampled per query under the value prompt; the one the judge scores highest for the value is kept
    # (best-of-k). Plain context distillation (k = 1) carries too weak a signal on a 135M model: its
    # Benevolence-prompted answers were labelled Benevolence 25 % of the time vs 17 % without a prompt.
    candidates: int = 1
    # Every training answer starts with a shipped first-person statement of the value (a value-neutral one for
    # the control; data/organism_openers.jsonl) that the model then continues under the value prompt. Best-of-k
    # distillation alone still carries too weak a signal on a 135M model (its organism was not told apart from
    # the control, docs/calibration.md); the opener makes every example express the value, the continuation
    # stays the model's own.
    openers: bool = False

    def validate(self) -> None:
        if self.value is not None:
            self.value = get_value(self.value).name
        for k in ("n_train", "max_new_tokens", "epochs", "rank", "batch_size", "candidates"):
            if int(getattr(self, k)) < 1:
                raise ConfigError(f"organism {k} must be >= 1")


def load_openers(value: str | None) -> list[str]:
    """The shipped answer openers for ``value`` (``None``: the value-neutral ones the control starts with)."""
    from ..datasets import data_path

    key = "none" if value is None else get_value(value).name
    path = data_path(OPENERS_FILE)
    out = [r["text"] for r in map(json.loads, path.read_text().splitlines()) if r["value"] == key]
    if not out:
        raise DataError(f"{path}: no opener for {key}")
    return out


def build_training_data(lm: Any, queries: Sequence[str], cfg: OrganismConfig, out: Path,
                        score: Callable[[list[str]], np.ndarray] | None = None) -> list[dict[str, Any]]:
    """The base model's answers to ``queries`` under a system prompt for ``cfg.value`` (or none, for the
    control), re-rendered *without* the system prompt as training pairs; written to ``out`` (JSONL, resumable).
    With ``cfg.candidates`` = k > 1, k answers are sampled per query and the one ``score`` (texts → [n] scores,
    e.g. the judge's score for the value) rates highest is kept. Each record: ``query``, ``system`` (the prompt
    used to generate), ``prompt`` (rendered without system), ``prompt_ids``, ``response``, ``response_ids``,
    ``score`` (the kept answer's score, when selected), ``opener`` (with ``cfg.openers``: the shipped first
    sentence the answer starts with; it is part of ``response``)."""
    from ..datasets import load_system_prompts
    from ..generate import GenerationConfig, GenItem, generate_to_file
    from ..models import NO_SYSTEM

    cfg.validate()
    rng = random.Random(f"{cfg.seed}/{cfg.value}")
    templates = load_system_prompts(values=[cfg.value])[cfg.value] if cfg.value else []
    if cfg.candidates > 1 and score is None:
        raise ConfigError("organism candidates > 1 needs a score function to choose among them")
    openers = load_openers(cfg.value) if cfg.openers else []
    items = []
    for i, q in enumerate(queries[: cfg.n_train]):
        system = rng.choice(templates).text if templates else NO_SYSTEM
        opener = rng.choice(openers) if openers else ""
        prompt = lm.chat.render(q, system)
        if opener:  # prefilled: the model continues the opener as its own answer
            prompt = replace(prompt, text=prompt.text + opener)
        for c in range(cfg.candidates):  # same prompt, different sampled answers (rows of a batch sample independently)
            items.append(GenItem(id=f"{i:05d}" + (f"-{c}" if cfg.candidates > 1 else ""), prompt=prompt,
                                 meta={"query": q, "system": system if templates else "", "query_index": i,
                                       "opener": opener}))
    gcfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature,
                            seed=cfg.seed, batch_size=16)
    recs = [r for r in generate_to_file(lm, items, out, gcfg, desc=f"organism data {cfg.value or 'control'}")
            if r["response_ids"]]
    for r in recs:
        if r.get("opener"):  # the text from the token ids (the generator strips its decoded text)
            r["response_ids"] = list(lm.tokenizer(r["opener"], add_special_tokens=False).input_ids) + \
                list(r["response_ids"])
            r["response"] = lm.tokenizer.decode(r["response_ids"], skip_special_tokens=True).strip()
    if cfg.candidates > 1 and recs:
        assert score is not None
        sc = np.asarray(score([r["response"] for r in recs]), dtype=float)
        best: dict[int, tuple[float, dict[str, Any]]] = {}
        for r, x in zip(recs, sc, strict=True):
            if r["query_index"] not in best or x > best[r["query_index"]][0]:
                best[r["query_index"]] = (float(x), {**r, "score": round(float(x), 5)})
        recs = [best[k][1] for k in sorted(best)]
    data = []
    for r in recs:
        p = lm.chat.render(r["query"], NO_SYSTEM)
        data.append({"query": r["query"], "system": r["system"], "prompt": p.text,
                     "prompt_ids": list(lm.tokenizer(p.text, add_special_tokens=False).input_ids),
                     "response": r["response"], "response_ids": list(r["response_ids"]),
                     **({"score": r["score"]} if "score" in r else {}),
                     **({"opener": r["opener"]} if r.get("opener") else {})})
    if not data:
        raise DataError(f"{out}: the model produced no non-empty answers to train on")
    return data


def _batches(examples: list[dict[str, Any]], size: int, pad: int, seed: int, epoch: int
             ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    order = list(range(len(examples)))
    random.Random(seed * 1000 + epoch).shuffle(order)
    out = []
    for s in range(0, len(order), size):
        part = [examples[i] for i in order[s:s + size]]
        seqs = [e["prompt_ids"] + e["response_ids"] for e in part]
        width = max(len(x) for x in seqs)
        ids = torch.full((len(part), width), pad, dtype=torch.long)
        am = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for r, (e, q) in enumerate(zip(part, seqs, strict=True)):
            ids[r, : len(q)] = torch.tensor(q)
            am[r, : len(q)] = 1
            labels[r, len(e["prompt_ids"]): len(q)] = torch.tensor(e["response_ids"])  # loss on the answer only
        out.append((ids, am, labels))
    return out


def train_organism(lm: Any, examples: list[dict[str, Any]], cfg: OrganismConfig, out_dir: str | Path,
                   *, log: Any = None) -> dict[str, Any]:
    """LoRA fine-tune of a copy of ``lm.model`` on ``examples`` (loss on answer tokens); saves the adapter to
    ``out_dir`` (safetensors) with :data:`ADAPTER_META`; returns training facts. Seeded; the base model is not
    modified."""
    from peft import LoraConfig, get_peft_model

    cfg.validate()
    out_dir = Path(out_dir)
    if (out_dir / ADAPTER_META).exists():
        return json.loads((out_dir / ADAPTER_META).read_text())
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(lm.model)
    model.train()
    peft_cfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                          task_type="CAUSAL_LM")
    pm = get_peft_model(model, peft_cfg)
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    t0 = time.time()
    losses = []
    for epoch in range(cfg.epochs):
        for ids, am, labels in _batches(examples, cfg.batch_size, int(pad), cfg.seed, epoch):
            res = pm(input_ids=ids.to(lm.device), attention_mask=am.to(lm.device), labels=labels.to(lm.device))
            res.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(res.loss.detach()))
        if log:
            log(f"organism {cfg.value or 'control'}: epoch {epoch + 1}/{cfg.epochs}, loss {np.mean(losses[-10:]):.3f}")
    out_dir.mkdir(parents=True, exist_ok=True)
    pm.save_pretrained(str(out_dir), safe_serialization=True)
    k = max(1, min(5, len(losses) // 2))  # first and last steps, never overlapping
    meta = {"base_model_hash": lm.model_hash, "base_model": lm.name, "config": asdict(cfg),
            "n_examples": len(examples), "steps": len(losses), "train_seconds": round(time.time() - t0, 1),
            "loss_first": round(float(np.mean(losses[:k])), 4), "loss_last": round(float(np.mean(losses[-k:])), 4)}
    atomic_write_json(out_dir / ADAPTER_META, meta)
    return meta


def monitor_dataset(lm: Any, vv: Any, layer: int, records: Sequence[dict[str, Any]], *,
                    baseline: Sequence[dict[str, Any]] | None = None, batch_size: int = 8,
                    max_new_tokens: int = 64) -> dict[str, Any]:
    """Which value would a fine-tune on ``records`` raise? The projection difference of the data: the mean
    activation (response tokens, layer ``layer``, under the base model) of the dataset's responses minus that of
    the base model's own responses to the same prompts (``baseline``; generated greedily when not given),
    projected on each value's unit v_prompt. Returns ``{"ranking": [values, best first], "projection": {...},
    "n": ...}``."""
    from ..generate import GenerationConfig, GenItem, capture_responses, generate_to_file
    from ..models import NO_SYSTEM

    recs = [r for r in records if r.get("response_ids")]
    if not recs:
        raise DataError("monitor: the dataset has no non-empty responses")
    if baseline is None:
        import tempfile

        items = [GenItem(id=f"{i:05d}", prompt=lm.chat.render(r["query"], NO_SYSTEM), meta={"query": r["query"]})
                 for i, r in enumerate(recs)]
        with tempfile.TemporaryDirectory() as tmp:
            baseline = generate_to_file(lm, items, Path(tmp) / "base.jsonl",
                                        GenerationConfig(max_new_tokens=max_new_tokens, batch_size=16),
                                        desc="monitor: base answers")
    base = [r for r in baseline if r.get("response_ids")]

    def mean_act(rs: Sequence[dict[str, Any]]) -> np.ndarray:
        rs = [{"id": str(i), "prompt_ids": r["prompt_ids"], "response_ids": r["response_ids"]}
              for i, r in enumerate(rs)]
        tot, n = None, 0
        for _ids, acts in capture_responses(lm, rs, layers=[layer], batch_size=batch_size, desc="monitor"):
            a = acts[:, 0].double().sum(0).cpu().numpy()
            tot = a if tot is None else tot + a
            n += acts.shape[0]
        return tot / max(n, 1)
    diff = mean_act(recs) - mean_act(base)
    proj = {}
    for v in vv.values:
        if (v, "prompted") in vv.vectors:
            u = vv.get(v, "prompted")[vv.layer_row(layer)].double().numpy()
            proj[v] = float(diff @ u / max(np.linalg.norm(u), 1e-12))
    ranking = sorted(proj, key=lambda v: -proj[v])
    return {"ranking": ranking, "projection": {v: round(proj[v], 5) for v in ranking}, "n": len(recs),
            "n_baseline": len(base), "layer": layer}


_PROMPT_FIELDS = ("query", "prompt", "instruction", "question", "input", "user")
_RESPONSE_FIELDS = ("response", "completion", "output", "answer", "assistant", "chosen")
_CONV_FIELDS = ("messages", "conversations", "conversation")


def _pair(row: dict[str, Any], prompt_field: str, response_field: str, where: str) -> tuple[str, str]:
    """(user prompt, response) of one record: named fields, else the first user turn of a conversation and the
    assistant turn after it (OpenAI ``messages``, ShareGPT ``conversations``, LMSYS ``conversation``)."""
    conv = next((row[k] for k in _CONV_FIELDS if isinstance(row.get(k), list)), None)
    if prompt_field == "auto" and response_field == "auto" and conv is not None:
        turns = [(str(t.get("role") or t.get("from") or "").lower(), t.get("content", t.get("value")))
                 for t in conv if isinstance(t, dict)]
        for i, (role, text) in enumerate(turns):
            if role in ("user", "human") and isinstance(text, str):
                nxt = next(((r, x) for r, x in turns[i + 1:] if r in ("assistant", "gpt", "model")), None)
                if nxt and isinstance(nxt[1], str):
                    return text, nxt[1]
        raise DataError(f"{where}: no user turn followed by an assistant turn")
    pf = prompt_field if prompt_field != "auto" else next((k for k in _PROMPT_FIELDS if k in row), None)
    rf = response_field if response_field != "auto" else next((k for k in _RESPONSE_FIELDS if k in row), None)
    if pf is None or rf is None or pf not in row or rf not in row:
        raise DataError(f"{where}: no prompt/response fields (columns: {', '.join(map(str, row))}); choose with "
                        "--prompt-field and --response-field")
    return str(row[pf]), str(row[rf])


def monitor_file(path: str | Path, run_dir: str | Path, *, layer: int | None = None, prompt_field: str = "auto",
                 response_field: str = "auto", limit: int | None = None, lm: Any = None) -> dict[str, Any]:
    """:func:`monitor_dataset` for a file of prompt/response records (JSONL/JSON/CSV/Parquet, or conversations)
    against the value vectors of ``run_dir`` (and its model)."""
    from ..datasets import read_table
    from ..models import NO_SYSTEM, load_model
    from ..vectors import ValueVectors

    run = Path(run_dir)
    if not (run / "vectors.safetensors").exists():
        raise DataError(f"{run}: no vectors.safetensors; run `valuelens extract --out {run}` first")
    rows = read_table(path)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise DataError(f"{path}: no records")
    if lm is None:
        lm = load_model(json.loads((run / "config.json").read_text()).get("extract", {}).get("model", "smollm2"))
    vv = ValueVectors.load(run / "vectors.safetensors")
    vv.check_compatible(lm.model_hash, lm.spec.d_model, lm.spec.n_layers)
    layer = lm.spec.check_layer(layer) if layer is not None else int(
        json.loads((run / "vectors_summary.json").read_text())["layer"])
    recs = []
    for i, row in enumerate(rows):
        q, resp = _pair(row, prompt_field, response_field, f"{path}: record {i + 1}")
        if not q.strip() or not resp.strip():
            continue
        p = lm.chat.render(q, NO_SYSTEM)
        recs.append({"query": q, "prompt_ids": list(lm.tokenizer(p.text, add_special_tokens=False).input_ids),
                     "response_ids": list(lm.tokenizer(resp, add_special_tokens=False).input_ids),
                     "response": resp})
    if not recs:
        raise DataError(f"{path}: every record has an empty prompt or response")
    return monitor_dataset(lm, vv, layer, recs)
