"""StableDiffusionPrior: a frozen Stable Diffusion (1.x / 2.x) as a DiffusionPrior, via diffusers.

Where the weights come from is decided by `locate.resolve_prior` (cheap: nothing is loaded):
a hub id (HF cache first, then the hub if reachable), a local diffusers folder (what
`StableDiffusionPipeline.save_pretrained` writes; only unet/, vae/, text_encoder/, tokenizer/ and
scheduler/ are read), or a single original-layout `.safetensors` / `.ckpt` file, through diffusers
`StableDiffusionPipeline.from_single_file`. That needs the diffusers configs of a model of the
same architecture: `prior.single_file_config` (a diffusers folder or hub id); if empty, the
repo diffusers infers (SD 1.5, or SD 2.1-768 for any SD 2.x file) must be in the HF cache or
reachable. For a 512px SD 2.0/2.1-base file set `single_file_config` to
`stabilityai/stable-diffusion-2-1-base` (diffusers would otherwise assume v-prediction at 768).
This module re-exports locate's public names (`resolve_prior`, `quiet_hf`, `hub_offline`, ...).

Numerics:
- abar_t comes from the model's own scheduler config (`base.alphas_cumprod_from_config`); no
  diffusers scheduler object is built (their `clip_sample` defaults are wrong for SD latents).
- `encode`: resize to `image_size` (bilinear, no antialias) -> [-1, 1] -> VAE encoder in the prior
  dtype with autocast disabled (the result does not depend on the caller's autocast state) ->
  latent mean (or a sample) -> times `vae.config.scaling_factor`. Gradients flow to the images.
  The encoder's self-attention runs as plain matrix products (`vae_attention.py`: same values,
  a 17 ms faster backward at 4 x 512^2 on an H100).
- `eps`: one UNet call under no_grad, returned as float32. v-prediction and x0-prediction models
  are converted to eps with the model's own abar_t:
      v-prediction:  eps = sqrt(abar_t) * v + sqrt(1 - abar_t) * x_t
      x0-prediction: eps = (x_t - sqrt(abar_t) * x0) / sqrt(1 - abar_t)

Run `python -m ism3d.priors.stable_diffusion PATH_OR_ID "a prompt" --out img.png` for a short
DDIM sample (our own loop, classifier-free guidance): a standalone smoke test of a prior.
"""
from __future__ import annotations

import json
import socket  # noqa: F401  (tests patch its create_connection through this module)
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import PriorError, PromptError, alphas_cumprod_from_config, check_eps_inputs, check_images
from .cuda_graph import GraphedUNet
from .locate import (  # noqa: F401  (re-exported: the public names callers import from here)
    COMPONENTS, DEFAULT_PRIOR, SINGLE_FILE_SUFFIXES, TOY_PRIOR_DIR, cached_snapshot, config_source, download,
    hf_cache_folder, hub_offline, hub_reachable, inferred_config_repo, missing_parts, quiet_hf, resolve_dtype,
    resolve_prior, weights_variant)
from .textual_inversion import expand_prompt
from .vae_attention import use_matmul_attention


class StableDiffusionPrior(GraphedUNet):
    """A frozen Stable Diffusion model behind the DiffusionPrior protocol.

    Args:
        vae: diffusers `AutoencoderKL`.
        unet: diffusers `UNet2DConditionModel` (text-to-image: in_channels == latent channels).
        text_encoder: transformers `CLIPTextModel` (its last hidden state is the condition, as in
            diffusers' SD pipelines; for SD 2.x the saved model already stops at CLIP's penultimate layer).
        tokenizer: transformers `CLIPTokenizer`.
        scheduler_config: the model's scheduler config dict (schedule + `prediction_type`).
        device, dtype: where and in which dtype the three networks run.
        latent: "mean" (deterministic) or "sample" (posterior sample, the reference) for `encode`.
        name: shown in logs.
    """

    is_latent = True

    def __init__(self, vae, unet, text_encoder, tokenizer, scheduler_config: dict,
                 device: torch.device | str, dtype: torch.dtype, latent: str = "mean", name: str = "sd"):
        self.name = name
        self.device = torch.device(device)
        self.dtype = dtype
        if latent not in ("mean", "sample"):
            raise PriorError(f"prior.latent: {latent!r} is not one of mean, sample")
        self.latent = latent
        self.generator: torch.Generator | None = None  # set by a caller who wants seeded latent samples
        # 1. architecture checks
        self.check_architecture(unet, vae, text_encoder)
        self.prediction_type = scheduler_config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise PriorError(f"{name}: unsupported prediction_type {self.prediction_type!r}")
        # 2. frozen networks on device
        self.vae, self.unet, self.text_encoder, self.tokenizer = vae, unet, text_encoder, tokenizer
        self.vae_dtype = self.vae_dtype_for(vae, dtype)
        for m in self.networks():
            dt = self.vae_dtype if m is vae else dtype
            m.to(self.device)
            if next(m.parameters()).dtype != dt:
                m.to(dt)
            m.eval().requires_grad_(False)
        use_matmul_attention(vae.encoder)  # the encoder's backward: cuBLAS instead of SDPA's slow one
        # 3. sizes: latent_shape and image_size at the model's own resolution
        vc = vae.config
        self.vae_scale = 2 ** (len(vc.block_out_channels) - 1)
        self.set_resolution(0)
        self.scaling_factor = float(vc.scaling_factor)
        self.shift_factor = float(getattr(vc, "shift_factor", None) or 0.0)
        # 4. schedule from the model's own scheduler config
        self.scheduler_config = dict(scheduler_config)
        abar = alphas_cumprod_from_config(scheduler_config)
        self.alphas_cumprod = abar.to(self.device)  # [T] float32
        self.num_train_timesteps = int(abar.shape[0])
        self.max_length = int(tokenizer.model_max_length)
        self._cache: dict[str, Tensor] = {}
        self._warned: set[str] = set()
        self._moments = self._vae_moments   # compile_encoder() may replace it
        self._encoder_compiled = False
        self.channels_last = False          # enable_channels_last() turns it on
        # what load_prior customised (textual inversion, LoRA, offload): summary.json records it
        self.custom: dict = {}

    def check_architecture(self, unet, vae, text_encoder) -> None:
        """Raise PriorError unless this is a plain text-to-image SD 1.x/2.x model."""
        name = self.name
        uc, vc = unet.config, vae.config
        if getattr(uc, "addition_embed_type", None) is not None:
            raise PriorError(f"{name}: an SDXL-style UNet (addition_embed_type={uc.addition_embed_type!r}) "
                             "needs the SDXL loader: pass the whole SDXL folder (with text_encoder_2/)")
        if uc.in_channels != vc.latent_channels:
            raise PriorError(f"{name}: the UNet takes {uc.in_channels} channels but the VAE makes "
                             f"{vc.latent_channels} (an inpainting/depth model?); use a text-to-image model")
        if uc.cross_attention_dim != text_encoder.config.hidden_size:
            raise PriorError(f"{name}: UNet cross_attention_dim {uc.cross_attention_dim} != text encoder "
                             f"hidden size {text_encoder.config.hidden_size}")

    @staticmethod
    def vae_dtype_for(vae, dtype: torch.dtype) -> torch.dtype:
        """The dtype the VAE runs in: the prior dtype (SDXL overrides this for its fp16-unsafe VAE)."""
        return dtype

    def networks(self) -> list:
        """The frozen networks (moved to the device, cast, and frozen in __init__)."""
        return [self.vae, self.unet, self.text_encoder]

    def text_stacks(self) -> list[tuple]:
        """(tokenizer, text encoder) pairs, in the order their outputs are concatenated."""
        return [(self.tokenizer, self.text_encoder)]

    def replace_vae(self, src: str, offline: bool = False) -> None:
        """Use the VAE of `src` (a diffusers VAE folder or hub id, e.g. the fp16-safe SDXL VAE
        madebyollin/sdxl-vae-fp16-fix) instead of the model's own. Raises PriorError (one line)."""
        from diffusers import AutoencoderKL

        p = Path(src).expanduser()
        sub = "vae" if (p / "vae" / "config.json").is_file() else None
        local = p.is_dir() or offline or hub_offline() or not hub_reachable()
        try:
            with quiet_hf(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # huggingface_hub deprecation chatter
                vae = AutoencoderKL.from_pretrained(str(p) if p.is_dir() else src, subfolder=sub,
                                                    local_files_only=local)
        except Exception as e:  # missing folder, hub miss: one line
            if not p.exists() and local:
                from .locate import hub_file_offline_error
                raise hub_file_offline_error("prior.vae", src) from None
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PriorError(f"prior.vae {src}: cannot load it: {first}") from None
        if vae.config.latent_channels != self.vae.config.latent_channels:
            raise PriorError(f"prior.vae {src}: makes {vae.config.latent_channels} latent channels, the "
                             f"UNet takes {self.vae.config.latent_channels}")
        self.vae_dtype = self.vae_dtype_for(vae, self.dtype)
        self.vae = vae.to(self.device, self.vae_dtype).eval().requires_grad_(False)
        use_matmul_attention(vae.encoder)
        if self.channels_last:
            self._vae_channels_last()
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)

    def set_resolution(self, resolution: int) -> None:
        """Resize renders to `resolution` pixels before the encoder (0 = the model's own size);
        latents are then resolution / vae_scale on a side. Nothing is reloaded."""
        if resolution:
            if resolution % (8 * self.vae_scale):
                raise PriorError(f"prior.resolution {resolution} must be a multiple of {8 * self.vae_scale}")
            h = resolution // self.vae_scale
        else:
            s = self.unet.config.sample_size
            h = int(s if isinstance(s, int) else s[0])
        self.latent_shape = (int(self.unet.config.in_channels), h, h)
        self.image_size = h * self.vae_scale

    def enable_channels_last(self) -> dict:
        """Run the UNet and the VAE encoder channels-last with the fused GroupNorm kernels
        (`channels_last.py`); returns what was swapped, per network. Call before CUDA graphs
        and compile."""
        from ism3d.kernels.group_norm import triton

        from .channels_last import use_channels_last

        if self.channels_last:
            return {}
        if self.device.type == "cuda" and triton is None:
            warnings.warn("prior.channels_last: triton is not installed, so PyTorch's GroupNorm runs on the "
                          "channels-last tensors (slower than without the option); pip install triton",
                          stacklevel=2)
        self.channels_last = True
        return {"unet": use_channels_last(self.unet), "vae_encoder": self._vae_channels_last()}

    def _vae_channels_last(self) -> dict:
        from .channels_last import use_channels_last

        if self.vae.quant_conv is not None:
            self.vae.quant_conv.to(memory_format=torch.channels_last)
        return use_channels_last(self.vae.encoder)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str = "cpu", dtype: str = "auto",
                        latent: str = "mean", name: str | None = None) -> "StableDiffusionPrior":
        """Load from a local diffusers folder (a hub model's cache snapshot is such a folder)."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        folder = Path(folder)
        device = torch.device(device)
        dt = resolve_dtype(dtype, device)
        name = name or str(folder)
        missing = missing_parts(folder)
        if missing:
            raise PriorError(f"{folder} is not a complete Stable Diffusion folder: missing "
                             f"{', '.join(missing)} (config or weights)")
        try:
            with quiet_hf():
                sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
                vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dt, local_files_only=True,
                                                    variant=weights_variant(folder / "vae", "vae"))
                unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dt,
                                                            local_files_only=True,
                                                            variant=weights_variant(folder / "unet", "unet"))
                text_encoder = CLIPTextModel.from_pretrained(
                    folder, subfolder="text_encoder", dtype=dt, local_files_only=True,
                    variant=weights_variant(folder / "text_encoder", "text_encoder"))
                tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
        except (OSError, ValueError, RuntimeError, KeyError, json.JSONDecodeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PriorError(f"cannot load Stable Diffusion from {folder}: {first}") from None
        return cls(vae, unet, text_encoder, tokenizer, sched, device, dt, latent, name)

    @classmethod
    def from_single_file(cls, path: str | Path, device: torch.device | str = "cpu", dtype: str = "auto",
                         latent: str = "mean", config: str = "", offline: bool = False,
                         name: str | None = None) -> "StableDiffusionPrior":
        """Load an original-layout `.safetensors`/`.ckpt` file with diffusers `from_single_file`.

        Args:
            config: a diffusers folder or hub id holding the configs of the same architecture;
                empty = the repo diffusers infers from the checkpoint's keys (must be cached or reachable).
        """
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        path = Path(path)
        device = torch.device(device)
        dt = resolve_dtype(dtype, device)
        cfg_src = config.strip() or inferred_config_repo(path)
        loc = config_source(cfg_src, path, offline)
        # SDXL: a config folder with a second text encoder, or a hub id naming an XL model
        repo_name = "" if Path(loc).is_dir() else cfg_src.lower().rsplit("/", 1)[-1]
        if "refiner" in repo_name or (Path(loc).is_dir() and not (Path(loc) / "text_encoder").is_dir()
                                      and (Path(loc) / "text_encoder_2").is_dir()):
            raise PriorError(f"{path.name}: an SDXL refiner is not a text-to-image model; use an SDXL base model")
        xl = (Path(loc) / "text_encoder_2").is_dir() or "xl" in repo_name
        extra = {} if xl else dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        try:
            with quiet_hf():
                pipe = (StableDiffusionXLPipeline if xl else StableDiffusionPipeline).from_single_file(
                    str(path), config=loc, local_files_only=Path(loc).is_dir(), torch_dtype=dt, **extra)
        except Exception as e:  # diffusers raises many types here; one line is what the user needs
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PriorError(f"cannot load the single file {path} (configs from {cfg_src}): {first}") from None
        if xl:
            from .sdxl import StableDiffusionXLPrior
            return StableDiffusionXLPrior.from_pipeline(pipe, device, dt, latent, name or str(path))
        return cls(pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer, dict(pipe.scheduler.config),
                   device, dt, latent, name or str(path))

    # ------------------------------------------------------------------ text
    def check_prompt(self, text: str) -> None:
        """Raise PromptError for an empty prompt (the empty embedding is still available to ISM)."""
        if not text.strip():
            raise PromptError("the prompt is empty")

    def embed(self, prompts: list[str]) -> Tensor:
        """[B] strings -> CLIP last hidden states [B, L, D] in `self.dtype` (L = tokenizer max length).

        Each distinct string is encoded once and cached. A prompt longer than L tokens is
        truncated with one warning.
        """
        assert isinstance(prompts, (list, tuple)) and len(prompts) > 0, "prompts must be a non-empty list"
        todo = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if todo:
            texts = [expand_prompt(p, self.tokenizer) for p in todo]  # multi-vector TI tokens
            self._warn_truncated(todo, texts)
            ids = self.tokenizer(texts, padding="max_length", max_length=self.max_length, truncation=True,
                                 return_tensors="pt").input_ids.to(self.device)  # [N, L]
            with torch.no_grad():
                out = self.text_encoder(ids).last_hidden_state.to(self.dtype)  # [N, L, D]
            for p, e in zip(todo, out):
                self._cache[p] = e
        return torch.stack([self._cache[p] for p in prompts])  # [B, L, D]

    def _warn_truncated(self, prompts: list[str], texts: list[str]) -> None:
        """One warning per prompt longer than the text encoder's L tokens."""
        for p, text in zip(prompts, texts):
            n = len(self.tokenizer(text, truncation=False, verbose=False).input_ids)
            if n > self.max_length and p not in self._warned:
                self._warned.add(p)
                warnings.warn(f"prompt truncated to the text encoder's {self.max_length} tokens "
                              f"({n} given): {p!r}", stacklevel=3)

    # ------------------------------------------------------------------ images <-> latents
    def encode(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] in [0, 1] -> z0 [B, 4, h, w] float32 (scaled VAE latents), differentiable.

        1. resize to image_size if needed (bilinear, align_corners=False, no antialias)
        2. x = 2 * images - 1, cast to the VAE dtype, in contiguous (NCHW) memory, or
           channels-last memory with `enable_channels_last`
        3. VAE encoder with autocast off; mean of the posterior (or a sample, prior.latent)
        4. z0 = (latent - shift_factor) * scaling_factor, float32
        """
        check_images(images)
        x = images.to(self.device)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x.float(), size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=False)
        # one layout for the whole encoder: renders arrive as [B, H, W, 3] memory seen as
        # [B, 3, H, W] (channels_last strides), which every elementwise op keeps; a plain encoder
        # would then answer in channels_last and each of PyTorch's GroupNorms copy back (+12 ms
        # per paper step on an H100), so it gets NCHW, and the channels-last encoder NHWC
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        x = (x * 2.0 - 1.0).to(self.vae_dtype).contiguous(memory_format=layout)  # [B, 3, S, S]
        with torch.autocast(device_type=self.device.type, enabled=False):
            mean, std = self._moments(x)
            if self.latent == "mean":
                lat = mean
            else:
                noise = torch.randn(mean.shape, generator=self.generator, device=self.device,
                                    dtype=mean.dtype)
                lat = mean + std * noise
        return (lat.float() - self.shift_factor) * self.scaling_factor  # [B, 4, h, w]

    def _vae_moments(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, 3, S, S] in [-1, 1] -> posterior mean and std [B, 4, h, w] (prior dtype).

        What `vae.encode(x).latent_dist` holds, written out with the encoder's modules only (no
        diffusers hooks or output objects), so that `torch.compile` sees one graph:
            1. h = quant_conv(encoder(x))                             [B, 2C, h, w]
            2. mean, logvar = h split in channel halves; logvar clamped to [-30, 20]
            3. std = exp(logvar / 2)
        """
        h = self.vae.encoder(x)
        if self.vae.quant_conv is not None:
            h = self.vae.quant_conv(h)
        mean, logvar = h.chunk(2, dim=1)
        return mean, torch.exp(0.5 * logvar.clamp(-30.0, 20.0))

    def compile_encoder(self) -> bool:
        """`torch.compile` the VAE encoder (forward and backward) on CUDA; returns whether it is."""
        if self.device.type == "cuda" and not self._encoder_compiled:
            self._moments = torch.compile(self._vae_moments, dynamic=False)
            self._encoder_compiled = True
        return self._encoder_compiled

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """z [B, 4, h, w] -> images [B, 3, 8h, 8w] float32 in [0, 1]."""
        assert z.ndim == 4 and z.shape[1] == self.latent_shape[0], f"z must be [B, 4, h, w], got {tuple(z.shape)}"
        lat = (z.float() / self.scaling_factor + self.shift_factor).to(self.device, self.vae_dtype)
        with torch.autocast(device_type=self.device.type, enabled=False):
            x = self.vae.decode(lat).sample
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ denoiser
    @torch.no_grad()
    def eps(self, x: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """x_t [B, 4, h, w], t [B] long in [0, T), emb [B, L, D] -> eps [B, 4, h, w] float32.

        v- and x0-prediction outputs are converted to eps (module docstring), in float32.
        """
        check_eps_inputs(self, x, t, emb)
        t = t.to(self.device)
        out = self.denoise(x, t, emb).float()
        if self.prediction_type == "epsilon":
            return out
        return prediction_to_eps(out, x.to(self.device).float(), self.alphas_cumprod[t], self.prediction_type)


def prediction_to_eps(out: Tensor, x_t: Tensor, abar_t: Tensor, prediction_type: str) -> Tensor:
    """Model output [B, C, h, w] -> eps [B, C, h, w], with abar_t [B] of each row.

    epsilon:      eps = out
    v_prediction: eps = sqrt(abar_t) * v + sqrt(1 - abar_t) * x_t
                  (from v = sqrt(abar) eps - sqrt(1 - abar) x0 and x_t = sqrt(abar) x0 + sqrt(1 - abar) eps)
    sample:       eps = (x_t - sqrt(abar_t) * x0) / sqrt(1 - abar_t)
    """
    a = abar_t.to(x_t.dtype).view(-1, 1, 1, 1)  # [B, 1, 1, 1]
    if prediction_type == "epsilon":
        return out
    if prediction_type == "v_prediction":
        return a.sqrt() * out + (1.0 - a).sqrt() * x_t
    if prediction_type == "sample":
        return (x_t - a.sqrt() * out) / (1.0 - a).clamp(min=1e-12).sqrt()
    raise PriorError(f"unsupported prediction_type {prediction_type!r}")



def load_stable_diffusion(location: str, device: torch.device | str, dtype: str = "auto", latent: str = "mean",
                          single_file_config: str = "", offline: bool = False,
                          name: str | None = None) -> StableDiffusionPrior:
    """Load what `resolve_prior` returned: a folder, a single file, or a hub id to download first
    (an SDXL folder or file gives a `sdxl.StableDiffusionXLPrior`)."""
    path = Path(location)
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise PriorError(f"{path}: a single-file prior must be .safetensors or .ckpt")
        return StableDiffusionPrior.from_single_file(path, device, dtype, latent, single_file_config,
                                                     offline, name=name)
    if not path.is_dir():
        path = download(location)  # a reachable hub id, not cached yet
    from .sdxl import StableDiffusionXLPrior, is_sdxl_folder

    cls = StableDiffusionXLPrior if is_sdxl_folder(path) else StableDiffusionPrior
    return cls.from_pretrained(path, device, dtype, latent, name=name)


# ---------------------------------------------------------------------------------------------
# Standalone smoke test: a short DDIM sample with classifier-free guidance.
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def ddim_sample(prior, prompt: str, negative: str = "", steps: int = 20, scale: float = 7.5,
                seed: int = 0) -> Tensor:
    """Deterministic DDIM (eta = 0) from pure noise with CFG; returns images [1, 3, S, S] in [0, 1].

    Notation: abar = prior.alphas_cumprod, e = eps_u + g (eps_c - eps_u).
    1. timesteps t_0 > t_1 > ... > t_{n-1} = 0, evenly spaced over [0, T-1]
    2. x0_hat = (x - sqrt(1 - abar_t) e) / sqrt(abar_t)
    3. x <- sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) e, with abar_prev = 1 after the last step
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn((1, *prior.latent_shape), generator=g).to(prior.device)  # [1, C, h, w]
    emb = prior.embed([negative, prompt])  # [2, L, D]
    abar = prior.alphas_cumprod
    ts = torch.linspace(prior.num_train_timesteps - 1, 0, steps).round().long().tolist()
    for i, t in enumerate(ts):
        e_u, e_c = prior.eps(x.expand(2, -1, -1, -1), torch.full((2,), t, device=prior.device), emb).chunk(2)
        e = e_u + scale * (e_c - e_u)
        a_t = abar[t]
        a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.ones_like(a_t)
        x0 = (x - (1 - a_t).sqrt() * e) / a_t.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e
    return prior.decode(x)


def _main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from PIL import Image

    from ism3d.config import PriorConfig
    from ism3d.priors import load_prior

    ap = argparse.ArgumentParser(prog="python -m ism3d.priors.stable_diffusion",
                                 description="Sample one image from a prior with a short DDIM loop.")
    ap.add_argument("prior", help="tiny | hub id | diffusers folder | .safetensors/.ckpt file")
    ap.add_argument("prompt")
    ap.add_argument("--out", default="sample.png")
    ap.add_argument("--negative", default="")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--scale", type=float, default=7.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"])
    ap.add_argument("--single-file-config", default="")
    ap.add_argument("--offline", action="store_true")
    a = ap.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    cfg = PriorConfig(name=a.prior, dtype=a.dtype, offline=a.offline, single_file_config=a.single_file_config)
    try:
        prior = load_prior(cfg, device)
        prior.check_prompt(a.prompt)
    except (PriorError, PromptError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    img = ddim_sample(prior, a.prompt, a.negative, a.steps, a.scale, a.seed)[0]  # [3, S, S]
    arr = (img.permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    Image.fromarray(arr).save(a.out)
    print(f"{a.out}: {arr.shape[1]}x{arr.shape[0]} from {prior.name} ({a.steps} DDIM steps, cfg {a.scale})")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
