"""A steered model for lm-evaluation-harness: ``lm_eval --model valuelens --model_args pretrained=M,vectors=RUN,…``.

:class:`ValuelensLM` is lm-eval's ``HFLM`` around a valuelens model (short names and GGUF files included) whose
forward passes and generations run under valuelens interventions — the same relative steering as the pipeline
(``h ← h + α·mean‖h_l‖·v̂``, :func:`valuelens.evals.capability.relative_steer`). Model arguments:

``pretrained`` (default ``smollm2``), ``vectors`` (run folder, vector folder or Hub id), ``value``, ``kind``
(default ``prompted``), ``alpha`` (one number, or several joined by ``|`` for a sweep), ``layer`` (default: the
run's analysis layer), ``batch_size``, ``dtype``.

**α sweep in one run.** With ``alpha=0|0.05|0.1`` every log-likelihood request is scored at each α (the steering
hook changes, the batches and prompts do not); lm-eval's own table reports the *first* α, and
:meth:`ValuelensLM.sweep_records` keeps every α. :func:`harness_sweep` turns that into per-α accuracy with
standard errors and the **steerability slope** of Tan et al. 2024: per document, the least-squares slope of the
gold option's log-probability (normalised over the options) against α; reported as its mean with a 95 % CI and
the fraction of documents that move the wrong way (anti-steerable).

**Registration.** ``pyproject.toml`` declares the ``lm_eval.models`` entry point (lm-eval releases that load
plugins find it); importing this module registers the model by name, which is what ``valuelens lm-eval`` does
before handing its arguments to lm-eval's CLI (lm-eval 0.4.13 loads no plugins). The shipped tasks live in
``valuelens/data/harness`` (:func:`task_dir`): ``valuelens_capability_mc`` (log-likelihood multiple choice) and
``valuelens_short_answer`` (``generate_until``, exact match).

For the capability guard: :func:`harness_score` ``(lm, interventions, task) -> (score, stderr)``.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelError

__all__ = ["harness_score", "harness_sweep", "register", "run_lm_eval_cli", "task_dir"]

#: The main metric of each shipped task (for harness_score).
MAIN_METRIC = {"valuelens_capability_mc": "acc", "valuelens_short_answer": "exact_match"}


def task_dir() -> Path:
    """The folder of the shipped harness tasks (pass it as ``--include_path``)."""
    from ..datasets import data_path

    return data_path("harness/valuelens_capability_mc.yaml").parent


def _require_lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise ModelError("lm-evaluation-harness is not installed: pip install 'valuelens[harness]'") from None
    return lm_eval


def _parse_alphas(alpha: Any) -> list[float]:
    if alpha is None:
        return [0.0]
    if isinstance(alpha, int | float) and not isinstance(alpha, bool):
        return [float(alpha)]
    if isinstance(alpha, list | tuple):
        out = [float(a) for a in alpha]
    else:
        try:
            out = [float(a) for a in str(alpha).replace(";", "|").split("|") if a.strip()]
        except ValueError:
            raise ConfigError(f"alpha must be a number or numbers joined by '|', got {alpha!r}") from None
    if not out or not all(math.isfinite(a) for a in out):
        raise ConfigError(f"alpha must be finite numbers, got {alpha!r}")
    return out


def _make_class() -> type:
    _require_lm_eval()
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM

    class ValuelensLM(HFLM):  # type: ignore[misc, valid-type]
        """lm-eval's HFLM running a valuelens model under relative steering (see the module docstring)."""

        def __init__(self, pretrained: Any = "smollm2", vectors: str | None = None, value: str | None = None,
                     kind: str = "prompted", alpha: Any = None, layer: int | None = None,
                     batch_size: int | str = 8, dtype: str | None = None, interventions: Sequence[Any] = (),
                     lm: Any = None, **kwargs: Any) -> None:
            from ..hooks import apply_interventions
            from ..models import LoadedModel, load_model

            if lm is None:
                lm = pretrained if isinstance(pretrained, LoadedModel) else load_model(
                    str(pretrained), dtype=None if dtype in (None, "auto") else dtype)
            self.vl = lm
            self.alphas = _parse_alphas(alpha)
            self._base = list(interventions)
            self._steers: list[list[Any]] = [[] for _ in self.alphas]
            self.steer_info: dict[str, Any] = {}
            if vectors is not None or value is not None:
                if vectors is None or value is None:
                    raise ConfigError("steering needs both vectors= and value=")
                self._steers = self._resolve(vectors, value, kind, layer)
            self._apply = apply_interventions
            self._ivs: list[Any] = self._base + self._steers[0]
            self._records: list[dict[str, Any]] = []
            kwargs.pop("device", None)
            bs = int(batch_size) if str(batch_size).isdigit() else 8
            super().__init__(pretrained=lm.model, tokenizer=lm.tokenizer, backend="causal", batch_size=bs,
                             **kwargs)

        def _resolve(self, vectors: str, value: str, kind: str, layer: int | None) -> list[list[Any]]:
            from ..evals.capability import residual_norms
            from .artifacts import VectorArtifact

            art = VectorArtifact.load(vectors)
            lm = self.vl
            art.vectors.check_compatible(lm.model_hash, lm.spec.d_model, lm.spec.n_layers)
            norms = art.residual_norms or [float(x) for x in residual_norms(lm)]
            layer = art.layer if layer is None else int(layer)
            self.steer_info = {"value": value, "kind": kind, "layer": layer, "alphas": self.alphas,
                               "vectors": str(vectors)}
            return [[art.steer(value, kind, a, layer, norms=norms)] if a != 0 else [] for a in self.alphas]

        @contextlib.contextmanager
        def _steered(self) -> Iterator[None]:
            with self._apply(self.vl.model, self._ivs, spec=self.vl.spec):
                yield

        def _model_call(self, *args: Any, **kwargs: Any) -> Any:
            with self._steered():
                return super()._model_call(*args, **kwargs)

        def _model_generate(self, *args: Any, **kwargs: Any) -> Any:
            with self._steered():
                return super()._model_generate(*args, **kwargs)

        def _each_alpha(self, method: str, requests: list[Any], **kwargs: Any) -> list[Any]:
            """Run ``method`` once per α (only the first α's answers go back to lm-eval); keep all."""
            results: list[Any] = []
            for i, a in enumerate(self.alphas):
                self._ivs = self._base + self._steers[i]
                res = getattr(super(), method)(requests, **kwargs)
                if i == 0:
                    results = res
                if len(self.alphas) > 1:
                    for req, r in zip(requests, res, strict=True):
                        self._records.append({"alpha": a, "type": method, "task": getattr(req, "task_name", None),
                                              "doc_id": getattr(req, "doc_id", None), "idx": getattr(req, "idx", 0),
                                              "result": r[0] if isinstance(r, tuple) else r})
            self._ivs = self._base + self._steers[0]
            return results

        def loglikelihood(self, requests: list[Any], **kwargs: Any) -> list[Any]:
            return self._each_alpha("loglikelihood", requests, **kwargs)

        def generate_until(self, requests: list[Any], **kwargs: Any) -> list[Any]:
            return self._each_alpha("generate_until", requests, **kwargs)

        def sweep_records(self) -> list[dict[str, Any]]:
            """One record per (α, request): ``alpha, type, task, doc_id, idx, result``."""
            return list(self._records)

    with contextlib.suppress(Exception):  # already registered (a reload)
        register_model("valuelens")(ValuelensLM)
    return ValuelensLM


_CLS: type | None = None


def __getattr__(name: str) -> Any:
    # ValuelensLM is built lazily so that importing valuelens never imports lm-eval.
    global _CLS
    if name == "ValuelensLM":
        if _CLS is None:
            _CLS = _make_class()
        return _CLS
    raise AttributeError(name)


def register() -> type:
    """Register the ``valuelens`` model with lm-eval (idempotent); returns the class."""
    cls: type = __getattr__("ValuelensLM")
    return cls


def _task_manager(tasks: Sequence[str]) -> Any:
    from lm_eval.tasks import TaskManager

    # Indexing lm-eval's own ~10,000 task files takes ~40 s here: skip it when only shipped tasks are asked.
    return TaskManager(include_path=str(task_dir()), include_defaults=not all(t in MAIN_METRIC for t in tasks))


def _evaluate(model: Any, tasks: Sequence[str], *, limit: int | None = None, log_samples: bool = False,
              num_fewshot: int | None = None) -> dict[str, Any]:
    lm_eval = _require_lm_eval()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    res = lm_eval.simple_evaluate(model=model, tasks=list(tasks), task_manager=_task_manager(tasks), limit=limit,
                                  log_samples=log_samples, num_fewshot=num_fewshot, bootstrap_iters=1000,
                                  random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0)
    if res is None:
        raise ModelError("lm-eval returned no results")
    return dict(res)


def _metric(results: dict[str, Any], task: str, metric: str | None) -> tuple[float, float]:
    row = results["results"][task]
    metric = metric or MAIN_METRIC.get(task)
    if metric is None:
        metric = next(k.split(",")[0] for k in row if "," in k and "stderr" not in k)
    key = next((k for k in row if k.split(",")[0] == metric and "stderr" not in k), None)
    if key is None:
        raise ConfigError(f"task {task} reports no metric {metric!r} (has: {', '.join(row)})")
    stderr = row.get(key.replace(metric, f"{metric}_stderr", 1))
    return float(row[key]), float(stderr) if isinstance(stderr, int | float) else float("nan")


def harness_score(lm: Any, interventions: Sequence[Any] = (), task: str = "valuelens_capability_mc", *,
                  metric: str | None = None, limit: int | None = None, batch_size: int = 8) -> tuple[float, float]:
    """A harness task's main score and its standard error for ``lm`` under ``interventions``.

    ``lm``: a :class:`~valuelens.models.LoadedModel`; ``interventions``: valuelens interventions (e.g.
    ``[relative_steer(v, layer, alpha, norms)]``); ``task``: a shipped task or any task lm-eval knows. The
    metric defaults to the task's main one (acc for multiple choice, exact_match for short answers).
    Returns ``(score, stderr)`` — lm-eval's standard error (NaN when it gives none).
    """
    cls = register()
    model = cls(lm=lm, interventions=list(interventions), batch_size=batch_size)
    return _metric(_evaluate(model, [task], limit=limit), task, metric)


def harness_sweep(lm: Any, vectors: str, value: str, alphas: Sequence[float], *, kind: str = "prompted",
                  layer: int | None = None, task: str = "valuelens_capability_mc", limit: int | None = None,
                  batch_size: int = 8) -> dict[str, Any]:
    """Score a multiple-choice task at every α in one harness run; per-α accuracy ± stderr and the
    steerability slope (see the module docstring). Returns ``{"alphas", "rows": [...], "slope": {...}}``."""
    import numpy as np

    from ..stats import mean_ci

    cls = register()
    model = cls(lm=lm, vectors=vectors, value=value, kind=kind, alpha=list(alphas), layer=layer,
                batch_size=batch_size)
    res = _evaluate(model, [task], limit=limit, log_samples=True)
    gold = {int(s["doc_id"]): int(s["target"]) for s in res["samples"][task]}
    by: dict[tuple[float, int], dict[int, float]] = {}
    for r in model.sweep_records():
        if r["type"] == "loglikelihood" and r["task"] == task:
            by.setdefault((r["alpha"], int(r["doc_id"])), {})[int(r["idx"])] = float(r["result"])
    alist = [float(a) for a in alphas]
    docs = sorted(gold)
    logp = np.full((len(docs), len(alist)), np.nan)
    correct = np.zeros((len(docs), len(alist)))
    for i, d in enumerate(docs):
        for j, a in enumerate(alist):
            opts = by.get((a, d))
            if not opts:
                continue
            ll = np.array([opts[k] for k in sorted(opts)])
            logp[i, j] = ll[gold[d]] - np.logaddexp.reduce(ll)
            correct[i, j] = float(int(np.argmax(ll)) == gold[d])
    rows = [{"alpha": a, "acc": float(correct[:, j].mean()),
             "acc_stderr": float(correct[:, j].std(ddof=1) / math.sqrt(len(docs))) if len(docs) > 1 else float("nan"),
             "mean_gold_logprob": float(np.nanmean(logp[:, j]))} for j, a in enumerate(alist)]
    slope: dict[str, Any] = {}
    if len(set(alist)) > 1:
        x = np.array(alist) - np.mean(alist)
        slopes = (logp - logp.mean(axis=1, keepdims=True)) @ x / float(x @ x)
        ci = mean_ci(slopes, seed=0)
        slope = {"mean": float(np.mean(slopes)), "ci_low": float(ci.low), "ci_high": float(ci.high),
                 "anti_steerable_fraction": float(np.mean(slopes < 0)), "n_docs": len(docs),
                 "unit": "gold-option log-probability per unit α"}
    return {"task": task, "value": value, "kind": kind, "layer": model.steer_info.get("layer"), "alphas": alist,
            "rows": rows, "slope": slope, "lm_eval": res["results"][task]}


def run_lm_eval_cli(argv: list[str]) -> int:
    """Run lm-eval's command line with the ``valuelens`` model registered and the shipped tasks included."""
    _require_lm_eval()
    register()
    from lm_eval.__main__ import cli_evaluate

    args = list(argv)
    if "--include_path" not in args:
        args += ["--include_path", str(task_dir())]
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    old = sys.argv
    sys.argv = ["lm-eval", *args]
    try:
        cli_evaluate()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    finally:
        sys.argv = old
    return 0
