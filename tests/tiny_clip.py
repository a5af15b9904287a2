"""Tiny random-weight CLIP folders for tests (and the full ViT-L/14 architecture for benchmarks).

Built offline: the tokenizer is CLIP's byte-level BPE over the tiny vocabulary of tiny_sd.py
(vocab.json + merges.txt written by hand), the image processor is a `CLIPImageProcessor` with
CLIP's resize / centre-crop / normalisation at a small size. `make_tiny_clip` saves a `CLIPModel`
and a `CLIPProcessor` with save_pretrained into one folder, the layout of a hub snapshot such as
openai/clip-vit-large-patch14, which `ism3d score --clip FOLDER` then loads like a user's.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from tiny_sd import save_quietly, write_tiny_clip_tokenizer_files


def clip_vit_l14_config(vocab_size: int = 49408, bos: int = 49406, eos: int = 49407):
    """openai/clip-vit-large-patch14: ViT-L/14 at 224 px (24 layers, width 1024, 16 heads, MLP
    4096), text 12 layers width 768 (12 heads, MLP 3072, 77 tokens), projection 768, quick_gelu."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=768, intermediate_size=3072,
                         num_attention_heads=12, num_hidden_layers=12,
                         max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=1),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                           num_hidden_layers=24, image_size=224, patch_size=14,
                           hidden_act="quick_gelu"),
        projection_dim=768)


def tiny_clip_config(tokenizer, image_size: int = 32):
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                           num_hidden_layers=2, image_size=image_size, patch_size=8),
        projection_dim=16)


def tiny_processor(image_size: int = 32):
    """A CLIPProcessor: the tiny BPE tokenizer (77 tokens) + CLIP's image pipeline at
    `image_size`."""
    from transformers.utils import logging as tlog

    verbosity = tlog.get_verbosity()
    tlog.set_verbosity_error()   # "requires torchvision, falling back to the PIL processor"
    try:
        from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer
    finally:
        tlog.set_verbosity(verbosity)
    with tempfile.TemporaryDirectory() as d:
        write_tiny_clip_tokenizer_files(d)
        tok = CLIPTokenizer.from_pretrained(d, model_max_length=77)
    verbosity = tlog.get_verbosity()
    tlog.set_verbosity_error()   # "requires torchvision, falling back to the PIL processor"
    try:
        ip = CLIPImageProcessor(size={"shortest_edge": image_size},
                                crop_size={"height": image_size, "width": image_size})
    finally:
        tlog.set_verbosity(verbosity)
    return CLIPProcessor(image_processor=ip, tokenizer=tok)


def make_tiny_clip(path: str | Path, seed: int = 0, image_size: int = 32,
                   config=None) -> Path:
    """Save a random CLIPModel (tiny, or `config`) + the tiny CLIPProcessor into `path`."""
    from transformers import CLIPModel
    processor = tiny_processor(image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config or tiny_clip_config(processor.tokenizer, image_size))
    return save_quietly(path, model, processor)
