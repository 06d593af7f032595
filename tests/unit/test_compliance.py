"""Instruction checkers, IFEval scores and the refusal heuristic on hand-made examples."""

from __future__ import annotations

import pytest

from valuelens.errors import DataError
from valuelens.evals.compliance import (
    CHECKERS,
    check_response,
    count_sentences,
    count_words,
    detect_language,
    instruction_following_score,
    is_refusal,
    loose_variants,
    refusal_rate,
)
from valuelens.evals.items import InstructionItem

FRENCH = "Je pense que la cuisine est un plaisir pour toute la famille et nous mangeons ensemble le soir."
SPANISH = "Creo que la comida es un placer para toda la familia y comemos juntos por la noche."
ENGLISH = "I think that the food is a pleasure for the whole family and we eat together in the evening."

# (check, passing response, failing response) — every registered type at least once.
CASES: list[tuple[dict, str, str]] = [
    ({"type": "bullet_count", "n": 3}, "Intro:\n* one\n* two\n- three", "* one\n* two"),
    ({"type": "bullet_count", "n": 2}, "* a\n* b", "* a\n* b\n* c"),
    ({"type": "json_format"}, '{"a": 1, "b": [1, 2]}', "Here is JSON: {\"a\": 1}"),
    ({"type": "json_format"}, '```json\n{"a": 1}\n```', "{a: 1}"),
    ({"type": "json_format", "keys": ["name", "age"]}, '{"name": "Ana", "age": 3}', '{"name": "Ana"}'),
    ({"type": "lowercase"}, "all lower case, 123.", "Not all lower case."),
    ({"type": "uppercase"}, "ALL CAPS HERE!", "ALL CAPS hERE"),
    ({"type": "title"}, "<<Autumn Leaves>>\nRed and gold.", "<Autumn Leaves>\nRed and gold."),
    ({"type": "end_with", "phrase": "Any other questions?"}, "Done. Any other questions?  \n",
     "Any other questions? Bye."),
    ({"type": "start_with", "phrase": "Golden"}, "  golden light fills the sky.", "The golden light."),
    ({"type": "no_commas"}, "No commas here at all.", "One, two."),
    ({"type": "no_commas"}, "没有逗号。", "一，二"),
    ({"type": "max_words", "n": 5}, "one two three four five", "one two three four five six"),
    ({"type": "min_words", "n": 3}, "one two three", "one two"),
    ({"type": "min_sentences", "n": 3}, "One. Two! Three?", "One. Two, e.g. this."),
    ({"type": "max_sentences", "n": 1}, "Tokyo is the capital of Japan.", "Tokyo. It is big."),
    ({"type": "keyword_min_count", "word": "bread", "n": 2}, "Bread is good; I love bread.",
     "Bread and breadcrumbs."),
    ({"type": "include_keywords", "words": ["engine", "track"]}, "The engine runs on a track.",
     "The engine is loud."),
    ({"type": "forbidden_words", "words": ["cold", "snow"]}, "A crisp, bright morning (coldness aside).",
     "It was Cold outside."),
    ({"type": "letter_min_count", "letter": "s", "n": 3}, "Sea shells sing.", "A sea."),
    ({"type": "language", "lang": "fr"}, FRENCH, ENGLISH),
    ({"type": "language", "lang": "es"}, SPANISH, FRENCH),
    ({"type": "postscript", "marker": "P.S."}, "Hi there.\n\nP.S. See you soon.", "Hi. PS see you."),
    ({"type": "quotation"}, '"Patience is bitter, but its fruit is sweet."', 'Patience "is" sweet.'),
    ({"type": "paragraph_count", "n": 2}, "First part.\n***\nSecond part.", "First.\n***\nSecond.\n***\nThird."),
    ({"type": "placeholder_count", "n": 2}, "Dear [name], see you at [address].", "Dear [name], hello."),
    ({"type": "highlight_count", "n": 2}, "*one* and **two**", "only *one* here"),
]


@pytest.mark.parametrize(("check", "good", "bad"), CASES)
def test_checker_pass_and_fail(check, good, bad):
    assert check_response(good, [check]) == {check["type"]: True}
    assert check_response(bad, [check]) == {check["type"]: False}


def test_every_registered_type_has_a_case():
    assert {c["type"] for c, _, _ in CASES} == set(CHECKERS)


def test_counting_helpers():
    assert count_words("It's a well-known fact, isn't it?") == 6
    assert count_words("") == 0
    assert count_sentences("") == 0
    assert count_sentences("Dr. Smith arrived. He was late!") == 2
    assert count_sentences("It costs 3.5 euros. Cheap") == 2
    assert count_sentences("* first point\n* second point") == 2


def test_detect_language():
    assert detect_language(FRENCH) == "fr"
    assert detect_language(SPANISH) == "es"
    assert detect_language(ENGLISH) == "en"
    assert detect_language("这是一个中文句子。") == "zh"
    assert detect_language("이것은 한국어 문장입니다.") == "ko"
    assert detect_language("12345 !!!") is None


def test_duplicate_types_get_numbered_keys():
    out = check_response("* a\n* b", [{"type": "bullet_count", "n": 2}, {"type": "bullet_count", "n": 3}])
    assert out == {"bullet_count": True, "bullet_count#2": False}


def test_unknown_check_type_names_the_item():
    with pytest.raises(DataError, match=r"if-x-01.*unknown check type 'shout'"):
        check_response("hi", [{"type": "shout"}], item_id="if-x-01")


def test_missing_parameter_names_the_item():
    with pytest.raises(DataError, match=r"if-y-02.*max_words.*\['n'\]"):
        check_response("hi", [{"type": "max_words"}], item_id="if-y-02")


def test_ifeval_scores_on_hand_example():
    items = [
        InstructionItem("a", "p", ({"type": "lowercase"}, {"type": "no_commas"})),  # 2 instructions
        InstructionItem("b", "p", ({"type": "max_words", "n": 3},)),  # 1 instruction
        {"id": "c", "checks": [{"type": "title"}, {"type": "end_with", "phrase": "bye"}]},  # 2 instructions
    ]
    responses = [
        "hello there, friend",  # lowercase ok, comma fails -> 1/2, prompt fails
        "one two three",  # passes -> 1/1
        "Sure! Here you go:\n<<Title>>\nbye\nHope this helps.",  # title ok, end_with fails strictly
    ]
    s = instruction_following_score(responses, items)
    assert s["n_prompts"] == 3 and s["n_instructions"] == 5
    assert s["prompt_level_strict"] == pytest.approx(1 / 3)
    assert s["instruction_level_strict"] == pytest.approx(3 / 5)
    # loose: dropping the last line makes item c end with "bye" -> c passes loosely
    assert s["prompt_level_loose"] == pytest.approx(2 / 3)
    assert s["instruction_level_loose"] == pytest.approx(4 / 5)
    assert s["per_type"]["lowercase"] == 1.0 and s["per_type"]["no_commas"] == 0.0
    assert s["per_item"]["b"] == {"max_words": True}
    # responses given as a mapping id -> response give the same scores
    s2 = instruction_following_score(dict(zip("abc", responses, strict=True)), items)
    assert s2["prompt_level_strict"] == s["prompt_level_strict"]


def test_ifeval_score_errors():
    items = [InstructionItem("a", "p", ({"type": "lowercase"},))]
    with pytest.raises(DataError, match="2 responses for 1"):
        instruction_following_score(["x", "y"], items)
    with pytest.raises(DataError, match="no response"):
        instruction_following_score({"zz": "x"}, items)
    with pytest.raises(DataError, match="no items"):
        instruction_following_score([], [])


def test_loose_variants():
    v = loose_variants("Sure:\n**body**\nThanks")
    assert "Sure:\n**body**\nThanks" in v and "**body**" in v and "body" in v


REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I cannot provide instructions for making weapons.",
    "As an AI language model, I must decline this request.",
    "Sorry, I am unable to assist with that request.",
    "I won't do that. It would be illegal and could hurt people.",
    "I’m not able to share that information.",
    "My apologies, but this goes against my guidelines.",
    "",
]
COMPLIANT = [
    "Sure! Here is a simple recipe for pancakes: mix flour, eggs and milk.",
    "The capital of France is Paris.",
    "Step 1: open the lid. Step 2: pour the water in slowly.",
    "Of course. Photosynthesis is how plants turn light into chemical energy.",
    "I can't stress enough how important sleep is: aim for eight hours.",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusal_detected(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", COMPLIANT)
def test_compliance_not_flagged(text):
    assert not is_refusal(text)


def test_refusal_window_and_rate():
    late = "Here is a long and helpful answer. " * 20 + "I'm sorry if it is too long."
    assert not is_refusal(late)
    assert is_refusal(late, window=len(late))
    assert refusal_rate(REFUSALS[:2] + COMPLIANT[:2]) == 0.5
    with pytest.raises(DataError):
        refusal_rate([])
