"""StableDiffusionXLPrior: a frozen SDXL (stabilityai/stable-diffusion-xl-base-1.0 layout, its
fine-tunes and single files) as a DiffusionPrior. ISM/SDS see an eps-prediction model like SD 2.1.

What SDXL adds over SD 1.x/2.x, all kept inside the prior:
- two text encoders (CLIP ViT-L, hidden 768; OpenCLIP bigG with projection, hidden 1280). The
  condition is the concatenation of both PENULTIMATE hidden states, [B, 77, 768 + 1280], and the
  UNet also takes the pooled, projected bigG embedding [B, 1280] (`text_embeds`);
- "added time ids" [B, 6] = (original h, w, crop top, left, target h, w) of the micro-conditioning;
  we use original = target = the working size S (prior.resolution, default 1024) and crop (0, 0),
  what diffusers' pipeline uses when generating at S x S;
- an empty prompt is all zeros when the model says so (`force_zeros_for_empty_prompt`, true for
  SDXL base), as in diffusers' pipeline: the ISM/SDS unconditional branch then matches SDXL's;
- the SDXL VAE overflows in fp16 (NaN latents): with `force_upcast` in its config (SDXL's own VAE)
  and an fp16 prior the VAE runs in fp32; an fp16-safe VAE (madebyollin/sdxl-vae-fp16-fix, whose
  config says force_upcast=false) runs in fp16 (`prior.vae`).

The embedding the prior hands out (and the guidance interpolates, batches and concatenates) is ONE
tensor [B, 77 + 1, D], D = 768 + 1280:
    emb[:, :77]      the concatenated hidden states (the UNet's encoder_hidden_states)
    emb[:, 77, :P]   the pooled embedding (P = 1280), zero-padded to D in emb[:, 77, P:]
Every operation prompts.py does on embeddings (linear interpolation, indexing, expand, cat along
the batch) acts on both parts alike, so view prompts and Perp-Neg go through both encoders
unchanged; `unet_forward` splits the tensor again.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from .base import PriorError
from .locate import missing_parts, quiet_hf, resolve_dtype, weights_variant
from .stable_diffusion import StableDiffusionPrior
from .textual_inversion import expand_prompt

SDXL_EXTRA = ("text_encoder_2", "tokenizer_2")


def is_sdxl_folder(folder: Path) -> bool:
    """A diffusers folder of the SDXL layout (a second text encoder, or a text_time UNet)."""
    if (folder / "text_encoder_2").is_dir():
        return True
    cfg = folder / "unet" / "config.json"
    return cfg.is_file() and json.loads(cfg.read_text()).get("addition_embed_type") == "text_time"


class StableDiffusionXLPrior(StableDiffusionPrior):
    """A frozen SDXL model behind the DiffusionPrior protocol.

    Args (beyond StableDiffusionPrior's):
        text_encoder_2: transformers `CLIPTextModelWithProjection` (OpenCLIP bigG).
        tokenizer_2: its `CLIPTokenizer`.
        force_zeros_for_empty_prompt: embed("") is zeros (the model's model_index.json says).
    """

    def __init__(self, vae, unet, text_encoder, text_encoder_2, tokenizer, tokenizer_2, scheduler_config: dict,
                 device, dtype: torch.dtype, latent: str = "mean", name: str = "sdxl",
                 force_zeros_for_empty_prompt: bool = True):
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        self.force_zeros = bool(force_zeros_for_empty_prompt)
        super().__init__(vae, unet, text_encoder, tokenizer, scheduler_config, device, dtype, latent, name)
        self.pooled_dim = int(text_encoder_2.config.projection_dim)
        self.context_dim = int(unet.config.cross_attention_dim)

    def check_architecture(self, unet, vae, text_encoder) -> None:
        uc, name = unet.config, self.name
        if uc.addition_embed_type != "text_time":
            raise PriorError(f"{name}: not an SDXL UNet (addition_embed_type={uc.addition_embed_type!r})")
        if uc.in_channels != vae.config.latent_channels:
            raise PriorError(f"{name}: the UNet takes {uc.in_channels} channels but the VAE makes "
                             f"{vae.config.latent_channels} (an inpainting model?); use a text-to-image model")
        width = text_encoder.config.hidden_size + self.text_encoder_2.config.hidden_size
        if uc.cross_attention_dim != width:
            raise PriorError(f"{name}: UNet cross_attention_dim {uc.cross_attention_dim} != the two text "
                             f"encoders' hidden sizes together ({width})")
        pooled = self.text_encoder_2.config.projection_dim
        if pooled > width or uc.projection_class_embeddings_input_dim != pooled + 6 * uc.addition_time_embed_dim:
            raise PriorError(f"{name}: UNet added-embedding width {uc.projection_class_embeddings_input_dim} "
                             f"!= pooled {pooled} + 6 time ids x {uc.addition_time_embed_dim}")

    @staticmethod
    def vae_dtype_for(vae, dtype: torch.dtype) -> torch.dtype:
        """fp32 for a VAE that asks for it (force_upcast: SDXL's own VAE makes NaNs in fp16)."""
        if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            return torch.float32
        return dtype

    def networks(self) -> list:
        return [self.vae, self.unet, self.text_encoder, self.text_encoder_2]

    def text_stacks(self) -> list[tuple]:
        return [(self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)]

    def set_resolution(self, resolution: int) -> None:
        super().set_resolution(resolution)
        S = float(self.image_size)
        # [1, 6] (original h, w, crop top, left, target h, w), made once: no host copy in a graph
        self._time_ids = torch.tensor([[S, S, 0.0, 0.0, S, S]], device=self.device, dtype=self.dtype)

    # ------------------------------------------------------------------ text
    def embed(self, prompts: list[str]) -> Tensor:
        """[B] strings -> packed embeddings [B, L + 1, D] in `self.dtype` (module docstring).

        1. each encoder: tokens (padded to its 77) -> PENULTIMATE hidden state [N, L, D_i]
        2. context = cat(hidden_1, hidden_2) along features [N, L, D]; pooled = encoder 2's
           projected text embedding [N, P]
        3. packed = cat(context, [pooled, 0...0]) along tokens [N, L + 1, D]
        The empty prompt is all zeros when `force_zeros_for_empty_prompt` (SDXL base).
        """
        assert isinstance(prompts, (list, tuple)) and len(prompts) > 0, "prompts must be a non-empty list"
        todo = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if todo:
            hidden, pooled = [], None
            for tok, enc in self.text_stacks():
                texts = [expand_prompt(p, tok) for p in todo]
                if tok is self.tokenizer:
                    self._warn_truncated(todo, texts)
                ids = tok(texts, padding="max_length", max_length=self.max_length, truncation=True,
                          return_tensors="pt").input_ids.to(self.device)  # [N, L]
                with torch.no_grad():
                    out = enc(ids, output_hidden_states=True)
                hidden.append(out.hidden_states[-2])                       # [N, L, D_i]
                if enc is self.text_encoder_2:
                    pooled = out.text_embeds                                # [N, P]
            ctx = torch.cat(hidden, dim=-1)                                # [N, L, D]
            row = torch.zeros(ctx.shape[0], 1, ctx.shape[2], device=ctx.device, dtype=ctx.dtype)
            row[:, 0, : pooled.shape[1]] = pooled
            packed = torch.cat([ctx, row], dim=1).to(self.dtype)          # [N, L + 1, D]
            for p, e in zip(todo, packed):
                self._cache[p] = torch.zeros_like(e) if (self.force_zeros and p == "") else e
        return torch.stack([self._cache[p] for p in prompts])              # [B, L + 1, D]

    # ------------------------------------------------------------------ denoiser
    def unet_forward(self, x: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """x [B, 4, h, w], t [B], packed emb [B, L + 1, D] -> raw UNet output (what graphs replay)."""
        ctx = emb[:, :-1]                                                  # [B, L, D]
        pooled = emb[:, -1, : self.pooled_dim]                             # [B, P]
        ids = self._time_ids.to(emb.dtype).expand(emb.shape[0], -1)        # [B, 6]
        return self.unet(x, t, encoder_hidden_states=ctx,
                         added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, folder, device="cpu", dtype: str = "auto", latent: str = "mean",
                        name: str | None = None) -> "StableDiffusionXLPrior":
        """Load from a local SDXL diffusers folder (a hub model's cache snapshot is one)."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        folder, device = Path(folder), torch.device(device)
        dt = resolve_dtype(dtype, device)
        missing = missing_parts(folder) + [c for c in SDXL_EXTRA if not (folder / c).is_dir()]
        if (folder / "text_encoder_2").is_dir() and weights_variant(folder / "text_encoder_2", "text_encoder") is False:
            missing.append("text_encoder_2")
        if missing:
            raise PriorError(f"{folder} is not a complete SDXL folder: missing {', '.join(missing)} "
                             "(config or weights)")
        index = folder / "model_index.json"
        zeros = json.loads(index.read_text()).get("force_zeros_for_empty_prompt", True) if index.is_file() else True
        try:
            with quiet_hf():
                sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
                kw = dict(local_files_only=True)
                vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dt,
                                                    variant=weights_variant(folder / "vae", "vae"), **kw)
                unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dt,
                                                            variant=weights_variant(folder / "unet", "unet"), **kw)
                te1 = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dt, **kw,
                                                    variant=weights_variant(folder / "text_encoder", "text_encoder"))
                te2 = CLIPTextModelWithProjection.from_pretrained(
                    folder, subfolder="text_encoder_2", dtype=dt, **kw,
                    variant=weights_variant(folder / "text_encoder_2", "text_encoder"))
                tok1 = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", **kw)
                tok2 = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2", **kw)
        except (OSError, ValueError, RuntimeError, KeyError, json.JSONDecodeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PriorError(f"cannot load SDXL from {folder}: {first}") from None
        return cls(vae, unet, te1, te2, tok1, tok2, sched, device, dt, latent, name or str(folder), zeros)

    @classmethod
    def from_pipeline(cls, pipe, device, dt: torch.dtype, latent: str, name: str) -> "StableDiffusionXLPrior":
        """From a diffusers StableDiffusionXLPipeline (what `from_single_file` returns)."""
        return cls(pipe.vae, pipe.unet, pipe.text_encoder, pipe.text_encoder_2, pipe.tokenizer, pipe.tokenizer_2,
                   dict(pipe.scheduler.config), device, dt, latent, name,
                   bool(pipe.config.get("force_zeros_for_empty_prompt", True)))
