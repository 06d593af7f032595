"""Helpers shared by the command modules: config files and ``--set key=value`` overrides."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

__all__ = ["load_config_file", "parse_overrides"]


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
