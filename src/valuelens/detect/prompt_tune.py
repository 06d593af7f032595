"""Prompt tuning on a frozen encoder (the paper's second family of methods).

Two variants, both reusing :class:`~valuelens.detect.finetune.ValueDetector` and its training loop:

* **Soft prompt** (Lester et al. 2021, our own prefix embedding rather than PEFT, so that it works on any
  ``AutoModel`` encoder including sentence-transformers folders): ``prompt_len`` trainable vectors inserted
  after the first token; the encoder is frozen; soft prompt + linear head are trained.
* **Hard template** (the paper's best prompt-tuning set-up, "PT with a hard template"): the argument is
  wrapped in a fixed natural-language template ending in the tokenizer's mask token, the encoder is frozen,
  and a trainable linear head reads the hidden state at the mask position.

Frozen-encoder methods need a much larger learning rate than fine-tuning (defaults below: common values
from the prompt-tuning literature, not tuned on validation).
"""

from __future__ import annotations

from dataclasses import replace

from .finetune import TrainConfig

__all__ = ["DEFAULT_TEMPLATE", "hard_template_config", "soft_prompt_config"]

DEFAULT_TEMPLATE = "{text} The argument above relies on the human value of {mask}."


def soft_prompt_config(base: TrainConfig | None = None, *, prompt_len: int = 20, lr: float = 5e-3) -> TrainConfig:
    """Soft prompt + head on a frozen encoder (mean pooling over prompt and text tokens)."""
    b = base or TrainConfig()
    return replace(b, prompt_len=prompt_len, train_layers=0, head_lr=lr, lr=lr, pooling="mean", template=None,
                   dropout=0.0)


def hard_template_config(base: TrainConfig | None = None, *, template: str = DEFAULT_TEMPLATE,
                         lr: float = 2e-3, epochs: int = 30) -> TrainConfig:
    """Fixed template with a mask token; trainable head on the mask token's hidden state; frozen encoder.

    The frozen encoder's features are computed once (see ``train_detector``), so epochs cost almost nothing;
    early stopping on the held-out part decides when to stop.
    """
    b = base or TrainConfig()
    return replace(b, template=template, pooling="mask", train_layers=0, head_lr=lr, lr=lr, prompt_len=0,
                   epochs=epochs, patience=max(b.patience, 3))
