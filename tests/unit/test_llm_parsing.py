"""Robust parsing of messy LLM answers (detector categories and judge yes/no), prompts and example selection."""

from __future__ import annotations

import numpy as np
import pytest

from valuelens.backends import ChatRequest, ChatResponse
from valuelens.detect.data import Argument, ValueEvalSplit
from valuelens.detect.llm import (
    LLMDetector,
    build_system_prompt,
    category_descriptions,
    parse_categories,
    select_examples,
)
from valuelens.judges.llm import LLMJudge, parse_yes_no
from valuelens.values import VALUEEVAL_CATEGORIES, resolve_values


def cats(*names: str) -> list[int]:
    return sorted(VALUEEVAL_CATEGORIES.index(n) for n in names)


def got(text: str, cot: bool = False) -> list[int]:
    labels, info = parse_categories(text, cot=cot)
    assert info["ok"], (text, info)
    return [int(j) for j in np.flatnonzero(labels)]


@pytest.mark.parametrize("text,expected", [
    ("Security: personal, Benevolence: caring", ("Security: personal", "Benevolence: caring")),
    ("security personal; BENEVOLENCE - CARING.", ("Security: personal", "Benevolence: caring")),
    ("Self-direction: thought", ("Self-direction: thought",)),
    ("self direction thought, self-direction:action", ("Self-direction: thought", "Self-direction: action")),
    ("1. Stimulation\n2. Hedonism\n3. Achievement", ("Stimulation", "Hedonism", "Achievement")),
    ("- Power: dominance\n- Power: resources\n* Face", ("Power: dominance", "Power: resources", "Face")),
    ('["Tradition", "Humility"]', ("Tradition", "Humility")),
    ("The answer is [\"Universalism: nature\"]", ("Universalism: nature",)),
    ("[17, 18]", ("Universalism: concern", "Universalism: nature")),
    ("3, 5", ("Stimulation", "Achievement")),
    ("personal security and societal security", ("Security: personal", "Security: societal")),
    ("Universalism (tolerance)", ("Universalism: tolerance",)),
    ("Conformity: Rules and Conformity: Interpersonal", ("Conformity: rules", "Conformity: interpersonal")),
    ("Hedonsim, Acheivement", ("Hedonism", "Achievement")),  # misspellings
    ("Benevolence: dependabilty", ("Benevolence: dependability",)),
    ("objectivity, nature", ("Universalism: objectivity", "Universalism: nature")),  # unique sub-names
    ("Security", ("Security: personal", "Security: societal")),  # bare parent: all its sub-categories
    ("Universalism", ("Universalism: concern", "Universalism: nature", "Universalism: tolerance",
                      "Universalism: objectivity")),
    ("The argument draws on tradition and humility.", ("Tradition", "Humility")),
    ("**Achievement**", ("Achievement",)),
    ("Answer: Face", ("Face",)),
    ("Categories: Stimulation, Hedonism\n\nThese were chosen because Power matters.", ("Stimulation", "Hedonism")),
    ("Values: Security: societal.", ("Security: societal",)),
])
def test_category_answers(text: str, expected: tuple[str, ...]) -> None:
    assert got(text) == cats(*expected)


@pytest.mark.parametrize("text", ["None", "none.", "None of the categories apply.", "Answer: None", "[]",
                                  "No values", "N/A"])
def test_explicit_none_is_parsed_not_unparsable(text: str) -> None:
    labels, info = parse_categories(text)
    assert info["ok"] and info["none"] and labels.sum() == 0


@pytest.mark.parametrize("text", ["", "   ", "blah blah", "I am a helpful assistant named SmolLM.", "42",
                                  "The premise is convincing and well written overall."])
def test_unparsable_answers(text: str) -> None:
    labels, info = parse_categories(text)
    assert not info["ok"] and labels.sum() == 0


def test_cot_parses_only_the_final_answer() -> None:
    text = ("The premise talks about power and about tradition in families. It also mentions safety.\n"
            "Answer: Security: personal, Tradition")
    assert got(text, cot=True) == cats("Security: personal", "Tradition")
    # The last marker wins; reasoning that names categories is ignored.
    text2 = "Step 1: Hedonism? Answer: maybe Hedonism.\nFinal answer: Face"
    assert got(text2, cot=True) == cats("Face")
    # Without a marker, the last line is the answer (counted as no_marker by the detector).
    labels, info = parse_categories("This is about achievement.\nStimulation", cot=True)
    assert info["ok"] and not info["marker"] and list(np.flatnonzero(labels)) == cats("Stimulation")


def test_bare_numbers_do_not_override_names() -> None:
    assert got("1 Stimulation") == cats("Stimulation")


@pytest.mark.parametrize("text,expected", [
    ("Yes", True), ("yes.", True), ("YES, it does", True), ("**Yes**", True), ("Answer: No", False),
    ("no", False), ("No, it does not.", False), ("True", True), ("false", False), ("Y", True),
    ("The response expresses Benevolence.", True), ("It does not express the value.", False),
    ("I would say yes.", True), ('"No"', False),
    ("maybe", None), ("", None), ("I am SmolLM, a helpful assistant.", None), ("Nobody knows", None),
])
def test_yes_no(text: str, expected: bool | None) -> None:
    assert parse_yes_no(text) is expected if expected is None else parse_yes_no(text) == expected


def _toy_split() -> ValueEvalSplit:
    args = [Argument(id=f"A{i}", conclusion=f"c{i}", stance="in favor of", premise=f"premise {i}")
            for i in range(40)]
    labels = np.zeros((40, 20), dtype=np.int8)
    for i in range(40):
        labels[i, i % 20] = 1
    return ValueEvalSplit(name="training", arguments=args, labels=labels)


def test_select_examples_seeded_and_balanced() -> None:
    sp = _toy_split()
    a, b = select_examples(sp, 5, seed=1), select_examples(sp, 5, seed=1)
    assert a == b and len(set(a)) == 5
    covered = {int(np.flatnonzero(sp.labels[i])[0]) for i in a}  # type: ignore[index]
    assert len(covered) == 5  # five different categories
    assert select_examples(sp, 5, seed=2) != a
    assert select_examples(sp, 0) == []
    assert len(select_examples(sp, 30, seed=0)) == 30


def test_system_prompt_lists_all_categories_with_descriptions(valueeval_dir) -> None:
    desc = category_descriptions(valueeval_dir)
    assert desc["Self-direction: thought"].startswith("Be creative")
    prompt = build_system_prompt(desc)
    for i, c in enumerate(VALUEEVAL_CATEGORIES, start=1):
        assert f"{i}. {c}" in prompt
    bare = build_system_prompt(category_descriptions("/nonexistent"))
    assert "20. Universalism: objectivity" in bare and "Be creative" not in bare


class EchoBackend:
    """A chat backend that answers from a table (for unit tests of the prompt/parse plumbing only; the HTTP
    client is tested against a real server in tests/integration)."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.seen: list[ChatRequest] = []

    def complete(self, requests):  # type: ignore[no-untyped-def]
        self.seen.extend(requests)
        return [ChatResponse(text=self.answers[(len(self.seen) - len(requests) + i) % len(self.answers)],
                             finish_reason="stop") for i in range(len(requests))]

    def describe(self):  # type: ignore[no-untyped-def]
        return {"backend": "table"}


def test_detector_counts_unparsable_answers(valueeval_dir) -> None:
    be = EchoBackend(["Stimulation, Face", "gibberish", "None"])
    det = LLMDetector(be, shots=2, data_dir=valueeval_dir)
    args = _toy_split().arguments[:3]
    pred = det.predict(args)
    assert pred.shape == (3, 20) and pred.dtype == np.int64
    assert list(np.flatnonzero(pred[0])) == cats("Stimulation", "Face") and pred[1].sum() == 0
    d = det.describe()
    assert d["parse"]["unparsable"] == 1 and d["parse"]["none"] == 1 and d["parse"]["n"] == 3
    assert len(d["example_ids"]) == 2 and d["shots"] == 2
    assert "Examples:" in be.seen[0].system and "premise 0" in be.seen[0].user
    assert det.predict([]).shape == (0, 20)


def test_judge_marks_unparsable_invalid() -> None:
    be = EchoBackend(["Yes", "No", "hmm"])
    judge = LLMJudge(be)
    vals = resolve_values(["benevolence", "power", "hedonism"])
    res = judge.judge_batch(["text one", "text two"], vals, contexts=["q1", "q2"])
    assert res.labels.shape == (2, 3)
    assert res.valid.tolist() == [[True, True, False], [True, True, False]]
    assert res.labels.tolist() == [[True, False, False], [True, False, False]]
    assert np.isnan(res.scores[0, 2]) and res.scores[0, 0] == 1.0
    assert "Benevolence" in be.seen[0].user and "q1" in be.seen[0].user and "text one" in be.seen[0].user
    assert judge.describe()["stats"] == {"n": 6, "invalid": 2, "yes": 2}
