"""Pins the diversity metrics (valuelens.evals.diversity) on hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch

from valuelens.errors import ConfigError, DataError
from valuelens.evals.diversity import (
    distinct_n,
    ead_n,
    expected_distinct,
    logit_lens_entropy,
    ngram_counts,
    ngram_vocab_size,
    semantic_diversity,
    simple_tokenize,
)

# --------------------------------------------------------------------------------------------- tokenisation


def test_simple_tokenize_rules() -> None:
    assert simple_tokenize("Hello, world!") == ["Hello", ",", "world", "!"]
    assert simple_tokenize("  a\tb\n c  ") == ["a", "b", "c"]
    assert simple_tokenize("don't stop...") == ["don", "'", "t", "stop", ".", ".", "."]
    assert simple_tokenize("café 42x") == ["café", "42x"]
    assert simple_tokenize("我爱你") == ["我", "爱", "你"]
    assert simple_tokenize("안녕 세상") == ["안녕", "세상"]
    assert simple_tokenize("") == []


# ------------------------------------------------------------------------------------------------ Distinct-n


def test_distinct_hand_examples() -> None:
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # (a b), (b a), (a b)
    assert distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["a b a b"], 3) == pytest.approx(2 / 2)  # (a b a), (b a b)
    assert distinct_n(["a b a b"], 5) == 0.0  # no 5-grams at all
    # corpus level: unique over the whole set; n-grams never cross text boundaries
    assert ngram_counts(["a b", "b a"], 2) == (2, 2)  # "b b" across the boundary is not counted
    assert distinct_n(["a b", "a b", "c"], 1) == pytest.approx(3 / 5)
    assert distinct_n(["the cat.", "the dog."], 2) == pytest.approx(4 / 4)
    assert distinct_n(["The the"], 1) == pytest.approx(1.0)  # case is kept
    assert distinct_n([], 2) == 0.0


def test_distinct_with_custom_tokenizer() -> None:
    chars = list  # character-level tokenizer
    assert distinct_n(["abab"], 2, tokenizer=chars) == pytest.approx(2 / 3)
    ids = {"a": 1, "b": 2}

    def to_ids(text: str) -> list[int]:
        return [ids[w] for w in text.split()]

    assert distinct_n(["a b b"], 1, tokenizer=to_ids) == pytest.approx(2 / 3)


def test_distinct_errors() -> None:
    with pytest.raises(ConfigError):
        distinct_n(["a b"], 0)
    with pytest.raises(ConfigError, match="list of texts"):
        distinct_n("a b a b", 2)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------- EAD


def test_expected_distinct_hand_values() -> None:
    assert expected_distinct(4, 2) == pytest.approx(2 * (1 - 0.5**4))  # 1.875
    assert expected_distinct(1, 10) == pytest.approx(1.0)  # one draw is always new
    assert expected_distinct(2, 10) == pytest.approx(10 * (1 - 0.81))  # 1.9
    assert expected_distinct(0, 10) == 0.0
    assert expected_distinct(5, 1) == 1.0
    assert expected_distinct(1000, 50257.0**2) == pytest.approx(1000, rel=1e-5)  # huge V: ≈ C, no underflow


def test_ead_hand_examples() -> None:
    # unigrams a b a b: unique 2, C = 4, V = 2 → 2 / 1.875
    assert ead_n(["a b a b"], 1, vocab_size=2) == pytest.approx(2 / 1.875)
    # bigrams: unique 2, C = 3, V = 4 (given) → 2 / (4 · (1 − 0.75³)) = 2 / 2.3125
    assert ead_n(["a b a b"], 2, vocab_size=4) == pytest.approx(2 / 2.3125)
    # "power": V = 2² = 4 — the same number
    assert ead_n(["a b a b"], 2, vocab_size=2, ngram_space="power") == pytest.approx(2 / 2.3125)
    assert ead_n([""], 2, vocab_size=10) == 0.0
    with pytest.raises(ConfigError):
        ead_n(["a"], 1, vocab_size=10, ngram_space="cube")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ead_n(["a"], 1, vocab_size=0)


def test_ead_approaches_distinct_for_large_vocab_and_corrects_length_bias() -> None:
    texts = ["the cat sat on the mat", "a dog sat on a log"]
    assert ead_n(texts, 1, vocab_size=10**9) == pytest.approx(distinct_n(texts, 1), rel=1e-6)
    # the length bias: with a small V, uniform random text has Distinct falling with length, EAD ≈ 1
    g = torch.Generator().manual_seed(0)
    short = [" ".join(str(int(t)) for t in torch.randint(0, 50, (20,), generator=g)) for _ in range(2)]
    long = [" ".join(str(int(t)) for t in torch.randint(0, 50, (400,), generator=g)) for _ in range(2)]
    assert distinct_n(long, 1) < 0.3 < distinct_n(short, 1)
    assert ead_n(short, 1, 50) == pytest.approx(1.0, abs=0.1)
    assert ead_n(long, 1, 50) == pytest.approx(1.0, abs=0.1)


def test_ngram_vocab_size() -> None:
    assert ngram_vocab_size(["a b a b", "c a"], 1) == 3
    assert ngram_vocab_size(["a b a b", "c a"], 2) == 3  # ab, ba, ca


# ---------------------------------------------------------------------------------------- semantic diversity


def test_semantic_diversity_hand_examples() -> None:
    # pairs: (e1,e2) cos 0 → 1; (e1,e3) cos −1 → 2; (e2,e3) cos 0 → 1 → mean 4/3
    assert semantic_diversity([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]) == pytest.approx(4 / 3)
    assert semantic_diversity(torch.tensor([[1.0, 1.0], [2.0, 2.0]])) == pytest.approx(0.0, abs=1e-12)
    assert semantic_diversity([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0]]) == pytest.approx(1.0)
    # 60° apart: 1 − 0.5
    assert semantic_diversity([[1.0, 0.0], [0.5, math.sqrt(3) / 2]]) == pytest.approx(0.5)


def test_semantic_diversity_matches_explicit_pairs() -> None:
    e = torch.randn(12, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    u = e / e.norm(dim=1, keepdim=True)
    cos = u @ u.T
    iu = torch.triu_indices(12, 12, offset=1)
    assert semantic_diversity(e) == pytest.approx(float((1 - cos[iu[0], iu[1]]).mean()), abs=1e-12)


def test_semantic_diversity_errors() -> None:
    with pytest.raises(DataError):
        semantic_diversity([[1.0, 0.0]])
    with pytest.raises(DataError, match="zero"):
        semantic_diversity([[1.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ConfigError):
        semantic_diversity([1.0, 2.0])


# ------------------------------------------------------------------------------------------ logit-lens entropy


def test_logit_lens_uniform_and_peaked() -> None:
    r = logit_lens_entropy(torch.zeros(2), torch.eye(2))
    assert r.entropy == pytest.approx(math.log(2))
    r = logit_lens_entropy(torch.zeros(3), torch.randn(5, 3))
    assert r.entropy == pytest.approx(math.log(5))  # zero logits → uniform over V = 5
    # logits (ln 3, 0) → p = (3/4, 1/4) → H = −(¾ ln ¾ + ¼ ln ¼)
    r = logit_lens_entropy(torch.tensor([math.log(3.0), 0.0]), torch.eye(2), top_k=2)
    assert r.entropy == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert r.top_ids == [0, 1] and r.top_probs == pytest.approx([0.75, 0.25])
    # a huge logit gap → entropy ~ 0, no NaN
    r = logit_lens_entropy(torch.tensor([1000.0, 0.0]), torch.eye(2))
    assert r.entropy == pytest.approx(0.0, abs=1e-12) and r.top_ids[0] == 0


def test_logit_lens_uses_unembedding_rows_and_final_norm() -> None:
    # W_U rows = token embeddings; v = (1, 0): logits = (2, 0, −2) before the norm
    w_u = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-2.0, 0.0]])
    v = torch.tensor([1.0, 0.0])
    plain = logit_lens_entropy(v, w_u, top_k=3)
    p = torch.softmax(torch.tensor([2.0, 0.0, -2.0], dtype=torch.float64), 0)
    assert plain.entropy == pytest.approx(float(-(p * p.log()).sum()))
    assert plain.top_ids == [0, 1, 2]
    # a norm that zeroes the vector → uniform; a norm that flips it → token 2 on top
    assert logit_lens_entropy(v, w_u, final_norm=lambda x: 0 * x).entropy == pytest.approx(math.log(3))
    flipped = logit_lens_entropy(v, w_u, final_norm=lambda x: -x, top_k=1)
    assert flipped.top_ids == [2] and flipped.entropy == pytest.approx(plain.entropy)
    # an RMSNorm-like module (a torch callable) works too
    norm = torch.nn.RMSNorm(2, elementwise_affine=False)
    r = logit_lens_entropy(torch.tensor([5.0, 0.0]), w_u, final_norm=norm, top_k=1)
    q = torch.softmax(torch.tensor([2 * math.sqrt(2), 0.0, -2 * math.sqrt(2)], dtype=torch.float64), 0)
    assert r.entropy == pytest.approx(float(-(q * q.log()).sum()), rel=1e-5)


def test_logit_lens_errors() -> None:
    with pytest.raises(ConfigError):
        logit_lens_entropy(torch.zeros(2, 2), torch.eye(2))
    with pytest.raises(ConfigError):
        logit_lens_entropy(torch.zeros(3), torch.eye(2))


def test_docstring_examples_run() -> None:
    import doctest

    import valuelens.evals.diversity as mod

    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
