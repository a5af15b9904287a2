"""Tiny random-weight Stable Diffusion pipelines for tests (and full-size ones for GPU benchmarks).

Everything is built offline: the CLIP tokenizer comes from a small vocab.json + merges.txt written
here (the 256 byte symbols of CLIP's byte-level BPE, their end-of-word forms, a few merges and the
two special tokens), so no hub access is ever needed.

- `make_tiny_sd(path, sd_version="2")`: a tiny pipeline of the SD architecture family saved with
  `StableDiffusionPipeline.save_pretrained` (a folder laid out exactly like a hub snapshot).
  sd_version "2": SD 2.1-base style (linear projections, per-block head counts, gelu text encoder,
  "!" padding, eps prediction); "2-v": the same with v-prediction (SD 2.1 768 style);
  "1": SD 1.x style (conv projections, quick_gelu, <|endoftext|> padding).
- `save_ldm_single_file(folder, file)`: the same weights in the ORIGINAL (CompVis/Stability) key
  layout as one .safetensors file, the format `from_single_file` reads (SD 2 layout only).
- `sd21_base_configs()` / `make_sd21_random(path)`: the exact SD 2.1-base architecture with random
  weights (about 1.3 B parameters, 5 GB in fp32): only for GPU benchmarks.
"""
from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import torch

# Scheduler config of stabilityai/stable-diffusion-2-1-base (scheduler/scheduler_config.json).
SD21_BASE_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

_MERGES = [("t", "h"), ("th", "e</w>"), ("c", "a"), ("ca", "r</w>"), ("r", "e"), ("re", "d</w>"),
           ("a", "n</w>"), ("o", "f</w>")]


def save_quietly(path: str | Path, *savables) -> Path:
    """`save_pretrained(path)` of each model/pipeline/processor with transformers' progress bars
    off (restored after); both libraries write safetensors by default. Returns `path`."""
    from transformers.utils import logging as tlog

    path = Path(path)
    bar = tlog.is_progress_bar_enabled()
    tlog.disable_progress_bar()
    try:
        for obj in savables:
            obj.save_pretrained(path)
    finally:
        if bar:
            tlog.enable_progress_bar()
    return path


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins CLIP/GPT-2 byte-level BPE uses for the bytes 0..255."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    symbols, extra = {}, 0
    for b in range(256):
        if b in keep:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def write_tiny_clip_tokenizer_files(folder: str | Path) -> tuple[Path, Path]:
    """Write vocab.json and merges.txt of a tiny CLIP BPE vocabulary (~520 tokens)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_symbols()
    tokens = chars + [c + "</w>" for c in chars] + [a + b for a, b in _MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in _MERGES) + "\n")
    return folder / "vocab.json", folder / "merges.txt"


def tiny_clip_tokenizer(sd_version: str = "2"):
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as d:
        write_tiny_clip_tokenizer_files(d)
        pad = "<|endoftext|>" if sd_version == "1" else "!"
        return CLIPTokenizer.from_pretrained(d, model_max_length=77, pad_token=pad)


def tiny_sd_configs(sd_version: str = "2", vocab_size: int = 528) -> dict[str, dict]:
    """Configs of the tiny pipeline: latent 8x8x4 <-> image 64x64 (3 VAE downsamplings: /8)."""
    if sd_version not in ("1", "2", "2-v"):
        raise ValueError(f"sd_version must be 1, 2 or 2-v, got {sd_version!r}")
    v2 = sd_version != "1"
    unet = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=[32, 64], norm_num_groups=32,
                down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
                cross_attention_dim=32, attention_head_dim=[2, 4] if v2 else 8,
                use_linear_projection=v2)
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=64, layers_per_block=1,
               block_out_channels=[16, 16, 32, 32], norm_num_groups=8,
               down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
               scaling_factor=0.18215)
    text = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                num_hidden_layers=2, max_position_embeddings=77, projection_dim=32,
                hidden_act="gelu" if v2 else "quick_gelu", layer_norm_eps=1e-5,
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=1)
    sched = dict(SD21_BASE_SCHEDULER)
    if sd_version == "2-v":
        sched["prediction_type"] = "v_prediction"
    return {"unet": unet, "vae": vae, "text_encoder": text, "scheduler": sched}


def _build_and_save(path: str | Path, configs: dict[str, dict], tokenizer, seed: int) -> Path:
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    sched_cfg = {k: v for k, v in configs["scheduler"].items() if not k.startswith("_")}
    scheduler = PNDMScheduler.from_config(sched_cfg)  # ignores keys PNDM lacks (clip_sample)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    return save_quietly(path, pipe)


def make_tiny_sd(path: str | Path, sd_version: str = "2", seed: int = 0) -> Path:
    """Save a tiny random SD pipeline (~0.6 M parameters, 64x64 images) to `path`; returns `path`."""
    tok = tiny_clip_tokenizer(sd_version)
    configs = tiny_sd_configs(sd_version, vocab_size=len(tok))
    configs["text_encoder"].update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                   pad_token_id=tok.pad_token_id)
    return _build_and_save(path, configs, tok, seed)


# ---------------------------------------------------------------------------------------------
# Exact SD 2.1-base architecture (random weights), for GPU benchmarks
# ---------------------------------------------------------------------------------------------
def sd21_base_configs() -> dict[str, dict]:
    """Architecture configs of stabilityai/stable-diffusion-2-1-base (unet/, vae/, text_encoder/,
    scheduler/ config.json), without the `_class_name`/`_diffusers_version` bookkeeping keys."""
    unet = {
        "act_fn": "silu",
        "attention_head_dim": [5, 10, 20, 20],
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 1024,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                             "DownBlock2D"],
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_class_embeds": None,
        "only_cross_attention": False,
        "out_channels": 4,
        "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "use_linear_projection": True,
    }
    vae = {
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 768,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }
    text_encoder = {
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_size": 1024,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 4096,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "num_attention_heads": 16,
        "num_hidden_layers": 23,
        "pad_token_id": 1,
        "projection_dim": 512,
        "vocab_size": 49408,
    }
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder,
            "scheduler": copy.deepcopy(SD21_BASE_SCHEDULER)}


def make_sd21_random(path: str | Path, seed: int = 0) -> Path:
    """Save a random-weight pipeline of the exact SD 2.1-base architecture (GPU benchmarks only).

    The tokenizer is the tiny offline one (ids < 530 are valid in the 49408-token embedding), so
    prompts tokenize differently from the real model; every tensor shape and FLOP is the real one.
    """
    tok = tiny_clip_tokenizer("2")
    configs = sd21_base_configs()
    return _build_and_save(path, configs, tok, seed)


# ---------------------------------------------------------------------------------------------
# Diffusers folder -> original (LDM) single file, SD 2 layout
# ---------------------------------------------------------------------------------------------
_RESNET_TO_LDM = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                  ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
                  ("conv_shortcut", "skip_connection")]
_VAE_ATTN_TO_LDM = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _resnet_to_ldm(rest: str) -> str:
    """Rename the first component of a resnet-internal key ("norm1.weight" -> "in_layers.0.weight")."""
    first, _, tail = rest.partition(".")
    return dict(_RESNET_TO_LDM).get(first, first) + "." + tail


def _unet_to_ldm(sd: dict, layers: int) -> dict:
    out = {}
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for k, v in sd.items():
        p = k.split(".")
        head = ".".join(p[:2]) if p[0] == "time_embedding" else p[0]
        if head in fixed:
            nk = fixed[head] + "." + ".".join(p[len(head.split(".")):])
        elif p[0] == "down_blocks":
            b, kind = int(p[1]), p[2]
            if kind == "downsamplers":  # down_blocks.b.downsamplers.0.conv.X
                nk = f"input_blocks.{1 + b * (layers + 1) + layers}.0.op." + ".".join(p[5:])
            else:
                j = int(p[3])
                slot = "0" if kind == "resnets" else "1"
                rest = ".".join(p[4:])
                rest = _resnet_to_ldm(rest) if kind == "resnets" else rest
                nk = f"input_blocks.{1 + b * (layers + 1) + j}.{slot}.{rest}"
        elif p[0] == "mid_block":
            kind, j, rest = p[1], int(p[2]), ".".join(p[3:])
            if kind == "resnets":
                nk = f"middle_block.{2 * j}.{_resnet_to_ldm(rest)}"
            else:
                nk = f"middle_block.1.{rest}"
        elif p[0] == "up_blocks":
            b, kind = int(p[1]), p[2]
            has_attn = any(x.startswith(f"up_blocks.{b}.attentions.") for x in sd)
            if kind == "upsamplers":  # up_blocks.b.upsamplers.0.conv.X -> last layer of the block
                nk = f"output_blocks.{b * (layers + 1) + layers}.{2 if has_attn else 1}.conv." + ".".join(p[5:])
            else:
                j = int(p[3])
                rest = ".".join(p[4:])
                if kind == "resnets":
                    nk = f"output_blocks.{b * (layers + 1) + j}.0.{_resnet_to_ldm(rest)}"
                else:
                    nk = f"output_blocks.{b * (layers + 1) + j}.1.{rest}"
        else:
            raise KeyError(f"unexpected UNet key {k}")
        out["model.diffusion_model." + nk] = v
    return out


def _vae_to_ldm(sd: dict, n_blocks: int) -> dict:
    out = {}
    for k, v in sd.items():
        p = k.split(".")
        nk = k.replace("conv_norm_out", "norm_out")
        if p[1] == "down_blocks":  # encoder.down_blocks.i.(resnets.j|downsamplers.0.conv).X
            i = int(p[2])
            if p[3] == "resnets":
                nk = f"encoder.down.{i}.block.{p[4]}." + ".".join(p[5:]).replace("conv_shortcut", "nin_shortcut")
            else:
                nk = f"encoder.down.{i}.downsample.conv." + ".".join(p[6:])
        elif p[1] == "up_blocks":  # decoder.up_blocks.i -> decoder.up.(n-1-i)
            i = n_blocks - 1 - int(p[2])
            if p[3] == "resnets":
                nk = f"decoder.up.{i}.block.{p[4]}." + ".".join(p[5:]).replace("conv_shortcut", "nin_shortcut")
            else:
                nk = f"decoder.up.{i}.upsample.conv." + ".".join(p[6:])
        elif p[1] == "mid_block":
            if p[2] == "resnets":
                nk = f"{p[0]}.mid.block_{int(p[3]) + 1}." + ".".join(p[4:])
            else:
                rest = ".".join(p[4:])
                for a, b in _VAE_ATTN_TO_LDM:
                    if rest.startswith(a + "."):
                        rest = b + rest[len(a):]
                        break
                nk = f"{p[0]}.mid.attn_1.{rest}"
                if v.ndim == 2:  # LDM stores the attention projections as 1x1 convolutions
                    v = v[:, :, None, None]
        out["first_stage_model." + nk] = v
    return out


def _openclip_to_ldm(sd: dict) -> dict:
    pre = "cond_stage_model.model."
    sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    out = {pre + "token_embedding.weight": sd["embeddings.token_embedding.weight"],
           pre + "positional_embedding": sd["embeddings.position_embedding.weight"],
           pre + "ln_final.weight": sd["final_layer_norm.weight"],
           pre + "ln_final.bias": sd["final_layer_norm.bias"]}
    n = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers."))
    for i in range(n):
        a, b = f"encoder.layers.{i}.", f"{pre}transformer.resblocks.{i}."
        out[b + "attn.in_proj_weight"] = torch.cat([sd[a + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        out[b + "attn.in_proj_bias"] = torch.cat([sd[a + f"self_attn.{x}_proj.bias"] for x in "qkv"])
        for src, dst in [("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                         ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]:
            for w in ("weight", "bias"):
                out[b + f"{dst}.{w}"] = sd[a + f"{src}.{w}"]
    return out


def save_ldm_single_file(folder: str | Path, out_file: str | Path) -> Path:
    """Write the UNet, VAE and text encoder of a diffusers SD 2 folder as ONE original-layout
    .safetensors file (model.diffusion_model.*, first_stage_model.*, cond_stage_model.model.*)."""
    from safetensors.torch import load_file, save_file

    folder, out_file = Path(folder), Path(out_file)
    ucfg = json.loads((folder / "unet" / "config.json").read_text())
    vcfg = json.loads((folder / "vae" / "config.json").read_text())
    if not ucfg.get("use_linear_projection"):
        raise ValueError("save_ldm_single_file writes the SD 2 layout only (use_linear_projection)")
    state = {}
    state.update(_unet_to_ldm(load_file(folder / "unet" / "diffusion_pytorch_model.safetensors"),
                              ucfg["layers_per_block"]))
    state.update(_vae_to_ldm(load_file(folder / "vae" / "diffusion_pytorch_model.safetensors"),
                             len(vcfg["block_out_channels"])))
    state.update(_openclip_to_ldm(load_file(folder / "text_encoder" / "model.safetensors")))
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_file))
    return out_file


# ---------------------------------------------------------------------------------------------
# SDXL layout: two text encoders, text_time added conditioning (tiny, and the full architecture)
# ---------------------------------------------------------------------------------------------
# Scheduler config of stabilityai/stable-diffusion-xl-base-1.0 (scheduler/scheduler_config.json).
SDXL_BASE_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def tiny_sdxl_configs(vocab_size: int = 528) -> dict[str, dict]:
    """Configs of a tiny SDXL-layout pipeline: latent 8x8x4 <-> image 64x64; text widths 32 + 48
    (cross_attention_dim 80; the widths differ as in SDXL, 768 + 1280, which diffusers' single-file
    loader relies on), pooled width 48, 6 time ids x 8 -> added embedding 48 + 48 = 96."""
    unet = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=[32, 64], norm_num_groups=32,
                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
                cross_attention_dim=80, attention_head_dim=[2, 4], transformer_layers_per_block=[1, 2],
                use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=96)
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=64, layers_per_block=1,
               block_out_channels=[16, 16, 32, 32], norm_num_groups=8,
               down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
               scaling_factor=0.13025, force_upcast=True)
    te = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_attention_heads=4,
              num_hidden_layers=2, max_position_embeddings=77, projection_dim=32, layer_norm_eps=1e-5,
              bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=1)
    return {"unet": unet, "vae": vae, "text_encoder": dict(te, hidden_act="quick_gelu"),
            "text_encoder_2": dict(te, hidden_act="gelu", hidden_size=48, intermediate_size=96, projection_dim=48),
            "scheduler": copy.deepcopy(SDXL_BASE_SCHEDULER)}


def sdxl_base_configs() -> dict[str, dict]:
    """Architecture configs of stabilityai/stable-diffusion-xl-base-1.0 (2.6 B UNet parameters,
    CLIP ViT-L + OpenCLIP bigG text encoders), for GPU benchmarks with random weights."""
    unet = dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, act_fn="silu",
                block_out_channels=[320, 640, 1280], norm_num_groups=32, norm_eps=1e-5,
                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                cross_attention_dim=2048, attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10],
                use_linear_projection=True, addition_embed_type="text_time", addition_embed_type_num_heads=64,
                addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
                flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, mid_block_scale_factor=1)
    vae = dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=1024, layers_per_block=2,
               block_out_channels=[128, 256, 512, 512], norm_num_groups=32, act_fn="silu",
               down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
               scaling_factor=0.13025, force_upcast=True)
    common = dict(vocab_size=49408, max_position_embeddings=77, layer_norm_eps=1e-5, bos_token_id=49406,
                  eos_token_id=49407, pad_token_id=1, attention_dropout=0.0, dropout=0.0)
    te1 = dict(common, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
               projection_dim=768, hidden_act="quick_gelu")
    te2 = dict(common, hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
               projection_dim=1280, hidden_act="gelu")
    return {"unet": unet, "vae": vae, "text_encoder": te1, "text_encoder_2": te2,
            "scheduler": copy.deepcopy(SDXL_BASE_SCHEDULER)}


def _build_and_save_sdxl(path: str | Path, configs: dict[str, dict], tok1, tok2, seed: int,
                         dtype: torch.dtype = torch.float32) -> Path:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        te1 = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"]))
    if dtype != torch.float32:  # the benchmark's full-size model: fp16 halves the 7 GB on disk
        unet, vae, te1, te2 = (m.to(dtype) for m in (unet, vae, te1, te2))
    sched = EulerDiscreteScheduler.from_config({k: v for k, v in configs["scheduler"].items()
                                                if not k.startswith("_")})
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok1,
                                     tokenizer_2=tok2, unet=unet, scheduler=sched)
    return save_quietly(path, pipe)


def make_tiny_sdxl(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny random SDXL-layout pipeline (64x64 images) to `path`; returns `path`.
    Tokenizer 1 pads with <|endoftext|> (CLIP ViT-L), tokenizer 2 with "!" (OpenCLIP bigG)."""
    tok1, tok2 = tiny_clip_tokenizer("1"), tiny_clip_tokenizer("2")
    configs = tiny_sdxl_configs(vocab_size=len(tok1))
    for k, tok in (("text_encoder", tok1), ("text_encoder_2", tok2)):
        configs[k].update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return _build_and_save_sdxl(path, configs, tok1, tok2, seed)


def make_sdxl_random(path: str | Path, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """Save a random-weight pipeline of the exact SDXL base architecture (GPU benchmarks only;
    ~7 GB in fp16). The tokenizers are the tiny offline ones (ids < 530 are valid)."""
    return _build_and_save_sdxl(path, sdxl_base_configs(), tiny_clip_tokenizer("1"), tiny_clip_tokenizer("2"),
                                seed, dtype)


def make_tiny_sd_wide_text(path: str | Path, text_width: int = 1024, seed: int = 0) -> Path:
    """A tiny SD 2.x pipeline whose text encoder (and UNet cross-attention) is `text_width` wide:
    1024 is SD 2.x's own width, what the reference's <Taylor_Swift> embedding file needs."""
    tok = tiny_clip_tokenizer("2")
    configs = tiny_sd_configs("2", vocab_size=len(tok))
    configs["text_encoder"].update(hidden_size=text_width, bos_token_id=tok.bos_token_id,
                                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    configs["unet"]["cross_attention_dim"] = text_width
    return _build_and_save(path, configs, tok, seed)


def save_ldm_single_file_sdxl(folder: str | Path, out_file: str | Path) -> Path:
    """Write a diffusers SDXL folder as ONE original-layout (SGM) .safetensors file:
    model.diffusion_model.* (label_emb for the added conditioning), first_stage_model.*,
    conditioner.embedders.0.transformer.* (CLIP ViT-L, HF keys), conditioner.embedders.1.model.*
    (OpenCLIP bigG, with text_projection stored transposed as OpenCLIP does)."""
    from safetensors.torch import load_file, save_file

    folder, out_file = Path(folder), Path(out_file)
    ucfg = json.loads((folder / "unet" / "config.json").read_text())
    vcfg = json.loads((folder / "vae" / "config.json").read_text())
    unet = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    label = {k: unet.pop(k) for k in list(unet) if k.startswith("add_embedding.")}
    state = _unet_to_ldm(unet, ucfg["layers_per_block"])
    for k, v in label.items():  # add_embedding.linear_{1,2}.X -> label_emb.0.{0,2}.X
        i = {"linear_1": "0", "linear_2": "2"}[k.split(".")[1]]
        state[f"model.diffusion_model.label_emb.0.{i}." + k.split(".", 2)[2]] = v
    state.update(_vae_to_ldm(load_file(folder / "vae" / "diffusion_pytorch_model.safetensors"),
                             len(vcfg["block_out_channels"])))
    te1 = load_file(folder / "text_encoder" / "model.safetensors")
    for k, v in te1.items():
        key = k if k.startswith("text_model.") else "text_model." + k
        state["conditioner.embedders.0.transformer." + key] = v
    te2 = load_file(folder / "text_encoder_2" / "model.safetensors")
    proj = te2.pop("text_projection.weight")                                  # [proj, hidden]
    for k, v in _openclip_to_ldm(te2).items():
        state[k.replace("cond_stage_model.model.", "conditioner.embedders.1.model.")] = v
    state["conditioner.embedders.1.model.text_projection"] = proj.T.contiguous()  # [hidden, proj]
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_file))
    return out_file
