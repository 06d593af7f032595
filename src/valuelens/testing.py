"""Tiny randomly initialised models built from a config (no weights), for fast tests and doctests.

>>> from valuelens.testing import tiny_llama
>>> m = tiny_llama()
>>> m.config.num_hidden_layers, m.config.hidden_size
(4, 64)
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["tiny_gpt2", "tiny_llama", "tiny_qwen2"]


def _seeded(build, seed: int) -> nn.Module:  # type: ignore[no-untyped-def]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build()
    model.eval()
    model.config.tie_last_hidden_states = False
    return model


def tiny_llama(seed: int = 0, *, n_layers: int = 4, d_model: int = 64, d_mlp: int = 128,
               vocab: int = 128) -> nn.Module:
    """A 4-layer Llama (SwiGLU MLP, GQA, RoPE) with random weights; float32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                      max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False)
    return _seeded(lambda: LlamaForCausalLM(cfg), seed)


def tiny_qwen2(seed: int = 0) -> nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=256, pad_token_id=0)
    return _seeded(lambda: Qwen2ForCausalLM(cfg), seed)


def tiny_gpt2(seed: int = 0) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_embd=64, n_layer=3, n_head=4, vocab_size=128, n_positions=256, bos_token_id=1,
                     eos_token_id=2)
    return _seeded(lambda: GPT2LMHeadModel(cfg), seed)
