"""Progress a person can read, wherever the output goes.

:func:`bar` has tqdm's interface (``total``, ``desc``, ``unit``, ``initial``, ``disable``, ``update``,
``set_postfix``, iteration, context manager). On a terminal it *is* a tqdm bar with an ETA; when stderr is not a
terminal (a log file, CI) it prints one short line per ~10 % of the work — no carriage returns, never a line over
200 characters; with :func:`set_quiet` (``--quiet``, ``$VALUELENS_QUIET=1``) it prints nothing.

>>> import io, contextlib
>>> err = io.StringIO()
>>> with contextlib.redirect_stderr(err):
...     for _ in bar(range(20), desc="demo", unit="x"):
...         pass
>>> lines = err.getvalue().splitlines()
>>> len(lines), lines[-1].startswith("demo: 100% (20/20 x)")
(10, True)
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["bar", "is_quiet", "log", "quiet_libraries", "set_quiet"]

_quiet = os.environ.get("VALUELENS_QUIET", "") in ("1", "true", "yes")
MAX_LINE = 200


def set_quiet(quiet: bool = True) -> None:
    """Silence progress output (and :func:`log`) for the rest of the process."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def log(msg: str) -> None:
    """One status line on stderr (suppressed by :func:`set_quiet`)."""
    if not _quiet:
        print(msg[:MAX_LINE], file=sys.stderr, flush=True)


def _fmt_s(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class _Lines:
    """A tqdm stand-in for non-terminals: a line at each 10 % step (and at the end)."""

    def __init__(self, iterable: Iterable[Any] | None, total: int | None, desc: str, unit: str, initial: int,
                 silent: bool) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total = total
        self.desc = (desc or "progress")[:60]
        self.unit = unit
        self.n = initial
        self.silent = silent
        self.t0 = time.time()
        self.start_n = initial
        self.next_step = 1  # next decile to report
        self.postfix = ""
        if self.total:
            self.next_step = int(10 * self.n / self.total) + 1

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        for x in self.iterable:
            yield x
            self.update(1)
        self.close()

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        items = dict(args[0]) if args and isinstance(args[0], dict) else {}
        items.update(kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())[:60]

    def set_description(self, desc: str) -> None:
        self.desc = desc[:60]

    def refresh(self) -> None:
        pass

    def _emit(self) -> None:
        if self.silent or not self.total:
            return
        pct = min(100, int(100 * self.n / self.total))
        el = time.time() - self.t0
        done = self.n - self.start_n
        eta = el / done * (self.total - self.n) if done > 0 else float("nan")
        line = (f"{self.desc}: {pct}% ({self.n}/{self.total} {self.unit}) {_fmt_s(el)} elapsed"
                + (f", ETA {_fmt_s(eta)}" if eta == eta and self.n < self.total else "")
                + (f" [{self.postfix}]" if self.postfix else ""))
        print(line[:MAX_LINE], file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total and self.n * 10 >= self.next_step * self.total:
            self._emit()
            self.next_step = int(10 * self.n / self.total) + 1

    def close(self) -> None:
        pass


def bar(iterable: Iterable[Any] | None = None, total: int | None = None, desc: str = "", unit: str = "it",
        leave: bool = True, disable: bool = False, initial: int = 0, **kwargs: Any) -> Any:
    """A progress bar: tqdm on a terminal, decile lines otherwise, nothing when quiet or ``disable``."""
    if disable or _quiet:
        return _Lines(iterable, total, desc, unit, initial, silent=True)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, initial=initial, **kwargs)
    return _Lines(iterable, total, desc, unit, initial, silent=False)


def quiet_libraries() -> None:
    """Silence what libraries print that says nothing to a valuelens user: transformers' weight-loading bars and
    info/warning chatter, and deprecation notices from dependencies (our own warnings stay visible)."""
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(transformers|torch|huggingface_hub|peft)")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # transformers is a dependency, but never fail on cosmetics
        pass
