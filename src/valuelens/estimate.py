"""How much work an extract run is, and how long it will take on this device — before it starts.

``valuelens extract`` and ``valuelens run`` print this on a fresh run folder; ``--dry-run`` prints only this and
exits. Counts come from the config (items = intrinsic queries + prompted responses per value × values; tokens
to generate ≤ items × ``max_new_tokens``; tokens to re-read for activations ≈ items × (prompt +
``max_new_tokens``)). Time comes from a short warm-up measured on the chosen device with the run's own
prompts and batch size: one forward over a batch and the same batch generating k₁ and k₂ new tokens (forced
length) give, by a least-squares line, the prefill time and the time per decoding step, and one capture batch gives the re-read time per response. The estimate is an
upper bound for generation (answers that stop early cost less) and covers the extract stages only (judging
with the detector and the analysis sections are not included).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import DataError
from .extract import ExtractConfig
from .models import NO_SYSTEM, LoadedModel

__all__ = ["WARMUP_FROM_TOKENS", "Estimate", "estimate_extract", "extract_config_for_run"]

_K1, _K2 = 2, 10  # decoding steps of the two warm-up generations
# Runs shorter than this print counts only (unless asked, e.g. --dry-run): the warm-up costs ~15 s on 2 CPU
# cores, 2 % of the default run (46,080 tokens, whose time is in the README), for a forecast of minutes.
WARMUP_FROM_TOKENS = 100_000


@dataclass
class Estimate:
    """Work and time of an extract run (times in seconds; None when no warm-up was measured)."""

    model: str
    device: str
    dtype: str
    items: int
    intrinsic: int
    prompted: int
    max_new_tokens: int
    tokens_to_generate: int  # upper bound: every answer runs to max_new_tokens
    tokens_to_capture: int
    batches: int
    workers: int = 1
    warmup: dict[str, float] = field(default_factory=dict)
    generate_s: float | None = None
    capture_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        lines = [f"estimate: {self.items:,} responses ({self.intrinsic:,} intrinsic + {self.prompted:,} prompted) "
                 f"in {self.batches:,} batches; ≤ {self.tokens_to_generate:,} tokens to generate "
                 f"(≤ {self.max_new_tokens} each), ~{self.tokens_to_capture:,} tokens to re-read for activations"]
        if self.generate_s is None or self.capture_s is None:
            lines.append("estimate: time not measured (short run, or no model here); --dry-run measures it")
        else:
            w = self.warmup
            per = f" on {self.workers} workers" if self.workers > 1 else ""
            lines.append(
                f"estimate on {self.device} ({self.dtype}){per}: generate ≤ {_hms(self.generate_s)}, activations "
                + (f"~{_hms(self.capture_s)}" if self.capture_s else "read off the decoding steps")
                + f", extract ≤ {_hms(self.generate_s + self.capture_s)} (warm-up: prefill "
                f"{w['prefill_s']:.2f} s and {w['step_s'] * 1000:.0f} ms per decoding step for a batch of "
                f"{int(w['batch'])}, capture {w['capture_s_per_response'] * 1000:.0f} ms per response; judging "
                "and analysis not included)")
        return "\n".join(lines)


def _hms(s: float) -> str:
    s = max(0.0, s)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _work(cfg: ExtractConfig) -> tuple[int, int, list[str]]:
    """(intrinsic count, prompted count, a few rendered-prompt sources) from the config and its query pool."""
    from .datasets import load_queries

    queries = load_queries(cfg.queries, column=cfg.query_column)
    if not queries:
        raise DataError(f"{cfg.queries or 'shipped queries'}: no queries")
    intrinsic = min(cfg.n_intrinsic, len(queries))
    prompted = cfg.n_prompted_per_value * len(cfg.values)
    return intrinsic, prompted, [q.text for q in queries]


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _warmup(lm: LoadedModel, cfg: ExtractConfig, texts: list[str]) -> dict[str, float]:
    """Time one generation batch at two forced lengths and one capture batch, with the run's settings."""
    import torch

    from .datasets import load_system_prompts
    from .hooks import forward_capture
    from .models import autocast

    gcfg = cfg.generation()
    batch = max(1, min(cfg.batch_size, len(texts)))
    systems = [t.text for ts in load_system_prompts(cfg.system_prompts, values=cfg.values).values() for t in ts]
    # Half intrinsic (no system turn), half prompted (a value system prompt): the run's mix of prompt lengths.
    prompts = [lm.chat.render(texts[i % len(texts)], NO_SYSTEM if i % 2 == 0 else systems[i % len(systems)]).text
               for i in range(batch)]
    tok = lm.tokenizer
    dev = lm.device
    enc = {k: v.to(dev) for k, v in tok(prompts, return_tensors="pt", padding=True,
                                         add_special_tokens=False).items()}
    kw: dict[str, Any] = dict(do_sample=gcfg.do_sample, pad_token_id=tok.pad_token_id,
                              repetition_penalty=gcfg.repetition_penalty)
    if gcfg.do_sample:
        kw.update(temperature=gcfg.temperature, top_p=gcfg.top_p)
    else:
        kw.update(temperature=None, top_p=None, top_k=None)

    def gen(k: int, n: int | None = None) -> float:
        inputs = enc if n is None else {key: v[:n] for key, v in enc.items()}
        t0 = time.perf_counter()
        with torch.no_grad(), autocast(dev, gcfg.bf16):
            lm.model.generate(**inputs, max_new_tokens=k, min_new_tokens=k, **kw)  # forced length
        _sync(dev)
        return time.perf_counter() - t0

    gen(1, 1)  # first call: allocations, kernels
    t0 = time.perf_counter()
    with torch.no_grad(), autocast(dev, gcfg.bf16):
        lm.model(**enc)  # the prefill alone (one forward over the batch)
    _sync(dev)
    ks, ts = [0, _K1, _K2], [time.perf_counter() - t0, gen(_K1), gen(_K2)]
    # Least-squares line through (steps, seconds): intercept = prefill, slope = one decoding step. On a loaded
    # machine noise can flatten it; then fall back to the longer run's time per step (an upper bound).
    mk, mt = sum(ks) / 3, sum(ts) / 3
    step = sum((k - mk) * (t - mt) for k, t in zip(ks, ts, strict=True)) / sum((k - mk) ** 2 for k in ks)
    if step <= 0:
        step = ts[2] / (_K2 + 1)
    prefill = max(0.0, mt - step * mk)
    # Capture: prompt + max_new_tokens tokens per response, the run's capture batch size.
    pad = tok.pad_token_id or 0
    cb = max(1, min(cfg.capture_batch_size, len(prompts)))
    ids = [tok(p, add_special_tokens=False).input_ids + [pad] * cfg.max_new_tokens for p in prompts[:cb]]
    t = max(len(x) for x in ids)
    input_ids = torch.full((cb, t), pad, dtype=torch.long)
    attn = torch.zeros((cb, t), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, t - len(x):] = torch.tensor(x)
        attn[i, t - len(x):] = 1
    forward_capture(lm.model, input_ids[:1], attn[:1], spec=lm.spec)
    t0 = time.perf_counter()
    forward_capture(lm.model, input_ids, attn, spec=lm.spec, bf16=cfg.capture_in_bf16())
    _sync(dev)
    capture = (time.perf_counter() - t0) / cb
    prompt_tokens = float(enc["attention_mask"].sum()) / batch
    return {"batch": float(batch), "prefill_s": prefill, "step_s": step, "capture_s_per_response": capture,
            "mean_prompt_tokens": prompt_tokens}


def estimate_extract(cfg: ExtractConfig, lm: LoadedModel | None = None, *, warmup: bool | None = None,
                     workers: int = 1) -> tuple[Estimate, LoadedModel | None]:
    """Counts for ``cfg`` and, with ``warmup``, times measured on ``lm`` (loaded here when None; returned so
    the run can reuse it). ``warmup=None``: measure only runs of at least :data:`WARMUP_FROM_TOKENS` tokens to
    generate (a smoke run needs no forecast, and the warm-up would cost a noticeable part of it).
    ``workers``: generation and capture split over this many (Ray) workers."""
    from .models import load_model

    cfg.validate()
    intrinsic, prompted, texts = _work(cfg)
    items = intrinsic + prompted
    batches = math.ceil(items / cfg.batch_size)
    measured: dict[str, float] = {}
    if warmup is None:
        warmup = items * cfg.max_new_tokens >= WARMUP_FROM_TOKENS
    if warmup:
        lm = lm if lm is not None else load_model(cfg.model)
        measured = _warmup(lm, cfg, texts)
    prompt_tokens = measured.get("mean_prompt_tokens") or _rough_prompt_tokens(texts)
    est = Estimate(model=cfg.model, device=str(lm.device) if lm else "?",
                   dtype=str(lm.info.get("dtype", "?")) if lm else "?", items=items, intrinsic=intrinsic,
                   prompted=prompted, max_new_tokens=cfg.max_new_tokens,
                   tokens_to_generate=items * cfg.max_new_tokens,
                   tokens_to_capture=int(items * (prompt_tokens + cfg.max_new_tokens)), batches=batches,
                   workers=max(1, workers), warmup=measured)
    if measured:
        per_batch = measured["prefill_s"] + cfg.max_new_tokens * measured["step_s"]
        est.generate_s = batches * per_batch / est.workers
        # Generation in the capture's precision also records the activations (extract's fused capture).
        est.capture_s = 0.0 if cfg.fused_capture() and cfg.gen_backend == "hf" else \
            items * measured["capture_s_per_response"] / est.workers
    return est, lm


def _rough_prompt_tokens(texts: list[str]) -> float:
    """Without a tokenizer: ~1.3 tokens per word plus ~10 of chat markup."""
    words = [len(t.split()) for t in texts[:1000]] or [0]
    return 1.3 * sum(words) / len(words) + 10


def extract_config_for_run(quick: bool, model: str | None, overrides: dict[str, Any] | None) -> ExtractConfig:
    """The extract config ``valuelens run`` would use, without training or loading its judge (judging is not
    estimated): the same quick/default rules as :func:`valuelens.pipeline.run_pipeline`."""
    ex = dict(overrides or {})
    if model:
        ex["model"] = model
    ex.setdefault("judge", "lexicon")
    if quick:
        return ExtractConfig.quick(**ex)
    ex.setdefault("label_mode", "rank")
    return ExtractConfig.from_dict(ex)
