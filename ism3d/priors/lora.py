"""LoRA: low-rank weight deltas fused into a prior's UNet and text encoder(s) once, at load time.

`prior.lora` takes `PATH_OR_HUB_ID` or `PATH_OR_HUB_ID:SCALE` entries. The file is read and its
layout normalised by diffusers' own loader (`lora_state_dict`: diffusers/peft keys, the old
diffusers attention-processor keys, and kohya `lora_unet_*`/`lora_te*_*` keys with their alphas),
which needs no peft. The fusion is ours, so no peft layers are ever inserted: the networks stay
plain `nn.Linear`/`nn.Conv2d` modules, and CUDA graphs and torch.compile see the same graph as
without a LoRA, at the same speed.

For every adapted module with weight W [out, in(, kh, kw)], down matrix A [r, in(, kh, kw)] and
up matrix B [out, r(, 1, 1)]:
    1. alpha: the file's own (kohya `.alpha`, peft metadata `lora_alpha`/`alpha_pattern`), else r
    2. delta = (B.flatten(1) @ A.flatten(1)).view_as(W), in float32
    3. W <- W + scale * (alpha / r) * delta                (scale: the user's, default 1)
All modules of all files are checked (name and shapes) before any weight changes: a LoRA made for
another model fails with one line naming the first module that does not fit.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .base import PriorError

_PARTS = ("unet", "text_encoder", "text_encoder_2")


def split_spec(spec: str) -> tuple[str, float]:
    """"SRC" | "SRC:SCALE" -> (SRC, scale). An existing path is taken whole."""
    spec = spec.strip()
    if os.path.exists(os.path.expanduser(spec)) or ":" not in spec:
        return spec, 1.0
    src, tail = spec.rsplit(":", 1)
    try:
        return src, float(tail)
    except ValueError:
        return spec, 1.0


def _read(src: str, prior, offline: bool) -> tuple[dict, dict, dict]:
    """(state dict, kohya alphas, peft metadata) of one LoRA, keys prefixed by part."""
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin

    from .locate import hub_weights_file, weights_file_like

    p = Path(os.path.expanduser(src))
    if not p.exists() and weights_file_like(src):
        raise PriorError(f"LoRA: no such file: {src}")
    if not p.exists():  # a hub id: its cached or downloaded file
        p = hub_weights_file("LoRA", src, ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin"), offline)
    loader = StableDiffusionXLLoraLoaderMixin if hasattr(prior, "text_encoder_2") else StableDiffusionLoraLoaderMixin
    kw = {"weight_name": p.name} if p.is_file() else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # huggingface_hub deprecation chatter from diffusers' call
            sd, alphas, meta = loader.lora_state_dict(str(p.parent) if p.is_file() else str(p),
                                                      unet_config=prior.unet.config, return_lora_metadata=True,
                                                      local_files_only=True, **kw)
    except Exception as e:  # unreadable file, unknown layout: one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PriorError(f"LoRA {src}: cannot read it: {first}") from None
    return sd, _alpha_names(dict(alphas or {})), dict(meta or {})


def _normalise(sd: dict, src: str) -> dict[str, dict[str, dict]]:
    """{part: {module: {"A": tensor, "B": tensor}}} with peft names (lora_A = down, lora_B = up)."""
    from diffusers.utils.state_dict_utils import (StateDictType, convert_state_dict_to_peft,
                                                  convert_unet_state_dict_to_peft)

    out: dict[str, dict[str, dict]] = {}
    for part in _PARTS:
        sub = {k[len(part) + 1:]: v for k, v in sd.items() if k.startswith(part + ".")}
        if not sub:
            continue
        if part == "unet":
            sub = convert_unet_state_dict_to_peft(sub)
        elif any("_lora.down." in k or "_lora.up." in k for k in sub):   # kohya text encoders land here
            sub = convert_state_dict_to_peft(sub, StateDictType.DIFFUSERS_OLD)
        elif any("lora_linear_layer" in k for k in sub):
            sub = convert_state_dict_to_peft(sub, StateDictType.DIFFUSERS)
        mods: dict[str, dict] = {}
        for k, v in sub.items():
            if "lora_magnitude_vector" in k or "dora_scale" in k:
                raise PriorError(f"LoRA {src}: DoRA files are not supported")
            for tag, slot in ((".lora_A.weight", "A"), (".lora_B.weight", "B")):
                if k.endswith(tag):
                    mods.setdefault(k[: -len(tag)], {})[slot] = v
                    break
            else:
                raise PriorError(f"LoRA {src}: unrecognised key {part}.{k}")
        out[part] = mods
    if not out:
        raise PriorError(f"LoRA {src}: no UNet or text-encoder LoRA weights in it (keys like "
                         f"{', '.join(list(sd)[:2])})")
    return out


def _alpha(part: str, module: str, rank: int, alphas: dict, meta: dict) -> float:
    """The module's alpha: kohya's per-module value, else peft metadata, else the rank (scale 1)."""
    key = f"{part}.{module}"
    if key in alphas:
        return float(alphas[key])
    pattern = meta.get(f"{part}.alpha_pattern") or {}
    for pat, a in pattern.items():
        if module == pat or module.endswith("." + pat):
            return float(a)
    if f"{part}.lora_alpha" in meta:
        return float(meta[f"{part}.lora_alpha"])
    return float(rank)


def _alpha_names(alphas: dict) -> dict:
    """diffusers' kohya alphas keyed "<part>.<module>" with the module's peft/diffusers name."""
    te = {"to_q_lora": "q_proj", "to_k_lora": "k_proj", "to_v_lora": "v_proj", "to_out_lora": "out_proj"}
    unet = {"to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v", "to_out_lora": "to_out.0"}
    out = {}
    for k, v in alphas.items():
        n = k.removesuffix(".alpha").replace(".processor.", ".")
        for tail in (".lora_linear_layer.down.weight", ".lora.down.weight", ".down.weight"):
            n = n.removesuffix(tail)
        head, _, last = n.rpartition(".")
        names = unet if n.startswith("unet.") else te
        out[f"{head}.{names[last]}" if last in names else n] = v
    return out


def _target(prior, part: str, module: str, A, B, src: str) -> nn.Module:
    """The module a LoRA entry adapts, checked: exists, is Linear/Conv2d, shapes fit."""
    net = getattr(prior, part, None)
    where = f"{part}.{module}"
    if net is None:
        raise PriorError(f"LoRA {src} does not fit {prior.name}: first mismatching module {where} "
                         f"(the model has no {part})")
    try:
        try:
            mod = net.get_submodule(module)
        except AttributeError:
            if not module.startswith("text_model."):
                raise
            # transformers >= 5 CLIPTextModel has no `text_model.` level; files made before do
            mod = net.get_submodule(module.removeprefix("text_model."))
    except AttributeError:
        raise PriorError(f"LoRA {src} does not fit {prior.name}: first mismatching module {where} "
                         "(no such module: a LoRA for another architecture?)") from None
    if A is None or B is None:
        raise PriorError(f"LoRA {src}: module {where} lacks its {'down' if A is None else 'up'} matrix")
    if not isinstance(mod, (nn.Linear, nn.Conv2d)):
        raise PriorError(f"LoRA {src} does not fit {prior.name}: first mismatching module {where} "
                         f"(a {type(mod).__name__}, not a Linear or Conv2d)")
    W = mod.weight
    ok = A.shape[0] == B.shape[1] and B.shape[0] == W.shape[0] and A.shape[1] == W.shape[1] \
        and A.flatten(1).shape[1] == W.flatten(1).shape[1]
    if not ok:
        raise PriorError(f"LoRA {src} does not fit {prior.name}: first mismatching module {where} "
                         f"(weight {tuple(W.shape)}, LoRA down {tuple(A.shape)} up {tuple(B.shape)})")
    return mod


def lora_delta(A: torch.Tensor, B: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """B A as a weight of `shape` (float32): [out, r] @ [r, in*kh*kw] -> [out, in(, kh, kw)]."""
    return (B.float().flatten(1) @ A.float().flatten(1)).view(shape)


def fuse_loras(prior, specs: tuple[str, ...] | list[str], offline: bool = False) -> list[dict]:
    """Fuse every LoRA of `specs` into `prior`'s weights; returns one record per LoRA:
    {"source", "scale", "modules": {part: count}}. Raises PriorError (one line) before any weight
    changes if a file cannot be read or does not fit."""
    plans = []
    for spec in specs:
        src, scale = split_spec(spec)
        sd, alphas, meta = _read(src, prior, offline)
        todo, counts = [], {}
        for part, mods in _normalise(sd, src).items():
            counts[part] = len(mods)
            for module, ab in mods.items():
                A, B = ab.get("A"), ab.get("B")
                mod = _target(prior, part, module, A, B, src)
                todo.append((mod, A, B, scale * _alpha(part, module, A.shape[0], alphas, meta) / A.shape[0]))
        plans.append((src, scale, todo, counts))
    records = []
    for src, scale, todo, counts in plans:
        with torch.no_grad():
            for mod, A, B, s in todo:
                W = mod.weight
                W.copy_((W.float() + s * lora_delta(A, B, W.shape).to(W.device)).to(W.dtype))
        records.append({"source": src, "scale": scale, "modules": counts})
    if any("text_encoder" in c or "text_encoder_2" in c for *_, c in plans):
        prior._cache.clear()  # text embeddings made before the fusion are stale
    return records

