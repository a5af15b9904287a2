"""How an exception becomes the one line a user reads (ism3d's errors are one line, then exit 2).

Library errors (diffusers, huggingface_hub, Ray, torch) often carry a multi-line message or none
at all; `one_line` keeps the first line, or the exception's type name when the message is empty.
"""
from __future__ import annotations

__all__ = ["one_line"]


def one_line(e: BaseException) -> str:
    """The first line of `e`'s message, stripped; its type name when the message is empty."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
