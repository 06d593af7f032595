"""Diversity of responses and of vectors (MISSION.md §2 step 9, *Diversity*).

* :func:`distinct_n` — Distinct-n (Li et al. 2016): unique n-grams / total n-grams over the **whole set** of
  texts (corpus level). n-grams never cross a text boundary and are not padded.
* :func:`ead_n` — Expectation-Adjusted Distinct (Liu et al. 2022, "Rethinking and Refining the Distinct
  Metric", ACL): ``EAD = N_unique / (V · (1 − ((V − 1)/V)^C))`` with ``C`` the total number of n-grams and
  ``V`` the size of the space they are drawn from; the denominator is the expected number of distinct types
  when C tokens are drawn uniformly from V types. The paper and its reference implementation (the
  ``lsy641/distinct`` measurement) define it on unigrams with ``V`` = vocabulary size. For ``n > 1`` the paper
  is silent; we keep ``V = vocab_size`` as given by default (``ngram_space="given"``: pass the number of
  n-gram types you consider possible, e.g. from :func:`ngram_vocab_size` on a reference corpus, the n-gram
  analogue of the authors' rule of thumb), or use ``ngram_space="power"`` for ``V**n`` (every n-tuple of
  tokens possible — then EAD-n ≈ Distinct-n for realistic C, which is why it is not the default).
* :func:`semantic_diversity` — mean pairwise cosine distance ``1 − cos`` of response embeddings.
* :func:`logit_lens_entropy` — entropy (nats) of ``softmax(W_U · norm(v))`` for a vector ``v``.

Default tokenisation (:func:`simple_tokenize`): case is kept; tokens are maximal runs of word characters
(Unicode ``\\w``, so digits and accented letters count), each punctuation/symbol character is its own token,
whitespace separates, and each CJK ideograph or kana is a token of its own (those scripts do not use spaces).
Any callable ``str → sequence of hashables`` (e.g. a Hugging Face ``tokenizer.tokenize``) can be passed instead.

>>> distinct_n(["a b a b"], 2)       # bigrams (a,b) (b,a) (a,b): 2 unique of 3
0.6666666666666666
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from ..errors import ConfigError, DataError

__all__ = [
    "LogitLens",
    "distinct_n",
    "ead_n",
    "expected_distinct",
    "logit_lens_entropy",
    "ngram_counts",
    "ngram_vocab_size",
    "semantic_diversity",
    "simple_tokenize",
]

Tokenizer = Callable[[str], Sequence[Hashable]]

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")


def simple_tokenize(text: str) -> list[str]:
    """Whitespace + punctuation tokenisation (see the module docstring).

    >>> simple_tokenize("Hello, world! It's 3pm.")
    ['Hello', ',', 'world', '!', 'It', "'", 's', '3pm', '.']
    """
    return _TOKEN_RE.findall(text)


def _ngrams(tokens: Sequence[Hashable], n: int) -> Iterable[tuple[Hashable, ...]]:
    return (tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def ngram_counts(texts: Iterable[str], n: int, tokenizer: Tokenizer | None = None) -> tuple[int, int]:
    """``(unique n-grams, total n-grams)`` over all texts (n-grams do not cross texts).

    >>> ngram_counts(["a b a b", "a b"], 2)
    (2, 4)
    """
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    if isinstance(texts, str):
        raise ConfigError("pass a list of texts, not a single string")
    tok = tokenizer or simple_tokenize
    seen: set[tuple[Hashable, ...]] = set()
    total = 0
    for text in texts:
        tokens = list(tok(text))
        for g in _ngrams(tokens, n):
            seen.add(g)
            total += 1
    return len(seen), total


def distinct_n(texts: Iterable[str], n: int, tokenizer: Tokenizer | None = None) -> float:
    """Distinct-n = unique n-grams / total n-grams over the whole set; 0.0 when there are no n-grams.

    >>> distinct_n(["a b a b"], 1), distinct_n(["a b", "b a"], 2)
    (0.5, 1.0)
    """
    unique, total = ngram_counts(texts, n, tokenizer)
    return unique / total if total else 0.0


def ngram_vocab_size(reference_texts: Iterable[str], n: int, tokenizer: Tokenizer | None = None) -> int:
    """Number of distinct n-grams in a reference corpus — a data-driven ``V`` for :func:`ead_n`."""
    return ngram_counts(reference_texts, n, tokenizer)[0]


def expected_distinct(total: int, vocab_size: float) -> float:
    """``V · (1 − ((V − 1)/V)^C)``: expected number of distinct types in ``C`` uniform draws from ``V``.

    Computed as ``−V · expm1(C · log1p(−1/V))`` so it stays accurate for huge ``V`` (``V**n``).
    """
    if vocab_size < 1:
        raise ConfigError(f"vocab_size must be >= 1, got {vocab_size}")
    if total <= 0:
        return 0.0
    if vocab_size == 1:
        return 1.0
    return -vocab_size * math.expm1(total * math.log1p(-1.0 / vocab_size))


def ead_n(texts: Iterable[str], n: int, vocab_size: int, tokenizer: Tokenizer | None = None, *,
          ngram_space: Literal["given", "power"] = "given") -> float:
    """Expectation-adjusted Distinct-n: ``unique / (V · (1 − ((V − 1)/V)^C))``; 0.0 with no n-grams.

    ``V = vocab_size`` (``ngram_space="given"``, default) or ``vocab_size**n`` (``"power"``); see the module
    docstring for why. EAD can slightly exceed 1 (more distinct n-grams than uniform sampling would give).

    >>> round(ead_n(["a b a b"], 1, vocab_size=2), 6)   # 2 / (2 · (1 − (1/2)^4)) = 2 / 1.875
    1.066667
    """
    unique, total = ngram_counts(texts, n, tokenizer)
    if ngram_space == "given":
        v = float(vocab_size)
    elif ngram_space == "power":
        v = float(vocab_size) ** n
    else:
        raise ConfigError(f"ngram_space must be 'given' or 'power', got {ngram_space!r}")
    expected = expected_distinct(total, v)
    return unique / expected if expected > 0 else 0.0


def semantic_diversity(embeddings: Any) -> float:
    """Mean pairwise cosine distance ``1 − cos(e_i, e_j)`` over all pairs ``i < j`` of ``embeddings: [N, D]``.

    Ranges over [0, 2]; 0 when all embeddings point the same way. Needs N ≥ 2 and no zero rows.

    >>> semantic_diversity([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])   # distances 1, 2, 1
    1.3333333333333333
    """
    e = embeddings if isinstance(embeddings, Tensor) else torch.as_tensor(embeddings)
    e = e.detach().to(device="cpu", dtype=torch.float64)
    if e.ndim != 2:
        raise ConfigError(f"semantic_diversity expects [N, D] embeddings, got shape {tuple(e.shape)}")
    n = int(e.shape[0])
    if n < 2:
        raise DataError(f"semantic_diversity needs at least 2 embeddings, got {n}")
    if not torch.isfinite(e).all():
        raise DataError("semantic_diversity: embeddings contain NaN or inf")
    norms = torch.linalg.vector_norm(e, dim=1)
    if (norms == 0).any():
        raise DataError("semantic_diversity: an embedding is the zero vector")
    unit = e / norms[:, None]
    # Σ_{i<j} cos = (‖Σ u_i‖² − N) / 2, so no N × N matrix is needed.
    s = unit.sum(dim=0)
    sum_cos = (float(s @ s) - n) / 2.0
    n_pairs = n * (n - 1) / 2.0
    return 1.0 - sum_cos / n_pairs


class LogitLens(NamedTuple):
    """Result of :func:`logit_lens_entropy`: entropy in nats, top-k token ids and their probabilities."""

    entropy: float
    top_ids: list[int]
    top_probs: list[float]


def logit_lens_entropy(vec: Tensor, unembed: Tensor, final_norm: Callable[[Tensor], Tensor] | None = None,
                       top_k: int = 10) -> LogitLens:
    """Entropy (nats) of ``softmax(W_U · norm(v))`` for ``vec: [D]``, ``unembed = W_U: [V, D]``.

    ``final_norm`` is the model's final norm module/callable (applied to ``vec`` as given); ``None`` skips it.
    The maximum is ``ln V`` (a vector that favours no token). Logits and softmax are computed in float64.

    >>> import torch, math
    >>> r = logit_lens_entropy(torch.tensor([math.log(3.0), 0.0]), torch.eye(2), top_k=1)
    >>> round(r.entropy, 4), r.top_ids, [round(p, 2) for p in r.top_probs]   # p = (3/4, 1/4)
    (0.5623, [0], [0.75])
    """
    if vec.ndim != 1:
        raise ConfigError(f"logit_lens_entropy expects a [D] vector, got shape {tuple(vec.shape)}")
    if unembed.ndim != 2 or unembed.shape[1] != vec.shape[0]:
        raise ConfigError(f"unembed must be [V, D={vec.shape[0]}], got shape {tuple(unembed.shape)}")
    if top_k < 0:
        raise ConfigError(f"top_k must be >= 0, got {top_k}")
    with torch.no_grad():
        h = vec
        if final_norm is not None:
            h = final_norm(vec)
        logits = unembed.to(torch.float64) @ h.detach().to(device=unembed.device, dtype=torch.float64).reshape(-1)
        if not torch.isfinite(logits).all():
            raise DataError("logit_lens_entropy: logits contain NaN or inf")
        logp = torch.log_softmax(logits, dim=-1)
        p = logp.exp()
        entropy = float(-(p * logp).sum())
        k = min(int(top_k), int(logits.shape[0]))
        top = torch.topk(p, k)
    return LogitLens(entropy=max(entropy, 0.0), top_ids=[int(i) for i in top.indices.tolist()],
                     top_probs=[float(x) for x in top.values.tolist()])
