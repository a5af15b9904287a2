"""Median CUDA-event time of a call: the timer of the micro-benchmarks (calls_*.py, profile_vae_unet.py)."""
from __future__ import annotations

import statistics
from typing import Callable

import torch


def median_ms(fn: Callable[[], object], n: int = 15, warm: int = 3) -> float:
    """Call `fn` `warm` times, then time `n` calls between CUDA events; the median, in ms."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)
