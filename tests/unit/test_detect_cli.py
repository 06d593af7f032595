"""`valuelens detect` commands: help texts, one-line user errors."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest

from valuelens.cli import main
from valuelens.detect import data as D


@pytest.mark.parametrize("cmd", [[], ["download"], ["train"], ["evaluate"], ["compare"], ["predict"]])
def test_help(cmd: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    main(["detect", *cmd, "--help"])
    assert "Usage:" in capsys.readouterr().out


def test_download_offline_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    def fail(*a: object, **k: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(D.urllib.request, "urlopen", fail)
    with pytest.raises(SystemExit) as ei:
        main(["detect", "download", "--dest", str(tmp_path)])
    assert ei.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("valuelens: error: cannot download") and "\n" not in err


def test_train_with_bad_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["detect", "train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert ei.value.code == 2 and "data folder not found" in capsys.readouterr().err


def test_predict_with_non_detector_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = tmp_path / "a.jsonl"
    inp.write_text('{"text": "x"}\n')
    with pytest.raises(SystemExit) as ei:
        main(["detect", "predict", "--model", str(tmp_path), "--input", str(inp), "--output", str(tmp_path / "o")])
    assert ei.value.code == 2 and "not a valuelens detector folder" in capsys.readouterr().err
