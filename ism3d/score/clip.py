"""The CLIP of `ism3d score`: find it cheaply, load it, embed images and captions in batches.

Where the model comes from (`resolve_clip` decides before anything heavy is loaded, the way
`ism3d.priors.locate.resolve_prior` does for Stable Diffusion):
- a local folder written by `CLIPModel.save_pretrained` + `CLIPProcessor.save_pretrained` (a hub
  snapshot is such a folder): config.json with `model_type: clip`, weights, tokenizer files;
- a hub id (default `openai/clip-vit-large-patch14`): the HF cache is checked first, without the
  network; if the model is not there, a ~3 s socket probe of the hub decides whether
  transformers may download it. HF_HUB_OFFLINE=1 / TRANSFORMERS_OFFLINE=1 or `offline=True` skip
  the probe. Not available -> one-line `ScoreError` (the CLI exits 2 and writes nothing).

Embeddings (`ClipScorer`), all returned L2-normalised, float64, on the CPU:
- images: uint8 [V, H, W, 3] -> the model's own `CLIPProcessor` (resize of the shortest side,
  centre crop, normalisation: exactly what the model was trained with) -> vision tower ->
  visual projection. `batch_size` images per call, on the scorer's device, in float32.
- captions: the processor's tokenizer (padded, truncated to the model's 77 tokens) -> text
  tower -> text projection.
The towers are called directly (`vision_model` + `visual_projection`, `text_model` +
`text_projection`), which is what `CLIPModel.get_image_features` / `get_text_features` compute in
every transformers release, whatever those return.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["DEFAULT_CLIP", "ScoreError", "ClipScorer", "resolve_clip", "load_clip"]

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
            "pytorch_model.bin.index.json")


class ScoreError(ValueError):
    """Bad input of `ism3d score` / `ism3d bench`: the CLI prints the one line and exits 2."""


def _offline_error(repo_id: str) -> ScoreError:
    return ScoreError(
        f"CLIP model '{repo_id}' is not available offline: download it where there is internet "
        f"(huggingface-cli download {repo_id}) and copy the HF cache here, or pass a local "
        "folder (CLIPModel + CLIPProcessor save_pretrained) with --clip PATH")


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or "\\" in name or not _HUB_ID.match(name)


def _check_folder(folder: Path, shown: str) -> None:
    """A transformers CLIP folder: config.json of model_type clip, weights, a tokenizer."""
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise ScoreError(f"--clip {shown}: no config.json: not a transformers CLIP folder "
                         "(CLIPModel.save_pretrained writes one)")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        raise ScoreError(f"--clip {shown}: config.json is not readable JSON") from None
    if model_type != "clip":
        raise ScoreError(f"--clip {shown}: config.json has model_type {model_type!r}; "
                         "ism3d score needs a CLIPModel (model_type 'clip')")
    if not any((folder / w).is_file() for w in _WEIGHTS):
        raise ScoreError(f"--clip {shown}: no weights ({' or '.join(_WEIGHTS[:2])})")
    if not ((folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()):
        raise ScoreError(f"--clip {shown}: no tokenizer (tokenizer.json or vocab.json + "
                         "merges.txt); save the CLIPProcessor into the folder too")


def _cached_snapshot(repo_id: str) -> Path | None:
    """The HF-cache snapshot folder of `repo_id` if it holds config.json and weights. No network."""
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # malformed id
        return None
    if not isinstance(hit, str):
        return None
    folder = Path(hit).parent
    return folder if any((folder / w).is_file() for w in _WEIGHTS) else None


def resolve_clip(name: str, offline: bool = False) -> str:
    """Decide where the CLIP comes from, without loading it.

    Args:
        name: a local CLIP folder or a hub id.
        offline: never use the network (as HF_HUB_OFFLINE=1).
    Returns:
        the absolute path of a checked local folder (for a cached hub id: its snapshot folder),
        or the hub id itself when it is not cached but the hub is reachable.
    Raises:
        ScoreError: one line, for a missing or malformed folder or an unavailable hub id.
    """
    from ..priors.locate import cached_or_reachable

    name = (name or "").strip()
    if not name:
        raise ScoreError("--clip is empty: give a hub id such as openai/clip-vit-large-patch14 "
                         "or a local CLIP folder")
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        _check_folder(path, name)
        return str(path.resolve())
    if path.exists():
        raise ScoreError(f"--clip {name}: a file; give a CLIP folder (config.json, weights, "
                         "tokenizer, preprocessor config) or a hub id")
    if _looks_like_path(name):
        raise ScoreError(f"--clip {name}: no such folder")
    return cached_or_reachable(name, offline, _cached_snapshot, _offline_error)


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' info/warning logs and progress bars while loading (errors still
    show); restores the previous settings."""
    from transformers.utils import logging as tlog

    verbosity, bar = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(verbosity)
        (tlog.enable_progress_bar if bar else tlog.disable_progress_bar)()


@dataclass
class ClipScorer:
    """A loaded CLIP model + processor. `embed_images` / `embed_texts` give unit embeddings."""
    model: object           # transformers CLIPModel, eval mode, on `device`
    processor: object       # transformers CLIPProcessor
    device: torch.device
    name: str               # what the user passed (hub id or path)
    location: str           # where it was loaded from
    batch_size: int = 32

    def describe(self) -> dict:
        """Architecture facts that make two scores comparable (or not)."""
        v, t = self.model.config.vision_config, self.model.config.text_config
        ip = self.processor.image_processor
        return {"name": self.name, "location": self.location,
                "projection_dim": int(self.model.config.projection_dim),
                "vision": {"layers": int(v.num_hidden_layers), "width": int(v.hidden_size),
                           "patch": int(v.patch_size), "image_size": int(v.image_size)},
                "text": {"layers": int(t.num_hidden_layers), "width": int(t.hidden_size),
                         "max_tokens": int(t.max_position_embeddings)},
                "image_processor": type(ip).__name__,
                "parameters": int(sum(p.numel() for p in self.model.parameters()))}

    @torch.no_grad()
    def embed_images(self, images: np.ndarray, on_batch=None) -> Tensor:
        """uint8 [V, H, W, 3] RGB -> [V, D] float64 unit image embeddings (CPU).
        `on_batch(n)` is called after each batch of n images (progress)."""
        assert images.ndim == 4 and images.shape[-1] == 3 and images.dtype == np.uint8, \
            (images.shape, images.dtype)
        out = []
        for i in range(0, len(images), self.batch_size):
            chunk = list(images[i:i + self.batch_size])
            pix = self.processor(images=chunk, return_tensors="pt")["pixel_values"]  # [B, 3, S, S]
            pix = pix.to(self.device, torch.float32)
            pooled = self.model.vision_model(pixel_values=pix).pooler_output       # [B, W_v]
            out.append(self.model.visual_projection(pooled).double().cpu())        # [B, D]
            if on_batch is not None:
                on_batch(len(chunk))
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> Tensor:
        """K captions -> [K, D] float64 unit text embeddings (CPU)."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.processor.tokenizer(list(texts[i:i + self.batch_size]), padding=True,
                                           truncation=True, max_length=self.max_tokens,
                                           return_tensors="pt")
            pooled = self.model.text_model(
                input_ids=tok["input_ids"].to(self.device),
                attention_mask=tok["attention_mask"].to(self.device)).pooler_output  # [B, W_t]
            out.append(self.model.text_projection(pooled).double().cpu())           # [B, D]
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    @property
    def max_tokens(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    def truncated(self, texts: list[str]) -> list[str]:
        """The captions longer than the text tower's context (they are scored truncated)."""
        tok = self.processor.tokenizer
        return [t for t in texts if len(tok(t)["input_ids"]) > self.max_tokens]


def load_clip(name: str, device: torch.device | str = "cpu", *, offline: bool = False,
              batch_size: int = 32, location: str | None = None) -> ClipScorer:
    """Resolve (unless `location` is given) and load a CLIP model + processor, frozen, eval mode.

    Raises:
        ScoreError: one line, for anything that keeps the model from loading.
    """
    loc = location or resolve_clip(name, offline=offline)
    local = Path(loc).is_dir()
    device = torch.device(device)
    try:
        with _quiet_transformers():  # (the import too: it may warn of a missing torchvision)
            from transformers import CLIPModel, CLIPProcessor
            model = CLIPModel.from_pretrained(loc, local_files_only=local)
            processor = CLIPProcessor.from_pretrained(loc, local_files_only=local)
    except Exception as e:  # noqa: BLE001 - any loading failure (a corrupt safetensors header,
        # a bad config, a missing tokenizer file...) is one line and exit 2, never a traceback
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ScoreError(f"cannot load CLIP from {name}: {first}") from None
    if getattr(processor, "tokenizer", None) is None or \
            getattr(processor, "image_processor", None) is None:
        raise ScoreError(f"cannot load CLIP from {name}: the processor lacks a tokenizer or an "
                         "image processor")
    model.requires_grad_(False).eval().to(device=device, dtype=torch.float32)
    return ClipScorer(model, processor, device, name, str(loc), batch_size)
