"""Textual inversion: learned token embeddings added to a prior's tokenizer(s) and text encoder(s).

`prior.textual_inversion` takes `PATH` or `PATH:TOKEN` entries (a file, a folder or hub id holding
learned_embeds.safetensors/.bin, cached or downloadable). The layouts diffusers reads are accepted
(the token/vector picking is ours, so that each problem is one line):
- diffusers: one key, `{"<token>": tensor [D] or [n, D]}` (learned_embeds.bin / .safetensors;
  the LucidDreamer reference's `{"<Taylor_Swift>": tensor[1024]}` is this layout);
- A1111 .pt: `{"string_to_param": {"*": tensor [n, D]}, "name": ...}`;
- A1111 .safetensors: `{"emb_params": tensor [n, D]}` (the token is the file name);
- SDXL: `{"clip_l": [n, 768], "clip_g": [n, 1280]}`, one part per text encoder.

Steps (per file, all checks before anything is changed):
1. read the state dict; pick the token: the one given after ':', else the file's own;
2. per text encoder, the embedding [n, D] must have the encoder's width D (one-line PriorError
   naming both widths otherwise) and the token(s) must be new to the tokenizer;
3. add n tokens (`tok`, `tok_1`, ..., `tok_{n-1}` for a multi-vector embedding, as diffusers
   does), grow the encoder's token-embedding matrix and write the vectors into the new rows.
At embed time `expand_prompt` turns `tok` into `tok tok_1 ...` for multi-vector embeddings.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from .base import PriorError

# File names of diffusers' textual-inversion repos/folders (learned_embeds.*), tried in this order.
_FILES = ("learned_embeds.safetensors", "learned_embeds.bin")
# Widths of the text encoders embedding files are made for (for the error message only).
_KNOWN_WIDTHS = {768: "SD 1.x / SDXL clip_l", 1024: "SD 2.x", 1280: "SDXL clip_g"}


def split_spec(spec: str) -> tuple[str, str | None]:
    """"PATH" | "PATH:TOKEN" -> (PATH, TOKEN or None). An existing path is taken whole (so a
    Windows drive letter or a ':' in a file name is not split)."""
    spec = spec.strip()
    if os.path.exists(os.path.expanduser(spec)) or ":" not in spec:
        return spec, None
    src, token = spec.rsplit(":", 1)
    if not token or "/" in token or "\\" in token:
        return spec, None
    return src, token


def _read(src: str, offline: bool) -> dict:
    """The file's state dict (a local file, or a hub repo holding learned_embeds.*)."""
    from .locate import hub_weights_file, weights_file_like

    p = Path(os.path.expanduser(src))
    if not p.exists() and weights_file_like(src):
        raise PriorError(f"textual inversion: no such file: {src}")
    if p.is_dir():
        p = next((p / n for n in _FILES if (p / n).is_file()), p / _FILES[0])
    elif not p.exists():  # a hub id: its cached or downloaded file
        p = hub_weights_file("textual inversion", src, _FILES, offline)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(p))
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
        return sd if isinstance(sd, dict) else {"": sd}
    except Exception as e:  # unreadable file: one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PriorError(f"textual inversion {src}: cannot read it: {first}") from None


def _embeddings(sd: dict, src: str, token: str | None, parts: int) -> tuple[str, list[Tensor]]:
    """(token, one [n, D] tensor per text encoder) from a state dict in any accepted layout."""
    stem = Path(src).stem
    if "clip_l" in sd and "clip_g" in sd:
        if parts != 2:
            raise PriorError(f"textual inversion {src}: an SDXL embedding (clip_l + clip_g) needs an SDXL prior")
        vecs, own = [sd["clip_l"], sd["clip_g"]], stem
    elif parts == 2:
        raise PriorError(f"textual inversion {src}: an SDXL prior needs an embedding with clip_l and clip_g "
                         f"parts (this one has {', '.join(map(str, list(sd)[:3]))})")
    elif "string_to_param" in sd:                       # A1111 .pt
        vecs, own = [sd["string_to_param"]["*"]], str(sd.get("name") or stem)
    elif "emb_params" in sd:                            # A1111 .safetensors
        vecs, own = [sd["emb_params"]], stem
    elif len(sd) == 1:                                  # diffusers / the reference
        own, v = next(iter(sd.items()))
        vecs, own = [v], (own or stem)
    else:
        raise PriorError(f"textual inversion {src}: not an embedding file (expected one key, "
                         f"string_to_param, emb_params, or clip_l + clip_g; found {len(sd)} keys)")
    out = []
    for v in vecs:
        if not torch.is_tensor(v) or v.ndim not in (1, 2):
            raise PriorError(f"textual inversion {src}: the embedding is not a [D] or [n, D] tensor")
        out.append(v.detach().float().reshape(-1, v.shape[-1]))  # [n, D]
    return token or own, out


def load_textual_inversions(prior, specs: tuple[str, ...] | list[str], offline: bool = False) -> list[dict]:
    """Add every embedding of `specs` to `prior` (its `text_stacks()`); returns one record per
    file: {"source", "token", "vectors"}. Raises PriorError (one line) on any problem."""
    stacks = prior.text_stacks()
    records = []
    for spec in specs:
        src, token = split_spec(spec)
        # 1. read, pick the token
        token, vecs = _embeddings(_read(src, offline), src, token, len(stacks))
        # 2. check widths and the vocabulary of every text encoder before changing any
        for (tok, enc), v in zip(stacks, vecs):
            width = enc.get_input_embeddings().weight.shape[1]
            if v.shape[1] != width:
                made = _KNOWN_WIDTHS.get(v.shape[1], "another model")
                raise PriorError(f"textual inversion {src}: embedding width {v.shape[1]} does not match the "
                                 f"text encoder's width {width} (made for {made}?)")
            if token in tok.get_vocab():
                raise PriorError(f"textual inversion {src}: the token {token!r} is already in the vocabulary: "
                                 f"give another one with {src}:<new-token>")
        # 3. add the tokens and write the vectors
        for (tok, enc), v in zip(stacks, vecs):
            names = [token] + [f"{token}_{i}" for i in range(1, v.shape[0])]
            tok.add_tokens(names)
            enc.resize_token_embeddings(len(tok))
            table = enc.get_input_embeddings().weight  # [V + n, D]
            ids = tok.convert_tokens_to_ids(names)
            with torch.no_grad():
                table[ids] = v.to(table.device, table.dtype)
        records.append({"source": src, "token": token, "vectors": int(vecs[0].shape[0])})
    if records:
        prior._cache.clear()  # embeddings made before now are stale
    return records


def expand_prompt(prompt: str, tokenizer) -> str:
    """Replace each multi-vector token `tok` by `tok tok_1 ... tok_{n-1}` (diffusers' convention);
    prompts without added tokens come back unchanged."""
    added = tokenizer.added_tokens_encoder
    if not any(not t.startswith("<|") for t in added):  # only the special tokens: nothing to do
        return prompt
    for token in set(tokenizer.tokenize(prompt)):
        if token in added and f"{token}_1" in added:
            parts, i = [token], 1
            while f"{token}_{i}" in added:
                parts.append(f"{token}_{i}")
                i += 1
            prompt = prompt.replace(token, " ".join(parts))
    return prompt
