"""The web form -> a `Config`, exactly as `ism3d generate` builds one from its arguments.

preset < form fields < KEY=VALUE overrides; every field is checked for type and length here, the
values themselves later by `generate.prepare` (C.validate). A bad field raises `AppError` (one
line, nothing started).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .. import config as C
from ..generate import MAX_PROMPT_CHARS

# Prompt length cap in the UI (the CLI's is generate.MAX_PROMPT_CHARS); CLIP reads 77 tokens anyway.
UI_MAX_PROMPT_CHARS = min(300, MAX_PROMPT_CHARS)
# Caps of the other free-text fields.
MAX_FIELD_CHARS = 1000
MAX_OVERRIDES_CHARS = 4000


class AppError(ValueError):
    """A bad request from the UI (field value, run name): shown as one line, nothing is started."""


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (or its type name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --------------------------------------------------------------------------------------------
# Requests -> Config
# --------------------------------------------------------------------------------------------
@dataclass
class JobRequest:
    """What the form sends. None (or "" for text) means "the preset's value"."""
    prompt: str
    preset: str = C.DEFAULT_PRESET
    negative: str | None = None
    prior: str | None = None
    guidance: str | None = None
    scale: float | None = None
    seed: int | float | None = None
    iters: int | float | None = None
    preview_every: int | float | None = None
    # KEY=VALUE config overrides, one or more per line (`ism3d generate --help-config` lists keys)
    overrides: str = ""


_NEXT_KEY = re.compile(r"\s+(?=[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*=)")


def parse_overrides(text: str) -> dict[str, str]:
    """KEY=VALUE items, one or several per line (a value may hold spaces: a new item starts only
    at `section.key=`); blank lines and lines starting with # are skipped. Raises ConfigError."""
    items: list[str] = []
    for line in (text or "").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            items.extend(_NEXT_KEY.split(line))
    return C.parse_override_strings(items)


def _text(name: str, value, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise AppError(f"{name} must be text, got {type(value).__name__}")
    if "\x00" in value:
        raise AppError(f"{name} contains a NUL character; remove it")
    if len(value) > limit:
        raise AppError(f"{name} is {len(value)} characters long; the limit is {limit}")
    return value


def _whole(name: str, value) -> int | None:
    if value is None or value == "":
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise AppError(f"{name} must be a whole number, got {value!r}") from None
    if not math.isfinite(f) or not f.is_integer():
        raise AppError(f"{name} must be a whole number, got {value!r}")
    return int(f)


def request_config(req: JobRequest) -> tuple[C.Config, str]:
    """Build the run's config from a form request: preset < fields < overrides (as the CLI).

    Args:
        req: the form values.
    Returns:
        (cfg, preset). Values are checked later by `generate.prepare` (C.validate).
    Raises:
        AppError: empty or too long prompt, unknown preset, a field of the wrong kind.
        ConfigError: a bad override (unknown key, wrong type).
    """
    # 1. prompt: non-empty, capped
    prompt = _text("the prompt", req.prompt, UI_MAX_PROMPT_CHARS).strip()
    if not prompt:
        raise AppError("the prompt is empty: type what to make, e.g. \"a red cube\"")
    # 2. preset
    if req.preset not in C.PRESETS:
        raise AppError(f"unknown preset {req.preset!r}: choose one of {', '.join(C.PRESETS)}")
    cfg = C.preset_config(req.preset)
    # 3. form fields (empty = the preset's value)
    prior = _text("the prior", req.prior, MAX_FIELD_CHARS).strip()
    negative = req.negative if req.negative is None else _text("the negative prompt",
                                                               req.negative, MAX_FIELD_CHARS)
    if req.guidance not in (None, "", "ism", "sds"):
        raise AppError(f"guidance must be ism or sds, got {req.guidance!r}")
    scale = None
    if req.scale not in (None, ""):
        try:
            scale = float(req.scale)
        except (TypeError, ValueError):
            raise AppError(f"the guidance scale must be a number, got {req.scale!r}") from None
    flags = {"prior.name": prior or None, "guidance.method": req.guidance or None,
             "guidance.scale": scale, "guidance.negative_prompt": negative,
             "train.seed": _whole("the seed", req.seed), "train.iters": _whole("iterations", req.iters),
             "train.preview_every": _whole("preview every", req.preview_every)}
    cfg = C.apply_overrides(cfg, {k: v for k, v in flags.items() if v is not None})
    # 4. KEY=VALUE overrides win
    overrides = _text("the overrides", req.overrides, MAX_OVERRIDES_CHARS)
    cfg = C.apply_overrides(cfg, parse_overrides(overrides))
    return cfg, req.preset
