"""``valuelens calibrate``: prove the instrument can see an effect before it reports an absence.

Runs on an extract run folder (``valuelens run`` calls it after extract; ``valuelens calibrate --out DIR`` runs a
quick extract first) and writes ``DIR/calibration.json`` — the report's first table, "Instrument check" — and
``DIR/calibrate/`` (tables, figures, organisms' adapters):

* ``planted`` — a known direction planted in the activations is recovered (:mod:`.planted`): recovery cosine
  with its CI against the null, the sensitivity curve against strength and number of responses, and a check of
  the hook machinery on the real model;
* ``organism`` — LoRA model organisms whose values really changed (context distillation, :mod:`.organism`):
  the questionnaire, the judge and the activations must move for the target value and not for a control
  organism, and monitoring must predict the target from the training data alone;
* ``judge`` — the run's judge on labelled chat answers (its own domain) and on the run's prompted responses,
  with chance levels;
* ``ceiling`` — how far the value system prompt itself moves the questionnaire, per value: the scale against
  which steering effects are read.

Every number has a CI over a named unit and, for effects, a permutation p-value; each part is cached in
``calibrate/<part>.json`` under a hash of its options, so an interrupted calibration resumes part by part.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ..config import strict_config
from ..errors import ConfigError, DataError
from ..progress import log
from ..runio import atomic_write_json, atomic_write_text, read_jsonl, write_manifest
from ..stats import paired_effect
from ..values import VALUE_NAMES, get_value

__all__ = ["PARTS", "CalibrateConfig", "run_calibrate"]

PARTS = ("planted", "judge", "ceiling", "organism")


@dataclass
class CalibrateConfig:
    layer: int | None = None  # default: the layer chosen by extract
    seed: int = 0
    batch_size: int = 32  # prompts per scoring pass (as analyze's batch_size)
    parts: list[str] = field(default_factory=lambda: list(PARTS))
    # Planted direction
    # Relative to the layer's mean residual norm. The headline plant is ~2x the model's own value vectors
    # (‖v_prompt‖ ≈ 0.2 of the residual norm on SmolLM2), where a working instrument must recover it almost exactly;
    # the sensitivity curve over plant_strengths shows the smallest plant it still sees above the null.
    plant_strength: float = 0.5
    plant_strengths: list[float] = field(default_factory=lambda: [0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
    plant_fractions: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0])
    plant_boot: int = 200
    machinery_records: int = 16
    # Model organisms
    organisms: list[str] = field(default_factory=lambda: ["Benevolence", "Power"])
    organism_control: bool = True
    # A second control organism (another seed): the placebo against which "the control is not detected" is
    # tested — a value organism is compared with the control, the control with the placebo, on the same units.
    organism_placebo: bool = True
    organism_candidates: int = 3  # best-of-k answers under the value prompt, chosen by the run's judge
    # Training answers start with a shipped first-person statement of the value (value-neutral for control and
    # placebo), continued by the model under the value prompt: distillation alone carries too weak a signal on
    # SmolLM2 (organism.OrganismConfig.openers).
    organism_openers: bool = True
    organism_train: int = 96
    organism_epochs: int = 3
    organism_lr: float = 1e-3
    organism_rank: int = 8
    organism_eval_queries: int = 24
    organism_shift_responses: int = 120
    pvq_items_per_value: int = 6
    # The prompt as ceiling
    ceiling_templates: int = 3
    # The judge in its own domain
    judge_split: str = "test"

    QUICK: ClassVar[dict[str, Any]] = {"organisms": ["Benevolence"], "organism_train": 64, "organism_epochs": 3,
                                       "organism_eval_queries": 12, "organism_shift_responses": 48,
                                       "plant_boot": 100, "plant_strengths": [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5],
                                       "ceiling_templates": 1}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CalibrateConfig:
        return strict_config(cls, d, "calibrate")

    @classmethod
    def quick(cls, **overrides: Any) -> CalibrateConfig:
        return cls.from_dict({**cls.QUICK, **overrides})

    def validate(self) -> None:
        bad = [p for p in self.parts if p not in PARTS]
        if bad:
            raise ConfigError(f"unknown calibrate part(s) {', '.join(bad)}; parts: {', '.join(PARTS)}")
        self.organisms = [get_value(v).name for v in self.organisms]
        if not self.plant_strength > 0:
            raise ConfigError("plant_strength must be > 0")
        if any(not 0 < f <= 1 for f in self.plant_fractions):
            raise ConfigError("plant_fractions must be in (0, 1]")
        for k in ("organism_train", "organism_epochs", "organism_eval_queries", "organism_shift_responses",
                  "plant_boot", "ceiling_templates", "organism_candidates"):
            if int(getattr(self, k)) < 1:
                raise ConfigError(f"{k} must be >= 1")
        if not 1 <= self.pvq_items_per_value <= 6:
            raise ConfigError("pvq_items_per_value must be in 1..6")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def part_hash(self, part: str, keys: tuple[str, ...]) -> str:
        d = self.to_dict()
        return hashlib.sha256(json.dumps({"part": part, **{k: d[k] for k in keys}}, sort_keys=True,
                                         default=str).encode()).hexdigest()[:16]


_PART_KEYS: dict[str, tuple[str, ...]] = {
    "planted": ("layer", "seed", "plant_strength", "plant_strengths", "plant_fractions", "plant_boot",
                "machinery_records"),
    "judge": ("judge_split", "seed"),
    "ceiling": ("seed", "batch_size", "pvq_items_per_value", "ceiling_templates"),
    "organism": ("layer", "seed", "batch_size", "organisms", "organism_control", "organism_placebo",
                 "organism_candidates", "organism_openers", "organism_train",
                 "organism_epochs", "organism_lr", "organism_rank", "organism_eval_queries",
                 "organism_shift_responses", "pvq_items_per_value"),
}


class _Run:
    """What every part needs from the extract run folder."""

    def __init__(self, run: Path, lm: Any, layer: int | None) -> None:
        from ..vectors import ValueVectors

        self.run = run
        self.lm = lm
        self.ecfg = json.loads((run / "config.json").read_text()).get("extract", {})
        self.vv = ValueVectors.load(run / "vectors.safetensors")
        self.vv.check_compatible(lm.model_hash, lm.spec.d_model, lm.spec.n_layers)
        self.values = [v for v in self.vv.values if (v, "intrinsic") in self.vv.vectors
                       and (v, "prompted") in self.vv.vectors]
        summary = json.loads((run / "vectors_summary.json").read_text())
        self.layer = lm.spec.check_layer(layer) if layer is not None else int(summary["layer"])
        self.dir = run / "calibrate"
        (self.dir / "tables").mkdir(parents=True, exist_ok=True)
        (self.dir / "figures").mkdir(parents=True, exist_ok=True)
        self._norm: float | None = None

    @property
    def norm(self) -> float:
        """Mean residual norm at the layer (the unit of every relative strength)."""
        if self._norm is None:
            from ..evals.capability import residual_norms

            cached = self.run / "analyze" / "capability" / "tables" / "residual_norms.csv"
            if cached.exists():
                self._norm = float(pd.read_csv(cached)["mean_norm"].iloc[self.layer])
            else:
                self._norm = float(residual_norms(self.lm, layers=[self.layer])[0])
        return self._norm

    def judge(self) -> Any:
        from ..extract import ExtractConfig, make_judge

        return make_judge(ExtractConfig.from_dict(self.ecfg))

    def csv(self, name: str, df: pd.DataFrame) -> None:
        atomic_write_text(self.dir / "tables" / name, df.to_csv(index=False, float_format="%.6g"))


# ---------------------------------------------------------------------------------------------------- planted


def _planted(r: _Run, cfg: CalibrateConfig) -> dict[str, Any]:
    from ..extract import layer_groups, load_responses
    from ..plots import plt, savefig
    from .planted import PlantData, machinery_check, planted_recovery, random_unit

    x, g, strata = layer_groups(r.run, r.ecfg, r.vv.model_hash, r.vv.layer_row(r.layer), r.values,
                                r.lm.spec.d_model)
    responses = load_responses(r.run)
    data = PlantData(x=x, groups=g, strata=strata, values=list(r.values), norm=r.norm)
    out: dict[str, Any] = {"layer": r.layer, "strength": cfg.plant_strength, "residual_norm": round(r.norm, 4),
                           "n_responses": len(x), "values": list(r.values)}
    for path in ("prompted", "intrinsic"):
        res = planted_recovery(data, path=path, strength=cfg.plant_strength, n_boot=cfg.plant_boot, seed=cfg.seed)
        key = "recovery" if path == "prompted" else "intrinsic"
        out[f"{key}_cos"] = round(res["cos"], 4)
        out[f"{key}_ci"] = [round(v, 4) for v in res["ci"]]
        out[f"{key}_null_p95"] = round(res["null_p95"], 4)
    out["null_cos_p95"] = out.pop("recovery_null_p95")
    curve, ncurve = [], []
    for path in ("prompted", "intrinsic"):
        for s in cfg.plant_strengths:
            res = planted_recovery(data, path=path, strength=s, n_boot=max(50, cfg.plant_boot // 2), seed=cfg.seed)
            curve.append({"path": path, "strength": s, "cos": res["cos"], "ci_low": res["ci"][0],
                          "ci_high": res["ci"][1], "null_p95": res["null_p95"]})
        for f in cfg.plant_fractions:
            res = planted_recovery(data, path=path, strength=cfg.plant_strength, fraction=f,
                                   n_boot=max(50, cfg.plant_boot // 2), seed=cfg.seed)
            ncurve.append({"path": path, "fraction": f, "n": res["n"], "cos": res["cos"], "ci_low": res["ci"][0],
                           "ci_high": res["ci"][1], "null_p95": res["null_p95"]})
    cdf, ndf = pd.DataFrame(curve), pd.DataFrame(ncurve)
    r.csv("planted_strength.csv", cdf)
    r.csv("planted_responses.csv", ndf)
    for path in ("prompted", "intrinsic"):
        sub = cdf[(cdf["path"] == path) & (cdf["strength"] > 0) & (cdf["ci_low"] > cdf["null_p95"])]
        out[f"smallest_strength_recovered_{path}"] = float(sub["strength"].min()) if len(sub) else None
    # The machinery on the real model: plant with the hooks during a capture of a few responses.
    recs = [x_ for x_ in responses if x_["response_ids"]][: cfg.machinery_records]
    d = random_unit(r.lm.spec.d_model, cfg.seed)
    out["machinery"] = machinery_check(r.lm, recs, r.layer, d, cfg.plant_strength * r.norm,
                                       batch_size=cfg.batch_size)
    fig, axes = plt().subplots(1, 2, figsize=(11, 3.8))
    for path, m in (("prompted", "o"), ("intrinsic", "s")):
        c = cdf[cdf["path"] == path]
        line = axes[0].plot(c["strength"].clip(lower=1e-4), c["cos"], marker=m, label=f"{path} path")[0]
        axes[0].fill_between(c["strength"].clip(lower=1e-4), c["ci_low"], c["ci_high"], alpha=0.15,
                             color=line.get_color())
        axes[0].plot(c["strength"].clip(lower=1e-4), c["null_p95"], ls=":", color=line.get_color(),
                     label=f"{path}: null p95")
        n = ndf[ndf["path"] == path]
        line = axes[1].plot(n["n"], n["cos"], marker=m, label=f"{path} path")[0]
        axes[1].fill_between(n["n"], n["ci_low"], n["ci_high"], alpha=0.15, color=line.get_color())
    axes[0].axvline(cfg.plant_strength, color="grey", ls=":")
    axes[0].set(xscale="log", xlabel="planted strength (× mean residual norm; 0 drawn at 1e-4)",
                ylabel="cos(recovered, planted)", title=f"Recovery vs strength, layer {r.layer}")
    axes[1].set(xlabel="responses used", ylabel="cos(recovered, planted)",
                title=f"Recovery vs responses at strength {cfg.plant_strength:g}")
    for ax in axes:
        ax.legend(fontsize=7)
    savefig(fig, r.dir / "figures" / "planted_sensitivity.png")
    return out


# ------------------------------------------------------------------------------------------------------ judge


def _judge(r: _Run, cfg: CalibrateConfig) -> dict[str, Any]:
    from ..judges.indomain import evaluate_judge, prompted_top1

    judge = r.judge()
    ind = evaluate_judge(judge, cfg.judge_split, seed=cfg.seed)
    pt = prompted_top1(r.run, seed=cfg.seed)
    keep = ("in_domain_macro_f1", "in_domain_macro_f1_ci", "in_domain_official_f1", "in_domain_top1",
            "in_domain_top1_ci", "chance_top1", "majority_top1", "chance_macro_f1", "all_ones_macro_f1", "n",
            "better_than_chance")
    out = {k: ind.get(k) for k in keep}
    out["judge"] = judge.describe()
    out["split"] = cfg.judge_split
    out["prompted_top1"] = pt.get("prompted_top1")
    out["prompted_top1_ci"] = pt.get("prompted_top1_ci")
    out["prompted_chance_top1"] = pt.get("chance_top1")
    out["prompted_label_gap"] = pt.get("prompted_label_gap")
    out["prompted_n"] = pt.get("n")
    lo = (out.get("in_domain_top1_ci") or [None])[0]
    plo = (out.get("prompted_top1_ci") or [None])[0]
    out["better_than_chance_in_domain"] = bool(lo is not None and lo > (out.get("chance_top1") or 1))
    out["better_than_chance_prompted"] = bool(plo is not None and plo > (out.get("prompted_chance_top1") or 1))
    per = ind.get("per_value")
    if isinstance(per, dict):
        r.csv("judge_in_domain.csv", pd.DataFrame([{"value": k, **v} for k, v in per.items()
                                                    if isinstance(v, dict)]))
    return out


# ---------------------------------------------------------------------------------------------------- ceiling


def _unit_y(base: list[dict[str, Any]], steered: list[dict[str, Any]], target: str) -> np.ndarray:
    """Per target item: Δ(item) − mean Δ of the other values' items (6-point scale)."""
    b = {x["id"]: x["expected"] for x in base}
    delta = {x["id"]: x["expected"] - b[x["id"]] for x in steered}
    others = float(np.mean([delta[x["id"]] for x in steered if x["value"] != target]))
    return np.array([delta[x["id"]] - others for x in steered if x["value"] == target])


def _pvq(cfg: CalibrateConfig) -> list[Any]:
    from ..analysis.common import pvq_items

    return pvq_items("en", cfg.pvq_items_per_value)


def _ceiling(r: _Run, cfg: CalibrateConfig) -> dict[str, Any]:
    """The questionnaire shift the value system prompt itself causes, per value (mean over templates)."""
    from ..datasets import load_system_prompts
    from ..evals.questionnaire import administer

    items = _pvq(cfg)
    base = administer(r.lm, items, "en", batch_size=cfg.batch_size)
    templates = load_system_prompts(values=list(r.values) or list(VALUE_NAMES))
    rows, per = [], {}
    for v in (r.values or list(VALUE_NAMES)):
        rng = random.Random(f"{cfg.seed}/ceiling/{v}")
        chosen = rng.sample(templates[v], min(cfg.ceiling_templates, len(templates[v])))
        ys = []
        for t in chosen:
            res = administer(r.lm, items, "en", system=t.text, batch_size=cfg.batch_size)
            ys.append(_unit_y(base, res, v))
        y = np.mean(ys, axis=0)  # per target item, mean over templates
        pe = paired_effect(y, seed=cfg.seed)
        per[v] = {"effect": round(pe.effect, 4), "ci": [round(pe.ci_low, 4), round(pe.ci_high, 4)],
                  "p_value": pe.p_value, "n_items": pe.n}
        rows += [{"value": v, "item": i, "y": float(x)} for i, x in enumerate(y)]
    r.csv("prompt_ceiling_items.csv", pd.DataFrame(rows))
    allv = np.array([x["y"] for x in rows])
    pe = paired_effect(allv, seed=cfg.seed, strata=[x["value"] for x in rows])
    return {"metric": "Δ target − Δ others on the 6-point scale under the value's own system prompt",
            "per_value": per, "mean": round(pe.effect, 4), "mean_ci": [round(pe.ci_low, 4), round(pe.ci_high, 4)],
            "p_value": pe.p_value, "templates_per_value": cfg.ceiling_templates, "items_per_value": len(items) // 10}


# --------------------------------------------------------------------------------------------------- organism


def _held_out_queries(r: _Run, n: int, seed: int) -> list[str]:
    used = {it["query_id"] for it in read_jsonl(r.run / "items.jsonl")}
    qs = read_jsonl(r.run / "queries.jsonl")  # the run's pool as extract loaded it
    rest = [q["text"] for q in qs if q["id"] not in used]
    if len(rest) < n:
        rest += [q["text"] for q in qs if q["text"] not in set(rest)]
    random.Random(f"{seed}/organism").shuffle(rest)
    return rest[:n]


def _free_answers(lm: Any, queries: list[str], path: Path, cfg: CalibrateConfig) -> list[str]:
    from ..generate import GenerationConfig, GenItem, generate_to_file
    from ..models import NO_SYSTEM

    items = [GenItem(id=f"{i:04d}", prompt=lm.chat.render(q, NO_SYSTEM), meta={}) for i, q in enumerate(queries)]
    recs = generate_to_file(lm, items, path, GenerationConfig(max_new_tokens=48, batch_size=16, seed=cfg.seed),
                            desc=f"free answers {path.stem}")
    return [x["response"] for x in recs]


def _shift(lm_a: Any, lm_b: Any, records: list[dict[str, Any]], layer: int, batch: int) -> np.ndarray:
    """Per response: mean activation over its response tokens at ``layer`` under ``lm_a`` minus under ``lm_b``
    (teacher-forced on the same tokens) → ``[N, D]``."""
    from ..generate import capture_responses

    def acts(lm: Any) -> dict[str, np.ndarray]:
        out = {}
        for ids, a in capture_responses(lm, records, layers=[layer], batch_size=batch, desc="organism shift"):
            for i, row in zip(ids, a[:, 0].double().cpu().numpy(), strict=True):
                out[i] = row
        return out
    a, b = acts(lm_a), acts(lm_b)
    return np.stack([a[x["id"]] - b[x["id"]] for x in records])


def _flat(vs: dict[str, Any]) -> dict[str, Any]:
    """``versus()`` output in the keys :func:`_detected` reads."""
    return {f"{m}_{k}": vs[m][src] for m in ("questionnaire", "activation") if m in vs
            for k, src in (("p", "p_value"), ("delta", "delta"))}


def _placebo_differs(m: dict[str, Any], alpha: float = 0.05) -> bool:
    """Control vs placebo on one measure: two-sided, Bonferroni over the two measures — a difference in either
    direction is something the test sees that is not a value."""
    return bool(m["p_value"] < alpha / 2)


def _detected(res: dict[str, Any], alpha: float = 0.05) -> bool:
    """A shift in the target's direction (questionnaire or activations) with p < α/2 (Bonferroni: two tests)."""
    alpha = alpha / 2
    q = res.get("questionnaire_p") is not None and res["questionnaire_p"] < alpha and res["questionnaire_delta"] > 0
    a = (res.get("activation_p") is not None and res["activation_p"] < alpha
         and (res.get("activation_delta") or 0) > 0)
    return bool(q or a)


def _organism(r: _Run, cfg: CalibrateConfig) -> dict[str, Any]:
    from ..extract import load_responses
    from ..models import apply_adapter
    from .organism import OrganismConfig, build_training_data, monitor_dataset, train_organism

    odir = r.dir / "organisms"
    n_eval = cfg.organism_eval_queries
    queries = _held_out_queries(r, cfg.organism_train + n_eval, cfg.seed)
    train_q, eval_q = queries[: cfg.organism_train], queries[cfg.organism_train:]
    if len(eval_q) < 2:
        raise DataError(f"{r.run}: too few held-out queries for the organisms ({len(queries)})")
    controls = (["control"] + (["placebo"] if cfg.organism_placebo else [])) if cfg.organism_control else []
    names = [*cfg.organisms, *controls]
    data, adapters = {}, {}
    judge = r.judge()
    for name in names:
        value = None if name in ("control", "placebo") else name
        ocfg = OrganismConfig(value=value, n_train=cfg.organism_train, epochs=cfg.organism_epochs,
                              lr=cfg.organism_lr, rank=cfg.organism_rank,
                              seed=cfg.seed + (1 if name == "placebo" else 0),
                              candidates=cfg.organism_candidates if value else 1, openers=cfg.organism_openers)

        def score(texts: list[str], value: str | None = value) -> np.ndarray:
            return np.nan_to_num(judge.judge(texts, [value]).scores[:, 0], nan=0.0)
        folder = odir / name.lower()
        data[name] = build_training_data(r.lm, train_q, ocfg, folder / "train_generations.jsonl",
                                         score=score if value else None)
        # The organism's training set as query/response pairs: what `valuelens monitor` reads.
        atomic_write_text(folder / "train.jsonl", "".join(
            json.dumps({k: x[k] for k in ("query", "response", "system", "opener", "score") if k in x}) + "\n"
            for x in data[name]))
        meta = train_organism(r.lm, data[name], ocfg, folder / "adapter", log=log)
        adapters[name] = (folder / "adapter", meta)
    items = _pvq(cfg)
    from ..evals.questionnaire import administer

    base_q = administer(r.lm, items, "en", batch_size=cfg.batch_size)
    base_free = _free_answers(r.lm, eval_q, odir / "base_free.jsonl", cfg)
    shift_recs = [x for x in load_responses(r.run) if x["condition"] == "intrinsic" and x["response_ids"]]
    shift_recs = shift_recs[: cfg.organism_shift_responses]
    results: dict[str, Any] = {}
    qrows, erows = [], []
    per_unit: dict[tuple[str, str], dict[str, np.ndarray]] = {}  # (organism, target) -> measure -> units
    for name in names:
        olm = apply_adapter(r.lm, adapters[name][0])
        q = administer(olm, items, "en", batch_size=cfg.batch_size)
        free = _free_answers(olm, eval_q, odir / name.lower() / "free.jsonl", cfg)
        targets = cfg.organisms if name in ("control", "placebo") else [name]
        res: dict[str, Any] = {"train": {k: adapters[name][1].get(k) for k in
                                         ("n_examples", "steps", "train_seconds", "loss_first", "loss_last")}}
        jb = judge.judge(base_free, [get_value(t).name for t in targets])
        jo = judge.judge(free, [get_value(t).name for t in targets])
        sh = _shift(olm, r.lm, shift_recs, r.layer, cfg.batch_size)
        mean_shift = sh.mean(axis=0)
        units = {v: r.vv.get(v, "prompted")[r.vv.layer_row(r.layer)].double().numpy() for v in r.values}
        units = {v: u / max(np.linalg.norm(u), 1e-12) for v, u in units.items()}
        cos = {v: float(mean_shift @ u / max(np.linalg.norm(mean_shift), 1e-12)) for v, u in units.items()}
        for t in targets:
            y = _unit_y(base_q, q, t)
            pe = paired_effect(y, seed=cfg.seed)
            qrows += [{"organism": name, "target": t, "item": i, "y": float(v)} for i, v in enumerate(y)]
            j = [x.name for x in jb.values].index(t)
            e = (jo.labels[:, j].astype(float) - jb.labels[:, j].astype(float))
            ee = paired_effect(e, seed=cfg.seed)
            erows += [{"organism": name, "target": t, "query": i, "base": int(jb.labels[i, j]),
                       "organism_expressed": int(jo.labels[i, j])} for i in range(len(e))]
            others = [v for v in r.values if v != t]
            proj = sh @ np.stack([units[v] for v in r.values]).T  # [N, V]
            col = list(r.values).index(t) if t in r.values else None
            act = None
            per_unit[(name, t)] = {"questionnaire": y, "expression": e}
            if col is not None and others:
                d_resp = proj[:, col] - proj[:, [list(r.values).index(v) for v in others]].mean(axis=1)
                act = paired_effect(d_resp, seed=cfg.seed)
                per_unit[(name, t)]["activation"] = d_resp
            rank = (sorted(cos, key=lambda v: -cos[v]).index(t) + 1) if t in cos else None
            res[t] = {"questionnaire_delta": round(pe.effect, 4), "questionnaire_ci": [round(pe.ci_low, 4),
                                                                                   round(pe.ci_high, 4)],
                      "questionnaire_p": pe.p_value, "questionnaire_n": pe.n,
                      "expression_delta": round(ee.effect, 4), "expression_ci": [round(ee.ci_low, 4),
                                                                               round(ee.ci_high, 4)],
                      "expression_p": ee.p_value, "expression_n": ee.n,
                      "shift_cos_target": round(cos.get(t, float("nan")), 4),
                      "shift_cos_others_mean": round(float(np.mean([cos[v] for v in others])), 4) if others else None,
                      "shift_rank": rank,
                      "activation_delta": round(act.effect, 5) if act else None,
                      "activation_ci": [round(act.ci_low, 5), round(act.ci_high, 5)] if act else None,
                      "activation_p": act.p_value if act else None, "activation_n": act.n if act else 0}
        res["shift_cos"] = {v: round(c, 4) for v, c in cos.items()}
        results[name] = res
        del olm
    r.csv("organism_questionnaire.csv", pd.DataFrame(qrows))
    r.csv("organism_expression.csv", pd.DataFrame(erows))
    # Monitoring before training: the value organism's data against the base model's own answers (the control
    # organism's data: the same queries answered without any value prompt).
    monitors = {}
    for name in cfg.organisms:
        base_answers = data.get("control")
        mon = monitor_dataset(r.lm, r.vv, r.layer, data[name], baseline=base_answers, batch_size=cfg.batch_size)
        mon["target_rank"] = (mon["ranking"].index(name) + 1) if name in mon["ranking"] else None
        monitors[name] = mon
    # Against base, fine-tuning on the model's own answers shifts every organism alike (measured on SmolLM2: the
    # control's questionnaire and activations moved towards Benevolence as much as the Benevolence organism's), so
    # an organism is detected against the control organism and the control against the placebo (another seed),
    # each on the same units (items, queries, responses), two measures with Bonferroni.
    def versus(a: str, b: str, t: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        ua, ub = per_unit.get((a, t), {}), per_unit.get((b, t), {})
        for m in ("questionnaire", "activation", "expression"):
            if m in ua and m in ub and len(ua[m]) == len(ub[m]) and len(ua[m]):
                pe = paired_effect(ua[m] - ub[m], seed=cfg.seed)
                out[m] = {"delta": round(pe.effect, 5), "ci": [round(pe.ci_low, 5), round(pe.ci_high, 5)],
                          "p_value": pe.p_value, "n": pe.n, "mde": round(pe.mde, 5) if np.isfinite(pe.mde) else None}
        return out

    first = cfg.organisms[0]
    fr = results[first][first]
    out = {"target": first, "organisms": names, "results": results, "monitor": monitors,
           "questionnaire_delta": fr["questionnaire_delta"], "questionnaire_ci": fr["questionnaire_ci"],
           "expression_delta": fr["expression_delta"], "expression_ci": fr["expression_ci"],
           "shift_cos_target": fr["shift_cos_target"], "shift_rank": fr["shift_rank"],
           "activation_delta": fr["activation_delta"], "activation_p": fr["activation_p"],
           "monitor_rank": monitors[first]["target_rank"]}
    if "control" not in results:  # no control: only the (unspecific) shift against base
        ps = [p for p in (fr["questionnaire_p"], fr["activation_p"]) if p is not None]
        out["p_value"] = min(1.0, len(ps) * min(ps)) if ps else None
        out["detected"], out["control_detected"] = _detected(fr), None
        return out
    c = results["control"][first]
    out["control"] = {"questionnaire_delta": c["questionnaire_delta"], "questionnaire_p": c["questionnaire_p"],
                      "expression_delta": c["expression_delta"], "activation_delta": c["activation_delta"],
                      "activation_p": c["activation_p"], "shift_rank": c["shift_rank"]}
    out["vs_control"] = {t: versus(t, "control", t) for t in cfg.organisms}
    vc = out["vs_control"][first]
    ps = [vc[m]["p_value"] for m in ("questionnaire", "activation") if m in vc]
    out["p_value"] = min(1.0, len(ps) * min(ps)) if ps else None  # Bonferroni over the two measures
    out["detected"] = _detected(_flat(vc))
    if "placebo" in results:
        out["control_vs_placebo"] = versus("control", "placebo", first)
        cp = out["control_vs_placebo"]
        out["control_detected"] = any(_placebo_differs(cp[m]) for m in ("questionnaire", "activation") if m in cp)
    else:
        out["control_detected"] = None
    return out


# ----------------------------------------------------------------------------------------------------- runner

_FUNCS = {"planted": _planted, "judge": _judge, "ceiling": _ceiling, "organism": _organism}


def run_calibrate(run_dir: str | Path, cfg: CalibrateConfig, *, lm: Any = None) -> dict[str, Any]:
    """Run (or resume) the calibration parts on an extract run folder; writes and returns calibration.json."""
    from ..models import load_model

    run = Path(run_dir)
    cfg.validate()
    for need in ("vectors.safetensors", "vectors_summary.json", "judgments.jsonl"):
        if not (run / need).exists():
            raise DataError(f"{run}: no {need}; run `valuelens extract --out {run}` first")
    if lm is None:
        ecfg = json.loads((run / "config.json").read_text()).get("extract", {})
        lm = load_model(ecfg.get("model", "smollm2"))
    r = _Run(run, lm, cfg.layer)
    doc: dict[str, Any] = {"schema": 1, "layer": r.layer, "model": lm.describe().get("name")}
    timings = {}
    for part in PARTS:
        path = r.dir / f"{part}.json"
        h = cfg.part_hash(part, _PART_KEYS[part])
        if part not in cfg.parts:
            if path.exists():
                doc[part] = json.loads(path.read_text())
            continue
        if path.exists():
            prev = json.loads(path.read_text())
            if prev.get("_hash") == h:
                doc[part] = prev
                log(f"calibrate {part}: cached")
                continue
        log(f"calibrate {part} …")
        t = time.time()
        res = _FUNCS[part](r, cfg)
        res["_hash"] = h
        res["_seconds"] = round(time.time() - t, 1)
        timings[part] = res["_seconds"]
        atomic_write_json(path, res)
        doc[part] = res
        log(f"calibrate {part}: done in {res['_seconds']:.0f}s")
    doc["checks"] = summary_rows(doc)  # what the report's "Instrument check" table shows (from this file alone)
    atomic_write_json(run / "calibration.json", doc)
    write_manifest(run, stage="calibrate", config=cfg.to_dict(), name="manifest-calibrate.json",
                   extra={"model": lm.describe(), "layer": r.layer, "timings_s": timings})
    return doc


def summary_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The instrument check as rows (what the report's first table and the CLI print)."""
    rows = []
    p = doc.get("planted") or {}
    if p:
        rows.append({"check": "planted direction, prompted path", "result": p.get("recovery_cos"),
                     "ci": p.get("recovery_ci"), "against": f"null p95 {p.get('null_cos_p95')}",
                     "passed": bool(p.get("recovery_ci") and p["recovery_ci"][0] > p.get("null_cos_p95", 1))})
        rows.append({"check": "planted direction, intrinsic path", "result": p.get("intrinsic_cos"),
                     "ci": p.get("intrinsic_ci"), "against": f"null p95 {p.get('intrinsic_null_p95')}",
                     "passed": bool(p.get("intrinsic_ci") and p["intrinsic_ci"][0] > p.get("intrinsic_null_p95", 1))})
    o = doc.get("organism") or {}
    if o:
        t = o.get("target")
        vc = (o.get("vs_control") or {}).get(t) or {}
        cp = o.get("control_vs_placebo") or {}
        for m, what in (("questionnaire", "questionnaire items"), ("activation", "activations on v_prompt")):
            if m in vc:
                rows.append({"check": f"{t} organism beats the control organism ({what})",
                             "result": vc[m]["delta"], "ci": vc[m]["ci"], "against": f"p {vc[m]['p_value']:.3g}",
                             "passed": _detected(_flat({m: vc[m]}))})
        if not vc and o.get("detected") is not None:
            rows.append({"check": f"{t} organism shifts (no control organism)", "result": o.get("questionnaire_delta"),
                         "ci": o.get("questionnaire_ci"), "against": f"p {o.get('p_value')}",
                         "passed": bool(o.get("detected"))})
        for m, what in (("questionnaire", "questionnaire items"), ("activation", "activations on v_prompt")):
            if m in cp:
                rows.append({"check": f"control organism vs placebo (another seed) not detected ({what})",
                             "result": cp[m]["delta"], "ci": cp[m]["ci"], "against": f"p {cp[m]['p_value']:.3g}",
                             "passed": not _placebo_differs(cp[m])})
        rows.append({"check": "monitoring ranks the target first from its training data",
                     "result": o.get("monitor_rank"), "ci": None, "against": "rank 1",
                     "passed": o.get("monitor_rank") == 1})
    j = doc.get("judge") or {}
    if j:
        rows.append({"check": "judge better than chance on chat answers (top-1)", "result": j.get("in_domain_top1"),
                     "ci": j.get("in_domain_top1_ci"), "against": f"chance {j.get('chance_top1')}",
                     "passed": bool(j.get("better_than_chance_in_domain"))})
        rows.append({"check": "judge finds the prompted value (top-1)", "result": j.get("prompted_top1"),
                     "ci": j.get("prompted_top1_ci"), "against": f"chance {j.get('prompted_chance_top1')}",
                     "passed": bool(j.get("better_than_chance_prompted"))})
    c = doc.get("ceiling") or {}
    if c:
        rows.append({"check": "the value prompt itself moves the questionnaire (ceiling)", "result": c.get("mean"),
                     "ci": c.get("mean_ci"), "against": "0", "passed": bool(c.get("mean_ci") and c["mean_ci"][0] > 0)})
    return rows
