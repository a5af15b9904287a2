"""CUDA-graph replay of a frozen network's forward pass: the same kernels, launched as one graph.

A denoiser forward at batch 4 is ~1,500 kernel launches. In eager mode on an H100 the GPU waits
for Python: an SD-2.1-base UNet call takes ~49 ms eager and ~16 ms replayed as a graph at batch 4
(docs/experiments/gpu-speed.md, "Micro-benchmarks"). A graph replays the kernels recorded once, on
static input/output buffers, so:

    1. per input signature (shapes, dtypes) a graph is captured once: three warm-up calls on a
       side stream (cuDNN/cuBLAS pick their algorithms, lazy buffers get allocated), then one
       call under `torch.cuda.graph`, into a memory pool shared by all graphs of this wrapper;
    2. each later call copies its inputs into that graph's static buffers, replays it, and returns
       a COPY of the static output (the next replay, of any graph of the pool, overwrites it).

The arithmetic is unchanged: the same kernels on the same values (checked bit-exactly against
the eager call in tests/test_cuda_graph.py on the device). Only for frozen, inference-only
calls: nothing here records autograd history.

Sharing one pool between graphs is safe because replays are sequential on one stream and every
output is copied out before the next replay (torch.cuda.graph's documented condition).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


class GraphedCall:
    """Replay `fn(*tensors) -> Tensor` as CUDA graphs, one per input signature.

    Args:
        fn: a pure function of its tensor arguments (no Python-side randomness, no host syncs,
            no data-dependent control flow); called under `torch.no_grad()`.
        max_graphs: most signatures kept; a new one beyond it runs eagerly (so a caller with
            ever-changing shapes cannot grow GPU memory without bound).

    Example:
        >>> unet_call = GraphedCall(lambda x, t, e: unet(x, t, encoder_hidden_states=e).sample)
        >>> eps = unet_call(x, t, emb)        # first call captures, later calls replay
    """

    def __init__(self, fn: Callable[..., Tensor], max_graphs: int = 8):
        self.fn = fn
        self.max_graphs = max_graphs
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, tuple[Tensor, ...], Tensor]] = {}
        self._pool = None
        self.captures = 0   # graphs captured so far (tests and benchmarks read it)
        self.replays = 0

    @staticmethod
    def _key(args: tuple[Tensor, ...]) -> tuple:
        return tuple((tuple(a.shape), a.dtype, a.device) for a in args)

    @torch.no_grad()
    def __call__(self, *args: Tensor) -> Tensor:
        assert all(torch.is_tensor(a) and a.is_cuda for a in args), "GraphedCall takes CUDA tensors"
        key = self._key(args)
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= self.max_graphs:
                return self.fn(*args)
            entry = self._capture(args)
            self._graphs[key] = entry
        graph, static_in, static_out = entry
        # 2. copy in, replay, copy out
        for buf, a in zip(static_in, args):
            buf.copy_(a)
        graph.replay()
        self.replays += 1
        return static_out.clone()

    def _capture(self, args: tuple[Tensor, ...]):
        # static inputs live outside the graph pool: they must survive every replay
        static_in = tuple(a.detach().clone() for a in args)
        # 1. warm up on a side stream (the documented recipe), then capture
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.fn(*static_in)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = self.fn(*static_in)
        self.captures += 1
        return graph, static_in, static_out


def graphs_usable(device: torch.device) -> bool:
    """CUDA graphs need a CUDA device; everywhere else the eager call is used."""
    return device.type == "cuda" and torch.cuda.is_available()


class GraphedUNet:
    """Mixin for priors with a diffusers `self.unet`: `denoise(x, t, emb)` runs it eagerly, or as
    CUDA graphs after `enable_cuda_graphs()`. Inputs are cast to the prior's device and dtype
    before the graph, so the graph sees exactly what the eager call would."""

    device: torch.device
    dtype: torch.dtype
    _graphed: GraphedCall | None = None

    def enable_cuda_graphs(self, compile: bool = False) -> bool:
        """Turn CUDA-graph replay on; returns whether it is on (never off CUDA).

        compile: also `torch.compile` the forward first (inductor kernels, captured in the graph:
            ~30% faster at batch 4-16 on an H100, after ~80 s of compilation per batch size the
            first time; inductor caches it on disk for later runs).
        """
        if self._graphed is None and graphs_usable(self.device):
            fn = self.unet_forward
            if compile:
                fn = torch.compile(fn, dynamic=False)
            self._graphed = GraphedCall(fn)
        return self._graphed is not None

    def unet_forward(self, x: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """One differentiable UNet call on raw inputs (what the graphs replay; training uses it)."""
        return self.unet(x, t, encoder_hidden_states=emb).sample  # type: ignore[attr-defined]

    def denoise(self, x: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """Raw UNet output for x [B, C, h, w], t [B] long, emb [B, L, D], in the prior's dtype."""
        layout = torch.channels_last if getattr(self, "channels_last", False) else torch.preserve_format
        args = (x.to(self.device, self.dtype, memory_format=layout), t.to(self.device),
                emb.to(self.device, self.dtype))
        return (self._graphed or self.unet_forward)(*args)
