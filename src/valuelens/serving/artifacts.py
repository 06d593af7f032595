"""Value vectors as shareable artifacts: a folder (or Hub repo) with safetensors, ``config.json`` and a model card.

Layout of a vector folder (what :meth:`VectorArtifact.save_pretrained` writes)::

    config.json          model id, model hash, n_layers, d_model, layers, default layer, α scale (residual norms
                         and the capability guard's α), values, kinds, judge, where it was made
    vectors.safetensors  the run's ValueVectors file (``v/<Value>/<kind>`` tensors [L, D] + metadata), unchanged
    README.md            a model card: what the vectors are, how to use them, findings and figures of the run
    figures/*.png        the run's figures the card shows (when made from a run folder)

α is **relative** everywhere in valuelens (:func:`valuelens.evals.capability.relative_steer`): steering adds
``α · mean‖h_l‖ · v̂`` at layer ``l``. The folder stores the residual norms that define that unit
(``config.json: alpha_scale.residual_norms``), so a vector loaded elsewhere steers exactly as in the run.

:meth:`VectorArtifact.load` accepts a run folder, a vector folder or a Hub repo id (``user/name``; downloaded
with ``huggingface_hub`` — the only network access, never in tests).

>>> import torch, tempfile
>>> from valuelens.vectors import ValueVectors
>>> vv = ValueVectors(model_hash="abc", n_layers=4, d_model=8, layers=[0, 1, 2, 3])
>>> vv.set("Benevolence", "prompted", torch.ones(4, 8))
>>> art = VectorArtifact(vv, model_id="tiny", default_layer=2, residual_norms=[1.0, 2.0, 4.0, 8.0])
>>> folder = art.save_pretrained(tempfile.mkdtemp())
>>> back = VectorArtifact.load(folder)
>>> back.values, back.kinds, back.steer("benevolence", "prompted", 0.5).vector.norm().item()
(['Benevolence'], ['prompted'], 4.0)
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError, ModelError
from ..runio import atomic_write_json, atomic_write_text

__all__ = ["ARTIFACT_FORMAT", "VectorArtifact", "is_hub_id", "push_to_hub"]

ARTIFACT_FORMAT = "valuelens.vector_artifact"
ARTIFACT_VERSION = 1
#: Figures of a run folder copied into a vector folder's model card, when present.
CARD_FIGURES = ("figures/cos_int_prompt_by_layer.png", "analyze/capability/figures/alpha_sweep.png",
                "analyze/circumplex/figures/circumplex.png", "analyze/questionnaire/figures/questionnaire.png")


def _version() -> str:
    from .. import __version__

    return __version__


def is_hub_id(source: str) -> bool:
    """``user/name`` that is not an existing local path: a Hugging Face Hub repo id."""
    s = str(source)
    return (s.count("/") == 1 and not s.startswith((".", "/", "~")) and not Path(s).expanduser().exists()
            and all(part and not part.startswith(".") for part in s.split("/")))


@dataclass
class VectorArtifact:
    """Value vectors plus what is needed to steer with them in relative units, and where they came from.

    ``default_layer``: the layer the run analysed (steering uses it when a request names none).
    ``residual_norms``: mean ‖h_l‖ per model layer (``[n_layers]``), the unit of α; None when unknown (the
    server then measures them once at start-up). ``guard_alpha``: the α the run's capability guard chose.
    """

    vectors: Any  # ValueVectors
    model_id: str = ""
    default_layer: int | None = None
    residual_norms: list[float] | None = None
    guard_alpha: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    # -- properties --------------------------------------------------------------------------------------------
    @property
    def values(self) -> list[str]:
        return list(self.vectors.values)

    @property
    def kinds(self) -> list[str]:
        return list(self.vectors.conditions)

    @property
    def layer(self) -> int:
        """The default steering layer: the run's analysis layer, else the middle stored layer."""
        if self.default_layer is not None:
            return int(self.default_layer)
        layers = self.vectors.layers
        return int(layers[len(layers) // 2])

    def vector(self, value: str, kind: str, layer: int | None = None) -> Any:
        """The raw ``[D]`` vector of ``value``/``kind`` at ``layer`` (default: :attr:`layer`)."""
        layer = self.layer if layer is None else int(layer)
        if layer < 0:
            layer += int(self.vectors.n_layers)
        return self.vectors.get(value, kind)[self.vectors.layer_row(layer)]

    def steer(self, value: str, kind: str, alpha: float, layer: int | None = None,
              norms: Sequence[float] | None = None) -> Any:
        """A :class:`~valuelens.hooks.Steer` adding ``alpha · mean‖h_layer‖ · v̂`` (relative α, as in the run)."""
        from ..evals.capability import relative_steer

        layer = self.layer if layer is None else int(layer)
        if layer < 0:
            layer += int(self.vectors.n_layers)
        norms = self.residual_norms if norms is None else norms
        if norms is None:
            raise ConfigError("these vectors carry no residual norms (the unit of α); measure them with "
                              "valuelens.evals.capability.residual_norms(lm) and pass norms=")
        return relative_steer(self.vector(value, kind, layer), layer, float(alpha), list(norms))

    def config(self) -> dict[str, Any]:
        vv = self.vectors
        return {
            "format": ARTIFACT_FORMAT, "format_version": ARTIFACT_VERSION, "valuelens_version": _version(),
            "model_id": self.model_id, "model_hash": vv.model_hash, "model_family": self.info.get("family"),
            "n_layers": vv.n_layers, "d_model": vv.d_model, "layers": list(vv.layers),
            "default_layer": self.default_layer, "values": self.values, "kinds": self.kinds, "judge": vv.judge,
            "alpha_scale": {
                "unit": "relative: steering adds alpha * mean residual norm of the layer * unit vector",
                "residual_norms": self.residual_norms, "guard_alpha": self.guard_alpha,
                "guard_exceeded": self.info.get("guard_exceeded")},
            "counts": {f"{v}/{c}": n for (v, c), n in sorted(vv.counts.items())},
            "made_from": self.info.get("made_from"),
        }

    # -- loading -----------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str | Path, *, revision: str | None = None) -> VectorArtifact:
        """A run folder, a vector folder, or a Hub repo id (downloaded; needs the network)."""
        path = Path(source).expanduser()
        if path.is_dir():
            if (path / "config.json").is_file() and _is_artifact_config(path / "config.json"):
                return cls.from_pretrained(path)
            if (path / "vectors.safetensors").is_file():
                return cls.from_run(path)
            raise DataError(f"{path}: neither a run folder nor a vector folder (no vectors.safetensors)")
        if path.is_file() and path.suffix == ".safetensors":
            from ..vectors import ValueVectors

            return cls(ValueVectors.load(path), source=str(path))
        if is_hub_id(str(source)):
            return cls.from_pretrained(str(source), revision=revision)
        raise DataError(f"vectors not found: {source} (give a run folder, a vector folder or a Hub repo id)")

    @classmethod
    def from_run(cls, run: str | Path) -> VectorArtifact:
        """Read ``vectors.safetensors`` of an extract run and, when the run was analysed, its layer, α and norms."""
        from ..vectors import ValueVectors

        run = Path(run)
        vv = ValueVectors.load(run / "vectors.safetensors")
        layer: int | None = None
        summary = _read_json(run / "vectors_summary.json")
        if isinstance(summary.get("layer"), int):
            layer = summary["layer"]
        cap = _read_json(run / "analyze" / "capability" / "summary.json")
        if isinstance(cap.get("layer"), int):
            layer = cap["layer"]
        alpha = cap.get("alpha") if isinstance(cap.get("alpha"), int | float) else None
        norms = _read_norms(run / "analyze" / "capability" / "tables" / "residual_norms.csv", vv.n_layers)
        cfg = _read_json(run / "config.json").get("extract", {})
        model = _read_json(run / "model.json")
        info = {"family": model.get("family"), "guard_exceeded": cap.get("guard_exceeded"),
                "made_from": {"run": str(run.resolve()), "extract_config": cfg,
                              "model": {k: model.get(k) for k in ("name", "source", "gguf", "package")
                                        if model.get(k) is not None}}}
        return cls(vv, model_id=str(cfg.get("model") or model.get("name") or ""), default_layer=layer,
                   residual_norms=norms, guard_alpha=None if alpha is None else float(alpha), info=info,
                   source=str(run))

    @classmethod
    def from_pretrained(cls, source: str | Path, *, revision: str | None = None) -> VectorArtifact:
        """Load a vector folder written by :meth:`save_pretrained`, or download one from the Hub by repo id."""
        from ..vectors import ValueVectors

        path = Path(source).expanduser()
        if not path.is_dir():
            if not is_hub_id(str(source)):
                raise DataError(f"vector folder not found: {source}")
            path = _download(str(source), revision)
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            raise DataError(f"{path}: no config.json (not a valuelens vector folder)")
        cfg = _read_json(cfg_path)
        if cfg.get("format") != ARTIFACT_FORMAT:
            raise DataError(f"{cfg_path}: not a valuelens vector folder (format={cfg.get('format')!r})")
        if int(cfg.get("format_version", 0)) > ARTIFACT_VERSION:
            raise DataError(f"{cfg_path}: format version {cfg.get('format_version')} is newer than this valuelens "
                            f"reads ({ARTIFACT_VERSION}); upgrade valuelens")
        vv = ValueVectors.load(path / "vectors.safetensors")
        if cfg.get("model_hash") and cfg["model_hash"] != vv.model_hash:
            raise DataError(f"{path}: config.json and vectors.safetensors name different models")
        scale = cfg.get("alpha_scale") or {}
        norms = scale.get("residual_norms")
        if norms is not None:
            norms = [float(x) for x in norms]
            if len(norms) != vv.n_layers or not all(math.isfinite(x) and x > 0 for x in norms):
                raise DataError(f"{cfg_path}: alpha_scale.residual_norms must be {vv.n_layers} positive numbers")
        alpha = scale.get("guard_alpha")
        info = {"family": cfg.get("model_family"), "guard_exceeded": scale.get("guard_exceeded"),
                "made_from": cfg.get("made_from")}
        return cls(vv, model_id=str(cfg.get("model_id") or ""), default_layer=cfg.get("default_layer"),
                   residual_norms=norms, guard_alpha=None if alpha is None else float(alpha), info=info,
                   source=str(source))

    # -- saving ------------------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, *, run: str | Path | None = None, card: bool = True) -> Path:
        """Write the vector folder (atomically per file); ``run``: copy its figures and findings into the card."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.vectors.save(folder / "vectors.safetensors")
        atomic_write_json(folder / "config.json", self.config())
        if card:
            run_dir = Path(run) if run is not None else None
            figures: list[str] = []
            if run_dir is not None:
                for rel in CARD_FIGURES:
                    src = run_dir / rel
                    if src.is_file():
                        dst = folder / "figures" / src.name
                        dst.parent.mkdir(exist_ok=True)
                        shutil.copyfile(src, dst)
                        figures.append(f"figures/{src.name}")
            findings = _read_json(run_dir / "findings.json") if run_dir is not None else {}
            atomic_write_text(folder / "README.md", model_card(self, findings=findings, figures=figures))
        return folder


def _is_artifact_config(path: Path) -> bool:
    return _read_json(path).get("format") == ARTIFACT_FORMAT


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc})") from None
    return data if isinstance(data, dict) else {"findings": data} if isinstance(data, list) else {}


def _read_norms(path: Path, n_layers: int) -> list[float] | None:
    if not path.is_file():
        return None
    import csv

    with path.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    try:
        norms = {int(r["layer"]): float(r["mean_norm"]) for r in rows}
    except (KeyError, ValueError) as exc:
        raise DataError(f"{path}: expected columns layer, mean_norm ({exc})") from None
    if sorted(norms) != list(range(n_layers)):
        raise DataError(f"{path}: residual norms for {len(norms)} layers, the vectors' model has {n_layers}")
    return [norms[i] for i in range(n_layers)]


def _download(repo_id: str, revision: str | None) -> Path:
    """Snapshot of a Hub repo's vector files (cached by huggingface_hub); a clear error when offline."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ModelError("loading vectors from the Hub needs huggingface_hub: pip install huggingface_hub") from None
    try:
        return Path(snapshot_download(repo_id, revision=revision, repo_type="model",
                                      allow_patterns=["config.json", "vectors.safetensors", "README.md"]))
    except Exception as exc:  # offline mode, no network, unknown repo: one line
        raise ModelError(f"cannot download vectors {repo_id!r} from the Hub: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
                revision: str | None = None, commit_message: str = "valuelens value vectors") -> str:
    """Upload a vector folder to the Hub (creating the repo); returns the repo URL. ``token`` from the caller
    (the CLI reads it from an environment variable); never printed."""
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ModelError("pushing needs huggingface_hub: pip install huggingface_hub") from None
    folder = Path(folder)
    if not _is_artifact_config(folder / "config.json"):
        raise DataError(f"{folder}: not a valuelens vector folder (no config.json of format {ARTIFACT_FORMAT})")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", revision=revision,
                          commit_message=commit_message)
    except Exception as exc:
        raise ModelError(f"cannot push to {repo_id!r}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    return str(url)


# ------------------------------------------------------------------------------------------------ model card


def _fmt(x: Any, spec: str = "+.3f") -> str:
    return format(x, spec) if isinstance(x, int | float) and math.isfinite(x) else "—"


def model_card(art: VectorArtifact, *, findings: dict[str, Any] | None = None, figures: Sequence[str] = ()) -> str:
    """The README.md of a vector folder: YAML front matter for the Hub, usage, provenance, findings, figures."""
    vv = art.vectors
    cfg = art.config()
    made = cfg.get("made_from") or {}
    extract = made.get("extract_config") or {}
    lines = [
        "---", "library_name: valuelens", "tags:", "- steering-vectors", "- value-vectors", "- valuelens",
        "license: apache-2.0", "---", "",
        f"# Value vectors for `{art.model_id or 'an unnamed model'}`", "",
        "Directions in the residual stream along which this model expresses Schwartz's basic human values, "
        "extracted with [valuelens](https://pypi.org/project/valuelens/) by difference in means of the "
        "activations of responses that express a value and responses that do not (Han et al., *Dual Mechanisms "
        "of Value Expression*, arXiv 2509.24319).", "",
        "| | |", "|---|---|",
        f"| model | `{art.model_id}` (SHA-256 `{vv.model_hash[:16]}…`, {vv.n_layers} layers, d_model {vv.d_model}) |",
        f"| values | {', '.join(art.values) or '—'} |",
        f"| kinds | {', '.join(f'`{k}`' for k in art.kinds) or '—'} |",
        f"| layers stored | {_ranges(vv.layers)}; default steering layer {art.default_layer} |",
        "| α unit | relative: `h ← h + α · mean‖h_l‖ · v̂` (norms in config.json) |",
        f"| capability guard α | {art.guard_alpha if art.guard_alpha is not None else 'not run'}"
        f"{' (no α passed the guard; smallest grid α)' if art.info.get('guard_exceeded') else ''} |",
        f"| judge | {_judge_name(vv.judge)} |",
    ]
    if extract:
        keys = [k for k in ("model", "values", "n_queries", "label_mode", "intrinsic_system", "seed") if k in extract]
        if keys:
            lines.append("| extraction | " + ", ".join(f"{k}={extract[k]}" for k in keys) + " |")
    alpha = art.guard_alpha if art.guard_alpha is not None else 0.1
    value = art.values[0] if art.values else "Benevolence"
    kind = "prompted" if "prompted" in art.kinds else (art.kinds[0] if art.kinds else "prompted")
    lines += [
        "", "## Use", "", "```bash",
        f"valuelens serve --model {art.model_id or 'MODEL'} --vectors THIS_FOLDER_OR_REPO   # OpenAI-compatible",
        "```", "",
        "then ask for a steered answer with an extra body field, or a model alias:", "", "```python",
        "from openai import OpenAI",
        'client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")',
        f'client.chat.completions.create(model="{art.model_id or "MODEL"}", messages=[{{"role": "user", '
        f'"content": "Plan my weekend."}}],',
        f'    extra_body={{"steer": {{"value": "{value}", "kind": "{kind}", "alpha": {alpha}}}}})',
        f'client.chat.completions.create(model="{art.model_id or "MODEL"}+{value.lower()}@{alpha}", ...)',
        "```", "", "In Python:", "", "```python",
        "from valuelens.serving.artifacts import VectorArtifact",
        "from valuelens.generate import GenerationConfig, generate_batch",
        "from valuelens.models import load_model",
        "art = VectorArtifact.load(\"THIS_FOLDER_OR_REPO\")",
        f"lm = load_model(\"{art.model_id or 'MODEL'}\")",
        f"steer = art.steer(\"{value}\", \"{kind}\", alpha={alpha})",
        "generate_batch(lm, [lm.chat.render(\"Plan my weekend.\").text], GenerationConfig(), interventions=[steer])",
        "```", "",
        "Converters: `valuelens convert THIS_FOLDER out.gguf --to repeng` (llama.cpp / repeng control vector), "
        "`--to steering-vectors` (a `SteeringVector` safetensors file).",
    ]
    rows = (findings or {}).get("findings") or []
    if rows:
        lines += ["", "## Findings of the run", "",
                  "| finding | status | effect [95 % CI] | p |", "|---|---|---|---|"]
        for f in rows:
            if not isinstance(f, dict):
                continue
            ci = (f"[{_fmt(f.get('ci_low'))}, {_fmt(f.get('ci_high'))}]" if f.get("ci_low") is not None else "")
            lines.append(f"| {f.get('id', '?')} | {f.get('status', '?')} | {_fmt(f.get('effect'))} {ci} | "
                         f"{_fmt(f.get('p_value'), '.3g')} |")
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(p).stem}]({p})" for p in figures]
    lines += ["", "## How it was made", "",
              f"valuelens {cfg['valuelens_version']}; the run's config is in `config.json` (`made_from`).", ""]
    return "\n".join(lines)


def _judge_name(judge: str) -> str:
    try:
        j = json.loads(judge)
    except (TypeError, ValueError):
        return judge or "—"
    if isinstance(j, dict):
        return str(j.get("name") or j.get("kind") or j.get("type") or judge)[:80]
    return str(j)[:80]


def _ranges(xs: Sequence[int]) -> str:
    xs = sorted(int(x) for x in xs)
    if not xs:
        return "—"
    out, start, prev = [], xs[0], xs[0]
    for x in [*xs[1:], None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(f"{start}" if start == prev else f"{start}–{prev}")
        if x is not None:
            start = prev = x
    return ", ".join(out)
