"""``valuelens extract``: steps 1–6 of the value-mechanism pipeline, as resumable stages over one run folder.

Stages (each reads the previous stage's files, so any can be rerun alone; ``generate`` and ``activations`` also
work on a slice of their input with ``shard=(i, n)``)::

    prepare      queries.jsonl, items.jsonl (every prompt to answer), config.json, manifest.json
    generate     responses/responses.shard-I-of-N.jsonl     one record per item, exact rendered prompt included
                 responses/acts/batch-*.safetensors         response means read off the decoding steps
    judge        judgments.jsonl, judge_counts.csv          every response labelled for every value
    activations  activations/chunk-*.safetensors            mean residual over response tokens, all layers
    vectors      vectors.safetensors, tables/*.csv, figures/*.png

Conditions. *Intrinsic*: each query once, with no value instruction (``intrinsic_system``: ``"none"`` renders no
system turn at all, ``"default"`` lets the chat template insert its default system prompt; the default here is
``"none"``, so the only difference between conditions is the value prompt). *Prompted* for value s: a random
query with a system prompt for s drawn at random from the templates. Intrinsic responses are judged for every
value; prompted responses are judged for every value too (the vectors use the target value only).

Vectors: v[s, e, l] = mean(expressing) − mean(non-expressing) within condition e, from running sums over the
activation chunks (memory flat in the number of responses). The activations stage takes each response's means
from what generation recorded while decoding (a response token's residual is computed when it is fed back;
equal to a re-run of prompt + response up to float round-off, tested) and re-runs only responses without them
(vLLM generation, generation and capture in different precisions, a batch regenerated since); that saves the
second pass over every response. A value with fewer than ``min_count`` responses on
either side of a condition is reported in ``judge_counts.csv`` and skipped, never silently averaged.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import strict_config
from .datasets import QueryOptions, QueryPool, load_query_pool
from .errors import ConfigError, DataError
from .generate import GeneratedActs, GenerationConfig, GenItem, capture_responses, generate_to_file
from .models import NO_SYSTEM, TEMPLATE_DEFAULT, LoadedModel, load_model
from .precision import BF16_CHOICES, use_bf16
from .progress import bar as tqdm
from .progress import log
from .runio import atomic_path, atomic_write_json, atomic_write_text, read_jsonl, shard_slice, write_manifest
from .values import VALUE_NAMES, resolve_values

__all__ = ["STAGES", "ExtractConfig", "extract_figures", "iter_activation_chunks", "label_groups", "layer_groups", "load_judgments",
           "load_responses", "make_judge", "run_extract"]

STAGES = ("prepare", "generate", "judge", "activations", "vectors")
CONDITIONS = ("intrinsic", "prompted")
# What the prepare stage writes; a folder holding only these (and config/model/manifest) has no results yet.
PREPARE_FILES = ("queries.jsonl", "items.jsonl", "query_report.json")
_SETUP_FILES = ("config.json", "model.json", "manifest.json")


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _int_at_least(name: str, value: Any, low: int, extra: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}{extra}, got {value!r}")


@dataclass
class ExtractConfig:
    """Everything that determines an extraction run (saved as ``config.json`` and in the manifest)."""

    model: str = "smollm2"
    values: list[str] = field(default_factory=lambda: list(VALUE_NAMES))
    queries: str | None = None  # None = shipped pool; a file path; hf:owner/name; hf:FOLDER (docs/data.md)
    query_column: str = "auto"  # text or conversation column; auto: detected when unambiguous
    query_format: str = "auto"  # auto | plain | sharegpt | lmsys | openai
    query_split: str = "train"  # split of a Hugging Face dataset
    query_turns: str = "first"  # first | all user turns of a conversation
    query_max_chars: int | None = 2000  # longer turns are dropped
    query_dedup: str = "near"  # near (exact + MinHash) | exact | none
    query_near_threshold: float = 0.8  # character 5-gram Jaccard of a near-duplicate
    query_language: str | None = None  # keep one language (a light heuristic), None: all
    query_sample: int | None = None  # seeded sample of the pool after filters (seed: `seed`)
    query_limit: int | None = None  # read only the first N rows of the source (huge dumps)
    system_prompts: str | None = None  # None = shipped templates
    system_prompts_column: str = "auto"  # text column of a user template file
    system_prompts_value_column: str = "auto"
    n_intrinsic: int = 240  # queries answered without a value prompt (judged for every value)
    n_prompted_per_value: int = 48  # prompted responses per value
    intrinsic_system: str = "none"  # "none" (no system turn) | "default" (template's default system prompt)
    max_new_tokens: int = 64
    do_sample: bool = True
    temperature: float = 0.7
    top_p: float = 0.9
    batch_size: int = 48  # generation batch (valuelens.generate.decode; 48 was fastest on 2 CPU cores)
    # Generation under bf16 autocast: "auto" = only where the hardware computes bf16 natively (~2× faster there,
    # 40-60× slower where it is emulated; valuelens.precision).
    gen_bf16: bool | str = "auto"
    # Precision of the activation capture: "auto" = the generation's, so the response means are read off the
    # decoding steps (no second pass; sums stay float32 either way). true/false force it (a mismatch re-runs
    # every response in that precision).
    capture_bf16: bool | str = "auto"
    # Batch prompts of similar token length together (less padding; changes batch composition, so responses
    # differ from a run without it — same seed, same plan, same responses however the work is sharded).
    gen_sort_by_length: bool = True  # batches of similar prompt length: less padded prefill
    # "hf", "vllm" or "auto": vLLM for these unsteered generations on a CUDA GPU (valuelens.backends_vllm);
    # without vLLM or a GPU the run generates on HF and logs why.
    gen_backend: str = "hf"
    capture_batch_size: int = 16
    chunk_size: int = 64  # responses per activation file
    judge: str = "auto"  # "auto" | "detector" | "llm" | a detector folder
    judge_options: dict[str, Any] = field(default_factory=dict)
    min_count: int = 5  # responses needed on each side for a vector
    # "judge": expressing = the judge's binary label (the paper's definition). "rank": within each value and
    # condition, the top `rank_fraction` of responses by judge score vs the bottom `rank_fraction` ("more vs
    # less expressing") — for judges that are miscalibrated on chat text and label (almost) everything alike.
    label_mode: str = "judge"
    rank_fraction: float = 0.5
    layer: int | str = "auto"  # layer for the cross-value figures; "auto" picks by separation
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExtractConfig:
        return strict_config(cls, d, "extract")

    @classmethod
    def quick(cls, **overrides: Any) -> ExtractConfig:
        """A few-minute config for tests and smoke runs: 3 values, few queries, short answers."""
        base = dict(values=["Benevolence", "Power", "Tradition"], n_intrinsic=24, n_prompted_per_value=8,
                    max_new_tokens=32, batch_size=16, chunk_size=16, min_count=2, label_mode="rank")
        base.update(overrides)
        return cls.from_dict(base)

    def validate(self) -> None:
        """Keys' types and ranges (layers against the model's depth: :mod:`valuelens.check`, or on loading)."""
        if isinstance(self.values, str):
            self.values = [v for v in self.values.split(",") if v.strip()]
        self.values = [v.name for v in resolve_values(self.values)]
        if self.intrinsic_system not in ("none", "default"):
            raise ConfigError(f"intrinsic_system must be 'none' or 'default', got {self.intrinsic_system!r}")
        for name in ("n_intrinsic", "n_prompted_per_value", "max_new_tokens", "batch_size", "chunk_size",
                     "capture_batch_size", "min_count"):
            _int_at_least(name, getattr(self, name), 1)
        _int_at_least("seed", self.seed, 0)
        if self.label_mode not in ("judge", "rank"):
            raise ConfigError(f"label_mode must be 'judge' or 'rank', got {self.label_mode!r}")
        if not _is_number(self.rank_fraction) or not 0 < self.rank_fraction <= 0.5:
            raise ConfigError(f"rank_fraction must be in (0, 0.5], got {self.rank_fraction!r}")
        if not _is_number(self.temperature) or self.temperature < 0 or (self.do_sample and self.temperature == 0):
            raise ConfigError(f"temperature must be > 0 (>= 0 with do_sample false), got {self.temperature!r}")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        for name in ("do_sample", "gen_sort_by_length"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("gen_bf16", "capture_bf16"):
            if getattr(self, name) not in BF16_CHOICES:
                raise ConfigError(f"{name} must be auto, true or false, got {getattr(self, name)!r}")
        if self.layer != "auto":
            _int_at_least("layer", self.layer, 0, extra=" or 'auto'")
        for name in ("model", "judge"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ConfigError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        for name in ("queries", "system_prompts"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, str) or not v.strip()):
                raise ConfigError(f"{name} must be a file path, hf:NAME or null, got {v!r}")
        if not isinstance(self.judge_options, dict):
            raise ConfigError(f"judge_options must be a mapping, got {self.judge_options!r}")
        self.query_options().validate()

    def query_options(self) -> QueryOptions:
        """How the query pool is read, filtered and sampled (:func:`valuelens.datasets.load_query_pool`)."""
        return QueryOptions(column=self.query_column, format=self.query_format, split=self.query_split,
                            turns=self.query_turns, max_chars=self.query_max_chars, dedup=self.query_dedup,
                            near_threshold=self.query_near_threshold, language=self.query_language,
                            sample=self.query_sample, seed=self.seed, limit=self.query_limit)

    def load_pool(self) -> QueryPool:
        """The query pool this config describes, with its loading report."""
        return load_query_pool(self.queries, self.query_options())

    def load_templates(self) -> dict[str, list[Any]]:
        """The value system prompts for this config's values."""
        from .datasets import load_system_prompts

        return load_system_prompts(self.system_prompts, values=self.values, text_column=self.system_prompts_column,
                                   value_column=self.system_prompts_value_column)

    def generation(self) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                                temperature=self.temperature, top_p=self.top_p, seed=self.seed,
                                batch_size=self.batch_size, bf16=use_bf16(self.gen_bf16),
                                sort_by_length=self.gen_sort_by_length, backend=self.gen_backend)

    def capture_in_bf16(self) -> bool:
        """The resolved capture precision ("auto" follows the generation's)."""
        return use_bf16(self.gen_bf16) if self.capture_bf16 == "auto" else bool(self.capture_bf16)

    def fused_capture(self) -> bool:
        """Whether generation also records the response means the activations stage needs (one pass instead of
        two): when generation and capture run in the same precision (vLLM writes none: those are re-run)."""
        return use_bf16(self.gen_bf16) == self.capture_in_bf16()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------------------
# Stage: prepare


def _prepare(run: Path, cfg: ExtractConfig, lm: LoadedModel, data: tuple[QueryPool, dict[str, list[Any]]] | None
             = None) -> list[dict[str, Any]]:
    qpool, templates = data if data is not None else (cfg.load_pool(), cfg.load_templates())
    queries = qpool.queries
    rng = random.Random(cfg.seed)
    order = list(range(len(queries)))
    rng.shuffle(order)
    intrinsic_q = [queries[i] for i in order[: min(cfg.n_intrinsic, len(queries))]]
    intrinsic_mode = NO_SYSTEM if cfg.intrinsic_system == "none" else TEMPLATE_DEFAULT
    items: list[dict[str, Any]] = []
    for q in intrinsic_q:
        p = lm.chat.render(q.text, intrinsic_mode)
        items.append({"id": f"intrinsic/{q.id}", "condition": "intrinsic", "target_value": None,
                      "query_id": q.id, "query": q.text, "template_id": None, "prompt": p.to_dict()})
    for value in cfg.values:
        vrng = random.Random(f"{cfg.seed}/{value}")
        pool = list(range(len(queries)))
        vrng.shuffle(pool)
        for j in range(cfg.n_prompted_per_value):
            q = queries[pool[j % len(pool)]]
            t = vrng.choice(templates[value])
            p = lm.chat.render(q.text, t.text)
            items.append({"id": f"prompted/{value}/{j:04d}", "condition": "prompted", "target_value": value,
                          "query_id": q.id, "query": q.text, "template_id": t.id, "prompt": p.to_dict()})
    atomic_write_json(run / "query_report.json", qpool.report)
    atomic_write_text(run / "queries.jsonl", "".join(json.dumps({"id": q.id, "text": q.text}, ensure_ascii=False)
                                                     + "\n" for q in queries))
    # items.jsonl last: its presence means prepare is complete (a resumed run skips the stage).
    atomic_write_text(run / "items.jsonl", "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items))
    return items


def _load_items(run: Path) -> list[dict[str, Any]]:
    items = read_jsonl(run / "items.jsonl", allow_torn_tail=False)
    if not items:
        raise DataError(f"{run}: stage 'prepare' has not run (no items.jsonl); run `valuelens extract` first")
    return items


# --------------------------------------------------------------------------------------------------------------
# Stage: generate


def _shard_file(run: Path, shard: tuple[int, int]) -> Path:
    return run / "responses" / f"responses.shard-{shard[0]}-of-{shard[1]}.jsonl"


def _generate(run: Path, cfg: ExtractConfig, lm: LoadedModel, shard: tuple[int, int]) -> None:
    from .generate import plan_batches
    from .models import RenderedPrompt

    gen_items = [GenItem(id=it["id"], prompt=RenderedPrompt(**it["prompt"]),
                         meta={k: it[k] for k in ("condition", "target_value", "query_id", "template_id")})
                 for it in _load_items(run)]
    # A shard takes every n-th batch of the plan over *all* items: batch composition and sampling seeds, and so
    # the responses, are the same however the work is split (one process, --shard i/n, Ray tasks).
    gcfg = cfg.generation()
    mine = shard_slice(list(range(len(plan_batches(lm, gen_items, gcfg)))), shard)
    generate_to_file(lm, gen_items, _shard_file(run, shard), gcfg, desc=f"generate {shard[0]}/{shard[1]}",
                     batches=mine, capture_dir=_generated_acts_dir(run) if cfg.fused_capture() else None)


def _generated_acts_dir(run: Path) -> Path:
    return run / "responses" / "acts"


def load_responses(run: Path) -> list[dict[str, Any]]:
    """All generated responses of a run, in item order; an error if any item has no response yet."""
    items = _load_items(run)
    files = sorted((run / "responses").glob("responses.shard-*.jsonl"))
    by_id: dict[str, dict[str, Any]] = {}
    for f in files:
        for r in read_jsonl(f):
            by_id[r["id"]] = r
    missing = [it["id"] for it in items if it["id"] not in by_id]
    if missing:
        raise DataError(f"{run}: {len(missing)} of {len(items)} items have no response yet (first: {missing[0]}); "
                        "run the 'generate' stage (for every shard) first")
    return [by_id[it["id"]] for it in items]


# --------------------------------------------------------------------------------------------------------------
# Stage: judge


def make_judge(cfg: ExtractConfig, lm: LoadedModel | None = None) -> Any:
    """Resolve the configured judge. ``auto``: the trained detector if one exists, else the LLM judge."""
    from .judges import get_judge

    name, opts = cfg.judge, dict(cfg.judge_options)
    # "chat_calibration": "dev" recalibrates the judge for chat text on the shipped labelled chat answers' dev
    # split (per-value thresholds and percentile scores; valuelens.judges.indomain) — the judge's own training
    # (e.g. the detector's ValueEval thresholds) is untouched.
    chat_cal = opts.pop("chat_calibration", None)
    if chat_cal not in (None, False, "dev", "all"):
        raise ConfigError(f"judge option chat_calibration must be 'dev' (or absent), got {chat_cal!r}")
    if name == "auto":
        from .detect.presets import default_detector_dir

        default = default_detector_dir()
        if (default / "detector.json").exists() or "model" in opts:
            name = "detector"
        else:
            print("valuelens: no trained detector found; falling back to the LLM judge on the same model "
                  "(train one with `valuelens detect train`)")
            name = "llm"
            opts.setdefault("backend_spec", f"local:{cfg.model}")
    elif Path(name).expanduser().is_dir():
        opts["model"], name = name, "detector"
    judge = get_judge(name, **opts)
    if chat_cal:
        from .judges.indomain import calibrate_judge

        judge = calibrate_judge(judge, "dev" if chat_cal is True else chat_cal)
    return judge


def _judge(run: Path, cfg: ExtractConfig) -> None:
    responses = load_responses(run)
    out = run / "judgments.jsonl"
    done = {r["id"] for r in read_jsonl(out)}
    todo = [r for r in responses if r["id"] not in done]
    if todo:
        judge = make_judge(cfg)
        atomic_write_json(run / "judge.json", judge.describe())
        from .runio import JsonlWriter

        step = 256
        with JsonlWriter(out) as w:
            for s in tqdm(range(0, len(todo), step), desc="judge", leave=False):
                part = todo[s:s + step]
                texts = [r["response"] for r in part]
                res = judge.judge(texts, cfg.values, contexts=[r["prompt"]["user"] for r in part])
                rows = []
                for i, r in enumerate(part):
                    empty = not r["response"].strip()
                    labels = {v.name: (None if (empty or not res.valid[i, j]) else int(res.labels[i, j]))
                              for j, v in enumerate(res.values)}
                    scores = {v.name: (None if np.isnan(res.scores[i, j]) else round(float(res.scores[i, j]), 5))
                              for j, v in enumerate(res.values)}
                    rows.append({"id": r["id"], "labels": labels, "scores": scores})
                w.write_many(rows)
    _write_judge_counts(run, cfg, responses)


def load_judgments(run: Path) -> dict[str, dict[str, Any]]:
    rows = {r["id"]: r for r in read_jsonl(run / "judgments.jsonl")}
    if not rows:
        raise DataError(f"{run}: stage 'judge' has not run (no judgments.jsonl)")
    return rows


def label_groups(cfg: ExtractConfig, responses: Sequence[dict[str, Any]], judgments: dict[str, dict[str, Any]]
                  ) -> dict[tuple[str, str], dict[str, list[str]]]:
    """``{(value, condition): {"pos": [ids], "neg": [ids], "invalid": [ids]}}`` under ``cfg.label_mode``."""
    groups: dict[tuple[str, str], dict[str, list[str]]] = {
        (v, c): {"pos": [], "neg": [], "invalid": []} for v in cfg.values for c in CONDITIONS}
    scored: dict[tuple[str, str], list[tuple[float, str]]] = {k: [] for k in groups}
    for r in responses:
        j = judgments.get(r["id"])
        vals = cfg.values if r["condition"] == "intrinsic" else [r["target_value"]]
        for v in vals:
            lab = None if j is None else j["labels"].get(v)
            score = None if j is None else j.get("scores", {}).get(v)
            key = (v, r["condition"])
            if lab is None or (cfg.label_mode == "rank" and score is None):
                groups[key]["invalid"].append(r["id"])
            elif cfg.label_mode == "judge":
                groups[key]["pos" if lab else "neg"].append(r["id"])
            else:
                scored[key].append((float(score), r["id"]))
    if cfg.label_mode == "rank":
        for key, items in scored.items():
            items.sort(key=lambda t: (t[0], t[1]))  # ties broken by id: deterministic
            k = int(len(items) * cfg.rank_fraction)
            groups[key]["neg"] = [i for _, i in items[:k]]
            groups[key]["pos"] = [i for _, i in items[len(items) - k:]] if k else []
    return groups


def _write_judge_counts(run: Path, cfg: ExtractConfig, responses: Sequence[dict[str, Any]]) -> None:
    groups = label_groups(cfg, responses, load_judgments(run))
    lines = ["value,condition,expressing,not_expressing,invalid,usable"]
    for (v, c), g in groups.items():
        usable = len(g["pos"]) >= cfg.min_count and len(g["neg"]) >= cfg.min_count
        lines.append(f"{v},{c},{len(g['pos'])},{len(g['neg'])},{len(g['invalid'])},{int(usable)}")
    atomic_write_text(run / "tables" / "judge_counts.csv", "\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------------------------
# Stage: activations


def _chunk_path(run: Path, index: int) -> Path:
    return run / "activations" / f"chunk-{index:05d}.safetensors"


def _activations(run: Path, cfg: ExtractConfig, lm: LoadedModel, shard: tuple[int, int]) -> None:
    responses = [r for r in load_responses(run) if r["response_ids"]]
    chunks = [responses[i:i + cfg.chunk_size] for i in range(0, len(responses), cfg.chunk_size)]
    mine = shard_slice(list(enumerate(chunks)), shard)
    # Response means the generate stage recorded while decoding (same numbers up to float round-off); only
    # responses without one (vLLM, another precision, a regenerated batch) are re-run here.
    generated = GeneratedActs(_generated_acts_dir(run), lm.model_hash) if cfg.fused_capture() else None
    bf16 = cfg.capture_in_bf16()
    for ci, chunk in tqdm(mine, desc="activations", unit="chunk", leave=False):
        path = _chunk_path(run, ci)
        ids = [r["id"] for r in chunk]
        if path.exists() and _chunk_ids(path) == ids:
            continue  # written by an earlier (interrupted) run
        acts: dict[str, torch.Tensor] = generated.get(chunk) if generated is not None else {}
        missing = [r for r in chunk if r["id"] not in acts]
        for bid, a in capture_responses(lm, missing, batch_size=cfg.capture_batch_size, bf16=bf16) \
                if missing else ():
            for i, t in zip(bid, a, strict=True):
                acts[i] = t
        stacked = torch.stack([acts[i] for i in ids]).to(torch.float32).contiguous()  # [n, L, D]
        meta = {"ids": json.dumps(ids), "model_hash": lm.model_hash, "reduction": "mean over response tokens",
                "layers": json.dumps(list(range(lm.spec.n_layers))),
                "from_generation": str(len(ids) - len(missing)),
                "compute_dtype": "bfloat16 autocast" if bf16 else "float32"}
        with atomic_path(path) as tmp:
            save_file({"acts": stacked}, str(tmp), metadata=meta)
    if shard == (0, 1) and generated is not None:  # every chunk written: the side files are duplicates now
        shutil.rmtree(_generated_acts_dir(run), ignore_errors=True)


def _chunk_ids(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("ids", "[]"))


def iter_activation_chunks(run: Path, expected_hash: str | None = None):  # type: ignore[no-untyped-def]
    """Yield ``(ids, acts [n, L, D])`` for every chunk of a run, checking they cover every response."""
    files = sorted((run / "activations").glob("chunk-*.safetensors"))
    if not files:
        raise DataError(f"{run}: stage 'activations' has not run (no activations/chunk-*.safetensors)")
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            meta = fh.metadata() or {}
            if expected_hash and meta.get("model_hash") != expected_hash:
                raise ConfigError(f"{f}: activations come from another model ({meta.get('model_hash', '?')[:12]}…)")
            yield json.loads(meta["ids"]), fh.get_tensor("acts")


def layer_groups(run: Path, extract_cfg: dict[str, Any], model_hash: str, layer_row: int, values: Sequence[str],
                 d_model: int) -> tuple[np.ndarray, dict[tuple[str, str], tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """One layer's response activations with the label groups as row indices, for resampling.

    Returns ``x [n, D]`` (float64, one row per response with activations), ``groups[(value, condition)] =
    (pos_rows, neg_rows)`` for ``values``, and each row's stratum (``intrinsic`` or ``prompted/<value>``) — the unit
    a bootstrap resamples within.
    """
    responses = load_responses(run)
    groups = label_groups(ExtractConfig.from_dict(extract_cfg), responses, load_judgments(run))
    row_of: dict[str, int] = {}
    chunks = []
    for ids, acts in iter_activation_chunks(run, model_hash):
        for i in ids:
            row_of[i] = len(row_of)
        chunks.append(acts[:, layer_row, :].to(torch.float64).numpy())
    x = np.concatenate(chunks) if chunks else np.zeros((0, d_model))
    by_id = {r["id"]: r for r in responses}
    strata = np.array([by_id[i]["condition"] if by_id[i]["condition"] == "intrinsic"
                       else f"prompted/{by_id[i]['target_value']}" for i in row_of], dtype=object)
    idx = {(v, c): (np.array([row_of[i] for i in g["pos"] if i in row_of], dtype=np.int64),
                    np.array([row_of[i] for i in g["neg"] if i in row_of], dtype=np.int64))
           for (v, c), g in groups.items() if v in values}
    return x, idx, strata


# --------------------------------------------------------------------------------------------------------------
# Stage: vectors


def _vectors(run: Path, cfg: ExtractConfig, model_info: dict[str, Any]) -> dict[str, Any]:
    from .vectors import GroupMeans, ValueVectors, cosine_by_layer, norms_by_layer

    responses = load_responses(run)
    judgments = load_judgments(run)
    groups = label_groups(cfg, responses, judgments)
    membership: dict[str, list[tuple[str, str, str]]] = {}
    for (v, c), g in groups.items():
        for side in ("pos", "neg"):
            for rid in g[side]:
                membership.setdefault(rid, []).append((v, c, side))
    gm = GroupMeans()
    all_mean = GroupMeans()
    seen: set[str] = set()
    for ids, acts in iter_activation_chunks(run, model_info["model_hash"]):
        all_mean.add(acts, ["all"] * len(ids))
        for i, rid in enumerate(ids):
            seen.add(rid)
            for key in membership.get(rid, []):
                gm.add(acts[i:i + 1], [key])
    missing = [rid for rid in membership if rid not in seen]
    nonempty = {r["id"] for r in responses if r["response_ids"]}
    missing = [m for m in missing if m in nonempty]
    if missing:
        raise DataError(f"{run}: {len(missing)} responses have no activations (first: {missing[0]}); "
                        "run the 'activations' stage for every shard")
    n_layers, d_model = model_info["n_layers"], model_info["d_model"]
    vv = ValueVectors(model_hash=model_info["model_hash"], n_layers=n_layers, d_model=d_model,
                      layers=list(range(n_layers)), judge=json.dumps(_judge_identity(run)))
    skipped: list[dict[str, Any]] = []
    for (v, c), g in groups.items():
        n_pos, n_neg = gm.count((v, c, "pos")) if (v, c, "pos") in gm.groups else 0, \
            gm.count((v, c, "neg")) if (v, c, "neg") in gm.groups else 0
        if n_pos < cfg.min_count or n_neg < cfg.min_count:
            skipped.append({"value": v, "condition": c, "expressing": n_pos, "not_expressing": n_neg})
            continue
        vec = gm.mean((v, c, "pos")) - gm.mean((v, c, "neg"))
        vv.set(v, c, vec.float(), pos=n_pos, neg=n_neg, invalid=len(g["invalid"]))
    vv.set_extra("mean_activation", all_mean.mean("all").float())
    vv.metadata.update({"skipped": skipped, "config": cfg.to_dict()})
    vv = vv.with_decomposition()
    vv.save(run / "vectors.safetensors")

    # Tables.
    mean_norm = norms_by_layer(all_mean.mean("all"))  # ‖mean residual‖ per layer, for relative scales
    rows = ["value,layer,cos_int_prompt,norm_int,norm_prompt,rel_norm_int,rel_norm_prompt"]
    both = [v for v in vv.values if (v, "intrinsic") in vv.vectors and (v, "prompted") in vv.vectors]
    for v in vv.values:
        a = vv.vectors.get((v, "intrinsic"))
        b = vv.vectors.get((v, "prompted"))
        cos = cosine_by_layer(a, b) if a is not None and b is not None else None
        na = norms_by_layer(a) if a is not None else None
        nb = norms_by_layer(b) if b is not None else None
        for li in range(n_layers):
            def f(x: torch.Tensor | None, li: int = li) -> str:
                return "" if x is None else f"{float(x[li]):.6g}"
            ra = None if na is None else na / mean_norm
            rb = None if nb is None else nb / mean_norm
            rows.append(f"{v},{li},{f(cos)},{f(na)},{f(nb)},{f(ra)},{f(rb)}")
    atomic_write_text(run / "tables" / "vectors_by_layer.csv", "\n".join(rows) + "\n")
    stats = vv.metadata.get("compliance_stats")
    if stats:
        keys = [k for k in stats if isinstance(stats[k], list) and len(stats[k]) == n_layers
                and all(isinstance(x, int | float) for x in stats[k])]
        lines = ["layer," + ",".join(keys)]
        for li in range(n_layers):
            lines.append(f"{li}," + ",".join(f"{stats[k][li]:.6g}" for k in keys))
        atomic_write_text(run / "tables" / "compliance_by_layer.csv", "\n".join(lines) + "\n")
    layer = _choose_layer(cfg, vv, mean_norm)
    summary = {"layer": layer, "values_with_both": both, "skipped": skipped,
               "n_responses": len(responses), "n_empty": len(responses) - len(nonempty)}
    if stats:
        summary["compliance_at_layer"] = {k: stats[k][layer] for k in stats
                                          if isinstance(stats[k], list) and len(stats[k]) == n_layers
                                          and all(isinstance(x, int | float) for x in stats[k])}
    if both:
        summary["cos_int_prompt_at_layer"] = {v: float(cosine_by_layer(vv.get(v, "intrinsic"),
                                                                       vv.get(v, "prompted"))[layer]) for v in both}
    atomic_write_json(run / "vectors_summary.json", summary)
    extract_figures(run, vv, layer)
    return summary


def _judge_identity(run: Path) -> dict[str, Any]:
    p = run / "judge.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _choose_layer(cfg: ExtractConfig, vv: Any, mean_norm: torch.Tensor) -> int:
    """The layer for cross-value figures: configured, or the middle-band layer where v_int is largest
    relative to the residual norm (mean over values) — where intrinsic expression is most separable."""
    n = vv.n_layers
    if cfg.layer != "auto":
        layer = int(cfg.layer)
        if not 0 <= layer < n:
            raise ConfigError(f"layer {layer} is out of range: this model has {n} layers (0..{n - 1})")
        return layer
    ints = [vv.vectors[(v, "intrinsic")] for v in vv.values if (v, "intrinsic") in vv.vectors]
    if not ints:
        return round(0.6 * (n - 1))
    rel = torch.stack([x.norm(dim=-1) for x in ints]).mean(0) / mean_norm.float().clamp(min=1e-6)
    lo, hi = n // 4, max(n // 4 + 1, (3 * n) // 4)
    return int(lo + torch.argmax(rel[lo:hi]).item())


# --------------------------------------------------------------------------------------------------------------
# Driver


def _config_hash(cfg: ExtractConfig) -> str:
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys whose value differs; a key missing from ``old`` (a config written by an older valuelens) counts as
    its default, so adding an option with a default does not orphan existing run folders."""
    defaults = ExtractConfig().to_dict()
    return sorted(k for k in new if old.get(k, defaults.get(k)) != new[k])


def has_results(run: Path) -> bool:
    """Whether ``run`` holds anything beyond its config, model identity and the prepare stage's files — i.e. a
    result a changed config would orphan (an empty responses file from an interrupted start is not one)."""
    if not run.is_dir():
        return False
    for p in run.iterdir():
        if p.name.startswith(".") or p.name in _SETUP_FILES or p.name in PREPARE_FILES:
            continue
        if p.name == "responses" and p.is_dir() and all(f.is_file() and not read_jsonl(f) for f in p.iterdir()):
            continue
        return True
    return False


def check_run_folder(run: Path, cfg: ExtractConfig) -> str:
    """How ``run`` can be used with ``cfg`` — ``"new"``, ``"resume"`` (same config) or ``"replace"`` (a config
    under which nothing was produced) — or a :class:`ConfigError` when the folder holds another config's
    results. Reads only."""
    if run.exists() and not run.is_dir():
        raise ConfigError(f"{run}: exists and is not a folder; use another --out")
    cfg_path = run / "config.json"
    if not cfg_path.exists():
        if has_results(run):
            raise ConfigError(f"{run}: holds files of something else (no config.json); use a new --out folder")
        return "new"
    try:
        old = json.loads(cfg_path.read_text(encoding="utf-8")).get("extract", {})
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        old = None
    if old is not None and not config_diff(old, cfg.to_dict()):
        return "resume"
    if not has_results(run):
        return "replace"
    diff = ", ".join(config_diff(old, cfg.to_dict())) if old is not None else "unreadable config.json"
    raise ConfigError(f"{run} was created with a different config (differs in: {diff}); "
                      "use a new --out folder or the same config")


def _clear_setup(run: Path) -> None:
    """Remove what an earlier config left in a folder without results, so nothing stale is reused."""
    for name in (*PREPARE_FILES, "model.json", "config.json"):
        (run / name).unlink(missing_ok=True)
    resp = run / "responses"
    if resp.is_dir():
        for f in resp.iterdir():
            f.unlink()
        resp.rmdir()


def run_extract(run_dir: str | Path, cfg: ExtractConfig, *, stages: Sequence[str] | None = None,
                shard: tuple[int, int] = (0, 1), lm: LoadedModel | None = None,
                pool: QueryPool | None = None) -> dict[str, Any]:
    """Run (or resume) the extraction stages into ``run_dir``; returns the vectors summary when computed.

    A run folder is tied to its config: resuming with a different config is an error (use a new folder) —
    unless nothing was produced under the old one (then it is replaced). Nothing is written before the inputs
    have been checked: config, layer against the model's depth, and (when prepare runs) the query pool and
    templates. ``pool``: a pool already loaded for ``cfg`` (``valuelens check`` loads it), not loaded again.
    """
    run = Path(run_dir)
    stages = list(stages or STAGES)
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ConfigError(f"unknown stage(s) {', '.join(bad)}; stages: {', '.join(STAGES)}")
    cfg.validate()
    mode = check_run_folder(run, cfg)

    def inputs() -> tuple[QueryPool, dict[str, list[Any]]]:
        return (pool if pool is not None else cfg.load_pool(), cfg.load_templates())

    # Data first (cheap and the likeliest mistake), then the model.
    data = inputs() if "prepare" in stages and (mode == "replace" or not (run / "items.jsonl").exists()) else None
    need_model = any(s in stages for s in ("prepare", "generate", "activations", "vectors"))
    if lm is None and need_model:
        lm = load_model(cfg.model)
    if lm is not None and cfg.layer != "auto":
        lm.spec.check_layer(int(cfg.layer))
    if lm is None and not (run / "model.json").exists():
        raise DataError(f"{run}: no model.json; run the prepare stage (`valuelens extract --stage prepare`) first")
    model_info = lm.describe() if lm is not None else json.loads((run / "model.json").read_text())
    if mode == "resume" and (run / "model.json").exists():
        prev = json.loads((run / "model.json").read_text())
        if prev.get("model_hash") != model_info.get("model_hash"):
            if has_results(run):
                raise ConfigError(f"{run} holds outputs of another model ({prev.get('model_hash', '?')[:12]}…)")
            mode = "replace"
            data = inputs() if "prepare" in stages else None
    # Checked: from here on the folder is written.
    if mode == "replace":
        log(f"valuelens: {run} holds no results of its earlier config; replacing it")
        _clear_setup(run)
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run / "model.json", model_info)
    atomic_write_json(run / "config.json", {"extract": cfg.to_dict(), "config_hash": _config_hash(cfg)})
    t0 = time.time()
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {}
    for stage in STAGES:
        if stage not in stages:
            continue
        ts = time.time()
        if stage == "prepare":
            if not (run / "items.jsonl").exists():
                assert lm is not None
                _prepare(run, cfg, lm, data)
        elif stage == "generate":
            assert lm is not None
            _generate(run, cfg, lm, shard)
        elif stage == "judge":
            _judge(run, cfg)
        elif stage == "activations":
            assert lm is not None
            _activations(run, cfg, lm, shard)
        elif stage == "vectors":
            summary = _vectors(run, cfg, model_info)
        timings[stage] = round(time.time() - ts, 2)
    data_hashes = {}
    for name in ("queries.jsonl", "items.jsonl"):
        p = run / name
        if p.exists():
            data_hashes[name] = hashlib.sha256(p.read_bytes()).hexdigest()
    qr = run / "query_report.json"
    write_manifest(run, stage="extract", config=cfg.to_dict(), name="manifest.json",
                   extra={"model": model_info, "data_hashes": data_hashes, "stages_run": stages,
                          "shard": list(shard), "timings_s": timings, "total_s": round(time.time() - t0, 2),
                          "judge": _judge_identity(run),
                          "queries": json.loads(qr.read_text(encoding="utf-8")) if qr.exists() else None})
    return summary


def extract_figures(run: Path, vv: Any, layer: int) -> list[Path]:
    """Figures of the extract stage: cos(v_int, v_prompt) by layer, norms by layer, shared-axis cosines."""
    from . import plots as _plots
    from .values import theoretical_cosine_matrix
    from .vectors import cosine_by_layer, norms_by_layer

    plt = _plots.plt()
    out: list[Path] = []
    figdir = run / "figures"
    both = [v for v in vv.values if (v, "intrinsic") in vv.vectors and (v, "prompted") in vv.vectors]
    layers = np.asarray(vv.layers)

    fig, ax = plt.subplots(figsize=(7, 4))
    for v in both:
        ax.plot(layers, cosine_by_layer(vv.get(v, "intrinsic"), vv.get(v, "prompted")).numpy(), label=v)
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(layer, color="grey", ls=":", lw=1)
    ax.set(xlabel="layer", ylabel="cos(v_intrinsic, v_prompted)",
           title="Intrinsic vs prompted value vectors" + ("" if both else " (no value has both)"))
    if both:
        ax.legend(fontsize=7, ncol=2)
    out.append(_plots.savefig(fig, figdir / "cosine_by_layer.png"))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, cond in zip(axes, ("intrinsic", "prompted"), strict=True):
        for v in vv.values:
            if (v, cond) in vv.vectors:
                ax.plot(layers, norms_by_layer(vv.get(v, cond)).numpy(), label=v)
        ax.set(xlabel="layer", title=f"‖v_{cond}‖ by layer")
    axes[0].set_ylabel("norm")
    axes[0].legend(fontsize=7, ncol=2)
    out.append(_plots.savefig(fig, figdir / "norms_by_layer.png"))

    shared = [v for v in VALUE_NAMES if (v, "shared") in vv.vectors]
    if len(shared) >= 2:
        row = vv.layer_row(layer)
        x = np.stack([vv.get(v, "shared")[row].numpy() for v in shared])
        x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
        cos = x @ x.T
        idx = [VALUE_NAMES.index(v) for v in shared]
        theo = theoretical_cosine_matrix()[np.ix_(idx, idx)]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
        for ax, mat, title in ((axes[0], cos, f"shared axes, layer {layer}"), (axes[1], theo, "theoretical circumplex")):
            im = ax.imshow(mat, vmin=-1, vmax=1, cmap="RdBu_r")
            ax.set_xticks(range(len(shared)), shared, rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(len(shared)), shared, fontsize=7)
            ax.set_title(title)
        fig.colorbar(im, ax=axes, shrink=0.8)
        out.append(_plots.savefig(fig, figdir / "shared_axis_cosines.png"))
    return out
