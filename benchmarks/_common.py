"""Shared helpers for the benchmarks: model/prompt set-up, interleaved timing, memory probes, tables.

Timing on a shared machine: other jobs compete for the 2 cores, so absolute seconds drift with the load. Every
benchmark therefore runs all methods back to back inside each repeat (rotating their order), reports the median
over repeats, and computes ratios per repeat (method / baseline measured moments apart) and takes their median.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------------------
# Models and prompts


@dataclass
class BenchModel:
    model: torch.nn.Module
    tokenizer: Any
    spec: Any
    name: str  # what TransformerBridge.boot_transformers gets as model_name (a local folder, never a hub id)
    label: str


def tiny_tokenizer(vocab: int = 128) -> Any:
    """A word-level tokenizer over ``w3 … w{vocab-1}`` with pad/bos/eos = 0/1/2 (matches ``tiny_llama``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    tk = Tokenizer(models.WordLevel(vocab=words, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<pad>")
    tok.padding_side = "left"
    return tok


def load_bench_model(name: str, *, tiny: bool, workdir: Path) -> BenchModel:
    """The model under test. ``tiny``: a random 4-layer Llama and word-level tokenizer saved to ``workdir``."""
    from valuelens.models import get_arch_spec

    if tiny:
        from valuelens.testing import tiny_llama

        model = tiny_llama()
        tok = tiny_tokenizer(model.config.vocab_size)
        folder = workdir / "tiny-llama"
        folder.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(folder)
        tok.save_pretrained(folder)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder)  # TransformerBridge needs a tokenizer with a name_or_path
        tok.padding_side = "left"
        model.generation_config.pad_token_id = 0
        return BenchModel(model, tok, get_arch_spec(model), str(folder), "tiny random Llama (4 layers, d=64)")
    from valuelens.models import cache_dir, load_model

    lm = load_model(name)
    folder = cache_dir() / "models"
    cached = [p for p in folder.glob("*") if (p / "valuelens-cache.json").is_file()]
    # TransformerBridge wants a model name; give it the local cached folder of this model (offline).
    tl_name = next((str(p) for p in cached if p.name == lm.model_hash[:24]), str(folder))
    return BenchModel(lm.model, lm.tokenizer, lm.spec, tl_name, f"{lm.name} ({lm.model_hash[:12]})")


def bench_token_ids(bm: BenchModel, n: int, *, tiny: bool) -> list[list[int]]:
    """``n`` prompts as token-id lists: the shipped value-laden queries rendered with the chat template."""
    if tiny:
        g = torch.Generator().manual_seed(0)
        lengths = torch.randint(5, 21, (n,), generator=g).tolist()
        return [torch.randint(3, bm.tokenizer.vocab_size, (t,), generator=g).tolist() for t in lengths]
    from valuelens.datasets import load_queries
    from valuelens.models import TEMPLATE_DEFAULT, ChatRenderer

    queries = load_queries()
    chat = ChatRenderer(bm.tokenizer)
    texts = [chat.render(q.text, TEMPLATE_DEFAULT).text for q in queries[:n]]
    if len(texts) < n:
        raise SystemExit(f"only {len(texts)} shipped queries, asked for {n}")
    return [bm.tokenizer(t, add_special_tokens=False).input_ids for t in texts]


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    am = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, t - len(s):] = torch.tensor(list(s), dtype=torch.long)
        am[i, t - len(s):] = 1
    return ids, am


def batches(seqs: Sequence[Sequence[int]], size: int, pad_id: int) -> list[tuple[Tensor, Tensor]]:
    return [left_pad(seqs[i:i + size], pad_id) for i in range(0, len(seqs), size)]


# --------------------------------------------------------------------------------------------------------------
# Timing


def interleaved(methods: Mapping[str, Callable[[], Any]], repeats: int, *,
                warmups: Mapping[str, Callable[[], Any]] | None = None,
                progress: Callable[[str], None] | None = None) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Time each method ``repeats`` times, all methods inside every repeat, order rotated per repeat.

    ``warmups``: a cheaper call per method run once, untimed, before the repeats (default: the method itself).
    Returns ``(seconds per method per repeat, the first timed result of each method)``.
    """
    names = list(methods)
    times: dict[str, list[float]] = {n: [] for n in names}
    results: dict[str, Any] = {}
    for n in names:
        (warmups or methods)[n]()
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            gc.collect()
            t0 = time.perf_counter()
            out = methods[n]()
            times[n].append(time.perf_counter() - t0)
            results.setdefault(n, out)
            del out
        if progress is not None:
            progress(f"repeat {r + 1}/{repeats}: " + ", ".join(f"{n} {times[n][-1]:.2f}s" for n in names))
    return times, results


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def paired_ratio(times: Mapping[str, Sequence[float]], name: str, base: str) -> float:
    """Median over repeats of ``time[name] / time[base]`` in the same repeat (robust to load drift)."""
    return median([a / b for a, b in zip(times[name], times[base], strict=True)])


# --------------------------------------------------------------------------------------------------------------
# Memory


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux ≥ 4.0); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mb() -> float:
    kb = _status_kb("VmRSS")
    return (kb or 0) / 1024


def peak_rss_mb() -> float:
    kb = _status_kb("VmHWM")
    if kb is None:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS); cannot be reset
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)
    return kb / 1024


# --------------------------------------------------------------------------------------------------------------
# Output


def machine_note() -> dict[str, Any]:
    import transformers

    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells[1:]]
    return "\n".join(lines)


def _fmt(c: Any) -> str:
    if isinstance(c, float):
        if c != c:  # nan
            return "n/a"
        return f"{c:.3g}" if abs(c) < 1e-2 and c != 0 else f"{c:.3f}"
    return "n/a" if c is None else str(c)


def finish(res: dict[str, Any], text: str, json_path: Path | None) -> dict[str, Any]:
    """Print a benchmark's report, keep it in the results and write them as JSON when asked."""
    import json

    print(text, flush=True)
    res["report"] = text
    if json_path is not None:
        json_path.write_text(json.dumps(res, indent=2, default=str), encoding="utf-8")
    return res
