"""Optional vLLM backend for the *unsteered* generations (the intrinsic and prompted responses of extract).

vLLM's continuous batching and paged KV cache generate several times faster than HF ``generate`` on a GPU; it has
no activation hooks, so steered generation always stays on the HF hooks. :func:`vllm_unavailable` says why
vLLM cannot be used here (not installed, no CUDA GPU, a device that is not CUDA, a GGUF model, interventions
asked for); :func:`valuelens.generate.generate_to_file` then falls back to HF and logs that reason.

What stays the same as on HF, so the two backends' records are comparable:

* **prompts**: vLLM receives the *token ids* HF would (``tokenizer(rendered_text, add_special_tokens=False)``),
  not text to re-tokenise, and the record keeps them (``prompt_ids``) with the rendered prompt;
* **stopping**: the same stop ids (EOS and the chat template's end-of-turn tokens); the stop token is not part
  of ``response_ids``; ``finish_reason`` is ``stop`` or ``length``;
* **sampling**: ``max_new_tokens``, temperature, top-p and repetition penalty from the run's
  :class:`~valuelens.generate.GenerationConfig`; greedy when ``do_sample`` is false;
* **seeds**: each response gets its own seed, derived from its batch's seed and its row, recorded as
  ``sampling_seed``; vLLM seeds per request, so a response does not depend on which others share its batch.
  vLLM's kernels differ from HF's, so sampled *texts* differ from an HF run with the same seed — a run records
  its backend (``backend``: ``"vllm"``) in every record and in the manifest, and never mixes the two.

On one GPU the HF copy of the model (needed later for activations) is moved to the CPU while vLLM generates,
and the vLLM engine is shut down afterwards, so both never hold the weights on the GPU at once.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .models import LoadedModel

# ``cfg`` arguments are valuelens.generate.GenerationConfig objects (not imported: generate imports this module).

__all__ = ["VLLMGenerator", "item_seed", "vllm_unavailable"]


def item_seed(batch_seed: int, row: int) -> int:
    """The sampling seed of row ``row`` of a planned batch (vLLM seeds each request separately)."""
    return (batch_seed * 1_000_003 + row * 7_919 + 1) % (2**31 - 1)


def vllm_unavailable(lm: LoadedModel, *, steered: bool = False) -> str | None:
    """Why vLLM cannot generate for ``lm`` here (one line), or None when it can."""
    if steered:
        return "steered generation runs on the HF hooks (vLLM has no activation hooks)"
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install 'valuelens[vllm]' on a CUDA machine)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (vLLM needs one)"
    if lm.device.type != "cuda":
        return f"the model runs on {lm.device}, not on a CUDA GPU (--device cuda)"
    if lm.source != "hf":
        return f"vLLM needs a hub id or a model folder, and {lm.name} is a {lm.source} model"
    return None


@contextlib.contextmanager
def _hf_model_on_cpu(lm: LoadedModel) -> Iterator[None]:
    """Move a single-device HF model to the CPU for the duration (a device-mapped one stays where it is)."""
    if getattr(lm.model, "hf_device_map", None) or lm.device.type != "cuda":
        yield
        return
    dev = lm.device
    lm.model.to("cpu")
    gc.collect()
    torch.cuda.empty_cache()
    try:
        yield
    finally:
        lm.model.to(dev)


class VLLMGenerator:
    """A vLLM engine for one model: ``generate`` takes prompt token ids and returns records like
    :func:`valuelens.generate.generate_batch`'s. Use it as a context manager (the engine is shut down on exit)."""

    def __init__(self, lm: LoadedModel, *, gpu_memory_utilization: float = 0.85,
                 tensor_parallel_size: int | None = None, max_model_len: int | None = None,
                 enforce_eager: bool = False) -> None:
        self.lm = lm
        self.options = {"gpu_memory_utilization": gpu_memory_utilization,
                        "tensor_parallel_size": tensor_parallel_size or max(1, torch.cuda.device_count()),
                        "max_model_len": max_model_len, "enforce_eager": enforce_eager}
        self._llm: Any = None
        self._offload: contextlib.AbstractContextManager[None] | None = None

    def __enter__(self) -> VLLMGenerator:
        from vllm import LLM

        self._offload = _hf_model_on_cpu(self.lm)
        self._offload.__enter__()
        dtype = str(next(self.lm.model.parameters()).dtype).removeprefix("torch.")
        kwargs = {k: v for k, v in self.options.items() if v is not None}
        # The model's own folder or hub id, its tokenizer, its dtype; trust_remote_code stays off.
        self._llm = LLM(model=self.lm.name, tokenizer=self.lm.name, dtype=dtype, trust_remote_code=False,
                        seed=0, **kwargs)
        return self

    def __exit__(self, *exc: object) -> None:
        llm, self._llm = self._llm, None
        with contextlib.suppress(Exception):  # engine shutdown differs across vLLM versions; best effort
            engine = getattr(llm, "llm_engine", None)
            core = getattr(engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
        del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self._offload is not None:
            self._offload.__exit__(None, None, None)

    def describe(self) -> dict[str, Any]:
        import vllm

        return {"backend": "vllm", "vllm": getattr(vllm, "__version__", "?"), **self.options}

    def sampling_params(self, cfg: Any, seed: int, stop_ids: Sequence[int]) -> Any:
        from vllm import SamplingParams

        return SamplingParams(n=1, max_tokens=cfg.max_new_tokens,
                              temperature=cfg.temperature if cfg.do_sample else 0.0,
                              top_p=cfg.top_p if cfg.do_sample else 1.0,
                              top_k=(getattr(cfg, "top_k", 0) or -1) if cfg.do_sample else -1,  # vLLM: -1 = all
                              repetition_penalty=cfg.repetition_penalty, seed=seed,
                              stop_token_ids=list(stop_ids), skip_special_tokens=True)

    def generate(self, prompts: Sequence[str], cfg: Any, batch_seed: int,
                 stop_ids: Sequence[int]) -> list[dict[str, Any]]:
        """One planned batch: the same token ids, stop ids and sampling settings as HF, a seed per row."""
        from vllm.inputs import TokensPrompt

        if self._llm is None:
            raise RuntimeError("VLLMGenerator.generate outside its `with` block")
        tok = self.lm.tokenizer
        prompt_ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
        seeds = [item_seed(batch_seed, row) for row in range(len(prompts))]
        params = [self.sampling_params(cfg, s, stop_ids) for s in seeds]
        outs = self._llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params,
                                  use_tqdm=False)
        stop = set(stop_ids)
        records = []
        for ids, seed, out in zip(prompt_ids, seeds, outs, strict=True):
            comp = out.outputs[0]
            resp = list(comp.token_ids)
            finish = "stop" if comp.finish_reason == "stop" else "length"
            while resp and resp[-1] in stop:  # vLLM keeps the stop token in token_ids
                resp.pop()
            records.append({"response": tok.decode(resp, skip_special_tokens=True).strip(), "response_ids": resp,
                            "prompt_ids": list(ids), "finish_reason": finish, "backend": "vllm",
                            "sampling_seed": seed})
        return records
