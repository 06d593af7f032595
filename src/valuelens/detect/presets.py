"""Named training recipes for the value detector: ``fast``, ``best`` and ``pipeline``.

=========  ==========================================================================================
``fast``   the default recipe of ``valuelens detect train`` / ``minilm-v1``: MiniLM, 4 epochs, lr 1e-4
           (head 2e-3, bias at the prior odds), early stopping and thresholds on the held-out 10 % of
           training conclusions. Unchanged training cost; its probabilities are now also calibrated.
``best``   the strongest recipe that trains on 2 CPU cores within an hour (with native bf16): two
           all-mpnet-base-v2 members (seeds 0 and 1, one shared held-out split), each 3 epochs, lr 5e-5 /
           head 2e-3, length-bucketed batches, multi-task heads (values + level-1) and the hierarchy step,
           averaged; a TF-IDF member whose weight (0 … 0.5, 0 = left out) is chosen on the held-out part;
           thresholds and Platt calibration on the held-out part. ``members=1`` halves the time.
``pipeline`` the value pipeline's judge (``valuelens run`` trains it first on a fresh machine, budget
           3 minutes): MiniLM, 1 epoch, lr 1e-4 / head 2e-3, length-bucketed batches, multi-task heads
           (10 values + 54 level-1 values), no per-epoch scoring, held-out thresholds and calibration; no
           evaluation-split pass.
=========  ==========================================================================================

Every choice was made on the training data and the validation split only (docs/detector.md has the numbers
and the command for each); thresholds and calibration never see the labels of the split that is scored.

Library use (what ``valuelens run`` needs)::

    from valuelens.detect.presets import ensure_preset
    folder = ensure_preset("pipeline")        # trains once into $VALUELENS_CACHE/detectors/<cache_name>
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .data import ValueEvalSplit
from .finetune import TrainConfig

__all__ = ["PRESETS", "Preset", "PresetResult", "default_detector_dir", "ensure_preset", "preset_config",
           "train_preset"]


@dataclass(frozen=True)
class Preset:
    """A named recipe: the neural member's :class:`TrainConfig` (bf16 resolved at run time), an optional
    TF-IDF member, and the folder name under ``$VALUELENS_CACHE/detectors`` where :func:`ensure_preset` keeps it."""

    name: str
    description: str
    config: TrainConfig
    cache_name: str
    tfidf: bool = False
    members: int = 1  # neural members: seeds seed, seed+1, … on one shared held-out split, averaged


PRESETS: dict[str, Preset] = {
    "fast": Preset(
        "fast", "MiniLM fine-tune, 4 epochs, early stopping (the default recipe, minilm-v1)",
        TrainConfig(encoder="minilm", epochs=4, lr=1e-4, head_lr=2e-3), cache_name="minilm-fast-v2"),
    "best": Preset(
        "best", "two all-mpnet-base-v2 fine-tunes (seeds 0, 1; 3 epochs, length-bucketed, multi-task heads, "
        "hierarchy) averaged, + TF-IDF if the held-out part gives it weight; ~50 min on 2 cores with native bf16",
        TrainConfig(encoder="mpnet", epochs=3, lr=5e-5, head_lr=2e-3, length_buckets=True,
                    aux_heads="values,level1", hierarchy=True),
        cache_name="mpnet-x2-best-v3", tfidf=True, members=2),
    "pipeline": Preset(
        "pipeline", "MiniLM, 1 epoch, length-bucketed, multi-task heads, no per-epoch scoring: the judge of `valuelens run`",
        TrainConfig(encoder="minilm", epochs=1, lr=1e-4, head_lr=2e-3, length_buckets=True, eval_each_epoch=False,
                    aux_heads="values,level1"),
        cache_name="minilm-pipeline-v1"),
}


def default_detector_dir() -> Path:
    """Where the pipeline's default detector lives: the ``pipeline`` preset's folder when trained, else the older
    ``minilm-v1`` when that one is trained, else the ``pipeline`` preset's folder (where it will be trained). The
    one place every judge, check and pipeline stage asks."""
    from .encoders import cache_dir

    root = cache_dir() / "detectors"
    new = root / PRESETS["pipeline"].cache_name
    old = root / "minilm-v1"
    if not (new / "detector.json").exists() and (old / "detector.json").exists():
        return old
    return new


def preset_config(name: str, *, bf16: bool | str | None = "auto", **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of preset ``name`` with bf16 resolved (``"auto"``: only where the CPU/GPU
    computes bf16 natively — emulated bf16 is many times slower) and ``overrides`` applied."""
    from ..precision import use_bf16

    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(TrainConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ConfigError(f"unknown training option(s) {', '.join(bad)} for preset {name!r}")
    cfg = replace(PRESETS[name].config, bf16=use_bf16(bf16), **overrides)
    cfg.validate()
    return cfg


@dataclass
class PresetResult:
    """Where the trained detector is, its scores on the evaluation split (empty without one), and the seconds
    from start to the saved detector (training + held-out pass + TF-IDF member; evaluation split excluded)."""

    model_dir: Path
    scores: dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0
    config: TrainConfig | None = None


def train_preset(name: str, train: ValueEvalSplit, valid: ValueEvalSplit | None, out: str | os.PathLike[str], *,
                 bf16: bool | str | None = "auto", log: Callable[[str], None] | None = None, progress: bool = True,
                 members: int | None = None, **overrides: Any) -> PresetResult:
    """Train preset ``name`` into ``out`` (resumable like :func:`~.finetune.train_detector`).

    The detector folder is ``out/model`` (one model) or ``out/ensemble`` (several members or a TF-IDF member).
    ``members`` (default: the preset's): neural members trained with seeds ``seed``, ``seed + 1``, … on the
    same held-out split (member ``i > 0`` in ``out/members/seed<seed+i>``), averaged with equal weights.
    ``valid=None`` trains without touching any evaluation split (what :func:`ensure_preset` does).
    """
    from .finetune import build_ensemble, train_detector

    preset = PRESETS.get(name)
    if preset is None:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    n_members = preset.members if members is None else members
    if n_members < 1:
        raise ConfigError(f"members must be >= 1, got {n_members}")
    cfg = preset_config(name, bf16=bf16, **overrides)
    if n_members > 1 and cfg.heldout_seed is None:  # every member holds out the same conclusions
        cfg = replace(cfg, heldout_seed=cfg.seed)
    out = Path(out).expanduser()
    t0 = time.time()
    say = log or (lambda s: None)
    res = train_detector(train, valid, cfg, out, log=log, progress=progress)
    eval_s = (len(valid) / res.scores["inference_per_second"]) if valid is not None and \
        res.scores.get("inference_per_second") else 0.0
    model_dir = out / "model"
    scores = res.scores
    dirs = [model_dir]
    for i in range(1, n_members):
        sub = out / "members" / f"seed{cfg.seed + i}"
        say(f"member {i + 1}/{n_members}: seed {cfg.seed + i} into {sub}")
        train_detector(train, None, replace(cfg, seed=cfg.seed + i), sub, log=log, progress=progress)
        dirs.append(sub / "model")
    if preset.tfidf or n_members > 1:
        t1 = time.time()
        _, ens_scores = build_ensemble(dirs, train, valid, out / "ensemble", bf16=cfg.bf16, tfidf=preset.tfidf,
                                       calibration=cfg.calibration)
        eval_s += float(ens_scores.pop("eval_seconds", 0.0))
        say(f"ensemble{' and TF-IDF member' if preset.tfidf else ''}: {time.time() - t1:.0f} s")
        model_dir = out / "ensemble"
        scores = {**ens_scores, "member_scores": res.scores}
    total = time.time() - t0 - eval_s
    return PresetResult(model_dir=model_dir, scores=scores, train_seconds=total, config=cfg)


def ensure_preset(name: str = "pipeline", data_dir: str | os.PathLike[str] | None = None, *,
                  bf16: bool | str | None = "auto", log: Callable[[str], None] | None = print) -> Path:
    """The cached detector of preset ``name`` (``$VALUELENS_CACHE/detectors/<cache_name>``), trained once per
    machine when missing (resumable: an interrupted training continues from its checkpoint). No evaluation
    split is scored, so nothing but training data is read. Returns the detector folder."""
    from .data import load_split, resolve_data_dir
    from .encoders import cache_dir

    preset = PRESETS.get(name)
    if preset is None:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    target = cache_dir() / "detectors" / preset.cache_name
    if (target / "detector.json").exists():
        return target
    work = target.parent / f"{preset.cache_name}-training"
    say = log or (lambda s: None)
    say(f"valuelens: training the {name!r} value detector into {target} — once per machine")
    train = load_split(resolve_data_dir(data_dir), "training", level1="level1" in preset.config.aux_names())
    res = train_preset(name, train, None, work, bf16=bf16, log=log, progress=log is not None)
    say(f"valuelens: {name!r} detector trained in {res.train_seconds / 60:.1f} min")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not (target / "detector.json").exists():
        if target.exists():  # a half-moved folder from an interrupted earlier call
            shutil.rmtree(target)
        res.model_dir.rename(target)
    return target
