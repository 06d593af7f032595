"""Model loading errors, the architecture registry, and chat rendering with hand-written templates."""

from __future__ import annotations

import hashlib

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from valuelens.errors import ConfigError, ModelError
from valuelens.models import (
    NO_SYSTEM,
    TEMPLATE_DEFAULT,
    ChatRenderer,
    assemble_parts,
    get_arch_spec,
    load_model,
)
from valuelens.testing import tiny_gpt2, tiny_llama, tiny_qwen2

CHATML_DEFAULT = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nDefault helper.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_STYLE = (
    "{{ '<|begin_of_text|>' }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
NO_SYSTEM_ROLE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    "{{ '<start_of_turn>' + m['role'] + '\\n' + m['content'] + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def _tok(template: str | None) -> PreTrainedTokenizerFast:
    t = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]")
    tok.chat_template = template
    return tok


def test_chatml_with_default_system_prompt():
    r = ChatRenderer(_tok(CHATML_DEFAULT))
    assert r.render("Hi", TEMPLATE_DEFAULT).text == (
        "<|im_start|>system\nDefault helper.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert r.render("Hi", NO_SYSTEM).text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    p = r.render("Hi", "Be brave.")
    assert p.text.startswith("<|im_start|>system\nBe brave.<|im_end|>\n<|im_start|>user\nHi")
    assert (p.system_mode, p.system) == ("custom", "Be brave.")


def test_llama3_style_keeps_bos_preamble():
    r = ChatRenderer(_tok(LLAMA3_STYLE))
    no_sys = r.render("Hi", NO_SYSTEM).text
    assert no_sys == r.render("Hi", TEMPLATE_DEFAULT).text  # this template inserts no default
    assert no_sys.startswith("<|begin_of_text|><|start_header_id|>user")


def test_template_without_system_role():
    r = ChatRenderer(_tok(NO_SYSTEM_ROLE))
    assert r.render("Hi", NO_SYSTEM).text == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    with pytest.raises(ModelError, match="chat template failed"):
        r.render("Hi", "custom system")


def test_missing_chat_template_is_a_clear_error_unless_plain_allowed():
    with pytest.raises(ModelError, match="no chat template"):
        ChatRenderer(_tok(None)).render("Hi")
    plain = ChatRenderer(_tok(None), allow_plain=True)
    assert plain.render("Hi", "Be kind.").text == "System: Be kind.\n\nUser: Hi\n\nAssistant:"


@pytest.mark.parametrize(("build", "family", "n_layers", "d_mlp"),
                         [(tiny_llama, "llama", 4, 128), (tiny_qwen2, "qwen2", 3, 96), (tiny_gpt2, "gpt2", 3, 256)])
def test_registry_resolves_families(build, family, n_layers, d_mlp):
    spec = get_arch_spec(build())
    assert (spec.arch.family, spec.n_layers, spec.d_model, spec.d_mlp) == (family, n_layers, 64, d_mlp)
    assert tuple(spec.down_weight(build(), 0).shape) == (64, d_mlp)


def test_unknown_family_and_bad_layer():
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=64)
    m = LlamaForCausalLM(cfg)
    m.config.model_type = "martian"
    with pytest.raises(ModelError, match="'martian' is not in the architecture registry"):
        get_arch_spec(m)
    spec = get_arch_spec(tiny_llama())
    assert spec.check_layer(-1) == 3
    with pytest.raises(ConfigError, match="out of range"):
        spec.check_layer(-5)
    with pytest.raises(ConfigError, match="integer"):
        spec.check_layer(1.5)  # type: ignore[arg-type]


def test_missing_and_corrupt_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("VALUELENS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelError, match="GGUF file not found"):
        load_model(str(tmp_path / "nope.gguf"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOTGGUF" + b"\0" * 100)
    with pytest.raises(ModelError, match="not a GGUF file"):
        load_model(str(bad))
    truncated = tmp_path / "trunc.gguf"
    truncated.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\0" * 10)
    with pytest.raises(ModelError, match="could not load GGUF"):
        load_model(str(truncated))
    with pytest.raises(ModelError, match="model folder not found"):
        load_model("./no/such/folder")
    with pytest.raises(ConfigError, match="unknown dtype"):
        load_model("smollm2", dtype="float8")


def test_gguf_memory_check_parses_the_file_only_when_its_bound_does_not_fit(tmp_path, monkeypatch):
    """The fresh-cache memory check bounds a GGUF's float32 size by 16x the file; only when that bound does not
    fit is the file parsed for the exact size (seconds), which then decides, in one line."""
    import valuelens.models as m

    monkeypatch.setenv("VALUELENS_CACHE", str(tmp_path / "cache"))
    calls: list[object] = []
    real = m._gguf_weight_bytes
    monkeypatch.setattr(m, "_gguf_weight_bytes", lambda p: calls.append(p) or real(p))
    monkeypatch.setattr(m, "available_memory", lambda device: 10 * 1024 ** 2)
    with pytest.raises(ModelError, match=r"needs about 0\.5 GiB .* has 0\.0 GiB free"):
        load_model("smollm2", device="cpu")
    assert len(calls) == 1
    # Plenty of memory: no parse (the load itself is stopped right after the check).
    import transformers

    monkeypatch.setattr(m, "available_memory", lambda device: 1024 ** 4)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: 1 / 0)
    with pytest.raises(ModelError, match=r"could not load GGUF .*ZeroDivisionError"):
        load_model("smollm2", device="cpu")
    assert len(calls) == 1


def test_assemble_parts_verifies_sha256(tmp_path):
    parts = []
    for i, payload in enumerate([b"hello ", b"world"]):
        p = tmp_path / f"part{i}.bin"
        p.write_bytes(payload)
        parts.append(p)
    good = hashlib.sha256(b"hello world").hexdigest()
    out = assemble_parts(parts, tmp_path / "whole.bin", sha256=good, size=11)
    assert out.read_bytes() == b"hello world"
    with pytest.raises(ModelError, match="SHA-256"):
        assemble_parts(parts, tmp_path / "bad.bin", sha256="0" * 64)
    assert not (tmp_path / "bad.bin").exists()
    with pytest.raises(ModelError, match="expected 12"):
        assemble_parts(parts, tmp_path / "bad2.bin", sha256=good, size=12)


def test_gguf_conversion_bar_is_silenced_and_restored():
    """transformers' per-tensor GGUF dequantisation bar is plain tqdm (its logging switches miss it): one line of
    kilobytes in a non-terminal log of a fresh machine's first run. Silenced only while a GGUF loads."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from valuelens.models import _quiet_gguf_conversion

    before = gguf_utils.tqdm
    with _quiet_gguf_conversion():
        items = [1, 2, 3]
        assert gguf_utils.tqdm(items, desc="Converting") is items
    assert gguf_utils.tqdm is before
