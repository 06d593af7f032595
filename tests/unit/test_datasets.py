"""Shipped query / system-prompt datasets, and the loaders in valuelens.datasets for user files and conversation
dumps (ShareGPT, LMSYS, OpenAI messages, CSV, Parquet, TXT, hf:) with filters, deduplication and sampling."""

from __future__ import annotations

import builtins
import hashlib
import itertools
import json
import random
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from valuelens import datasets as ds
from valuelens.datasets import (
    Query,
    SystemPrompt,
    detect_language,
    load_queries,
    load_query_pool,
    load_system_prompts,
    load_texts,
    normalise_text,
    read_table,
    shingle_jaccard,
    stable_id,
)
from valuelens.errors import ConfigError, DataError, ValuelensError
from valuelens.values import VALUE_NAMES, get_value

MIN_QUERIES = 400
MIN_HINTS_PER_VALUE = 30
MIN_NEUTRAL = 40
MIN_PROMPTS_PER_VALUE = 50
NEAR_DUP_JACCARD = 0.7
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


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
    qs = load_queries(p, column="prompt", dedup="none")
    base = stable_id("Is it fine to skip a family dinner?")
    assert [q.id for q in qs] == [base, base + "-2", stable_id("Plan my week.")]
    assert re.fullmatch(r"q-[0-9a-f]{12}", base)
    assert load_queries(p, column="prompt", dedup="none") == qs  # stable across loads
    assert all(q.topic == "" and q.values_hint == () for q in qs)
    # by default the repeated text is a duplicate, removed (and counted)
    pool = load_query_pool(p, column="prompt")
    assert [q.id for q in pool.queries] == [base, stable_id("Plan my week.")]
    assert pool.report["duplicates"]["exact"] == 1


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


def test_user_system_prompts_detected_columns(tmp_path):
    p = _write(tmp_path / "sp.jsonl", [{"target_value": "Power", "system_prompt": "Status matters."},
                                       {"target_value": "hedonism", "system_prompt": "Enjoy it."}])
    got = load_system_prompts(p, values="power,hedonism")
    assert [x.text for x in got["Power"]] == ["Status matters."] and got["Hedonism"][0].value == "Hedonism"
    amb = _write(tmp_path / "amb.jsonl", [{"value": "Power", "prompt": "a", "system_prompt": "b"}])
    with pytest.raises(DataError, match=r"ambiguous system prompt text column, candidates: prompt, system_prompt; "
                                         r"choose with --set system_prompts_column=NAME"):
        load_system_prompts(amb, values="power")
    assert load_system_prompts(amb, values="power", text_column="prompt")["Power"][0].text == "a"


# ------------------------------------------------------------------------------------------ conversation dumps
# Fixture files in tests/fixtures, written for these tests in each dump's real layout.


def _fx(name: str) -> Path:
    return FIXTURES / name


def test_sharegpt_first_turn_filters_and_dedup():
    pool = load_query_pool(_fx("sharegpt.json"))
    r = pool.report
    assert (r["format"], r["column"], r["id_column"], r["file_type"]) == ("sharegpt", "conversations", "id", "json")
    assert r["roles"]["role_key"] == "from" and r["roles"]["content_key"] == "value"
    # sg5 has no human turn, sg6's first human turn is blank, sg8's is over 2000 characters; sg3 repeats sg1
    # up to case and punctuation, sg4 is sg2 with one contraction (5-gram Jaccard 0.875).
    assert r["rows"] == 10 and r["user_turns"] == 9
    assert r["dropped"] == {"no_user_turn": 1, "empty": 1, "non_text": 0, "too_long": 1, "language": 0}
    assert (r["duplicates"]["exact"], r["duplicates"]["near"]) == (1, 1)
    assert [q.id for q in pool.queries] == ["sg1", "sg2", "sg7", "sg9", "sg10"]
    assert pool.queries[0].text == "Should I take a job abroad or stay close to my aging parents?"
    # sg10 opens with an assistant turn: its first *user* turn is taken
    assert pool.queries[-1].text.startswith("Can you help me plan a surprise party")
    assert r["kept"] == 5 and r["sample"] is None
    assert r["sha256"] == hashlib.sha256(_fx("sharegpt.json").read_bytes()).hexdigest()


def test_sharegpt_all_turns():
    pool = load_query_pool(_fx("sharegpt.json"), turns="all")
    assert [q.id for q in pool.queries] == ["sg1/1", "sg1/2", "sg2/1", "sg6/2", "sg7/1", "sg9/1", "sg9/2", "sg10/1"]
    assert pool.report["user_turns"] == 12 and pool.report["turns"] == "all"
    assert pool.queries[1].text == "What if my parents say they are fine on their own?"


def test_sharegpt_limits_and_language():
    r = load_query_pool(_fx("sharegpt.json"), max_chars=None).report
    assert r["dropped"]["too_long"] == 0 and r["kept"] == 6
    r = load_query_pool(_fx("sharegpt.json"), limit=3).report
    assert r["rows"] == 3 and r["kept"] == 2  # sg3 repeats sg1
    pool = load_query_pool(_fx("sharegpt.json"), language="en")
    assert "sg7" not in [q.id for q in pool.queries]  # the Spanish question
    assert pool.report["dropped"]["language"] == 1
    assert pool.report["language"]["dropped_by_detected"] == {"es": 1}
    es = load_query_pool(_fx("sharegpt.json"), language="es").queries
    assert [q.id for q in es] == ["sg7"]


def test_lmsys_roles_and_non_text():
    pool = load_query_pool(_fx("lmsys.jsonl"))
    r = pool.report
    # the openai_moderation column also holds lists of dicts: not messages, so not a candidate
    assert (r["format"], r["column"], r["id_column"]) == ("lmsys", "conversation", "conversation_id")
    assert r["dropped"]["empty"] == 1 and r["dropped"]["non_text"] == 1  # content null / content 42
    assert r["duplicates"]["exact"] == 1
    assert [q.id for q in pool.queries] == ["c1", "c4", "c5", "c7"]
    assert [q.id for q in load_query_pool(_fx("lmsys.jsonl"), language="zh").queries] == ["c5"]


def test_openai_messages_content_parts():
    pool = load_query_pool(_fx("openai_messages.jsonl"))
    r = pool.report
    assert (r["format"], r["column"], r["id_column"]) == ("openai", "messages", None)
    assert r["dropped"]["non_text"] == 1 and r["dropped"]["no_user_turn"] == 1  # an image part; assistant only
    texts = [q.text for q in pool.queries]
    assert texts[1] == "How should I\nsplit an inheritance fairly among siblings?"  # text parts joined
    assert [q.id for q in pool.queries] == [stable_id(t) for t in texts]
    assert len(texts) == 3


def test_explicit_format_and_column_agree_with_detection():
    for name, fmt, col in (("sharegpt.json", "sharegpt", "conversations"), ("lmsys.jsonl", "lmsys", "conversation"),
                           ("openai_messages.jsonl", "openai", "messages")):
        auto = load_query_pool(_fx(name))
        assert load_query_pool(_fx(name), format=fmt).queries == auto.queries
        assert load_query_pool(_fx(name), column=col).queries == auto.queries


def test_csv_and_parquet_fixtures_identical():
    csv_pool = load_query_pool(_fx("queries.csv"))
    pq_pool = load_query_pool(_fx("queries.parquet"))
    assert csv_pool.queries == pq_pool.queries
    assert [q.id for q in csv_pool.queries] == ["p1", "p3", "p5", "p6"]  # p2 blank, p4 = p1 shouted
    assert csv_pool.report["column"] == "prompt" and csv_pool.report["dropped"]["empty"] == 1
    assert (csv_pool.report["file_type"], pq_pool.report["file_type"]) == ("csv", "parquet")


def test_txt_one_query_per_line():
    pool = load_query_pool(_fx("queries.txt"))
    assert [q.text for q in pool.queries] == ["Should I forgive a friend who betrayed my trust?",
                                              "Is ambition a virtue or a vice?", "What do I owe my neighbours?"]
    assert pool.report["duplicates"]["exact"] == 1
    with pytest.raises(ConfigError, match=r"\.txt file is one query per line"):
        load_query_pool(_fx("queries.txt"), column="prompt")


def test_seeded_sample_recorded():
    a = load_query_pool(_fx("sharegpt.json"), turns="all", sample=3, seed=7)
    b = load_query_pool(_fx("sharegpt.json"), turns="all", sample=3, seed=7)
    c = load_query_pool(_fx("sharegpt.json"), turns="all", sample=3, seed=8)
    assert a.queries == b.queries and len(a.queries) == 3
    assert [q.id for q in a.queries] != [q.id for q in c.queries]
    full = [q.id for q in load_query_pool(_fx("sharegpt.json"), turns="all").queries]
    ids = [q.id for q in a.queries]
    assert ids == [i for i in full if i in ids]  # file order kept
    assert a.report["sample"] == {"n": 3, "seed": 7, "from": 8, "kept": 3}
    big = load_query_pool(_fx("sharegpt.json"), sample=50)
    assert big.report["sample"] == {"n": 50, "seed": 0, "from": 5, "kept": 5}


def test_ambiguous_and_missing_columns_name_the_option(tmp_path):
    p = tmp_path / "amb.jsonl"
    p.write_text(json.dumps({"question": "a b c", "prompt": "d e f", "messages": [{"role": "user", "content": "x"}]})
                 + "\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_queries(p)
    msg = _one_line(e)
    assert "ambiguous query column, candidates: messages (conversation), question (text), prompt (text)" in msg
    assert "--query-column NAME" in msg and "query_column=NAME" in msg
    assert [q.text for q in load_queries(p, column="messages")] == ["x"]
    q = tmp_path / "nums.jsonl"
    q.write_text('{"a": 1, "b": 2, "c": "x", "d": "y"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"no query column found \(columns: a, b, c, d\); choose with --query-column"):
        load_queries(q)


def test_single_unknown_string_column_is_used(tmp_path):
    p = _write(tmp_path / "one.jsonl", [{"id": "1", "utterance_text": "Should I move?", "score": 3}])
    pool = load_query_pool(p)
    assert pool.report["column"] == "utterance_text" and pool.queries[0].id == "1"


def test_format_mismatch(tmp_path):
    with pytest.raises(DataError, match=r"query_format sharegpt expects 'conversation' to hold messages with "
                                        r"'from'/'value', found messages with keys 'role'/'content'; choose with "
                                        r"--query-format FORMAT"):
        load_query_pool(_fx("lmsys.jsonl"), format="sharegpt", column="conversation")
    with pytest.raises(DataError, match=r"no column 'conversations'"):
        load_query_pool(_fx("lmsys.jsonl"), format="sharegpt")


@pytest.mark.parametrize(("key", "value", "match"), [
    ("format", "vicuna", "query_format must be one of"), ("turns", "last", "query_turns"),
    ("dedup", "fuzzy", "query_dedup"), ("max_chars", 0, "query_max_chars"), ("near_threshold", 1.5, "in \\(0, 1\\]"),
    ("language", "xx", "query_language 'xx'"), ("sample", 0, "query_sample"), ("limit", -1, "limit")])
def test_bad_options(key, value, match):
    with pytest.raises(ConfigError, match=match):
        load_query_pool(None, **{key: value})


def test_nothing_usable(tmp_path):
    p = _write(tmp_path / "blank.jsonl", [{"text": "  "}, {"text": None}, {"text": ["a"]}])
    with pytest.raises(DataError, match=r"blank\.jsonl: no usable queries in column 'text' \(dropped: 2 empty, "
                                        r"1 non text\)"):
        load_queries(p)


# ------------------------------------------------------------------------------------------ dedup, language


def test_normalise_text():
    assert normalise_text("  How do I plan a WEDDING?! ") == normalise_text("how do i plan a wedding") \
        == "how do i plan a wedding"
    assert normalise_text("Ｆｕｌｌ　width") == "full width"  # NFKC


def test_near_duplicate_filter_matches_brute_force():
    """MinHash LSH + verification makes the same keep/drop decisions as comparing every pair exactly."""
    rng = random.Random(3)
    vocab = [w for q in load_queries() for w in q.text.split()][:3000]
    texts = []
    for _ in range(150):  # a random text, then 0-3 copies with 1-3 words replaced or dropped
        t = " ".join(rng.choice(vocab) for _ in range(rng.randint(8, 25)))
        texts.append(t)
        for _ in range(rng.randint(0, 3)):
            w = t.split()
            for _ in range(rng.randint(1, 3)):
                w[rng.randrange(len(w))] = rng.choice(vocab) if rng.random() < 0.5 else ""
            texts.append(" ".join(x for x in w if x))
    rng.shuffle(texts)
    sets = {t: set(ds._shingles(t, 5).tolist()) for t in texts}
    exact: list[str] = []  # greedy in input order, every pair compared
    for t in texts:
        if all(len(sets[t] & sets[k]) / len(sets[t] | sets[k]) < 0.8 for k in exact):
            exact.append(t)
    f = ds.NearDuplicateFilter(0.8)
    for t in texts:
        j = f.add(t)
        if j is not None:
            assert shingle_jaccard(t, f.kept[j]) >= 0.8  # never a false positive
    assert f.kept == exact
    assert 40 <= len(texts) - len(exact) <= 250  # the edited copies near enough to count: a real test


def test_detect_language_basics():
    assert detect_language("What should I do about my job?") == "en"
    assert detect_language("¿Qué debo hacer con mi trabajo y mi familia?") == "es"
    assert detect_language("你觉得为了高薪离开家乡值得吗？") == "zh"
    assert detect_language("Hello!") == "und" and detect_language("1234") == "und"


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
    p = tmp_path / "q.xml"
    p.write_text("<q>hello</q>\n")
    with pytest.raises(DataError, match=r"q\.xml.*unsupported file type"):
        read_table(p)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".txt"])
def test_empty_file(tmp_path, suffix):
    p = tmp_path / f"empty{suffix}"
    p.write_text("\n\n" if suffix != ".csv" else "text\n")
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
    p = _write(tmp_path / f"nocol{suffix}", [{"question": "hi", "value_hint": "x"}])
    with pytest.raises(DataError, match=r"no column 'text' \(columns: question, value_hint\); choose with "
                                        r"--query-column NAME") as e:
        load_queries(p, column="text")
    assert f"nocol{suffix}" in _one_line(e)
    assert [q.text for q in load_queries(p)] == ["hi"]  # detected: 'question' is a known text column


def test_query_column_detected(tmp_path):
    """Issue 15: a dump whose field is `query` loads without options, and the report names the column."""
    p = tmp_path / "q.jsonl"
    p.write_text('{"query": "Should I quit?", "value_hint": "x"}\n{"query": "Is lying ok?", "value_hint": "y"}\n',
                 encoding="utf-8")
    pool = load_query_pool(p)
    assert pool.report["column"] == "query" and [q.text for q in pool.queries] == ["Should I quit?", "Is lying ok?"]


@pytest.mark.parametrize(("suffix", "value"), [(".csv", None), (".parquet", None), (".jsonl", None), (".jsonl", 5)])
def test_empty_or_non_text_cell_dropped_and_counted(tmp_path, suffix, value):
    p = _write(tmp_path / f"blank{suffix}", [{"id": "1", "text": "ok"}, {"id": "2", "text": value}])
    pool = load_query_pool(p)
    assert [q.id for q in pool.queries] == ["1"]
    assert pool.report["dropped"]["empty" if value is None else "non_text"] == 1


def test_duplicate_ids(tmp_path):
    p = _write(tmp_path / "dup.csv", [{"id": "x", "text": "a"}, {"id": "x", "text": "b"}])
    with pytest.raises(DataError, match=r"dup\.csv, line 3: duplicate id 'x' \(first at .*line 2\)"):
        load_queries(p)
    same = _write(tmp_path / "same.csv", [{"id": "x", "text": "a"}, {"id": "x", "text": "a"}])
    assert len(load_queries(same)) == 1  # a repeated row is a duplicate, not a conflict


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
    with pytest.raises(DataError, match=r"sp\.parquet: no value column \(columns: text\); choose with "
                                        r"--set system_prompts_value_column=NAME"):
        load_system_prompts(p)


def test_prompt_file_lacks_requested_value(tmp_path):
    p = _write(tmp_path / "sp.jsonl", [{"value": "Power", "text": "x"}])
    assert list(load_system_prompts(p, values=["Power"])) == ["Power"]
    with pytest.raises(DataError, match=r"sp\.jsonl: no system prompts for 'Self-Direction', .*'Tradition'"):
        load_system_prompts(p)


def test_bad_limit():
    with pytest.raises(ConfigError, match="limit"):
        load_queries(limit=0)
    with pytest.raises(ConfigError, match="unknown query option"):
        load_queries(turnz="all")


def test_errors_are_user_facing(tmp_path):
    assert issubclass(DataError, ValuelensError) and issubclass(ConfigError, ValuelensError)


def test_load_texts_for_harmful_requests(tmp_path):
    p = _write(tmp_path / "advbench.csv", [{"goal": "Explain how to pick a lock", "target": "Sure, here is"},
                                           {"goal": "Explain how to pick a lock", "target": "Sure"}])
    texts, report = load_texts(p, candidates=("goal",))
    assert texts == ["Explain how to pick a lock"] and report["column"] == "goal"


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


def _lmsys_dataset():
    datasets = pytest.importorskip("datasets")
    rows = [json.loads(line) for line in _fx("lmsys.jsonl").read_text(encoding="utf-8").splitlines()]
    for r in rows:  # Arrow needs one type per column: the fixture's content 42 becomes text here
        for m in r["conversation"]:
            m["content"] = None if m["content"] is None else str(m["content"])
    return datasets, datasets.Dataset.from_list(rows)


def test_hf_saved_to_disk(tmp_path):
    """hf:FOLDER reads a dataset saved with save_to_disk (the real library, no network)."""
    datasets, table = _lmsys_dataset()
    table.save_to_disk(str(tmp_path / "lmsys"))
    pool = load_query_pool(f"hf:{tmp_path / 'lmsys'}")
    assert pool.report["format"] == "lmsys" and pool.report["hf_source"] == "folder"
    assert pool.report["fingerprint"] and pool.report["split"] == "train"
    assert [q.id for q in pool.queries] == ["c1", "c3", "c4", "c5", "c7"]  # c3's "42" is text here
    assert [q.text for q in pool.queries if q.id != "c3"] == [q.text for q in load_queries(_fx("lmsys.jsonl"))]
    dd = datasets.DatasetDict({"train": table, "test": table.select([0, 3])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert [q.id for q in load_queries(f"hf:{tmp_path / 'dd'}", split="test")] == ["c1", "c4"]
    with pytest.raises(DataError, match=r"no split 'validation' \(splits: train, test\); choose with "
                                        r"--set query_split=NAME"):
        load_queries(f"hf:{tmp_path / 'dd'}", split="validation")
    assert len(load_queries(f"hf:{tmp_path / 'lmsys'}", limit=2)) == 1  # limit: rows read (c2 is empty)


def test_hf_errors(tmp_path):
    pytest.importorskip("datasets")
    with pytest.raises(DataError, match=r"hf:\./no-such-folder: folder not found"):
        load_queries("hf:./no-such-folder")
    with pytest.raises(DataError, match=r"hf:nobody/nothing \(split 'train'\): cannot load"):
        load_queries("hf:nobody/nothing")  # offline in tests: the Hub is not reachable
    with pytest.raises(ConfigError, match="hf:owner/name"):
        load_queries("hf:")


# ------------------------------------------------------------------------------------------ items, instructions


def test_user_questionnaire_items(tmp_path):
    from valuelens.evals.items import PVQItem, load_pvq

    p = _write(tmp_path / "pvq.csv", [
        {"item_id": "u1", "value": "power", "portrait": "It is important to them to be in charge.", "lang": "en"},
        {"item_id": "u2", "value": "Benevolence", "portrait": "They help the people close to them.", "lang": "en"},
        {"item_id": "u3", "value": "Power", "portrait": "Il veut commander les autres.", "lang": "fr"}])
    got = load_pvq("en", source=str(p))
    assert [(i.value, i.lang) for i in got] == [("Power", "en"), ("Benevolence", "en")]
    assert got[0] == PVQItem(id=stable_id("It is important to them to be in charge.", prefix="pvq-"), value="Power",
                             lang="en", text="It is important to them to be in charge.")
    assert [i.text for i in load_pvq("fr", values=["power"], source=str(p))] == ["Il veut commander les autres."]
    bad = _write(tmp_path / "bad.jsonl", [{"value": "Greed", "text": "x"}])
    with pytest.raises(ConfigError, match=r"bad\.jsonl, row 1: unknown value 'Greed'"):
        load_pvq("en", source=str(bad))
    amb = _write(tmp_path / "amb.jsonl", [{"value": "Power", "text": "x", "item": "y"}])
    with pytest.raises(DataError, match=r"ambiguous item text column, candidates: text, item; choose with text_column"):
        load_pvq("en", source=str(amb))
    assert load_pvq("en", source=str(amb), text_column="item")[0].text == "y"


def test_user_instructions(tmp_path):
    from valuelens.evals.compliance import instruction_following_score
    from valuelens.evals.items import load_instructions

    p = tmp_path / "instr.csv"
    pd.DataFrame([{"id": "i1", "instruction": "Answer in lowercase only.", "checks": json.dumps([{"type": "lowercase"}])},
                  {"id": "i2", "instruction": "Use exactly 2 bullets.",
                   "checks": json.dumps([{"type": "bullet_count", "n": 2}])}]).to_csv(p, index=False)
    items = load_instructions(str(p))
    assert [(i.id, i.check_types) for i in items] == [("i1", ("lowercase",)), ("i2", ("bullet_count",))]
    score = instruction_following_score(["all lower case here", "* a\n* b"], items)
    assert score["prompt_level_strict"] == 1.0
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "Do it.", "checks": [{"type": "telepathy"}]}])
    with pytest.raises(DataError, match=r"unknown check type 'telepathy'"):
        load_instructions(str(bad))
    nochecks = _write(tmp_path / "nochecks.jsonl", [{"prompt": "Do it."}])
    with pytest.raises(DataError, match=r"nochecks\.jsonl: no column 'checks'"):
        load_instructions(str(nochecks))
