"""Per-phase GPU timing of the training step, for benchmarks: off (and free) unless enabled.

    with phase("render_fwd"):
        out = render(...)

records a pair of CUDA events around the phase on the current stream: no host sync, so a
profiled step runs as an unprofiled one does. `collect()` (after the step's own sync) turns the
event pairs into milliseconds per phase. Phases nest only by name (a phase inside another is
counted in both). On the CPU the phases are timed with perf_counter instead.

Backward phases cannot be wrapped in a `with`: `mark(name)` records a single event, and
`span(name, start, end)` names the time between two marks.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch

_state: dict = {"on": False, "device": None, "events": [], "marks": {}, "spans": []}


def enable(device: torch.device) -> None:
    """Start recording phases for `device` (cuda: events; else wall time)."""
    _state.update(on=True, device=torch.device(device), events=[], marks={}, spans=[])


def enabled() -> bool:
    return _state["on"]


def disable() -> None:
    _state.update(on=False, events=[], marks={}, spans=[])


def _event():
    if _state["device"].type == "cuda":
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e
    return time.perf_counter()


def _ms(a, b) -> float:
    if isinstance(a, float):
        return (b - a) * 1e3
    return a.elapsed_time(b)


@contextlib.contextmanager
def phase(name: str):
    """Time the enclosed GPU work as `name` (no-op unless enabled)."""
    if not _state["on"]:
        yield
        return
    start = _event()
    try:
        yield
    finally:
        _state["events"].append((name, start, _event()))


def mark(name: str) -> None:
    """Record a point in the stream (e.g. from an autograd hook); no-op unless enabled."""
    if _state["on"]:
        _state["marks"][name] = _event()


def span(name: str, start: str, end: str) -> None:
    """Name the time between two marks of this step (ignored if either is missing)."""
    if _state["on"]:
        _state["spans"].append((name, start, end))


def collect() -> dict[str, float]:
    """Milliseconds per phase for what was recorded since the last collect (syncs the device)."""
    if not _state["on"]:
        return {}
    if _state["device"].type == "cuda":
        torch.cuda.synchronize(_state["device"])
    out: dict[str, float] = defaultdict(float)
    for name, a, b in _state["events"]:
        out[name] += _ms(a, b)
    marks = _state["marks"]
    for name, a, b in _state["spans"]:
        if a in marks and b in marks:
            out[name] += _ms(marks[a], marks[b])
    _state.update(events=[], marks={}, spans=[])
    return dict(out)
