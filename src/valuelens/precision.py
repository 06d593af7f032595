"""When bf16 autocast pays off: only where the hardware computes bf16 natively.

On a CPU without bf16 matrix instructions (no AVX512-BF16, no AMX — e.g. many AMD EPYC and older Intel parts)
PyTorch emulates bf16 matrix products: measured here, a 512×512 bf16 matmul took 64× as long as float32 and a
MiniLM training step 40× as long. On CPUs with AMX/AVX512-BF16 the same autocast halves training time and speeds
generation 2-3× (docs, OFFLINE.md). So every ``bf16`` option in valuelens accepts ``"auto"`` (the default): on
only when :func:`native_bf16` says the device computes it natively.

>>> use_bf16(False)
False
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

__all__ = ["BF16_CHOICES", "native_bf16", "use_bf16"]

BF16_CHOICES = ("auto", True, False)
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.lower().startswith(("flags", "features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Does ``device`` compute bf16 natively? CUDA: compute capability ≥ 8; CPU: AVX512-BF16 or AMX flags (Apple
    silicon CPUs: yes); ``$VALUELENS_BF16=0/1`` overrides the CPU check."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type == "mps":
        return True
    env = os.environ.get("VALUELENS_BF16")
    if env in ("0", "1"):
        return env == "1"
    flags = _cpu_flags()
    if any(f in flags for f in _CPU_BF16_FLAGS):
        return True
    import platform

    return platform.system() == "Darwin" and platform.machine() == "arm64"


def use_bf16(requested: bool | str | None, device: torch.device | str = "cpu") -> bool:
    """Resolve a ``bf16`` option: ``True``/``False`` as given, ``"auto"``/``None`` → :func:`native_bf16`."""
    if requested is None or (isinstance(requested, str) and requested.lower() == "auto"):
        return native_bf16(device)
    if isinstance(requested, str):
        return requested.lower() in ("1", "true", "yes", "on", "bf16")
    return bool(requested)
