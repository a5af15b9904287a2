"""Low-VRAM mode: keep a prior's big networks in (pinned) CPU memory and bring them to the GPU only
while they run; our own equivalent of diffusers' CPU offload, written for the direct UNet/VAE/text
encoder calls the priors make (diffusers' hooks assume its pipelines' call order).

Modes (`prior.offload`):
- "model": each text encoder is on the GPU only inside its own forward (prompts are embedded once
  and cached, so this costs nothing per step); the UNet comes to the GPU at its first call of a
  step and leaves when the VAE encoder runs next, so the VAE's forward and backward never share
  the GPU with the UNet's weights. The VAE stays (it is small: 84 M parameters) and its encoder
  recomputes its activations in backward (gradient checkpointing), the largest saving at 4 x 512^2.
- "sequential": as "model", and the UNet moves one top-level block at a time (each block comes in
  for its own forward and leaves after it): the UNet's weights never fill the GPU. Slowest.

How a module moves: every parameter and buffer keeps a CPU copy (pinned on CUDA, so copies are
asynchronous); "in" points the module's tensors at fresh GPU copies, "out" points them back at the
CPU copies (the weights are frozen, so nothing is copied back). Only for no-grad modules: the VAE,
which needs gradients through it, never moves.
"""
from __future__ import annotations

import torch
from torch import nn


class _Swapper:
    """Moves one module's parameters/buffers between the device and a kept CPU copy."""

    def __init__(self, module: nn.Module, device: torch.device):
        self.module, self.device = module, device
        pin = device.type == "cuda"
        self.home = {}
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            cpu = t.detach().to("cpu")
            self.home[name] = cpu.pin_memory() if pin else cpu.clone()
        self.on_device = False
        self.out()

    def _tensors(self):
        yield from module_tensors(self.module)

    def into(self) -> None:
        if not self.on_device:
            for name, t in self._tensors():
                t.data = self.home[name].to(self.device, non_blocking=True)
            self.on_device = True

    def out(self) -> None:
        for name, t in self._tensors():
            t.data = self.home[name]
        self.on_device = False


def module_tensors(module: nn.Module):
    """(name, tensor) of every parameter and buffer."""
    yield from module.named_parameters()
    yield from module.named_buffers()


def _blocks(unet: nn.Module) -> list[nn.Module]:
    """The UNet's top-level called modules (the blocks of its ModuleLists, not the lists)."""
    out = []
    for child in unet.children():
        if isinstance(child, nn.ModuleList):
            out.extend(child)
        elif any(True for _ in child.parameters()):
            out.append(child)
    return out


def enable_offload(prior, mode: str) -> None:
    """Turn on `mode` ("model" | "sequential") for a diffusers-based prior (its `unet`, `vae` and
    `text_stacks()`); "none" does nothing. Records the swappers on `prior._offload`."""
    if mode == "none":
        return
    if mode not in ("model", "sequential"):
        raise ValueError(f"offload mode {mode!r}")
    dev = prior.device
    swaps: list[_Swapper] = []
    # 1. text encoders: in for their own forward, out after it
    for _, enc in prior.text_stacks():
        swaps.append(_hook_around(enc, dev))
    # 2. the UNet: whole (model) or block by block (sequential)
    if mode == "model":
        s = _Swapper(prior.unet, dev)
        prior.unet.register_forward_pre_hook(lambda m, a: s.into())
        prior.vae.encoder.register_forward_pre_hook(lambda m, a: s.out())
        swaps.append(s)
    else:
        swaps.extend(_hook_around(b, dev) for b in _blocks(prior.unet))
    # 3. the VAE encoder recomputes its activations in backward
    prior.vae.enable_gradient_checkpointing()
    prior._offload = swaps


def _hook_around(module: nn.Module, device: torch.device) -> _Swapper:
    s = _Swapper(module, device)
    module.register_forward_pre_hook(lambda m, a: s.into())
    module.register_forward_hook(lambda m, a, o: s.out())
    return s
