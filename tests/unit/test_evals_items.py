"""Bundled evaluation data: counts, coverage, balance, and the loaders' error cases."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from valuelens.errors import ConfigError, DataError
from valuelens.evals import items as items_mod
from valuelens.evals.compliance import CHECKERS, LANGUAGE_STOPWORDS, check_response, detect_language
from valuelens.evals.items import (
    PVQ_LANGUAGES,
    PVQ_SCORES,
    load_capability_mc,
    load_heldout_text,
    load_instructions,
    load_pvq,
    pvq_scale,
)
from valuelens.values import VALUE_NAMES

# ---------------------------------------------------------------------------------------------------- PVQ


@pytest.mark.parametrize("lang", PVQ_LANGUAGES)
def test_pvq_every_value_in_every_language(lang):
    items = load_pvq(lang)
    per_value = Counter(it.value for it in items)
    assert set(per_value) == set(VALUE_NAMES)
    assert min(per_value.values()) >= 5
    assert len(items) >= 50
    assert all(it.lang == lang and it.text.strip() for it in items)
    assert len({it.text for it in items}) == len(items)  # no duplicated portraits


def test_pvq_ids_align_across_languages():
    ids = [it.id for it in load_pvq("en")]
    for lang in PVQ_LANGUAGES[1:]:
        assert [it.id for it in load_pvq(lang)] == ids
    assert all(re.fullmatch(r"pvq-[a-z-]+-\d\d", i) for i in ids)


@pytest.mark.parametrize("lang", PVQ_LANGUAGES)
def test_pvq_scale(lang):
    question, options = pvq_scale(lang)
    assert question.strip()
    assert len(options) == 6 == len(PVQ_SCORES)
    assert len(set(options)) == 6
    assert PVQ_SCORES == (6, 5, 4, 3, 2, 1)


def test_pvq_english_scale_and_style():
    question, options = pvq_scale("en")
    assert question == "How much like you is this person?"
    assert options[0] == "Very much like me" and options[-1] == "Not like me at all"
    for it in load_pvq("en"):
        assert "this person" in it.text.lower()
        # gender-neutral portraits: no gendered pronouns
        assert not re.search(r"\b(he|she|him|her|his|hers|himself|herself)\b", it.text, re.IGNORECASE), it.id


def test_pvq_translations_are_in_their_language():
    for lang, script in (("zh", "zh"), ("ko", "ko")):
        assert all(detect_language(it.text) == script for it in load_pvq(lang))
    for lang in ("fr", "es"):
        assert all(detect_language(it.text) == lang for it in load_pvq(lang)), lang


def test_pvq_filter_by_value_aliases():
    ach = load_pvq("fr", values="achievement")
    assert ach and {it.value for it in ach} == {"Achievement"}
    two = load_pvq("ko", values=["self direction", "power"])
    assert {it.value for it in two} == {"Self-Direction", "Power"}


def test_pvq_errors():
    with pytest.raises(ConfigError, match=r"unknown questionnaire language 'de'.*en, zh, es, fr, ko"):
        load_pvq("de")
    with pytest.raises(ConfigError, match="valid languages"):
        pvq_scale("xx")
    with pytest.raises(ConfigError, match=r"unknown value 'kindness'.*Self-Direction"):
        load_pvq("en", values=["kindness"])


# --------------------------------------------------------------------------------------------- instructions


def test_instructions_count_and_coverage():
    items = load_instructions()
    assert len(items) >= 60
    assert len({it.id for it in items}) == len(items)
    used = Counter(t for it in items for t in it.check_types)
    assert set(used) == set(CHECKERS)  # every checker is exercised by the data
    langs = {c["lang"] for it in items for c in it.checks if c["type"] == "language"}
    assert {"fr", "es"} <= langs and langs <= set(LANGUAGE_STOPWORDS)
    for it in items:
        assert it.prompt.strip() and it.checks
        check_response("placeholder", it.checks, it.id)  # every check runs on any text


def test_instruction_loader_rejects_unknown_type(monkeypatch):
    def fake(name):
        return ({"id": "if-bad-01", "prompt": "p", "checks": [{"type": "dance"}]},)

    monkeypatch.setattr(items_mod, "_read_jsonl", fake)
    with pytest.raises(DataError, match=r"if-bad-01.*unknown check type 'dance'"):
        load_instructions()


# ----------------------------------------------------------------------------------------------- MC + text


def test_capability_mc_counts_and_balance():
    items = load_capability_mc()
    assert len(items) >= 80
    assert len({it.id for it in items}) == len(items)
    assert len({it.question for it in items}) == len(items)
    pos = Counter(it.answer for it in items)
    assert set(pos) == {0, 1, 2, 3}
    assert max(pos.values()) - min(pos.values()) <= 0.05 * len(items) + 1
    for it in items:
        assert len(it.options) == 4 and len(set(it.options)) == 4
        assert it.answer_letter in "ABCD" and it.answer_text == it.options[it.answer]


def test_capability_mc_loader_rejects_bad_rows(monkeypatch):
    monkeypatch.setattr(
        items_mod, "_read_jsonl", lambda name: ({"id": "mc-x", "question": "q", "options": ["a", "b"], "answer": 0},)
    )
    with pytest.raises(DataError, match="mc-x"):
        load_capability_mc()


def test_heldout_text():
    text = load_heldout_text()
    n_words = len(text.split())
    assert 2500 <= n_words <= 4000
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    assert len(paragraphs) >= 15
    assert detect_language(text) == "en"
    assert text.isascii()


def test_jsonl_reader_reports_bad_lines(monkeypatch):
    items_mod._read_jsonl.cache_clear()
    monkeypatch.setattr(items_mod, "_read_text", lambda name: '{"id": "a"}\nnot json\n')
    with pytest.raises(DataError, match=r"instructions.jsonl:2: invalid JSON"):
        items_mod._read_jsonl("instructions.jsonl")
    items_mod._read_jsonl.cache_clear()
    monkeypatch.setattr(items_mod, "_read_text", lambda name: '{"id": "a"}\n{"id": "a"}\n')
    with pytest.raises(DataError, match="duplicate ids"):
        items_mod._read_jsonl("instructions.jsonl")
    items_mod._read_jsonl.cache_clear()


GOLD = {
    "if-format-14": "i sleep late and then walk to the market. in the afternoon i read in the park.",
    "if-format-26": "In simple terms a volcano is an opening in the ground where molten rock escapes. That is all.",
    "if-format-33": '"The library was silent. Only the pages turned."',
    "if-language-07": "l'eau est essentielle pour la vie parce que toutes les cellules en ont besoin.",
    "if-language-08": "* El jaguar\n* El mono\n* La serpiente",
    "if-combined-01": "fresh bread every morning and warm croissants all day so come visit us",
    "if-combined-03": "<<the quiet moon>>\nthe moon climbs slowly over the sleeping hills",
}


@pytest.mark.parametrize("item_id", sorted(GOLD))
def test_shipped_instructions_are_satisfiable(item_id):
    item = {it.id: it for it in load_instructions()}[item_id]
    assert all(check_response(GOLD[item_id], item.checks, item.id).values())
