"""The report rendered by a real browser: headless Chromium takes a screenshot of ``report.html`` and dumps the
DOM of a copy with a test-only probe script, which must see every figure decoded (naturalWidth > 0).

Chromium is required, not optional: install it with ``bash scripts/install_chromium.sh`` (CI does).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from valuelens.plots import savefig
from valuelens.report import build_report

pytestmark = pytest.mark.integration

# Flags for a closed network: without the background-networking ones Chromium keeps trying to reach Google.
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]

_PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.map.call(document.images, function (i) {
    var r = i.getBoundingClientRect();
    return {scheme: i.src.slice(0, 22), w: i.naturalWidth, h: i.naturalHeight, shown_w: r.width,
            complete: i.complete};
  });
  var p = document.createElement("pre");
  p.id = "vl-probe";
  p.textContent = JSON.stringify({imgs: imgs, scroll_w: document.documentElement.scrollWidth,
                                  inner_w: window.innerWidth, tables: document.querySelectorAll("table").length,
                                  h2: Array.prototype.map.call(document.querySelectorAll("h2"),
                                                               function (h) { return h.textContent; })});
  document.body.appendChild(p);
});
</script>"""


def _chromium() -> str:
    for cand in (os.environ.get("VALUELENS_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if cand and shutil.which(cand):
            return shutil.which(cand)  # type: ignore[return-value]
    pytest.fail("headless Chromium is not installed (no chromium on PATH); run `bash scripts/install_chromium.sh` "
                "(as root; CI installs it) or set VALUELENS_CHROMIUM to a Chromium/Chrome binary")


def _run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    profile.mkdir()
    cmd = [_chromium(), *_FLAGS, f"--user-data-dir={profile}", *args]
    env = {**os.environ, "HOME": str(tmp_path)}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within 180 s: {' '.join(cmd)}")
    if proc.returncode != 0:
        pytest.fail(f"chromium exited with {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def _fig(path: Path, w: float, h: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(w, h))
    x = np.linspace(0, 6, 50)
    ax.plot(x, np.sin(x), label="sin")
    ax.plot(x, np.cos(x), label="cos")
    ax.legend()
    ax.set_title(path.stem)
    savefig(fig, path)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("report") / "run"
    _write(run / "manifest.json", json.dumps({"stage": "extract", "created": "2026-11-22T10:00:00Z",
                                              "command": "valuelens extract --quick --out run",
                                              "config": {"model": "smollm2", "seed": 0},
                                              "versions": {"python": "3.11"}}))
    _write(run / "model.json", json.dumps({"name": "smollm2", "model_hash": "0123456789abcdef" * 4}))
    _write(run / "vectors_summary.json", json.dumps({"layer": 17, "n_responses": 48}))
    _write(run / "tables" / "judge_counts.csv", "value,condition,expressing\nPower,intrinsic,3\n")
    wide = ",".join(f"column_with_a_long_name_{i}" for i in range(30))
    _write(run / "tables" / "wide.csv", wide + "\n" + ",".join(str(i / 7) for i in range(30)) + "\n")
    _write(run / "tables" / "long.csv", "i,x\n" + "".join(f"{i},{i * i}\n" for i in range(500)))
    _fig(run / "figures" / "cosine_by_layer.png", 7, 4)
    _fig(run / "analyze" / "neurons" / "figures" / "neuron_counts.png", 12, 4)  # wider than the page
    _write(run / "analyze" / "neurons" / "summary.json", json.dumps({"k_pct": 1, "angle": 30}))
    _fig(run / "analyze" / "circumplex" / "figures" / "pca_shared.png", 4, 4)
    _write(run / "findings.json", json.dumps([
        {"id": "F1", "claim": "shared axis", "paper": "yes", "ours": "yes", "status": "reproduced", "evidence": ""},
        {"id": "F2", "claim": "circumplex", "paper": 0.65, "ours": 0.1, "status": "not reproduced",
         "evidence": "analyze/circumplex"}]))
    return build_report(run)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_screenshot_renders(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    _run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", report.resolve().as_uri())
    assert shot.is_file(), "chromium wrote no screenshot"
    assert _png_size(shot) == (1200, 3000)
    from PIL import Image

    px = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    non_white = (px.min(axis=2) < 235).mean()
    assert px.std() > 10 and 0.02 < non_white < 0.9, (px.std(), non_white)
    # the figures are there: many pixels in matplotlib's default line colours (blue C0, orange C1)
    blue = (np.abs(px - np.array([31, 119, 180])).sum(axis=2) < 60).sum()
    orange = (np.abs(px - np.array([255, 127, 14])).sum(axis=2) < 60).sum()
    assert blue > 500 and orange > 500, (blue, orange)


def test_dom_figures_decoded(report: Path, tmp_path: Path) -> None:
    page = report.read_text(encoding="utf-8")
    assert "<script" not in page.lower()  # the report itself has no script; the probe goes into a copy
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    proc = _run_chromium(tmp_path, "--dump-dom", "--virtual-time-budget=5000",
                         "--run-all-compositor-stages-before-draw", "--window-size=1200,3000", probe.as_uri())
    m = re.search(r'<pre id="vl-probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"probe output missing from the dumped DOM: {proc.stdout[-1500:]} {proc.stderr[-1500:]}"
    info = json.loads(html.unescape(m.group(1)))
    pngs = sorted(report.parent.rglob("*.png"))
    assert len(info["imgs"]) == len(pngs) == 3
    sizes = sorted(_png_size(p) for p in pngs)
    assert sorted((i["w"], i["h"]) for i in info["imgs"]) == sizes  # decoded at their true size
    for img in info["imgs"]:
        assert img["scheme"] == "data:image/png;base64," and img["complete"] and img["w"] > 0
        assert 0 < img["shown_w"] <= info["inner_w"]  # scaled down to the page, never wider
    assert info["scroll_w"] <= info["inner_w"], "the page scrolls horizontally"
    assert info["tables"] >= 5
    heads = " | ".join(info["h2"])
    assert "Findings" in heads and "Value neurons" in heads and "Provenance" in heads
