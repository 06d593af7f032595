"""ValueEval'23 reading: the shipped data parses, and every kind of bad input gives a file:line error."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest

from valuelens.detect import data as D
from valuelens.detect.data import Argument, load_split, read_arguments, read_labels
from valuelens.errors import DataError
from valuelens.values import VALUEEVAL_CATEGORIES

DATA = Path(__file__).resolve().parents[2].parent / "shared/data/valueeval23"
ARG_HEAD = "Argument ID\tConclusion\tStance\tPremise\n"
LAB_HEAD = "\t".join(["Argument ID", *VALUEEVAL_CATEGORIES]) + "\n"


def _lab_row(aid: str, vals: list[str] | None = None) -> str:
    return "\t".join([aid, *(vals or ["0"] * 20)]) + "\n"


def _write_split(tmp: Path, args: str, labels: str, name: str = "training") -> Path:
    (tmp / f"arguments-{name}.tsv").write_text(args)
    (tmp / f"labels-{name}.tsv").write_text(labels)
    return tmp


def test_real_validation_split() -> None:
    sp = load_split(DATA, "validation", level1=True)
    assert len(sp) == 1896 and sp.labels is not None and sp.labels.shape == (1896, 20)
    assert sp.level1 is not None and sp.level1.shape == (1896, 54)
    assert set(np.unique(sp.labels)) <= {0, 1}
    a = sp.arguments[0]
    assert a.text() == f"{a.conclusion} / {a.stance} / {a.premise}"
    # Level-2 label = OR of its level-1 children (checked in the data README); spot-check via row sums.
    assert (sp.labels.sum(1) > 0).sum() <= (sp.level1.sum(1) > 0).sum()


def test_argument_from_text() -> None:
    a = Argument.from_text("We must protect nature.", id="x")
    assert a.text() == "We must protect nature." and a.id == "x"


def test_good_toy_split(tmp_path: Path) -> None:
    _write_split(tmp_path, ARG_HEAD + "A1\tC\tagainst\tP one\nA2\tC\tin favor of\tP two\n",
                 LAB_HEAD + _lab_row("A1") + _lab_row("A2", ["1"] + ["0"] * 19))
    sp = load_split(tmp_path, "training")
    assert sp.ids == ["A1", "A2"] and sp.labels is not None and sp.labels[1, 0] == 1


def test_label_columns_reordered_are_put_in_canonical_order(tmp_path: Path) -> None:
    cats = list(reversed(VALUEEVAL_CATEGORIES))
    p = tmp_path / "labels.tsv"
    p.write_text("\t".join(["Argument ID", *cats]) + "\n" + "\t".join(["A1", "1"] + ["0"] * 19) + "\n")
    names, mat = read_labels(p, VALUEEVAL_CATEGORIES, ["A1"])
    assert names == list(VALUEEVAL_CATEGORIES) and mat[0, -1] == 1 and mat[0].sum() == 1


@pytest.mark.parametrize(("args", "labels", "match"), [
    (ARG_HEAD + "A1\tC\tagainst\n", LAB_HEAD + _lab_row("A1"), r"arguments-training\.tsv:2: expected 4 .* got 3"),
    ("ID\tConclusion\tStance\tPremise\nA1\tC\tagainst\tP\n", LAB_HEAD + _lab_row("A1"), r"arguments-training\.tsv:1: header"),
    (ARG_HEAD + "A1\tC\tmaybe\tP\n", LAB_HEAD + _lab_row("A1"), r":2: Stance"),
    (ARG_HEAD + "A1\tC\tagainst\tP\nA1\tC\tagainst\tQ\n", LAB_HEAD + _lab_row("A1") + _lab_row("A1"),
     r":3: duplicate Argument ID 'A1' \(first on line 2\)"),
    (ARG_HEAD + "A1\tC\tagainst\t \n", LAB_HEAD + _lab_row("A1"), r":2: empty Premise"),
    (ARG_HEAD + "A1\tC\tagainst\tP\n\nA2\tC\tagainst\tP\n", LAB_HEAD, r"arguments-training\.tsv:3: empty line"),
    ("", LAB_HEAD, r"arguments-training\.tsv:1: empty file"),
    (ARG_HEAD + "A1\tC\tagainst\tP\n", LAB_HEAD + _lab_row("A1", ["2"] + ["0"] * 19),
     r"labels-training\.tsv:2: label 'Self-direction: thought' must be 0 or 1, got '2'"),
    (ARG_HEAD + "A1\tC\tagainst\tP\n", LAB_HEAD + _lab_row("A1", ["0"] * 19), r"labels-training\.tsv:2: expected 21"),
    (ARG_HEAD + "A1\tC\tagainst\tP\n", LAB_HEAD + _lab_row("B7"),
     r"labels-training\.tsv:2: Argument ID 'B7' does not match .* \(expected 'A1'"),
    (ARG_HEAD + "A1\tC\tagainst\tP\nA2\tC\tagainst\tP\n", LAB_HEAD + _lab_row("A1"), r"1 label rows but 2 arguments"),
    (ARG_HEAD + "A1\tC\tagainst\tP\n", LAB_HEAD.replace("Humility", "Modesty") + _lab_row("A1"),
     r"labels-training\.tsv:1: unknown label column\(s\): Modesty"),
    (ARG_HEAD + "A1\tC\tagainst\tP\n", LAB_HEAD.replace("Argument ID", "ID") + _lab_row("A1"),
     r"labels-training\.tsv:1: first column must be 'Argument ID'"),
])
def test_bad_inputs_name_file_and_line(tmp_path: Path, args: str, labels: str, match: str) -> None:
    _write_split(tmp_path, args, labels)
    with pytest.raises(DataError, match=match):
        load_split(tmp_path, "training")


def test_missing_label_column_and_duplicates(tmp_path: Path) -> None:
    p = tmp_path / "l.tsv"
    cats = list(VALUEEVAL_CATEGORIES)
    p.write_text("\t".join(["Argument ID", *cats[:-1]]) + "\n")
    with pytest.raises(DataError, match=r"l\.tsv:1: missing label column\(s\): Universalism: objectivity"):
        read_labels(p, VALUEEVAL_CATEGORIES)
    p.write_text("\t".join(["Argument ID", *cats, cats[0]]) + "\n")
    with pytest.raises(DataError, match=r"duplicate label column"):
        read_labels(p, VALUEEVAL_CATEGORIES)


def test_missing_files_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data folder not found"):
        load_split(tmp_path / "nope", "training")
    with pytest.raises(DataError, match=r"arguments-training\.tsv: file not found"):
        load_split(tmp_path, "training")
    (tmp_path / "arguments-test.tsv").write_bytes(ARG_HEAD.encode() + b"A1\tC\tagainst\t\xff\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_arguments(tmp_path / "arguments-test.tsv")
    (tmp_path / "arguments-test.tsv").write_text(ARG_HEAD + "A1\tC\tagainst\tP\n")
    with pytest.raises(DataError, match=r"labels-test\.tsv: file not found"):
        load_split(tmp_path, "test")
    assert load_split(tmp_path, "test", require_labels=False).labels is None


def test_download_offline_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*a: object, **k: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(D.urllib.request, "urlopen", fail)
    with pytest.raises(DataError, match=r"cannot download https://zenodo\.org/records/10564870/files/") as ei:
        D.download(tmp_path)
    assert "\n" not in str(ei.value)


def test_download_verifies_hash_and_skips_good_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib
    import io

    payload = b"hello\n"
    good = hashlib.sha256(payload).hexdigest()
    monkeypatch.setattr(D.urllib.request, "urlopen", lambda *a, **k: io.BytesIO(payload))
    D.download(tmp_path, files={"x.tsv": good})
    assert (tmp_path / "x.tsv").read_bytes() == payload
    with pytest.raises(DataError, match="does not match"):
        D.download(tmp_path, files={"y.tsv": "0" * 64})
    assert not (tmp_path / "y.tsv").exists()


def test_official_hashes_match_shared_copy() -> None:
    from valuelens.runio import file_sha256

    for name, sha in D.OFFICIAL_FILES.items():
        assert file_sha256(DATA / name) == sha, name
