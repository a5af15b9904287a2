"""PixelPrior: a small pixel-space, text-conditional eps-prediction diffusion prior.

z0 is the image itself mapped to [-1, 1] at `image_size` (no VAE), so `encode` is
`2 * resize(images) - 1` and `decode` its inverse. The denoiser is a diffusers
`UNet2DConditionModel` conditioned by cross-attention on the output of a small text encoder of our
own: a word-level tokenizer over a fixed vocabulary and a 2-layer transformer.

- Tokenizer: lowercase, split on whitespace and `, . ; : ! ?`; ids are `[<bos>, words..., <pad>...]`
  of length `max_length` (longer prompts are truncated with a warning). Words outside the
  vocabulary map to `<unk>`; `check_prompt` rejects them unless the prior is `permissive`.
- Schedule: 1000-step **scaled-linear** betas 0.00085..0.012, the same abar_t as Stable Diffusion,
  so the guidance's timestep ranges (t_min, t_max, delta_t in units of 1000) mean the same noise
  levels for both priors. Stored in the config, so a trained prior may use another.
- Patches: with `patch` p > 1 the UNet runs on the pixel-unshuffled image [3 p^2, S/p, S/p] and its
  output is shuffled back, so an S x S prior costs about what an S/p x S/p one does (a 64x64
  ToyWorld prior at the cost of a 32x32 one; "simple diffusion", Hoogeboom et al. 2023).
- `PixelPrior.tiny()` is a seeded random-weight 32x32 prior (~1M parameters, permissive
  vocabulary) for tests and smoke runs: it exercises every code path but knows nothing.
- Saved as a folder (`config.json` + `model.safetensors`) or a single `.safetensors` file whose
  metadata holds the same JSON config; `from_pretrained` reads both.
"""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import PriorError, PromptError, alphas_cumprod_from_config, check_eps_inputs, check_images
from .cuda_graph import GraphedUNet

FORMAT = "ism3d-pixel-prior"
# The newest config version this reads. 2 added `patch`; a patch-1 config is still written as
# version 1, so earlier ism3d releases keep reading every prior they can run.
FORMAT_VERSION = 2
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>")  # ids 0, 1, 2; vocabulary words follow
PAD, UNK, BOS = 0, 1, 2
_SPLIT = re.compile(r"[\s,.;:!?]+")

# Scaled-linear schedule of Stable Diffusion (see the module docstring).
SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
               "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "epsilon"}

# Vocabulary of the random `tiny` prior: ordinary prompt words, the view suffixes and the default
# negative prompt. `tiny` is permissive, so other words still work (as <unk>).
TINY_VOCAB = sorted(set("""
a an the of on in with and or to at by for from under over near top its is are this that
photo picture image render rendering 3d model object scene view front side back left right top
bottom dslr zoomed out close up closeup full body studio lighting high quality detailed
highly realistic photorealistic beautiful cute small big large tiny huge tall short round square
flat old new wooden metal metallic glass plastic stone golden silver shiny matte fluffy soft hard
red green blue yellow orange purple pink brown black white gray grey cyan magenta colorful
dark light bright
cube box ball sphere cone cylinder pyramid torus ring donut chair table lamp car truck bus bike
bicycle motorcycle plane airplane boat ship house castle tower tree flower plant rock mountain
cup mug teapot bottle vase bowl plate hat shoe helmet robot toy statue sculpture figure
cat dog bird fish horse cow pig sheep rabbit bunny bear fox lion tiger elephant frog duck owl
dragon dinosaur monkey mouse turtle squirrel corgi panda penguin astronaut knight wizard
apple banana cake burger pizza bread fruit hamburger ice cream
sitting standing riding wearing holding eating flying running
unrealistic blurry low out focus ugly contrast dull gloomy resolution
""".split()))


@dataclass
class PixelPriorConfig:
    """Everything needed to rebuild a PixelPrior (saved as JSON next to the weights)."""
    # Square image size of the prior (z0 is [3, image_size, image_size])
    image_size: int
    # Vocabulary words (the special tokens <pad> <unk> <bos> come first and are not listed)
    vocab: list[str]
    # Token sequence length L (including <bos>)
    max_length: int = 16
    # True: unknown words map to <unk>; False: check_prompt rejects them
    permissive: bool = False
    # Text encoder: width D, transformer layers, heads, feed-forward width
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_ff: int = 128
    # UNet2DConditionModel keyword arguments (cross_attention_dim must equal text_dim)
    unet: dict[str, Any] = field(default_factory=dict)
    # Diffusers-style schedule keys (see base.alphas_cumprod_from_config) and prediction_type
    schedule: dict[str, Any] = field(default_factory=lambda: dict(SD_SCHEDULE))
    # Name shown in logs and messages
    name: str = "pixel"
    # Pixel-unshuffle factor p: the UNet sees [3 p^2, S/p, S/p] (its in/out_channels are 3 p^2)
    patch: int = 1

    def to_json(self) -> str:
        data = asdict(self)
        if self.patch == 1:
            del data["patch"]
        return json.dumps({"format": FORMAT, "version": 1 if self.patch == 1 else FORMAT_VERSION, **data},
                          indent=2)

    @classmethod
    def from_json(cls, text: str, where: str) -> "PixelPriorConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PriorError(f"{where}: the pixel-prior config is not valid JSON ({e})") from None
        if data.get("format") != FORMAT:
            raise PriorError(f"{where}: not an ism3d pixel prior (config format {data.get('format')!r})")
        if int(data.get("version", 0)) > FORMAT_VERSION:
            raise PriorError(f"{where}: pixel-prior format version {data['version']} is newer than this "
                             f"ism3d reads ({FORMAT_VERSION}); upgrade ism3d")
        data.pop("format"), data.pop("version")
        try:
            return cls(**data)
        except TypeError as e:
            raise PriorError(f"{where}: bad pixel-prior config ({e})") from None


def tiny_config() -> PixelPriorConfig:
    """The `tiny` prior: 32x32, UNet channels (32, 64), ~1M parameters, permissive vocabulary."""
    return PixelPriorConfig(
        image_size=32, vocab=list(TINY_VOCAB), max_length=16, permissive=True,
        text_dim=64, text_layers=2, text_heads=4, text_ff=128, name="tiny",
        unet=dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
                  block_out_channels=[32, 64], norm_num_groups=8,
                  # attention only at 16x16: at 32x32 it costs ~10x the rest on a CPU
                  down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                  up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
                  cross_attention_dim=64, attention_head_dim=8),
    )


class WordTextEncoder(nn.Module):
    """Token ids [B, L] -> embeddings [B, L, D]: learned token + position embeddings, pre-norm
    transformer encoder layers, final LayerNorm. No padding mask: <pad> is a learned token, as in
    SD's CLIP text encoder."""

    def __init__(self, vocab_size: int, max_length: int, dim: int, layers: int, heads: int, ff: int):
        super().__init__()
        self.token = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, ff, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, ids: Tensor) -> Tensor:  # [B, L] long -> [B, L, D]
        h = self.token(ids) + self.position[: ids.shape[1]]  # [B, L, D]
        return self.norm(self.encoder(h))


class PixelPrior(GraphedUNet):
    """Pixel-space text-conditional eps-prediction prior (see the module docstring).

    Args:
        config: the architecture, vocabulary and schedule.
        device: where the modules live.
        dtype: dtype of the denoiser and text-encoder calls (float32 unless asked).
        seed: seed of the random initial weights (replaced when weights are loaded).

    All weights are frozen (`requires_grad=False`, `eval()`); a trainer may unfreeze
    `prior.unet` / `prior.text_encoder` and use `prior.tokens()` to build batches.
    """

    is_latent = False

    def __init__(self, config: PixelPriorConfig, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, seed: int = 0):
        from diffusers import UNet2DConditionModel  # heavy import, only when a prior is built

        c = config
        if c.unet.get("cross_attention_dim") != c.text_dim:
            raise PriorError(f"pixel-prior config: unet.cross_attention_dim "
                             f"({c.unet.get('cross_attention_dim')}) must equal text_dim ({c.text_dim})")
        p = int(c.patch)
        if p < 1 or c.image_size % p != 0:
            raise PriorError(f"pixel-prior config: patch {c.patch} must be >= 1 and divide image_size "
                             f"{c.image_size}")
        if c.unet.get("in_channels", 4) != 3 * p * p or c.unet.get("out_channels", 4) != 3 * p * p:
            raise PriorError(f"pixel-prior config: unet in_channels and out_channels must be 3 * patch^2 "
                             f"= {3 * p * p}")
        self.config = c
        self.name = c.name
        self.device = torch.device(device)
        self.dtype = dtype
        self.image_size = int(c.image_size)
        self.patch = p
        self.latent_shape = (3, self.image_size, self.image_size)
        self.prediction_type = c.schedule.get("prediction_type", "epsilon")
        if self.prediction_type != "epsilon":
            raise PriorError(f"pixel prior: prediction_type {self.prediction_type!r} is not supported "
                             "(only epsilon)")
        self.words = list(c.vocab)
        self.word_to_id = {w: i + len(SPECIAL_TOKENS) for i, w in enumerate(self.words)}
        # 1. modules, initialised from a private RNG so the global RNG is untouched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.unet = UNet2DConditionModel(**c.unet)
            self.text_encoder = WordTextEncoder(len(SPECIAL_TOKENS) + len(self.words), c.max_length,
                                                c.text_dim, c.text_layers, c.text_heads, c.text_ff)
        for m in (self.unet, self.text_encoder):
            m.to(self.device)
            if dtype != torch.float32:  # (diffusers warns on any dtype cast, even a no-op one)
                m.to(dtype)
            m.eval().requires_grad_(False)
        if self.device.type == "cpu":
            # oneDNN runs channels_last convolutions without layout reorders: the UNet call is
            # 5-20 % faster on the 2-core CPU (docs/experiments/cpu-main-job.md); outputs agree
            # to float32 rounding
            self.unet.to(memory_format=torch.channels_last)
        # 2. schedule
        abar = alphas_cumprod_from_config(c.schedule)
        self.alphas_cumprod = abar.to(self.device)  # [T] float32
        self.num_train_timesteps = int(abar.shape[0])
        self._cache: dict[str, Tensor] = {}
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ construction / storage
    @classmethod
    def tiny(cls, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
             seed: int = 0) -> "PixelPrior":
        """Seeded random-weight 32x32 prior with a permissive vocabulary (tests, smoke runs)."""
        return cls(tiny_config(), device=device, dtype=dtype, seed=seed)

    def state_dict(self) -> dict[str, Tensor]:
        sd = {f"unet.{k}": v for k, v in self.unet.state_dict().items()}
        sd.update({f"text_encoder.{k}": v for k, v in self.text_encoder.state_dict().items()})
        return sd

    def save_pretrained(self, path: str | Path) -> Path:
        """Write a folder (`config.json` + `model.safetensors`) or, if `path` ends with
        `.safetensors`, one file with the config in its metadata. Weights are stored in float32."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.state_dict().items()}
        if path.suffix == ".safetensors":
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(path), metadata={"format": FORMAT, "config": self.config.to_json()})
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "config.json").write_text(self.config.to_json())
            save_file(tensors, str(path / "model.safetensors"), metadata={"format": FORMAT})
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float32) -> "PixelPrior":
        """Load what `save_pretrained` wrote (a folder or a single `.safetensors` file)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if path.is_dir():
            cfg_file, weights = path / "config.json", path / "model.safetensors"
            if not cfg_file.is_file() or not weights.is_file():
                raise PriorError(f"{path}: a pixel-prior folder needs config.json and model.safetensors")
            config = PixelPriorConfig.from_json(cfg_file.read_text(), str(cfg_file))
        elif path.is_file():
            weights = path
            try:
                with safe_open(str(path), framework="pt") as f:
                    meta = f.metadata() or {}
            except Exception as e:  # not a safetensors file
                raise PriorError(f"{path}: cannot read as safetensors ({e})") from None
            if "config" not in meta:
                raise PriorError(f"{path}: no pixel-prior config in the safetensors metadata")
            config = PixelPriorConfig.from_json(meta["config"], str(path))
        else:
            raise PriorError(f"no such file or folder: {path}")
        prior = cls(config, device=device, dtype=dtype)
        state = load_file(str(weights))
        unet_sd = {k[5:]: v for k, v in state.items() if k.startswith("unet.")}
        text_sd = {k[13:]: v for k, v in state.items() if k.startswith("text_encoder.")}
        try:
            prior.unet.load_state_dict(unet_sd, strict=True)
            prior.text_encoder.load_state_dict(text_sd, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise PriorError(f"{path}: weights do not match the config ({first})") from None
        return prior

    # ------------------------------------------------------------------ text
    def split_words(self, text: str) -> list[str]:
        return [w for w in _SPLIT.split(text.lower()) if w]

    def check_prompt(self, text: str) -> None:
        """Raise PromptError if `text` is empty or (non-permissive priors) has unknown words."""
        if not text.strip():
            raise PromptError("the prompt is empty")
        if self.config.permissive:
            return
        unknown = [w for w in dict.fromkeys(self.split_words(text)) if w not in self.word_to_id]
        if unknown:
            raise PromptError(
                f"the {self.name} prior does not know the word(s) {', '.join(unknown)}; "
                f"use only these words: {' '.join(self.words)}")

    def tokens(self, prompts: list[str]) -> Tensor:
        """[B] strings -> token ids [B, L] long on `self.device` (<bos> words... <pad>...)."""
        rows = []
        for p in prompts:
            ids = [BOS] + [self.word_to_id.get(w, UNK) for w in self.split_words(p)]
            if len(ids) > self.config.max_length:
                if p not in self._warned:
                    self._warned.add(p)
                    warnings.warn(f"prompt truncated to {self.config.max_length - 1} words for the "
                                  f"{self.name} prior: {p!r}", stacklevel=3)
                ids = ids[: self.config.max_length]
            rows.append(ids + [PAD] * (self.config.max_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def embed(self, prompts: list[str]) -> Tensor:
        """[B] strings -> [B, L, D] in `self.dtype`; each distinct string is encoded once."""
        assert isinstance(prompts, (list, tuple)) and len(prompts) > 0, "prompts must be a non-empty list"
        todo = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if todo:
            with torch.no_grad():
                out = self.text_encoder(self.tokens(todo))  # [N, L, D]
            for p, e in zip(todo, out):
                self._cache[p] = e
        return torch.stack([self._cache[p] for p in prompts])  # [B, L, D]

    # ------------------------------------------------------------------ images
    def encode(self, images: Tensor) -> Tensor:
        """images [B, 3, H, W] in [0, 1] -> z0 [B, 3, S, S] = 2 * resize(images) - 1 (float32,
        differentiable); S = image_size, bilinear resize without antialiasing when H, W != S."""
        check_images(images)
        x = images.to(self.device).float()
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=False)
        return x * 2.0 - 1.0

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """z [B, 3, S, S] -> images [B, 3, S, S] in [0, 1]."""
        assert z.ndim == 4 and z.shape[1] == 3, f"z must be [B, 3, h, w], got {tuple(z.shape)}"
        return ((z.to(self.device).float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def unet_forward(self, x: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """x [B, 3, S, S], t [B], emb [B, L, D] -> UNet output [B, 3, S, S] (differentiable)."""
        if self.patch == 1:
            return super().unet_forward(x, t, emb)
        h = F.pixel_unshuffle(x, self.patch)                            # [B, 3 p^2, S/p, S/p]
        h = self.unet(h, t, encoder_hidden_states=emb).sample           # [B, 3 p^2, S/p, S/p]
        return F.pixel_shuffle(h, self.patch)                           # [B, 3, S, S]

    @torch.no_grad()
    def eps(self, x: Tensor, t: Tensor, emb: Tensor) -> Tensor:
        """x_t [B, 3, S, S], t [B] long, emb [B, L, D] -> predicted noise [B, 3, S, S] float32."""
        check_eps_inputs(self, x, t, emb)
        return self.denoise(x, t, emb).float()


def is_pixel_prior(path: str | Path) -> bool:
    """True if `path` is a folder or `.safetensors` file written by `PixelPrior.save_pretrained`."""
    path = Path(path)
    try:
        if path.is_dir():
            cfg = path / "config.json"
            return cfg.is_file() and json.loads(cfg.read_text()).get("format") == FORMAT
        if path.is_file() and path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                return (f.metadata() or {}).get("format") == FORMAT
    except (OSError, ValueError, json.JSONDecodeError):
        return False
    except Exception:  # safetensors raises its own error type for non-safetensors files
        return False
    return False
