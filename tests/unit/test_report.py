"""The self-contained HTML report on a synthetic run folder: tables, embedded figures, escaping, missing and
corrupt files, truncation, and the command."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from valuelens import cli
from valuelens.cli.stages import report_cmd
from valuelens.errors import DataError
from valuelens.plots import savefig
from valuelens.report import MAX_ROWS, SECTIONS, build_report, caption_for


def _png(path: Path, title: str = "t") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [1, 0, 2])
    ax.set_title(title)
    savefig(fig, path)
    return path.read_bytes()


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def make_run(root: Path) -> Path:
    """A run with the extract stage, two analyze sections (neurons, circumplex), findings and manifests."""
    run = root / "run"
    manifest = {"stage": "extract", "created": "2026-11-22T10:00:00Z",
                "command": "valuelens extract --quick --out run --set seed=7",
                "config": {"model": "smollm2", "seed": 7, "values": ["Power", "Tradition"]},
                "versions": {"python": "3.11", "torch": "2.13.0"},
                "model": {"name": "smollm2", "model_hash": "abc123def456" * 4}}
    _write(run / "manifest.json", json.dumps(manifest))
    _write(run / "manifest-analyze.json", json.dumps({"stage": "analyze", "command": "valuelens analyze run",
                                                        "config": {"analyze_seed": 11}}))
    _write(run / "model.json", json.dumps({"name": "smollm2", "model_hash": "abc123def456" * 4}))
    _write(run / "judge.json", json.dumps({"name": "detector", "model": "det/<model>", "encoder": "minilm"}))
    _write(run / "config.json", json.dumps({"extract": manifest["config"], "config_hash": "cafe0123"}))
    _write(run / "vectors_summary.json", json.dumps({"layer": 17, "values_with_both": ["Power"],
                                                     "skipped": [{"value": "Tradition", "condition": "prompted"}]}))
    _write(run / "tables" / "judge_counts.csv",
           "value,condition,expressing,not_expressing\nPower,intrinsic,12,4\nPower,prompted,8,0\n")
    _write(run / "tables" / "vectors_by_layer.csv",
           "value,layer,cos_int_prompt\n" + "".join(f"Power,{i},{0.123456789 * i:.9f}\n" for i in range(100)))
    _png(run / "figures" / "cosine_by_layer.png")
    # neurons: tables/, figures/ with captions.json, summary.json; a cell with HTML in it
    nd = run / "analyze" / "neurons"
    _write(nd / "summary.json", json.dumps({"top_k_pct": 1.0, "n_kept": {"Power": 23}, "angle_deg": 30}))
    _write(nd / "tables" / "neuron_counts.csv",
           'value,layer,label,count\nPower,3,shared,5\nPower,4,"<b>intrinsic & unique</b>",2\n')
    _png(nd / "figures" / "neuron_counts.png")
    _png(nd / "figures" / "random_control.png")
    _write(nd / "figures" / "captions.json", json.dumps({"neuron_counts.png": "Kept neurons <by layer>"}))
    # circumplex: corrupt summary.json, a corrupt PNG, a valid CSV
    cd = run / "analyze" / "circumplex"
    _write(cd / "summary.json", '{"r2": 0.7,')
    _write(cd / "tables" / "pca.csv", "pc,explained\n1,0.5\n2,0.22\n")
    _write(cd / "figures" / "broken.png", "this is not a png")
    findings = [
        {"id": "F1", "claim": "Intrinsic & prompted vectors share an axis <shared>", "paper": "cos > 0",
         "ours": 0.41, "status": "reproduced", "evidence": "tables/vectors_by_layer.csv"},
        {"id": "F2", "claim": "Circumplex structure", "paper": {"R2": "0.6–0.7"}, "ours": {"R2": 0.12},
         "status": "not reproduced", "evidence": "analyze/circumplex"},
        {"id": "F3", "claim": "Prompted steering stronger", "paper": "+2.21", "ours": None,
         "status": "not run", "evidence": ""},
        {"id": "F4", "claim": "Compliance direction shared", "paper": 0.476, "ours": 0.3,
         "status": "partial", "evidence": "analyze/compliance"},
    ]
    _write(run / "findings.json", json.dumps(findings))
    return run


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path)


def _section_html(doc: str, key: str) -> str:
    start = doc.index(f'id="sec-{key}"')
    nxt = doc.find("<h2 ", start + 1)
    return doc[start: nxt if nxt > 0 else len(doc)]


def test_report_contents(run: Path) -> None:
    out = build_report(run)
    assert out == run / "report.html"
    doc = out.read_text(encoding="utf-8")
    assert doc.startswith("<!DOCTYPE html>")
    # header: model, hash, judge, date (escaped)
    assert "valuelens report — smollm2" in doc
    assert "abc123def456abc1" in doc and "det/&lt;model&gt;" in doc and "2026-11-22T10:00:00Z" in doc
    # findings first, colour-coded, with the plain statement
    assert doc.index('id="findings"') < doc.index('id="sec-extract"')
    assert 'class="badge ok">reproduced' in doc and 'class="badge bad">not reproduced' in doc
    assert 'class="badge partial">partial' in doc and 'class="badge na">not run' in doc
    # findings.json written before schema 2 (old statuses) still renders, every status with its own badge
    assert "reproduces 1; 1 not detected, 0 contradicted, 1 untestable here." in doc
    assert "(1)</span> F1</li>" in doc and "Not reproduced (1)</span> F2</li>" in doc
    assert "Partly reproduced (1)</span> F4</li>" in doc
    assert "&lt;shared&gt;" in doc and "<shared>" not in doc
    # tables: values, escaped cells, numbers formatted
    assert "<th>expressing</th>" in doc and ">12</td>" in doc
    assert "&lt;b&gt;intrinsic &amp; unique&lt;/b&gt;" in doc and "<b>intrinsic" not in doc
    assert ">0.1235</td>" in doc  # 0.123456789 → 4 significant digits
    # truncation note with row count and relative path
    assert f"showing the first {MAX_ROWS} of 100 rows" in doc and "tables/vectors_by_layer.csv" in doc
    vec = _section_html(doc, "extract")
    assert vec.count("<tr>") < 100
    # figures embedded as base64 PNG data URIs that decode to the original bytes
    uris = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', doc)
    assert len(uris) == 3
    originals = {p.read_bytes() for p in run.rglob("*.png") if p.name != "broken.png"}
    assert {base64.b64decode(u) for u in uris} == originals
    # captions: from captions.json (escaped), known names, and file names
    assert "Kept neurons &lt;by layer&gt;" in doc and "Random control" in doc
    assert "Cosine similarity of the intrinsic and prompted value vectors" in doc
    # summary.json rendered as key/value table
    neurons = _section_html(doc, "neurons")
    assert "<th>top_k_pct</th>" in neurons and "<th>n_kept</th>" in neurons
    # every missing section is listed as not run, in the fixed order
    for key in ("steering", "questionnaire", "diversity", "crosslingual", "compliance", "capability"):
        assert "not run" in _section_html(doc, key)
    positions = [doc.index(f'id="sec-{s.key}"') for s in SECTIONS]
    assert positions == sorted(positions)
    # provenance: the commands, seeds, hashes, versions, manifests in <details>
    assert "valuelens extract --quick --out run --set seed=7" in doc and "valuelens analyze run" in doc
    assert "analyze_seed" in doc and "cafe0123" in doc and "<th>torch</th>" in doc
    assert doc.count("<details>") >= 5
    # self-contained: no scripts, no external resources
    assert "<script" not in doc.lower()
    assert not re.findall(r'(?:src|href)="(?!data:|#)', doc)


def test_corrupt_files_give_notes(run: Path) -> None:
    doc = build_report(run).read_text(encoding="utf-8")
    circ = _section_html(doc, "circumplex")
    assert 'class="note"' in circ and "summary.json could not be read" in circ
    assert "broken.png is not a valid PNG" in circ
    assert "<th>explained</th>" in circ  # the rest of the section is still there


def test_missing_and_corrupt_findings_and_manifest(run: Path) -> None:
    (run / "findings.json").unlink()
    doc = build_report(run).read_text(encoding="utf-8")
    assert "findings.json is missing" in doc
    (run / "findings.json").write_text("[{not json")
    (run / "manifest-analyze.json").write_text("{")
    (run / "vectors_summary.json").write_text('"just a string"')
    doc = build_report(run).read_text(encoding="utf-8")
    assert "findings.json could not be read" in doc
    assert "manifest-analyze.json could not be read" in doc
    (run / "findings.json").write_text('{"F1": "reproduced"}')
    assert "findings.json is not a list" in build_report(run).read_text(encoding="utf-8")


def test_only_extract_and_extra_section(tmp_path: Path) -> None:
    run = tmp_path / "r"
    _write(run / "manifest.json", json.dumps({"stage": "extract", "command": "x"}))
    _write(run / "analyze" / "zzz_extra" / "tables" / "t.csv", "a\n")
    _write(run / "analyze" / "steering" / "notes.txt", "hello")
    _write(run / "tables" / "empty.csv", "")
    doc = build_report(run).read_text(encoding="utf-8")
    assert "unknown model" in doc and "findings.json is missing" in doc
    assert 'id="sec-zzz_extra"' in doc and doc.index('id="sec-capability"') < doc.index('id="sec-zzz_extra"')
    assert "no rows (header only)" in doc
    assert "empty.csv is empty" in doc
    steering = _section_html(doc, "steering")
    assert "summary.json is missing" in steering and "no tables" in steering


def test_out_option_and_atomic(run: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "r.html"
    assert build_report(run, target) == target and target.stat().st_size > 1000
    assert not (run / "report.html").exists()
    assert not list(target.parent.glob(".*tmp*"))


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        build_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no manifest"):
        build_report(tmp_path / "empty")


def test_caption_for() -> None:
    assert caption_for(Path("a/steer_alpha-sweep.png")) == "Steer alpha sweep"
    assert caption_for(Path("x.png"), {"x": "by stem"}) == "by stem"
    assert caption_for(Path("x.png"), {"x.png": "by name", "x": "stem"}) == "by name"


def test_report_cmd(run: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(report_cmd, [str(run), "--out", str(tmp_path / "o.html")])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(tmp_path / "o.html")
    res = CliRunner().invoke(report_cmd, [str(tmp_path / "missing")])
    assert isinstance(res.exception, DataError)


def test_cli_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", str(tmp_path / "missing")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("valuelens: error: run folder") and "\n" not in err
