"""YAML from files a user did not write (a --config, a shared run folder's config.yaml), read so
that no file can hang or exhaust the process: size-capped, UTF-8 checked, and refused when its
aliases expand past a budget (the "billion laughs" anchor bomb: nine anchors of nine aliases
each are 387 million values once expanded, and printing one in an error message never ends).
"""
from __future__ import annotations

from pathlib import Path

from . import config as C

MAX_BYTES = 1_000_000
MAX_VALUES = 100_000


def load_yaml(path: str | Path, what: str = "config file") -> dict:
    """The mapping in YAML file `path` ({} for an empty file). Raises ConfigError (one line)."""
    import yaml

    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise C.ConfigError(f"{what} {path} is larger than {MAX_BYTES // 1000} kB: not a config")
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise C.ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise C.ConfigError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start})") \
            from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "syntax error"
        raise C.ConfigError(f"{what} {path} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise C.ConfigError(f"{what} {path} must hold a mapping of sections")
    _check_expanded_size(data, path, what)
    return data


def _check_expanded_size(data, path: Path, what: str) -> None:
    """ConfigError if `data`, with every alias expanded, holds more than MAX_VALUES values."""
    stack, seen = [data], 0
    while stack:
        x = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise C.ConfigError(f"{what} {path} expands to more than {MAX_VALUES:,} values "
                                "(YAML anchors and aliases nested too deep): not a config")
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
