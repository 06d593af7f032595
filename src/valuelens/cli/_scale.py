"""Options shared by the stage commands for running at scale: ``--device``, ``--dtype``, ``--device-map``,
``--ray [ADDRESS]``, ``--dry-run``.

They set ``$VALUELENS_DEVICE``, ``$VALUELENS_DTYPE`` and ``$VALUELENS_DEVICE_MAP``, which
:func:`valuelens.models.load_model` reads whenever it is not told otherwise — so every stage that loads a model,
and every Ray worker (the variables travel in the job's runtime environment), places it the same way. The
device is checked before any work starts: ``--device cuda`` on a machine without CUDA is a one-line error.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import click

__all__ = ["apply_device_options", "device_options", "dry_run_option", "ray_option"]


def apply_device_options(device: str | None, dtype: str | None, device_map: str | None) -> None:
    """Validate and export the device options (unset options leave the environment as it is)."""
    from ..models import (
        DEVICE_ENV,
        DEVICE_MAP_ENV,
        DTYPE_ENV,
        parse_device_map,
        resolve_device,
        resolve_dtype,
    )

    if device is not None:
        dev = resolve_device(device)  # fails here, before any work, when the device does not exist
        os.environ[DEVICE_ENV] = device
    else:
        dev = resolve_device(None)
    if dtype is not None:
        resolve_dtype(dtype, dev)
        os.environ[DTYPE_ENV] = dtype
    if device_map is not None:
        parse_device_map(device_map)
        os.environ[DEVICE_MAP_ENV] = device_map


def device_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--device``, ``--dtype`` and ``--device-map`` to a click command (applied before its body runs)."""

    @functools.wraps(f)
    def wrapper(*args: Any, device: str | None = None, dtype: str | None = None, device_map: str | None = None,
                **kwargs: Any) -> Any:
        apply_device_options(device, dtype, device_map)
        return f(*args, **kwargs)

    options = [
        click.option("--device", default=None, metavar="auto|cpu|cuda|cuda:N|mps",
                     help="Where models run (default auto: first GPU, else MPS, else CPU)."),
        click.option("--dtype", default=None, metavar="auto|float32|bfloat16|float16",
                     help="Model weights' precision (default auto: bf16 on GPUs that support it, fp32 on CPU)."),
        click.option("--device-map", "device_map", default=None, metavar="auto|balanced|sequential|JSON",
                     help="Spread a model too large for one device over GPUs, CPU and disk (accelerate)."),
    ]
    for opt in reversed(options):
        wrapper = opt(wrapper)
    return wrapper


def ray_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--ray [ADDRESS]`` → the command's ``ray_address`` argument: None (no Ray), ``"local"`` (``--ray``
    alone: start a local Ray instance) or the cluster address."""
    return click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
                        metavar="[ADDRESS]",
                        help="Run the work units as Ray tasks: a local Ray instance, or the cluster at ADDRESS "
                             "(host:port or ray://host:port). Needs pip install 'valuelens[ray]'.")(f)


def dry_run_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--dry-run`` → the command's ``dry_run`` argument: print the work and time estimate, do nothing else."""
    return click.option("--dry-run", "dry_run", is_flag=True,
                        help="Print the estimate (responses, tokens to generate, time on this device from a short "
                             "measured warm-up) and exit.")(f)
