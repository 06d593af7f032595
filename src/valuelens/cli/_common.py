"""Helpers shared by the command modules: config files and ``--set key=value`` overrides."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

__all__ = ["format_findings", "load_config_file", "parse_overrides"]


def load_config_file(path: str | None) -> dict[str, Any]:
    import json
    from pathlib import Path

    from ..errors import DataError

    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise DataError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml/json parse errors carry line numbers in their message
        raise DataError(f"{p}: cannot parse config ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DataError(f"{p}: config must be a mapping of keys to values")
    return data


def parse_overrides(items: tuple[str, ...]) -> dict[str, Any]:
    import json

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def format_findings(findings: list[dict[str, Any]], width: int = 110) -> str:
    """The findings as a plain-text table (one line per finding, at most ``width`` characters): status, id,
    effect with its 95 % CI, p-value, n and the minimal detectable effect."""

    def num(x: Any, fmt: str) -> str:
        return format(x, fmt) if isinstance(x, int | float) else "—"
    lines = [f"{'status':<13} {'finding':<32} {'effect [95% CI]':<27} {'p':>7} {'n':>5} {'MDE':>7}"]
    for f in findings:
        ci = (f"[{num(f.get('ci_low'), '+.3f')}, {num(f.get('ci_high'), '+.3f')}]"
              if f.get("ci_low") is not None else "")
        eff = f"{num(f.get('effect'), '+.3f')} {ci}".strip()
        line = (f"{f.get('status', '?')!s:<13} {str(f.get('id', '?'))[:32]:<32} {eff:<27} "
                f"{num(f.get('p_value'), '7.3g')} {f.get('n', 0):>5} {num(f.get('mde'), '7.3f')}")
        if f.get("status") == "untestable" and f.get("reason"):
            line = f"{f.get('status')!s:<13} {str(f.get('id', '?'))[:32]:<32} {f['reason']}"
        lines.append(line[:width])
    return "\n".join(lines)
