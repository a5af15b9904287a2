"""ToyWorld's words: the object families, the colours, the view words, and the caption language
that names them (what the ToyWorld prior reads and `ism3d eval` prompts use).

- `FAMILIES` (`SYMMETRIC` + `ASYMMETRIC`), `COLOURS` (name -> linear RGB), `VIEWS`;
- `vocabulary`: every word a caption or a guidance view prompt can use;
- `caption`: "a {colour} {family}[, {view} view]"; `parse_prompt`: back to (colour, family);
- `view_of_azimuth`: the view word of a camera azimuth, binned as the guidance's view prompts.

The objects themselves are built in ism3d/toyworld/world.py (which re-exports these names).
"""
from __future__ import annotations

import re

from torch import Tensor

from ..guidance.prompts import wrap_azimuth

__all__ = ["FAMILIES", "SYMMETRIC", "ASYMMETRIC", "COLOURS", "VIEWS", "WorldError", "vocabulary",
           "caption", "view_of_azimuth", "parse_prompt"]


class WorldError(ValueError):
    """An unknown family, colour or view word, or an impossible object size."""


SYMMETRIC = ("cube", "sphere", "cylinder", "cone", "torus", "pyramid")
ASYMMETRIC = ("mug", "house", "chair")
FAMILIES = SYMMETRIC + ASYMMETRIC

# Base colours (linear RGB in [0, 1]). HSV hues, well apart so a sample's hue names its colour:
# red 0, orange 27, yellow 56, green 120, cyan 184, blue 232, purple 280, pink 332 (degrees).
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.10, 0.10),
    "orange": (0.95, 0.45, 0.05),
    "yellow": (0.95, 0.90, 0.10),
    "green": (0.15, 0.70, 0.15),
    "cyan": (0.10, 0.80, 0.85),
    "blue": (0.10, 0.20, 0.90),
    "purple": (0.55, 0.15, 0.75),
    "pink": (0.98, 0.45, 0.70),
}

# View words by azimuth, the same split as the guidance's interpolated view prompts (see
# `view_of_azimuth`).
VIEWS = ("front", "side", "back")


def vocabulary() -> list[str]:
    """Every word a caption or a guidance view prompt can use, in a fixed order."""
    return ["a", "an", *COLOURS, *FAMILIES, *VIEWS, "view"]


def caption(colour: str, family: str, view: str | None = None) -> str:
    """"a {colour} {family}" or "a {colour} {family}, {view} view" (the guidance's suffix form),
    with "an" before a vowel ("an orange cube"); "a" and "an" are both in the vocabulary.

    Raises:
        WorldError: an unknown colour, family or view word.
    """
    if colour not in COLOURS:
        raise WorldError(f"unknown colour {colour!r}: use one of {', '.join(COLOURS)}")
    if family not in FAMILIES:
        raise WorldError(f"unknown family {family!r}: use one of {', '.join(FAMILIES)}")
    article = "an" if colour[0] in "aeiou" else "a"
    text = f"{article} {colour} {family}"
    if view is None:
        return text
    if view not in VIEWS:
        raise WorldError(f"unknown view {view!r}: use one of {', '.join(VIEWS)}")
    return f"{text}, {view} view"


def view_of_azimuth(azimuth: Tensor) -> list[str]:
    """View word per azimuth (degrees, any real value; wrapped to [-180, 180)).

    The guidance (ism3d/guidance/prompts.py, spec "View-dependent prompting") interpolates the
    embeddings front -> side over |az| in [0, 90] and side -> back over [90, 180]. The caption
    names the anchor with the larger weight:
        |az| < 45 -> front,   45 <= |az| < 135 -> side,   |az| >= 135 -> back.
    At |az| = 45 and 135 the two weights are equal (0.5); the tie goes to the later word.
    """
    assert azimuth.ndim == 1, azimuth.shape
    a = wrap_azimuth(azimuth.double()).abs()                              # [B] in [0, 180]
    idx = (a >= 45.0).long() + (a >= 135.0).long()                        # [B] 0 front 1 side 2 back
    return [VIEWS[i] for i in idx.tolist()]


_WORD = re.compile(r"[a-z]+")


def parse_prompt(text: str) -> tuple[str, str] | None:
    """(colour, family) named by a prompt, or None.

    Words are lowercase letter runs; the prompt must name exactly one colour and one family
    (other words, e.g. a view suffix, are ignored). "A Red cube, front view" -> ("red", "cube").
    """
    words = _WORD.findall(text.lower())
    colours = {w for w in words if w in COLOURS}
    families = {w for w in words if w in FAMILIES}
    if len(colours) != 1 or len(families) != 1:
        return None
    return colours.pop(), families.pop()
