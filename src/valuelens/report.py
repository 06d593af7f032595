"""Figures and the self-contained HTML report.

Every figure is written as a PNG next to the table it is drawn from, with the matplotlib Agg backend (no
display needed), atomically.

:func:`build_report` turns a run folder into one ``report.html``: the findings compared with the paper first,
then one section per stage in a fixed order (extract, neurons, steering, questionnaire, diversity,
cross-lingual, circumplex, compliance, capability guard; a stage that did not run is shown as "not run"), each
with its ``summary.json`` as a key/value table, every CSV as a table (truncated to :data:`MAX_ROWS` rows, with
a note naming the file) and every figure embedded as a base64 data URI with a caption (from
``figures/captions.json`` when present, else from the file name), and finally the manifests and the command to
reproduce the run. All text is HTML-escaped; the page has inline CSS only, no JavaScript and no external
resources. A missing or corrupt file gives a visible note in the report, never an exception.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError
from .runio import atomic_write_text

__all__ = ["MAX_ROWS", "SECTIONS", "build_report", "caption_for"]


# ---------------------------------------------------------------------------------------------------------------
# The self-contained HTML report
# ---------------------------------------------------------------------------------------------------------------

MAX_ROWS = 40  # rows shown per CSV table; longer tables are truncated with a note
_MAX_CELL = 160  # characters shown per table cell
_MAX_LIST = 20  # items shown of a list in a summary

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
_MANIFESTS = ("manifest-run.json", "manifest.json", "manifest-calibrate.json", "manifest-analyze.json")


@dataclass(frozen=True)
class SectionSpec:
    key: str  # folder name under <run>/analyze/ ("extract" = the run folder itself)
    title: str
    about: str  # what the section tests, and the paper's reference numbers


# Fixed logical order of the report; analyze sections not listed here are appended after these, by name.
SECTIONS: tuple[SectionSpec, ...] = (
    SectionSpec("extract", "Extraction: judged responses and value vectors",
                "Responses generated without (intrinsic) and with (prompted) a value system prompt, judged, and the "
                "difference-in-means value vectors v[s, e, l] built from their response-token activations."),
    SectionSpec("neurons", "Value neurons",
                "MLP neurons whose output columns project most onto span(shared axis, difference axis); top-k % "
                "kept and labelled shared / intrinsic-unique / prompted-unique by the 30° rule, with a random-neuron "
                "control of equal size."),
    SectionSpec("steering", "Steering interventions",
                "Activation addition along v_int, v_prompt, their orthogonalised versions, the shared axis and "
                "neuron-set scaling, with α relative to the residual norm and a random-direction control."),
    SectionSpec("questionnaire", "Questionnaire (steerability)",
                "PVQ-style portrait items scored by option log-probabilities, with and without steering. Paper "
                "(Qwen2.5-7B, 6-point scale): +1.74 intrinsic, +2.21 prompted, +0.47 intrinsic⊥, +1.62 prompted⊥."),
    SectionSpec("dose", "Dose-response",
                "The questionnaire effect (Δ target − Δ others) over a range of α for a few values, including α past "
                "the capability guard (flagged beyond_guard), against a random direction of the same norm."),
    SectionSpec("diversity", "Diversity",
                "Distinct-n, EAD, semantic diversity and logit-lens entropy of steered responses. Paper Distinct-2: "
                "0.362 intrinsic, 0.342 prompted, 0.402 intrinsic⊥, 0.203 prompted⊥."),
    SectionSpec("crosslingual", "Cross-lingual transfer",
                "Vectors extracted from English data, questionnaire administered in English, Chinese, Spanish, "
                "French and Korean."),
    SectionSpec("circumplex", "Circumplex structure",
                "PCA of the 10 shared axes and a Procrustes fit to the theoretical circle, R² against a permutation "
                "baseline (paper: top-2 PCs 72.5 % of variance, R² ≈ 0.6–0.7; difference axes show no structure)."),
    SectionSpec("compliance", "Compliance channel",
                "Steering with the compliance direction (mean of v_prompt − v_int) and its effect on instruction "
                "following and refusals (paper: attack success 13–27 % → 83–97 %)."),
    SectionSpec("agreement", "Judge agreement",
                "The extract's judge against the other judges on the same responses (Cohen's kappa per value), "
                "and each judge's sanity check on prompted responses: how much more often it finds value s in "
                "answers prompted to express s than in answers prompted for another value."),
    SectionSpec("capability", "Capability guard",
                "The capability score under steering, used to pick the largest α within the allowed loss (paper: "
                "< 5 points, α = 4 for Qwen2.5-7B)."),
)

_STATUS_CLASS = {"reproduced": "ok", "not detected": "partial", "contradicted": "bad", "untestable": "na",
                 # statuses of findings.json written before schema 2
                 "partial": "partial", "not reproduced": "bad", "not run": "na"}

_KNOWN_CAPTIONS = {
    "cosine_by_layer": "Cosine similarity of the intrinsic and prompted value vectors, by layer "
                       "(dotted line: the layer used for figures).",
    "norms_by_layer": "Norm of each value vector by layer, intrinsic and prompted.",
    "shared_axis_cosines": "Cosines between the shared axes of the values, next to the theoretical circumplex.",
    "neuron_counts": "Kept value neurons by layer and label (shared, intrinsic-unique, prompted-unique).",
}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1d232a;
 margin:0;background:#f4f5f7}
main{max-width:1180px;margin:0 auto;padding:20px 28px 60px;background:#fff}
h1{font-size:26px;margin:6px 0 4px}h2{font-size:20px;margin:34px 0 8px;padding-top:10px;border-top:2px solid #dde1e6}
h3{font-size:15px;margin:18px 0 6px;color:#38424d}
.meta{color:#4b5663;margin:0 0 14px}.meta b{color:#1d232a}
code,pre{font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
pre{background:#f6f8fa;border:1px solid #e1e4e8;padding:8px 10px;overflow-x:auto;white-space:pre-wrap;
 word-break:break-word}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:6px 0 4px;font-size:13px}
th,td{border:1px solid #d5dae0;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv th{white-space:nowrap;background:#f6f7f9}
table.kv table.kv{margin:0}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:12px;white-space:nowrap}
.ok{background:#d6f5dd;color:#11602a}.partial{background:#fff1c7;color:#7a5200}
.bad{background:#fddcdc;color:#8c1d1d}.na{background:#e6e8eb;color:#4b5663}
tr.ok td.status,tr.partial td.status,tr.bad td.status,tr.na td.status{background:inherit}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:6px 10px;margin:8px 0;color:#4d3b00}
.missing{background:#f1f2f4;border-left:4px solid #9aa3ad;padding:6px 10px;margin:8px 0;color:#3b4450}
.about{color:#4b5663;margin:2px 0 8px}
.statement{font-size:15px;margin:8px 0 10px}
ul.statement li{margin:3px 0}
.trunc{color:#6a737d;font-size:12.5px;margin:2px 0 12px}
figure{margin:14px 0 22px}figure img{max-width:100%;height:auto;border:1px solid #e1e4e8;background:#fff}
figcaption{color:#38424d;font-size:13px;margin-top:4px}
nav ol{columns:2;margin:6px 0 0}
details{margin:6px 0;border:1px solid #e1e4e8;padding:4px 10px;background:#fafbfc}
summary{cursor:pointer;font-weight:600}
footer{margin-top:40px;color:#6a737d;font-size:12px}
"""


class _Page:
    """Accumulates HTML fragments; every piece of text goes through :func:`_e`."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def add(self, *fragments: str) -> None:
        self.parts.extend(fragments)

    def note(self, text: str) -> None:
        self.add(f'<p class="note">{_e(text)}</p>')

    def html(self) -> str:
        return "".join(self.parts)


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt_num(x: float) -> str:
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return str(x)
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if x == int(x) and abs(x) < 1e12:
        return f"{x:.1f}" if abs(x) < 1e4 else str(int(x))
    ax = abs(x)
    if ax < 1e-3:
        return f"{x:.3e}"
    if ax < 1e4:
        return f"{x:.4g}"
    return f"{x:.1f}"


def _fmt_cell(s: str) -> tuple[str, bool]:
    """Display text of a CSV cell and whether it is numeric (right-aligned)."""
    t = s.strip()
    if t and (t[0].isdigit() or t[0] in "+-."):
        try:
            if any(c in t for c in ".eE") or t.lower() in ("nan", "inf", "-inf"):
                return _fmt_num(float(t)), True
            int(t)
            return t, True
        except ValueError:
            pass
    if len(s) > _MAX_CELL:
        s = s[:_MAX_CELL] + "…"
    return s, False


def _fmt_scalar(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool | int | float):
        return _fmt_num(x)
    s = str(x)
    return s if len(s) <= 4 * _MAX_CELL else s[: 4 * _MAX_CELL] + "…"


def _read_json(path: Path, page: _Page, rel: str) -> tuple[bool, Any]:
    """(ok, value). A missing file gives (False, None) silently; an unreadable one adds a visible note."""
    if not path.is_file():
        return False, None
    try:
        return True, json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        page.note(f"{rel} could not be read ({type(exc).__name__}: {exc}); its content is left out.")
        return False, None


def _rel(path: Path, run: Path) -> str:
    try:
        return path.relative_to(run).as_posix()
    except ValueError:
        return str(path)


def _anchor(key: str) -> str:
    return "sec-" + re.sub(r"[^a-zA-Z0-9_-]", "-", key)


# ---- rendering of JSON values ----------------------------------------------------------------------------------

def _kv(obj: Any, depth: int = 0) -> str:
    """A compact rendering of a JSON value: dicts as key/value tables, lists of records as small tables."""
    if isinstance(obj, dict):
        if not obj:
            return "<i>(empty)</i>"
        if depth >= 3:
            return f"<code>{_e(_short_json(obj))}</code>"
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_kv(v, depth + 1)}</td></tr>"
                       for k, v in obj.items())
        return f'<table class="kv">{rows}</table>'
    if isinstance(obj, list):
        if not obj:
            return "<i>(none)</i>"
        if all(isinstance(r, dict) for r in obj) and depth < 3:
            return _records_table(obj)
        if all(not isinstance(r, dict | list) for r in obj):
            shown = ", ".join(_e(_fmt_scalar(v)) for v in obj[:_MAX_LIST])
            more = f" … (+{len(obj) - _MAX_LIST} more)" if len(obj) > _MAX_LIST else ""
            return shown + more
        return f"<code>{_e(_short_json(obj))}</code>"
    return _e(_fmt_scalar(obj))


def _num_class(v: Any) -> str:
    return ' class="num"' if isinstance(v, int | float) and not isinstance(v, bool) else ""


def _short_json(obj: Any, limit: int = 600) -> str:
    s = json.dumps(obj, ensure_ascii=False, default=str)
    return s if len(s) <= limit else s[:limit] + "…"


def _records_table(records: list[dict[str, Any]]) -> str:
    cols: list[str] = []
    for r in records[:_MAX_LIST]:
        cols.extend(k for k in r if k not in cols)
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td{_num_class(r.get(c))}>{_kv(r.get(c), 3)}</td>" for c in cols) + "</tr>"
        for r in records[:_MAX_LIST])
    more = (f'<div class="trunc">showing {_MAX_LIST} of {len(records)} entries</div>'
            if len(records) > _MAX_LIST else "")
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>{more}'


# ---- tables and figures ----------------------------------------------------------------------------------------

def _csv_html(path: Path, run: Path, page: _Page, max_rows: int = MAX_ROWS) -> None:
    rel = _rel(path, run)
    page.add(f"<h3>{_e(path.stem.replace('_', ' '))} <code>{_e(rel)}</code></h3>")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows: list[list[str]] = []
            n = 0
            for row in reader:
                if not row:
                    continue
                n += 1
                if n <= max_rows:
                    rows.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        page.note(f"{rel} could not be read ({type(exc).__name__}: {exc}).")
        return
    if header is None:
        page.note(f"{rel} is empty.")
        return
    width = max([len(header), *(len(r) for r in rows)])
    header = header + [""] * (width - len(header))
    out = ['<div class="scroll"><table><tr>', *(f"<th>{_e(h)}</th>" for h in header), "</tr>"]
    for row in rows:
        out.append("<tr>")
        for cell in row + [""] * (width - len(row)):
            text, numeric = _fmt_cell(cell)
            out.append(f'<td class="num">{_e(text)}</td>' if numeric else f"<td>{_e(text)}</td>")
        out.append("</tr>")
    out.append("</table></div>")
    page.add(*out)
    if n == 0:
        page.add(f'<div class="trunc">no rows (header only); {_e(rel)}</div>')
    elif n > max_rows:
        page.add(f'<div class="trunc">showing the first {max_rows} of {n} rows; the full table is '
                 f"<code>{_e(rel)}</code></div>")
    else:
        page.add(f'<div class="trunc">{n} row{"s" if n != 1 else ""}</div>')


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) >= 24 and data[:8] == _PNG_MAGIC and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        return (w, h) if w > 0 and h > 0 else None
    return None


def _captions(folder: Path, run: Path, page: _Page) -> dict[str, str]:
    ok, caps = _read_json(folder / "captions.json", page, _rel(folder / "captions.json", run))
    if not ok:
        return {}
    if not isinstance(caps, dict):
        page.note(f"{_rel(folder / 'captions.json', run)} is not a JSON object of file name → caption; ignored.")
        return {}
    return {str(k): str(v) for k, v in caps.items()}


def caption_for(path: Path, captions: dict[str, str] | None = None) -> str:
    """A figure's caption: ``captions.json`` (by file name or stem), a known caption, or one from the file name."""
    captions = captions or {}
    for key in (path.name, path.stem):
        if key in captions:
            return captions[key]
    if path.stem in _KNOWN_CAPTIONS:
        return _KNOWN_CAPTIONS[path.stem]
    words = re.sub(r"[_\-]+", " ", path.stem).strip()
    return (words[:1].upper() + words[1:]) if words else path.name


def _figure_html(path: Path, run: Path, page: _Page, captions: dict[str, str]) -> None:
    rel = _rel(path, run)
    try:
        data = path.read_bytes()
    except OSError as exc:
        page.note(f"figure {rel} could not be read ({exc}).")
        return
    suffix = path.suffix.lower()
    size_attr = ""
    if suffix == ".png":
        size = _png_size(data)
        if size is None:
            page.note(f"figure {rel} is not a valid PNG file; it is left out.")
            return
        size_attr = f' width="{size[0]}" height="{size[1]}"'
    elif not data:
        page.note(f"figure {rel} is empty; it is left out.")
        return
    uri = f"data:{_IMAGE_TYPES[suffix]};base64," + base64.b64encode(data).decode("ascii")
    cap = caption_for(path, captions)
    page.add(f'<figure><img src="{uri}" alt="{_e(cap)}"{size_attr}>'
             f"<figcaption>{_e(cap)} <code>{_e(rel)}</code></figcaption></figure>")


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
             and not p.name.startswith(".")]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


# ---- report parts ----------------------------------------------------------------------------------------------

def _load_manifests(run: Path, page: _Page) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in (*_MANIFESTS, "config.json", "model.json", "judge.json"):
        ok, obj = _read_json(run / name, page, name)
        if ok:
            if isinstance(obj, dict):
                out[name] = obj
            else:
                page.note(f"{name} is not a JSON object; it is left out.")
    return out


def _first(mans: dict[str, dict[str, Any]], *getters: tuple[str, ...]) -> Any:
    for path in getters:
        obj: Any = mans.get(path[0])
        for k in path[1:]:
            obj = obj.get(k) if isinstance(obj, dict) else None
        if obj not in (None, "", {}):
            return obj
    return None


def _header(run: Path, mans: dict[str, dict[str, Any]], page: _Page) -> str:
    model = _first(mans, ("model.json", "name"), ("manifest.json", "model", "name"),
                   ("manifest-run.json", "model", "name"), ("manifest-analyze.json", "model", "name"),
                   ("manifest.json", "config", "model"), ("manifest-run.json", "config", "model"),
                   ("config.json", "extract", "model")) or "unknown model"
    mhash = _first(mans, ("model.json", "model_hash"), ("manifest.json", "model", "model_hash"),
                   ("manifest-analyze.json", "model", "model_hash"), ("manifest-run.json", "model", "model_hash"))
    judge = mans.get("judge.json") or _first(mans, ("manifest.json", "judge")) or {}
    if isinstance(judge, dict):
        judge_txt = " ".join(str(judge[k]) for k in ("name", "model", "encoder") if judge.get(k))
    else:
        judge_txt = str(judge)
    date = _first(mans, ("manifest-run.json", "created"), ("manifest-analyze.json", "created"),
                  ("manifest.json", "created"))
    title = f"valuelens report — {model}"
    page.add(f"<h1>{_e(title)}</h1>", '<p class="meta">')
    page.add(f"<b>Model</b> {_e(model)}")
    if mhash:
        page.add(f' · <b>hash</b> <code title="{_e(mhash)}">{_e(str(mhash)[:16])}</code>')
    page.add(f" · <b>judge</b> {_e(judge_txt or 'unknown')}")
    page.add(f" · <b>run date</b> {_e(date or 'unknown')}")
    page.add(f"<br><b>Run folder</b> <code>{_e(run)}</code> · report written "
             f"{_e(time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime()))}</p>")
    return title


def _statement(model: str, findings: list[dict[str, Any]]) -> str:
    """The plain statement: which of the paper's findings this model reproduces and which it does not (HTML)."""
    order = ("reproduced", "not detected", "contradicted", "untestable", "partial", "not reproduced", "not run")
    phrases = {"reproduced": "Reproduced (effect beyond its control, CI excludes 0, the paper's direction)",
               "not detected": "Not detected (see the MDE: could this run have seen the paper's effect?)",
               "contradicted": "Contradicted (significant, opposite direction)",
               "untestable": "Untestable here (reason given)", "partial": "Partly reproduced",
               "not reproduced": "Not reproduced", "not run": "Not run"}
    groups: dict[str, list[str]] = {k: [] for k in (*order, "other")}
    for f in findings:
        status = str(f.get("status", "")).strip().lower()
        groups[status if status in groups else "other"].append(str(f.get("id") or "?"))
    n = len(findings)
    lead = (f"Of the paper's {n} finding{'s' if n != 1 else ''} checked, this model ({model}) reproduces "
            f"{len(groups['reproduced'])}; {len(groups['not detected']) + len(groups['not reproduced'])} not "
            f"detected, {len(groups['contradicted'])} contradicted, "
            f"{len(groups['untestable']) + len(groups['not run'])} untestable here.")
    items = []
    for key in (*order, "other"):
        if groups[key]:
            cls = _STATUS_CLASS.get(key, "na")
            items.append(f'<li><span class="badge {cls}">{_e(phrases.get(key, "Unknown status"))} '
                         f'({len(groups[key])})</span> ' + _e("; ".join(groups[key])) + "</li>")
    return f'<p class="statement">{_e(lead)}</p><ul class="statement">{"".join(items)}</ul>'


def _instrument(run: Path, page: _Page) -> None:
    """The instrument check (calibration.json's ``checks``), before any finding: can this run see an effect?"""
    page.add('<h2 id="instrument">Instrument check</h2>')
    path = run / "calibration.json"
    if not path.is_file():
        page.add('<p class="missing">calibration.json is missing: this run has no instrument check (run '
                 "<code>valuelens calibrate --out RUN</code>). Read every absence below with that in mind.</p>")
        return
    ok, doc = _read_json(path, page, "calibration.json")
    if not ok or not isinstance(doc, dict):
        return
    checks = doc.get("checks") if isinstance(doc.get("checks"), list) else []
    page.add('<p class="about">Known answers the pipeline must find before its absences mean anything: a direction '
             "planted in the activations, model organisms whose values really changed, the judge on hand-labelled "
             "chat answers, and how far the value prompt itself moves the questionnaire (the ceiling). Details: "
             "<code>calibrate/</code>.</p>")
    page.add('<div class="scroll"><table><tr><th>check</th><th>result</th><th>95 % CI</th><th>against</th>'
             "<th>passed</th></tr>")
    for c in checks:
        if not isinstance(c, dict):
            continue
        passed = bool(c.get("passed"))
        ci = c.get("ci")
        ci_s = f"[{_fmt_scalar(ci[0])}, {_fmt_scalar(ci[1])}]" if isinstance(ci, list) and len(ci) == 2 else "—"
        cls = "ok" if passed else "bad"
        page.add(f'<tr class="{cls}"><td>{_e(c.get("check", "?"))}</td><td class="num">'
                 f'{_e(_fmt_scalar(c.get("result")))}</td><td>{_e(ci_s)}</td><td>{_e(c.get("against", ""))}</td>'
                 f'<td class="status"><span class="badge {cls}">{"yes" if passed else "no"}</span></td></tr>')
    page.add("</table></div>")
    figs = _files(run / "calibrate" / "figures", tuple(_IMAGE_TYPES))
    caps: dict[str, str] = {}
    for p in figs:
        _figure_html(p, run, page, caps)


def _stat_cell(f: dict[str, Any]) -> str:
    """Effect [95 % CI], p, n and MDE of a schema-2 finding (empty for old ones)."""
    def num(x: Any, fmt: str) -> str:
        return format(x, fmt) if isinstance(x, int | float) and not isinstance(x, bool) else "—"
    if f.get("effect") is None:
        return ""
    ci = (f" [{num(f.get('ci_low'), '+.3f')}, {num(f.get('ci_high'), '+.3f')}]"
          if f.get("ci_low") is not None else " [no CI]")
    txt = f"{num(f.get('effect'), '+.3f')}{ci}; p {num(f.get('p_value'), '.3g')}; n {f.get('n', '—')}"
    txt += f" {f.get('unit', '')}; MDE {num(f.get('mde'), '.3f')}"
    if f.get("paper_detectable") is not None:
        txt += "; paper's effect " + ("≥" if f["paper_detectable"] else "<") + " MDE"
    return txt


def _findings(run: Path, model: str, page: _Page) -> None:
    page.add('<h2 id="findings">Findings: the paper vs this run</h2>')
    path = run / "findings.json"
    if not path.is_file():
        page.add('<p class="missing">findings.json is missing: this run has no comparison with the paper\'s '
                 "findings yet (run <code>valuelens analyze</code> on it).</p>")
        return
    ok, findings = _read_json(path, page, "findings.json")
    if not ok:
        return
    if isinstance(findings, dict) and isinstance(findings.get("findings"), list):
        findings = findings["findings"]
    if not isinstance(findings, list):
        page.note("findings.json is not a list of findings; it is left out.")
        return
    bad = [f for f in findings if not isinstance(f, dict)]
    findings = [f for f in findings if isinstance(f, dict)]
    if bad:
        page.note(f"findings.json: {len(bad)} entr{'ies are' if len(bad) > 1 else 'y is'} not an object; skipped.")
    if not findings:
        page.add('<p class="missing">findings.json lists no findings.</p>')
        return
    page.add(_statement(model, findings))
    page.add('<p class="about">Each effect is compared with its control; the 95 % CI is a bootstrap over the unit '
             "named; p is a permutation p-value against the control; MDE is the smallest effect this run would "
             "detect with 80 % power at α = 0.05.</p>")
    page.add('<div class="scroll"><table class="findings"><tr><th>id</th><th>claim</th><th>paper</th>'
             "<th>effect [95 % CI], p, n, MDE</th><th>control</th><th>ours</th><th>status</th><th>evidence</th>"
             "</tr>")
    for f in findings:
        status = str(f.get("status", "")).strip() or "unknown"
        cls = _STATUS_CLASS.get(status.lower(), "na")
        metric = f"<br><i>{_e(f['metric'])}</i>" if f.get("metric") else ""
        page.add(f'<tr class="{cls}"><td>{_e(f.get("id", "?"))}</td><td>{_kv(f.get("claim"), 3)}</td>'
                 f'<td>{_kv(f.get("paper"), 2)}</td><td>{_e(_stat_cell(f))}{metric}</td>'
                 f'<td>{_kv(f.get("control"), 2)}</td><td>{_kv(f.get("ours"), 2)}</td>'
                 f'<td class="status"><span class="badge {cls}">{_e(status)}</span></td>'
                 f'<td>{_kv(f.get("evidence"), 2)}</td></tr>')
    page.add("</table></div>")


def _section_specs(run: Path, page: _Page) -> list[SectionSpec]:
    """Report order and titles: ``analyze/index.json`` (written by ``valuelens analyze``, it knows users' own
    sections) after the extract stage; the built-in list for folders written before it existed."""
    ok, index = _read_json(run / "analyze" / "index.json", page, "analyze/index.json")
    rows = index.get("sections") if ok and isinstance(index, dict) else None
    if not isinstance(rows, list):
        return list(SECTIONS)
    specs = [SECTIONS[0]]
    for r in rows:
        if isinstance(r, dict) and r.get("name"):
            specs.append(SectionSpec(str(r["name"]), str(r.get("title") or r["name"]), str(r.get("about") or "")))
    return specs


def _section_dirs(run: Path, specs: list[SectionSpec]) -> dict[str, Path | None]:
    """Section key → its folder (``None``: not run). Unknown analyze sections follow the known ones, by name."""
    out: dict[str, Path | None] = {}
    extract_ran = any((run / p).exists() for p in ("tables", "figures", "vectors_summary.json"))
    out["extract"] = run if extract_ran else None
    analyze = run / "analyze"
    for spec in specs[1:]:
        d = analyze / spec.key
        out[spec.key] = d if d.is_dir() else None
    if analyze.is_dir():
        for d in sorted(p for p in analyze.iterdir() if p.is_dir() and not p.name.startswith(".")):
            out.setdefault(d.name, d)
    return out


def _section(run: Path, spec: SectionSpec, folder: Path | None, page: _Page) -> None:
    page.add(f'<h2 id="{_anchor(spec.key)}">{_e(spec.title)}</h2>', f'<p class="about">{_e(spec.about)}</p>')
    if folder is None:
        where = "the run folder" if spec.key == "extract" else f"analyze/{spec.key}/"
        page.add(f'<p class="missing"><span class="badge na">not run</span> nothing in {_e(where)} — '
                 "this stage was not run (or not in this folder).</p>")
        return
    if spec.key == "extract":
        summary_path, tables, figures = run / "vectors_summary.json", run / "tables", run / "figures"
    else:
        summary_path, tables, figures = folder / "summary.json", folder, folder
    rel = _rel(summary_path, run)
    if summary_path.is_file():
        ok, summary = _read_json(summary_path, page, rel)
        if ok:
            page.add(f"<h3>Summary <code>{_e(rel)}</code></h3>", _kv(summary))
    else:
        page.note(f"{rel} is missing.")
    csvs = _files(tables, (".csv",))
    imgs = _files(figures, tuple(_IMAGE_TYPES))
    for p in csvs:
        _csv_html(p, run, page)
    caps: dict[Path, dict[str, str]] = {}
    for p in imgs:
        if p.parent not in caps:
            caps[p.parent] = _captions(p.parent, run, page)
        _figure_html(p, run, page, caps[p.parent])
    if not csvs and not imgs:
        page.note("this section has no tables (*.csv) and no figures (*.png).")
    others = [p for p in _files(folder, (".jsonl", ".json", ".txt", ".md"))
              if p.name not in ("summary.json", "captions.json")] if spec.key != "extract" else []
    if others:
        items = "".join(f"<li><code>{_e(_rel(p, run))}</code> ({p.stat().st_size:,} bytes)</li>" for p in others)
        page.add(f"<h3>Other files</h3><ul>{items}</ul>")


def _collect_seeds(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if "seed" in str(k).lower() and not isinstance(v, dict | list):
                out.append((key, v))
            else:
                out.extend(_collect_seeds(v, key))
    return out


def _provenance(mans: dict[str, dict[str, Any]], page: _Page) -> None:
    page.add('<h2 id="provenance">Provenance and reproduction</h2>')
    commands = [(name, m.get("command")) for name, m in mans.items() if name in _MANIFESTS and m.get("command")]
    if commands:
        page.add("<h3>Command to reproduce</h3>")
        for name, cmd in commands:
            page.add(f"<p>from <code>{_e(name)}</code> (stage {_e(mans[name].get('stage', '?'))}):</p>"
                     f"<pre>{_e(cmd)}</pre>")
    else:
        page.note("no manifest records the command that produced this run.")
    seeds: list[tuple[str, Any]] = []
    for name in (*_MANIFESTS, "config.json"):
        if name in mans:
            seeds.extend((f"{name}: {k}", v) for k, v in _collect_seeds(mans[name].get("config", mans[name])))
    key_facts: dict[str, Any] = {}
    for name in _MANIFESTS:
        m = mans.get(name, {})
        if m.get("config_hash") or (isinstance(mans.get("config.json"), dict) and name == "manifest.json"):
            key_facts["config hash"] = m.get("config_hash") or mans["config.json"].get("config_hash")
    mhash = _first(mans, ("model.json", "model_hash"), ("manifest.json", "model", "model_hash"))
    if mhash:
        key_facts["model hash"] = mhash
    for k, v in seeds:
        key_facts[k] = v
    versions = _first(mans, ("manifest-run.json", "versions"), ("manifest-analyze.json", "versions"),
                      ("manifest.json", "versions"))
    if isinstance(versions, dict):
        key_facts["package versions"] = versions
    platform_ = _first(mans, ("manifest-run.json", "platform"), ("manifest.json", "platform"))
    if platform_:
        key_facts["platform"] = platform_
    key_facts = {k: v for k, v in key_facts.items() if v not in (None, "")}
    if key_facts:
        page.add("<h3>Seeds, hashes, versions</h3>", _kv(key_facts))
    page.add("<h3>Manifests</h3>")
    for name, m in mans.items():
        text = json.dumps(m, indent=2, ensure_ascii=False, default=str)
        page.add(f"<details><summary>{_e(name)}</summary><pre>{_e(text)}</pre></details>")


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the self-contained ``report.html`` of a run folder (or ``out``) atomically and return its path.

    Every PNG is embedded as a base64 data URI and the CSS is inline, so the file can be mailed or archived on
    its own; it needs no JavaScript and loads nothing from the network. Missing stages appear as "not run";
    missing or corrupt files give a visible note instead of an error. Raises :class:`DataError` when the run
    folder does not exist or holds no manifest.
    """
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise DataError(f"run folder {run} does not exist (or is not a folder)")
    if not any((run / m).is_file() for m in _MANIFESTS):
        raise DataError(f"{run} is not a valuelens run folder: no {', '.join(_MANIFESTS)} in it")
    out_path = Path(out).expanduser() if out is not None else run / "report.html"

    body = _Page()
    mans = _load_manifests(run, body)  # notes about corrupt manifests land at the top
    head = _Page()
    title = _header(run, mans, head)
    model = title.split("— ", 1)[-1]
    spec_list = _section_specs(run, body)
    sections = _section_dirs(run, spec_list)
    specs = {s.key: s for s in spec_list}
    for key in sections:
        specs.setdefault(key, SectionSpec(key, key.replace("_", " ").capitalize(), "An additional analysis section."))

    nav = ['<nav><b>Contents</b><ol><li><a href="#instrument">Instrument check</a></li>'
           '<li><a href="#findings">Findings</a></li>']
    for key, folder in sections.items():
        status = "" if folder is not None else ' <span class="badge na">not run</span>'
        nav.append(f'<li><a href="#{_anchor(key)}">{_e(specs[key].title)}</a>{status}</li>')
    nav.append('<li><a href="#provenance">Provenance and reproduction</a></li></ol></nav>')
    head.add(*nav)

    _instrument(run, body)
    _findings(run, model, body)
    for key, folder in sections.items():
        _section(run, specs[key], folder, body)
    _provenance(mans, body)

    from . import __version__

    doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           '<meta name="viewport" content="width=device-width, initial-scale=1">'
           f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
           + head.html() + body.html()
           + f"<footer>Generated by valuelens {_e(__version__)}. Self-contained: figures are embedded, "
             "nothing is loaded from elsewhere.</footer></main></body></html>\n")
    atomic_write_text(out_path, doc)
    return out_path
