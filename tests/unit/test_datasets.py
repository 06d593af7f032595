"""Shipped query / system-prompt datasets and the loaders in valuelens.datasets."""

from __future__ import annotations

import builtins
import itertools
import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from valuelens import datasets as ds
from valuelens.datasets import Query, SystemPrompt, load_queries, load_system_prompts, read_table, stable_id
from valuelens.errors import ConfigError, DataError, ValuelensError
from valuelens.values import VALUE_NAMES, get_value

MIN_QUERIES = 400
MIN_HINTS_PER_VALUE = 30
MIN_NEUTRAL = 40
MIN_PROMPTS_PER_VALUE = 50
NEAR_DUP_JACCARD = 0.7


def _words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z0-9']+", text.lower()))


def _near_duplicates(texts: list[str], threshold: float = NEAR_DUP_JACCARD) -> list[tuple[str, str, float]]:
    sets = [_words(t) for t in texts]
    out = []
    for i, j in itertools.combinations(range(len(texts)), 2):
        a, b = sets[i], sets[j]
        jac = len(a & b) / max(1, len(a | b))
        if jac > threshold:
            out.append((texts[i], texts[j], round(jac, 2)))
    return out


def _raw_lines(name: str) -> list[dict]:
    return [json.loads(line) for line in ds.data_path(name).read_text(encoding="utf-8").splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------ shipped queries


@pytest.fixture(scope="module")
def shipped_queries() -> list[Query]:
    return load_queries()


def test_shipped_queries_count_and_ids(shipped_queries):
    assert len(shipped_queries) >= MIN_QUERIES
    ids = [q.id for q in shipped_queries]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"q\d{4}", i) for i in ids)
    texts = [q.text.strip().lower() for q in shipped_queries]
    assert len(set(texts)) == len(texts)


def test_shipped_queries_schema(shipped_queries):
    raw = _raw_lines(ds.QUERIES_FILE)
    assert len(raw) == len(shipped_queries)
    for r in raw:
        assert set(r) == {"id", "text", "topic", "values_hint"}, r
        assert isinstance(r["values_hint"], list)
        # canonical spelling in the file itself, not only after loading
        assert all(v in VALUE_NAMES for v in r["values_hint"]), r
        assert len(r["values_hint"]) <= 3, r
        assert r["topic"] and re.fullmatch(r"[a-z_]+", r["topic"]), r
        n = len(r["text"].split())
        assert 5 <= n <= 60, (n, r["text"])


def test_shipped_queries_cover_every_value(shipped_queries):
    counts = Counter(v for q in shipped_queries for v in q.values_hint)
    for name in VALUE_NAMES:
        assert counts[name] >= MIN_HINTS_PER_VALUE, (name, counts[name])
    assert sum(1 for q in shipped_queries if not q.values_hint) >= MIN_NEUTRAL
    assert sum(1 for q in shipped_queries if len(q.values_hint) >= 2) >= 100
    assert len({q.topic for q in shipped_queries}) >= 15


def test_shipped_queries_vary_in_length(shipped_queries):
    lengths = [len(q.text.split()) for q in shipped_queries]
    assert min(lengths) <= 8
    assert max(lengths) >= 40
    assert sum(1 for n in lengths if n >= 25) >= 30


def test_shipped_queries_no_near_duplicates(shipped_queries):
    assert _near_duplicates([q.text for q in shipped_queries]) == []


# ------------------------------------------------------------------------------------------ shipped prompts


@pytest.fixture(scope="module")
def shipped_prompts() -> dict[str, list[SystemPrompt]]:
    return load_system_prompts()


def test_shipped_prompts_counts(shipped_prompts):
    assert list(shipped_prompts) == list(VALUE_NAMES)
    for name, prompts in shipped_prompts.items():
        assert len(prompts) >= MIN_PROMPTS_PER_VALUE, (name, len(prompts))
        assert all(p.value == name for p in prompts)
        styles = Counter(p.style for p in prompts)
        assert set(styles) <= {"instruction", "persona", "description"}
        assert all(styles[s] >= 5 for s in ("instruction", "persona", "description")), (name, styles)


def test_shipped_prompts_ids_texts_unique(shipped_prompts):
    allp = [p for ps in shipped_prompts.values() for p in ps]
    ids = [p.id for p in allp]
    assert len(set(ids)) == len(ids)
    for p in allp:
        assert re.fullmatch(rf"sp-{get_value(p.value).key.replace('_', '-')}-\d{{3}}", p.id), p.id
    texts = [p.text.strip().lower() for p in allp]
    assert len(set(texts)) == len(texts)


def test_shipped_prompts_schema_canonical():
    for r in _raw_lines(ds.SYSTEM_PROMPTS_FILE):
        assert set(r) == {"id", "value", "text", "style"}, r
        assert r["value"] in VALUE_NAMES, r


def test_shipped_prompts_vary_and_do_not_name_other_values(shipped_prompts):
    for name, prompts in shipped_prompts.items():
        lengths = [len(re.findall(r"[.!?](\s|$)", p.text)) for p in prompts]
        assert min(lengths) <= 1 and max(lengths) >= 4, (name, lengths)
        # most prompts describe the value without its name
        named = sum(1 for p in prompts if name.lower() in p.text.lower())
        assert named < len(prompts) / 2, (name, named)
        others = [v for v in VALUE_NAMES if v != name]
        for p in prompts:
            for other in others:
                assert not re.search(rf"\b{re.escape(other)}\b", p.text, re.I), (p.id, other)


def test_shipped_prompts_no_near_duplicates(shipped_prompts):
    # across values too: two values' prompts must not differ only in the value word
    assert _near_duplicates([p.text for ps in shipped_prompts.values() for p in ps]) == []


def test_load_system_prompts_subset_and_aliases():
    got = load_system_prompts(values=["power", "self direction"])
    assert list(got) == ["Self-Direction", "Power"]  # circumplex order
    assert list(load_system_prompts(values="Hedonism,benevolent")) == ["Hedonism", "Benevolence"]
    with pytest.raises(ConfigError, match="unknown value 'greed'"):
        load_system_prompts(values=["greed"])


def test_limit_on_shipped_queries():
    qs = load_queries(limit=5)
    assert [q.id for q in qs] == ["q0001", "q0002", "q0003", "q0004", "q0005"]


# ------------------------------------------------------------------------------------------ user files

ROWS = [
    {"id": "a1", "text": "Should I move to the coast?", "topic": "housing", "values_hint": ["Hedonism", "security"]},
    {"id": "a2", "text": "How do I plan a wedding on a budget?", "topic": "family", "values_hint": []},
    {"id": "a3", "text": "What is a fair way to split chores?", "topic": "family", "values_hint": ["Universalism"]},
]


def _write(path: Path, rows: list[dict], hint_as: str = "list") -> Path:
    rows = [dict(r) for r in rows]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path
    if hint_as == "string":
        for r in rows:
            if "values_hint" in r:
                r["values_hint"] = ";".join(r["values_hint"])
    df = pd.DataFrame(rows)
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_user_files_load_identically(tmp_path, suffix):
    expected = [
        Query("a1", "Should I move to the coast?", "housing", ("Hedonism", "Security")),
        Query("a2", "How do I plan a wedding on a budget?", "family", ()),
        Query("a3", "What is a fair way to split chores?", "family", ("Universalism",)),
    ]
    hint_as = "string" if suffix == ".csv" else "list"
    got = load_queries(_write(tmp_path / f"q{suffix}", ROWS, hint_as))
    assert got == expected
    assert load_queries(str(tmp_path / f"q{suffix}"), limit=2) == expected[:2]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_read_table_same_rows(tmp_path, suffix):
    rows = [{"id": "x", "text": "hello there"}, {"id": "y", "text": "second row"}]
    assert read_table(_write(tmp_path / f"t{suffix}", rows)) == rows


def test_csv_hint_as_json_list(tmp_path):
    p = tmp_path / "q.csv"
    pd.DataFrame([{"text": "Where should we go?", "values_hint": json.dumps(["stimulation", "Hedonism"])}]).to_csv(
        p, index=False
    )
    assert load_queries(p)[0].values_hint == ("Stimulation", "Hedonism")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_custom_column_and_stable_ids(tmp_path, suffix):
    rows = [{"prompt": "Is it fine to skip a family dinner?"}, {"prompt": "Is it fine to skip a family dinner?"},
            {"prompt": "Plan my week."}]
    p = _write(tmp_path / f"c{suffix}", rows)
    qs = load_queries(p, column="prompt")
    base = stable_id("Is it fine to skip a family dinner?")
    assert [q.id for q in qs] == [base, base + "-2", stable_id("Plan my week.")]
    assert re.fullmatch(r"q-[0-9a-f]{12}", base)
    assert load_queries(p, column="prompt") == qs  # stable across loads
    assert all(q.topic == "" and q.values_hint == () for q in qs)


def test_json_array_file(tmp_path):
    p = tmp_path / "q.json"
    p.write_text(json.dumps([{"text": "one"}, {"text": "two"}]), encoding="utf-8")
    assert [q.text for q in load_queries(p)] == ["one", "two"]


def test_user_system_prompts_all_formats(tmp_path):
    rows = [
        {"id": "p1", "value": "power", "text": "Lead from the front.", "style": "instruction"},
        {"id": "p2", "value": "Self-Direction", "text": "Think for yourself.", "style": "persona"},
        {"id": "p3", "value": "Power", "text": "Status matters.", "style": "description"},
    ]
    results = []
    for suffix in (".jsonl", ".csv", ".parquet"):
        results.append(load_system_prompts(_write(tmp_path / f"sp{suffix}", rows), values=["Power", "self-direction"]))
    assert results[0] == results[1] == results[2]
    assert list(results[0]) == ["Self-Direction", "Power"]
    assert [p.id for p in results[0]["Power"]] == ["p1", "p3"]
    assert results[0]["Power"][0] == SystemPrompt("p1", "Power", "Lead from the front.", "instruction")


def test_user_system_prompts_missing_ids(tmp_path):
    p = _write(tmp_path / "sp.jsonl", [{"value": "Hedonism", "text": "Enjoy it."}])
    got = load_system_prompts(p, values="hedonism")["Hedonism"][0]
    assert got.id == stable_id("Enjoy it.", prefix="sp-hedonism-") and got.style == ""


# ------------------------------------------------------------------------------------------ errors


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found") as e:
        load_queries(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in _one_line(e)
    with pytest.raises(DataError, match="hf:owner/name"):
        load_queries("owner/name")


def test_unsupported_suffix(tmp_path):
    p = tmp_path / "q.txt"
    p.write_text("hello\n")
    with pytest.raises(DataError, match=r"q\.txt.*unsupported file type"):
        read_table(p)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_empty_file(tmp_path, suffix):
    p = tmp_path / f"empty{suffix}"
    p.write_text("\n\n" if suffix == ".jsonl" else "text\n")
    with pytest.raises(DataError, match="empty file") as e:
        load_queries(p)
    assert str(p) in _one_line(e)


def test_empty_parquet(tmp_path):
    p = tmp_path / "empty.parquet"
    pd.DataFrame({"text": pd.Series([], dtype=str)}).to_parquet(p)
    with pytest.raises(DataError, match=r"empty\.parquet: no rows"):
        load_queries(p)


def test_bad_json_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "fine"}\n\n{"text": "broken"\n', encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_queries(p)
    assert re.search(r"bad\.jsonl, line 3: invalid JSON", _one_line(e))


def test_json_line_not_object(tmp_path):
    p = tmp_path / "arr.jsonl"
    p.write_text('{"text": "fine"}\n["x"]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"arr\.jsonl, line 2: expected a JSON object"):
        read_table(p)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_missing_column(tmp_path, suffix):
    p = _write(tmp_path / f"nocol{suffix}", [{"question": "hi"}])
    with pytest.raises(DataError, match=r"no column 'text' \(columns: question\)") as e:
        load_queries(p)
    assert f"nocol{suffix}" in _one_line(e)


def test_missing_text_on_one_jsonl_line(tmp_path):
    p = tmp_path / "partial.jsonl"
    p.write_text('{"text": "a"}\n{"question": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"partial\.jsonl, line 2: missing 'text'"):
        load_queries(p)


@pytest.mark.parametrize(("suffix", "where"), [(".csv", "line 3"), (".parquet", "row 2"), (".jsonl", "line 2")])
def test_empty_text_cell(tmp_path, suffix, where):
    p = _write(tmp_path / f"blank{suffix}", [{"id": "1", "text": "ok"}, {"id": "2", "text": None}])
    with pytest.raises(DataError, match=rf"blank\{suffix}, {where}: empty 'text'"):
        load_queries(p)


def test_non_string_text(tmp_path):
    p = tmp_path / "num.jsonl"
    p.write_text('{"text": 5}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"num\.jsonl, line 1: 'text' must be a string"):
        load_queries(p)


def test_duplicate_ids(tmp_path):
    p = _write(tmp_path / "dup.csv", [{"id": "x", "text": "a"}, {"id": "x", "text": "b"}])
    with pytest.raises(DataError, match=r"dup\.csv, line 3: duplicate id 'x' \(first at .*line 2\)"):
        load_queries(p)


def test_unknown_value_in_hint(tmp_path):
    p = tmp_path / "hint.jsonl"
    p.write_text('{"text": "a"}\n{"text": "b", "values_hint": ["Greed"]}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"hint\.jsonl, line 2: unknown value 'Greed'"):
        load_queries(p)


def test_unknown_value_in_prompt_file(tmp_path):
    p = _write(tmp_path / "sp.csv", [{"value": "Power", "text": "x"}, {"value": "Wealthiness", "text": "y"}])
    with pytest.raises(ConfigError) as e:
        load_system_prompts(p)
    assert re.search(r"sp\.csv, line 3: unknown value 'Wealthiness'", _one_line(e))


def test_prompt_file_missing_value_column(tmp_path):
    p = _write(tmp_path / "sp.parquet", [{"text": "x"}])
    with pytest.raises(DataError, match=r"sp\.parquet: no column 'value'"):
        load_system_prompts(p)


def test_prompt_file_lacks_requested_value(tmp_path):
    p = _write(tmp_path / "sp.jsonl", [{"value": "Power", "text": "x"}])
    assert list(load_system_prompts(p, values=["Power"])) == ["Power"]
    with pytest.raises(DataError, match=r"sp\.jsonl: no system prompts for 'Self-Direction', .*'Tradition'"):
        load_system_prompts(p)


def test_bad_limit():
    with pytest.raises(ConfigError, match="limit"):
        load_queries(limit=0)


def test_errors_are_user_facing(tmp_path):
    assert issubclass(DataError, ValuelensError) and issubclass(ConfigError, ValuelensError)


# ------------------------------------------------------------------------------------------ Hugging Face


def test_hf_without_datasets_library(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "datasets" or name.startswith("datasets."):
            raise ImportError("no datasets")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ConfigError, match=r"pip install datasets"):
        load_queries("hf:someone/some-queries")


def test_hf_dataset_via_library(monkeypatch):
    datasets = pytest.importorskip("datasets")
    table = datasets.Dataset.from_list(
        [{"prompt": "Should I retire early?", "idx": 7}, {"prompt": "What should I cook tonight?", "idx": 8},
         {"prompt": "Third one", "idx": 9}]
    )
    calls = {}

    def fake_load(name, config=None, split=None):
        calls.update(name=name, config=config, split=split)
        return table

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    qs = load_queries("hf:someone/queries:en", column="prompt", split="test", limit=2, id_column="idx")
    assert calls == {"name": "someone/queries", "config": "en", "split": "test"}
    assert [(q.id, q.text) for q in qs] == [("7", "Should I retire early?"), ("8", "What should I cook tonight?")]
    with pytest.raises(DataError, match=r"hf:someone/queries \[test\]|no column 'text'"):
        load_queries("hf:someone/queries", split="test")


def test_hf_load_failure_is_data_error(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def boom(*a, **k):
        raise FileNotFoundError("Dataset 'nobody/nothing' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(DataError, match=r"hf:nobody/nothing \(split 'train'\): cannot load"):
        load_queries("hf:nobody/nothing")
