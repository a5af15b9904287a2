"""StableDiffusionPrior: a frozen Stable Diffusion (1.x / 2.x) as a DiffusionPrior, via diffusers.

Where the weights come from (`resolve_prior` decides, cheaply, before anything heavy is loaded):
- a hub id (default `stabilityai/stable-diffusion-2-1-base`): the HF cache is checked first
  (`huggingface_hub.try_to_load_from_cache`, no network); if the model is not there, a ~3 s socket
  probe of the hub host (HF_ENDPOINT, or the https proxy) decides whether it can be downloaded.
  HF_HUB_OFFLINE=1 or `prior.offline=true` skip the probe. Unreachable -> one-line PriorError.
  A cached or freshly downloaded hub model is then loaded from its snapshot FOLDER, by the very
  same code as a local folder.
- a local diffusers folder (what `StableDiffusionPipeline.save_pretrained` writes; only
  unet/, vae/, text_encoder/, tokenizer/ and scheduler/ are read).
- a single original-layout `.safetensors` / `.ckpt` file, through diffusers
  `StableDiffusionPipeline.from_single_file`. That needs the diffusers configs of a model of the
  same architecture: `prior.single_file_config` (a diffusers folder or hub id); if empty, the
  repo diffusers infers (SD 1.5, or SD 2.1-768 for any SD 2.x file) must be in the HF cache or
  reachable. For a 512px SD 2.0/2.1-base file set `single_file_config` to
  `stabilityai/stable-diffusion-2-1-base` (diffusers would otherwise assume v-prediction at 768).

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

import contextlib
import json
import os
import re
import socket
import threading
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import PriorError, PromptError, alphas_cumprod_from_config, check_eps_inputs, check_images
from .cuda_graph import GraphedUNet
from .vae_attention import use_matmul_attention

DEFAULT_PRIOR = "stabilityai/stable-diffusion-2-1-base"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_WEIGHT_NAMES = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
PROBE_TIMEOUT_S = 3.0


# ---------------------------------------------------------------------------------------------
# Resolution: name -> "tiny" | local path | hub id to download. Cheap: no model is loaded.
# ---------------------------------------------------------------------------------------------
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (not at import time)."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True if a TCP connection to the hub host (or to the https proxy) opens within `timeout`.

    The probe runs in a daemon thread so that a slow DNS lookup cannot hold us past the timeout.
    HF_HUB_OFFLINE=1 answers False without probing.
    """
    if hub_offline():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    u = urlparse(endpoint if "://" in endpoint else "https://" + endpoint)
    proxy = (os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")) if u.scheme == "https" else \
        (os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy"))
    if proxy:
        u = urlparse(proxy if "://" in proxy else "http://" + proxy)
    host, port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
    if not host:
        return False
    ok = []

    def probe():
        with contextlib.suppress(OSError):  # unreachable: `ok` stays empty
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)

    th = threading.Thread(target=probe, daemon=True)
    th.start()
    th.join(timeout + 0.5)
    return bool(ok)


def _offline_error(repo_id: str) -> PriorError:
    return PriorError(
        f"model '{repo_id}' is not available offline: download it where there is internet "
        f"(huggingface-cli download {repo_id}) and copy the HF cache here, or pass a local "
        f"folder/file with --prior PATH")


def hf_cache_folder(repo_id: str) -> Path | None:
    """The HF-cache snapshot folder (main revision) holding `repo_id`'s model_index.json, or None.
    Never touches the network; the caller checks the folder is complete."""
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(repo_id, "model_index.json")
    except ValueError:  # malformed id
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def cached_snapshot(repo_id: str, need_weights: bool = True) -> Path | None:
    """The HF-cache snapshot folder of `repo_id` (main revision) if it holds a diffusers SD model
    (configs, and weights for unet, vae and text_encoder unless `need_weights` is False); None
    otherwise. Never touches the network."""
    folder = hf_cache_folder(repo_id)
    if folder is None:
        return None
    if need_weights:
        return folder if _missing_parts(folder) == [] else None
    return folder if all((folder / c).is_dir() for c in COMPONENTS) else None


def _missing_parts(folder: Path) -> list[str]:
    """Components of a diffusers SD folder that are absent (config or weights)."""
    missing = []
    for comp in COMPONENTS:
        d = folder / comp
        if comp in _WEIGHT_NAMES:
            if not (d / "config.json").is_file() or _weights_variant(d, comp) is False:
                missing.append(comp)
        elif not d.is_dir():
            missing.append(comp)
    return missing


def _weights_variant(d: Path, comp: str) -> str | None | bool:
    """None: plain weights present; "fp16": only fp16-variant weights; False: no weights."""
    stem = _WEIGHT_NAMES[comp]
    if (d / f"{stem}.safetensors").is_file() or (d / f"{stem}.bin").is_file() \
            or (d / f"{stem}.safetensors.index.json").is_file():
        return None
    if (d / f"{stem}.fp16.safetensors").is_file() or (d / f"{stem}.fp16.bin").is_file():
        return "fp16"
    return False


def _looks_like_path(name: str) -> bool:
    """A weights-file suffix, a leading / . ~, a backslash, or anything that is not `org/name`."""
    if name.lower().endswith(SINGLE_FILE_SUFFIXES) or "\\" in name:
        return True
    return name.startswith(("/", ".", "~")) or not _HUB_ID.match(name)


TOY_PRIOR_DIR = Path(__file__).resolve().parents[1] / "assets" / "toyworld"


def resolve_prior(name: str, offline: bool = False) -> str:
    """Decide where a prior comes from, without loading it.

    Args:
        name: "tiny", "toy" (the shipped ToyWorld prior), a hub id, a local diffusers/pixel-prior
            folder or a single weights file.
        offline: never use the network (as HF_HUB_OFFLINE=1).

    Returns:
        "tiny"; or the absolute path of an existing local folder/file (for a hub id: its HF-cache
        snapshot folder); or the hub id itself when it is not cached but the hub is reachable
        (`load_prior` downloads it).

    Raises:
        PriorError: "no such file or folder: PATH" for a path-like name that does not exist;
        the one-line offline message for a hub id that is neither cached nor reachable.
    """
    name = name.strip()
    if not name:
        raise PriorError("prior.name is empty: use tiny, a hub id, a folder or a .safetensors/.ckpt file")
    if name == "tiny":
        return "tiny"
    if name == "toy":  # the ToyWorld prior shipped inside the package (ism3d/toyworld)
        return str(TOY_PRIOR_DIR)
    path = Path(os.path.expanduser(name))
    if path.exists():
        return str(path.resolve())
    if _looks_like_path(name):
        raise PriorError(f"no such file or folder: {name}")
    snap = cached_snapshot(name)
    if snap is not None:
        return str(snap)
    if offline or hub_offline() or not hub_reachable():
        raise _offline_error(name)
    return name


def download(repo_id: str) -> Path:
    """Download the parts of a diffusers SD repo we read (fp32 safetensors + configs)."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            repo_id,
            allow_patterns=["model_index.json", *[f"{c}/*" for c in COMPONENTS]],
            ignore_patterns=["*.bin", "*.ckpt", "*.msgpack", "*.onnx", "*.pb", "*.h5", "*fp16*", "*non_ema*"],
        )
    except Exception as e:  # network errors, gated repos, unknown ids
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PriorError(f"cannot download '{repo_id}' from the hub: {first}") from None
    return Path(folder)


# ---------------------------------------------------------------------------------------------
# The prior
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet_hf():
    """Silence diffusers/transformers info logs and progress bars while loading (errors still
    show); restores their previous settings."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in (dlog, tlog)]
    for lib, _, _ in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, verbosity, bar in saved:
            lib.set_verbosity(verbosity)
            (lib.enable_progress_bar if bar else lib.disable_progress_bar)()


def resolve_dtype(name: str, device: torch.device, auto: torch.dtype | None = None) -> torch.dtype:
    """auto -> `auto` if given, else fp16 on CUDA and fp32 elsewhere; fp16 | bf16 | fp32 as named."""
    table = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if name == "auto":
        if auto is not None:
            return auto
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in table:
        raise PriorError(f"prior.dtype: {name!r} is not one of auto, fp16, bf16, fp32")
    return table[name]


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
        # 1. architecture checks: plain text-to-image SD only
        uc, vc = unet.config, vae.config
        if getattr(uc, "addition_embed_type", None) is not None:
            raise PriorError(f"{name}: SDXL-style UNets (addition_embed_type={uc.addition_embed_type!r}) "
                             "are not supported; use an SD 1.x/2.x model")
        if uc.in_channels != vc.latent_channels:
            raise PriorError(f"{name}: the UNet takes {uc.in_channels} channels but the VAE makes "
                             f"{vc.latent_channels} (an inpainting/depth model?); use a text-to-image model")
        if uc.cross_attention_dim != text_encoder.config.hidden_size:
            raise PriorError(f"{name}: UNet cross_attention_dim {uc.cross_attention_dim} != text encoder "
                             f"hidden size {text_encoder.config.hidden_size}")
        self.prediction_type = scheduler_config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise PriorError(f"{name}: unsupported prediction_type {self.prediction_type!r}")
        # 2. frozen networks on device
        self.vae, self.unet, self.text_encoder, self.tokenizer = vae, unet, text_encoder, tokenizer
        for m in (vae, unet, text_encoder):
            m.to(self.device)
            if next(m.parameters()).dtype != dtype:
                m.to(dtype)
            m.eval().requires_grad_(False)
        use_matmul_attention(vae.encoder)  # the encoder's backward: cuBLAS instead of SDPA's slow one
        # 3. sizes: latent_shape and image_size at the model's own resolution
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
        missing = _missing_parts(folder)
        if missing:
            raise PriorError(f"{folder} is not a complete Stable Diffusion folder: missing "
                             f"{', '.join(missing)} (config or weights)")
        try:
            with quiet_hf():
                sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
                vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dt, local_files_only=True,
                                                    variant=_weights_variant(folder / "vae", "vae"))
                unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dt,
                                                            local_files_only=True,
                                                            variant=_weights_variant(folder / "unet", "unet"))
                text_encoder = CLIPTextModel.from_pretrained(
                    folder, subfolder="text_encoder", dtype=dt, local_files_only=True,
                    variant=_weights_variant(folder / "text_encoder", "text_encoder"))
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
        from diffusers import StableDiffusionPipeline

        path = Path(path)
        device = torch.device(device)
        dt = resolve_dtype(dtype, device)
        cfg_src = config.strip() or _inferred_config_repo(path)
        loc = _config_source(cfg_src, path, offline)
        try:
            with quiet_hf():
                pipe = StableDiffusionPipeline.from_single_file(
                    str(path), config=loc, local_files_only=Path(loc).is_dir(), torch_dtype=dt,
                    safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        except Exception as e:  # diffusers raises many types here; one line is what the user needs
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PriorError(f"cannot load the single file {path} (configs from {cfg_src}): {first}") from None
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
            for p in todo:
                n = len(self.tokenizer(p, truncation=False, verbose=False).input_ids)
                if n > self.max_length and p not in self._warned:
                    self._warned.add(p)
                    warnings.warn(f"prompt truncated to the text encoder's {self.max_length} tokens "
                                  f"({n} given): {p!r}", stacklevel=2)
            ids = self.tokenizer(todo, padding="max_length", max_length=self.max_length, truncation=True,
                                 return_tensors="pt").input_ids.to(self.device)  # [N, L]
            with torch.no_grad():
                out = self.text_encoder(ids).last_hidden_state.to(self.dtype)  # [N, L, D]
            for p, e in zip(todo, out):
                self._cache[p] = e
        return torch.stack([self._cache[p] for p in prompts])  # [B, L, D]

    # ------------------------------------------------------------------ images <-> latents
    def encode(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] in [0, 1] -> z0 [B, 4, h, w] float32 (scaled VAE latents), differentiable.

        1. resize to image_size if needed (bilinear, align_corners=False, no antialias)
        2. x = 2 * images - 1, cast to the prior dtype, in contiguous (NCHW) memory
        3. VAE encoder with autocast off; mean of the posterior (or a sample, prior.latent)
        4. z0 = (latent - shift_factor) * scaling_factor, float32
        """
        check_images(images)
        x = images.to(self.device)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x.float(), size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=False)
        # contiguous: renders arrive as [B, H, W, 3] memory seen as [B, 3, H, W] (channels_last
        # strides), which every elementwise op keeps; the VAE's convolutions would then answer in
        # channels_last and each GroupNorm copy back: +12 ms per paper step on an H100
        x = (x * 2.0 - 1.0).to(self.dtype).contiguous()  # [B, 3, S, S]
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
        lat = (z.float() / self.scaling_factor + self.shift_factor).to(self.device, self.dtype)
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


def _inferred_config_repo(path: Path) -> str:
    """The diffusers repo whose configs `from_single_file` would use for this checkpoint,
    inferred from the checkpoint's key names and shapes without reading its tensors."""
    from diffusers.loaders.single_file_utils import fetch_diffusers_config

    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                meta = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
        else:
            sd = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
            sd = sd.get("state_dict", sd)
            meta = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
    except Exception as e:
        raise PriorError(f"cannot read {path} as a checkpoint: {(str(e).splitlines() or ['?'])[0]}") from None
    repo = fetch_diffusers_config(meta)["pretrained_model_name_or_path"]
    if repo == "stabilityai/stable-diffusion-2-1":
        warnings.warn(f"{path.name}: diffusers assumes an SD 2.x single file is the 768px v-prediction "
                      "SD 2.1; for a 512px eps model (SD 2.0/2.1-base) set "
                      "prior.single_file_config=stabilityai/stable-diffusion-2-1-base", stacklevel=3)
    return repo


def _config_source(src: str, weights: Path, offline: bool) -> str:
    """Where `from_single_file` reads its configs: a local folder, or a reachable hub id."""
    p = Path(os.path.expanduser(src))
    if p.is_dir():
        return str(p.resolve())
    if _looks_like_path(src):
        raise PriorError(f"no such file or folder: {src}")
    snap = cached_snapshot(src, need_weights=False)
    if snap is not None:
        return str(snap)
    if offline or hub_offline() or not hub_reachable():
        raise PriorError(
            f"{weights.name} needs the diffusers configs of '{src}', which are not available offline: "
            f"set prior.single_file_config to a local diffusers folder of the same architecture, or "
            f"download them where there is internet (huggingface-cli download {src} --exclude '*.bin' "
            f"'*.safetensors') and copy the HF cache here")
    return src


def load_stable_diffusion(location: str, device: torch.device | str, dtype: str = "auto", latent: str = "mean",
                          single_file_config: str = "", offline: bool = False,
                          name: str | None = None) -> StableDiffusionPrior:
    """Load what `resolve_prior` returned: a folder, a single file, or a hub id to download first."""
    path = Path(location)
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise PriorError(f"{path}: a single-file prior must be .safetensors or .ckpt")
        return StableDiffusionPrior.from_single_file(path, device, dtype, latent, single_file_config,
                                                     offline, name=name)
    if not path.is_dir():
        path = download(location)  # a reachable hub id, not cached yet
    return StableDiffusionPrior.from_pretrained(path, device, dtype, latent, name=name)


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
