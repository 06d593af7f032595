"""Threshold rules for a trained best-preset ensemble, compared on the validation split (docs/detector.md).

One command (after `valuelens detect train --preset best --out runs/best`):
    .venv/bin/python benchmarks/detector_threshold_rules.py --ensemble runs/best/ensemble --work /tmp/th
It first saves held-out and validation probabilities into --work (~1 min of inference), then only numpy.

Every rule is fitted on training-side information only: held-out probabilities + labels (the 405 arguments /
33 conclusions the ensemble tuned on) and the label prevalence of the full training split. Validation is used
only to score the rules. Rules were fixed before any of them was scored:

R0 shipped      tune_thresholds(held-out) — per-category, macro objective, 1 sweep (must give 0.5406)
R1 rate-k       t_c = m_c-th largest held-out score, m_c = max(1, round(k * prev_c * N_heldout)); one global k
                 from K_GRID maximising held-out official macro-F1
R2 rate-k/band  as R1 with one k per training-prevalence tercile (3 bands), coordinate ascent from R1's k
R3 lipton       calibrated probs q = Platt(held-out) (the ensemble's shipped calibration.json); per category
                 t_c = F1*_c / 2 with F1*_c the best held-out F1 of category c on q (Lipton et al. 2014)
R4 global-cal   one threshold on calibrated probs q, chosen on held-out macro-F1
R5 hybrid30     R0 where the category has >= 30 held-out positives; rate-k elsewhere, k re-chosen on held-out
                 with the others fixed
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from valuelens.detect.calibration import Calibrator
from valuelens.detect.measure import apply_thresholds, evaluate, tune_thresholds, weighted_scores
from valuelens.values import VALUEEVAL_CATEGORIES as CATS

OUT = Path("/tmp/th")
ENS = Path("runs/best/ensemble")
K_GRID = np.round(np.arange(0.5, 4.0001, 0.05), 2)
GRID = np.round(np.arange(0.02, 0.96, 0.01), 2)
N_MIN = 30
N_BOOT_VALID = 2000
N_BOOT_HELD = 200
# Filled by main() from --work (module globals so the rule functions read them as the study did).
hp = hy = vp = vy = prev = hconc = np.zeros(0)
BANDS: list[np.ndarray] = []  # rarest, middle, most frequent terciles of training prevalence
C = 20



def save_probs(data: str | None) -> None:
    """Held-out and validation probabilities exactly as build_ensemble computes them (members' weighted mean,
    the training run's bf16 setting, no calibration)."""
    from valuelens.detect.data import load_split, resolve_data_dir
    from valuelens.detect.finetune import heldout_of, load_detector

    folder = resolve_data_dir(data)
    train, valid = load_split(folder, "training"), load_split(folder, "validation")
    ens = load_detector(ENS)
    dev = heldout_of(ens, train)
    cfg_path = ENS.parent / "train_config.json"
    bf16 = json.loads(cfg_path.read_text())["bf16"] if cfg_path.exists() else False
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(OUT / "heldout_probs.npy", ens.predict_proba(dev.texts(), bf16=bf16))
    np.save(OUT / "heldout_gold.npy", dev.labels.astype(np.int8))
    np.save(OUT / "valid_probs.npy", ens.predict_proba(valid.texts(), bf16=bf16))
    np.save(OUT / "valid_gold.npy", valid.labels.astype(np.int8))
    np.save(OUT / "train_prevalence.npy", train.labels.mean(0))
    np.save(OUT / "heldout_conclusions.npy", np.array([a.conclusion for a in dev.arguments]))


def f1(p, y, t):
    return evaluate(y.astype(int), apply_thresholds(p, t)).f1


def rate_th(p, k):
    """Per category: the m-th largest score, m = max(1, round(k * prev_c * N)) (k scalar or [C])."""
    n = p.shape[0]
    k = np.broadcast_to(np.asarray(k, float), (C,))
    s = -np.sort(-p, axis=0)
    m = np.clip(np.round(k * prev * n).astype(int), 1, n)
    return s[m - 1, np.arange(C)]


def best_k(p, y, fixed=None, mask=None):
    """Global k maximising held-out macro-F1; with ``fixed`` thresholds kept where ``mask`` is False."""
    def th(k):
        t = rate_th(p, k)
        return t if fixed is None else np.where(mask, t, fixed)
    k = max(K_GRID, key=lambda k: f1(p, y, th(k)))  # first max = smallest k on ties
    return th(k), {"k": float(k)}




def rules(p, y, cal=None):
    """All rules fitted on (p, y) = held-out probabilities and labels; returns {name: (thresholds, info)}.
    Thresholds of R3/R4 live in calibrated space; ``out[name][1]['space']`` says which."""
    if cal is None:
        cal = Calibrator.fit(p, y, "platt", CATS)
    q = cal.transform(p)
    out = {}
    t0 = tune_thresholds(p, y)
    out["R0 shipped"] = (t0, {"space": "raw"})
    t1, i1 = best_k(p, y)
    out["R1 rate-k"] = (t1, {**i1, "space": "raw"})
    ks = np.full(C, i1["k"])
    for _ in range(2):
        for b in BANDS:
            def score(k, b=b):
                kk = ks.copy()
                kk[b] = k
                return f1(p, y, rate_th(p, kk))
            ks[b] = max(K_GRID, key=score)
    out["R2 rate-k/band"] = (rate_th(p, ks), {"k_by_band": [float(ks[b[0]]) for b in BANDS], "space": "raw"})
    t3 = np.full(C, 0.5)
    for j in range(C):
        if y[:, j].any():
            pred = q[:, j][:, None] >= GRID[None, :]
            tp = (pred & y[:, j][:, None]).sum(0)
            f = 2 * tp / (pred.sum(0) + y[:, j].sum())
            t3[j] = f.max() / 2
    out["R3 lipton F1*/2"] = (t3, {"space": "cal"})
    tg = max(GRID, key=lambda t: f1(q, y, np.full(C, t)))
    out["R4 global-cal"] = (np.full(C, tg), {"t": float(tg), "space": "cal"})
    rare = y.sum(0) < N_MIN
    t5, i5 = best_k(p, y, fixed=t0, mask=rare)
    out[f"R5 hybrid{N_MIN}"] = (t5, {**i5, "rare": [CATS[j] for j in np.flatnonzero(rare)], "space": "raw"})
    return out, cal


def predict(probs, t, info, cal):
    return apply_thresholds(cal.transform(probs) if info["space"] == "cal" else probs, t)


def boot_valid(preds, base, n_boot=N_BOOT_VALID, seed=0):
    """Paired bootstrap over validation arguments: official macro-F1 of each rule minus the base rule's."""
    rng = np.random.default_rng(seed)
    n = vy.shape[0]

    def mf(pred, w):
        s = weighted_scores(vy, pred, w)
        return s["mf"], np.nanmean(s["f"], 1)

    res = {k: ([], []) for k in preds}
    for s in range(0, n_boot, 250):
        w = rng.multinomial(n, np.full(n, 1 / n), size=min(250, n_boot - s)).astype(float)
        fb, cb = mf(preds[base].astype(bool), w)
        for k, pr in preds.items():
            f, c = mf(pr.astype(bool), w)
            res[k][0].append(f - fb)
            res[k][1].append(c - cb)
    return {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in res.items()}


def main():
    global OUT, ENS, hp, hy, vp, vy, prev, hconc, C, BANDS
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ensemble", default=str(ENS), help="the best preset's ensemble folder")
    ap.add_argument("--work", default=str(OUT), help="where probabilities and results are written")
    ap.add_argument("--data", default=None, help="ValueEval'23 folder (default: ../shared/data/valueeval23)")
    args = ap.parse_args()
    OUT, ENS = Path(args.work), Path(args.ensemble)
    if not (OUT / "valid_probs.npy").exists():
        save_probs(args.data)
    hp, hy = np.load(OUT / "heldout_probs.npy"), np.load(OUT / "heldout_gold.npy").astype(bool)
    vp, vy = np.load(OUT / "valid_probs.npy"), np.load(OUT / "valid_gold.npy").astype(bool)
    prev = np.load(OUT / "train_prevalence.npy")
    hconc = np.load(OUT / "heldout_conclusions.npy")
    C = hp.shape[1]
    BANDS = np.array_split(np.argsort(prev), 3)
    shipped = json.loads((ENS / "thresholds.json").read_text())["thresholds"]
    shipped = np.array([shipped[c] for c in CATS])
    cal_shipped = Calibrator.load(ENS)
    fitted, _ = rules(hp, hy, cal_shipped)
    assert np.array_equal(fitted["R0 shipped"][0], shipped), "held-out tuning does not reproduce thresholds.json"
    rep = {"n_heldout": int(hp.shape[0]), "n_heldout_conclusions": len(set(hconc)),
           "heldout_positives": dict(zip(CATS, map(int, hy.sum(0)), strict=False)),
           "validation_tuned_f1": f1(vp, vy, tune_thresholds(vp, vy)), "rules": {}}
    preds = {}
    for name, (t, info) in fitted.items():
        hpred, vpred = predict(hp, t, info, cal_shipped), predict(vp, t, info, cal_shipped)
        preds[name] = vpred
        s = evaluate(vy.astype(int), vpred)
        rep["rules"][name] = {"info": info, "thresholds": dict(zip(CATS, map(float, t), strict=False)),
                              "heldout_f1": evaluate(hy.astype(int), hpred).f1,
                              "valid_f1": s.f1, "valid_precision": s.precision, "valid_recall": s.recall,
                              "valid_mean_category_f1": float(np.mean([s.per_category[c]["f1"] for c in CATS])),
                              "valid_degenerate": [c for c in CATS if min(s.per_category[c]["precision"],
                                                                          s.per_category[c]["recall"]) < 0.15],
                              "valid_per_category_f1": {c: s.per_category[c]["f1"] for c in CATS},
                              "valid_per_category_pr": {c: (s.per_category[c]["precision"],
                                                            s.per_category[c]["recall"]) for c in CATS}}
    for nm, obj in (("validation-tuned macro (oracle)", "macro"), ("validation-tuned category (oracle)", "category")):
        sv = evaluate(vy.astype(int), apply_thresholds(vp, tune_thresholds(vp, vy, objective=obj)))
        rep[nm] = {"f1": sv.f1, "mean_category_f1": float(np.mean([sv.per_category[c]["f1"] for c in CATS])),
                   "degenerate": [c for c in CATS if min(sv.per_category[c]["precision"],
                                                         sv.per_category[c]["recall"]) < 0.15]}
    assert abs(rep["rules"]["R0 shipped"]["valid_f1"] - 0.5406071919423746) < 1e-12
    d = boot_valid(preds, "R0 shipped")
    for name, (v, vc) in d.items():
        rep["rules"][name]["boot_valid_diff"] = {"mean": float(v.mean()), "ci95": [float(x) for x in
                                                 np.percentile(v, [2.5, 97.5])], "p_gt0": float((v > 0).mean())}
        rep["rules"][name]["boot_valid_diff_mean_cat_f1"] = {
            "mean": float(vc.mean()), "ci95": [float(x) for x in np.percentile(vc, [2.5, 97.5])],
            "p_gt0": float((vc > 0).mean())}
    # Threshold-fitting uncertainty: resample held-out *conclusions* (33 clusters), refit every rule
    # (and its Platt calibration), score on all of validation.
    rng = np.random.default_rng(1)
    concs = np.array(sorted(set(hconc)))
    rows = {c: np.flatnonzero(hconc == c) for c in concs}
    hb = {k: [] for k in fitted}
    for _ in range(N_BOOT_HELD):
        idx = np.concatenate([rows[c] for c in rng.choice(concs, len(concs), replace=True)])
        fb, cb = rules(hp[idx], hy[idx])
        for name, (t, info) in fb.items():
            hb[name].append(evaluate(vy.astype(int), predict(vp, t, info, cb)).f1)
    base = np.array(hb["R0 shipped"])
    for name, v in hb.items():
        v = np.array(v)
        rep["rules"][name]["boot_heldout"] = {"valid_f1_mean": float(v.mean()), "valid_f1_sd": float(v.std()),
                                              "diff_mean": float((v - base).mean()),
                                              "diff_ci95": [float(x) for x in np.percentile(v - base, [2.5, 97.5])],
                                              "p_gt0": float((v - base > 0).mean())}
    (OUT / "results.json").write_text(json.dumps(rep, indent=1))

    for nm in ("validation-tuned macro (oracle)", "validation-tuned category (oracle)"):
        print(f"{nm} (not a rule): official {rep[nm]['f1']:.4f}, mean category F1 "
              f"{rep[nm]['mean_category_f1']:.4f}, degenerate (P or R < 0.15): {len(rep[nm]['degenerate'])}")
    print(f"{'rule':18s} {'held-out':>8s} {'valid F1':>8s} {'P':>6s} {'R':>6s}  {'Δ vs R0 [95% CI] (valid boot)':>32s}"
          f"  {'refit on held-out boot: mean±sd, Δ, P(Δ>0)':s}")
    for name, r in rep["rules"].items():
        b, h, bc = r["boot_valid_diff"], r["boot_heldout"], r["boot_valid_diff_mean_cat_f1"]
        print(f"{name:18s} {r['heldout_f1']:8.4f} {r['valid_f1']:8.4f} {r['valid_precision']:6.3f} "
              f"{r['valid_recall']:6.3f}  {b['mean']:+.4f} [{b['ci95'][0]:+.4f}, {b['ci95'][1]:+.4f}] "
              f"p={b['p_gt0']:.3f}  {h['valid_f1_mean']:.4f}±{h['valid_f1_sd']:.4f} {h['diff_mean']:+.4f} "
              f"p={h['p_gt0']:.2f}  {({k: v for k, v in r['info'].items() if k not in ('space', 'rare')})}")
        print(f"{'':18s} mean category F1 {r['valid_mean_category_f1']:.4f} (Δ {bc['mean']:+.4f} "
              f"[{bc['ci95'][0]:+.4f}, {bc['ci95'][1]:+.4f}]), degenerate categories {len(r['valid_degenerate'])}")
    print("\nper-category validation F1 (held-out positives in brackets)")
    names = list(rep["rules"])
    print(f"{'category':28s}" + "".join(f"{n.split()[0]:>7s}" for n in names))
    for c in CATS:
        print(f"{c[:22]:22s} ({rep['heldout_positives'][c]:3d})"
              + "".join(f"{rep['rules'][n]['valid_per_category_f1'][c]:7.3f}" for n in names))


if __name__ == "__main__":
    main()
