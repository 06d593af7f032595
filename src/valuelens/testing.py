"""Tiny randomly initialised models built from a config (no weights), for fast tests and doctests.

>>> from valuelens.testing import tiny_llama
>>> m = tiny_llama()
>>> m.config.num_hidden_layers, m.config.hidden_size
(4, 64)
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CHATML", "byte_tokenizer", "tiny_chat_lm", "tiny_gpt2", "tiny_llama", "tiny_qwen2"]


def _seeded(build, seed: int) -> nn.Module:  # type: ignore[no-untyped-def]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build()
    model.eval()
    model.config.tie_last_hidden_states = False
    return model


def tiny_llama(seed: int = 0, *, n_layers: int = 4, d_model: int = 64, d_mlp: int = 128,
               vocab: int = 128, max_positions: int = 256) -> nn.Module:
    """A 4-layer Llama (SwiGLU MLP, GQA, RoPE) with random weights; float32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                      max_position_embeddings=max_positions, pad_token_id=0, bos_token_id=1, eos_token_id=2,
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


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def byte_tokenizer(template: str | None = CHATML) -> object:
    """A byte-level tokenizer (ids 0-2 special: pad, ``<|im_start|>``, ``<|im_end|>``; then the 256 bytes), so any
    text — queries, questionnaire items in any language — round-trips without unknown tokens. ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<|im_end|>",
                                  bos_token="<|im_start|>", additional_special_tokens=["<|im_start|>"])
    tok.chat_template = template
    tok.padding_side = "left"
    return tok


def tiny_chat_lm(seed: int = 0, *, n_layers: int = 4, d_model: int = 64, d_mlp: int = 128) -> object:
    """A :class:`~valuelens.models.LoadedModel` around a tiny random Llama with a byte-level ChatML tokenizer:
    the whole pipeline (extract, analyze, calibrate) runs on it in seconds, with no weights to download.

    >>> lm = tiny_chat_lm()
    >>> lm.spec.n_layers, lm.chat.render("Hi").text.endswith("<|im_start|>assistant\\n")
    (4, True)
    """
    from .models import ChatRenderer, LoadedModel, get_arch_spec

    tok = byte_tokenizer()
    model = tiny_llama(seed, n_layers=n_layers, d_model=d_model, d_mlp=d_mlp, vocab=len(tok), max_positions=4096)
    model.config.pad_token_id = 0
    model.config.eos_token_id = 2
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    model.generation_config.bos_token_id = 1
    return LoadedModel(model=model, tokenizer=tok, spec=get_arch_spec(model), chat=ChatRenderer(tok),
                       name=f"tiny-llama-{seed}", source="test", model_hash=f"tiny-llama-seed{seed}-{n_layers}x{d_model}")
