"""Random-weight Shap-E pipelines (diffusers `ShapEPipeline`) for tests and GPU benchmarks.

Everything is built offline from configs, saved with `ShapEPipeline.save_pretrained` (a folder
laid out like the `openai/shap-e` hub snapshot) and read back by `ism3d.inits.shap_e`, the same
loader a hub id takes.

- `make_tiny_shap_e(path)`: a tiny pipeline (about 0.1 M parameters) whose mesh decoder is set
  to a KNOWN shape (`set_known_shape`), so a test can check the decoded cloud in closed form.
- `shap_e_configs()` / `make_shap_e_random(path)`: the exact `openai/shap-e` architecture
  (prior 24 x 1024, CLIP ViT-L/14 text encoder, the STF renderer and its 1024 x 1024 latent ->
  MLP-weight projections) with random weights, for the GPU benchmark (665.6 M parameters).

Two things a random-weight Shap-E needs that a checkpoint carries:

1. The marching-cubes tables. diffusers' `MeshDecoder` keeps its lookup table (`cases` [256, 5, 3]
   edge ids, `masks` [256, 5]) as buffers that are zeros until a checkpoint fills them; with zero
   tables every mesh is empty. `marching_cubes_tables()` builds a table of our own from the
   decoder's corner and edge numbering (read from diffusers' renderer.py):
       corner c = dx + 2 dy + 4 dz, bit c of a cube's case is set where the field is > 0 (inside);
       edges 0-3 run along x at (dy, dz) = (e & 1, e >> 1); edges 4-7 along y at
       (dx, dz) = (k & 1, k >> 1), k = e - 4; edges 8-11 along z at (dx, dy) = (k & 1, k >> 1).
   Per case: the crossed edges of each cube face are paired (an ambiguous face, two inside
   corners on a diagonal, always cuts each inside corner off on its own, so two cubes sharing
   the face agree and the mesh is closed), the pairs are chained into loops, each loop is fanned
   into triangles wound counter-clockwise seen from outside. At most 5 triangles per case.
2. A decodable field. Random weights make a random field; `set_known_shape` instead sets the
   renderer so that the decoded signed distance and colours are closed-form functions of the
   position, whatever the latent: the latent -> weight projections get zero weights (their
   LayerNorm of zeros returns its bias, so the projected MLP weights are constants we choose) and
   the MLP passes linear functions of the position through its SiLU layers with an offset of
   C = 20 (silu(C + u) = C + u to within 1e-5 for |u| < 5).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from tiny_sd import save_quietly, tiny_clip_tokenizer

# ---------------------------------------------------------------------------------------------
# openai/shap-e configs (prior/, text_encoder/, scheduler/, shap_e_renderer/ config.json on the
# hub, without the _class_name / _diffusers_version bookkeeping keys)
# ---------------------------------------------------------------------------------------------
SHAP_E_SCHEDULER = {
    "beta_schedule": "exp",
    "num_train_timesteps": 1024,
    "clip_sample": True,
    "clip_sample_range": 1.0,
    "prediction_type": "sample",
    "use_karras_sigmas": True,
}


def shap_e_configs() -> dict[str, dict]:
    prior = {
        "added_emb_type": None, "additional_embeddings": 0, "attention_head_dim": 64,
        "clip_embed_dim": 2048, "dropout": 0.0, "embedding_dim": 1024, "embedding_proj_dim": 768,
        "embedding_proj_norm_type": None, "encoder_hid_proj_type": None, "norm_in_type": "layer",
        "num_attention_heads": 16, "num_embeddings": 1024, "num_layers": 24,
        "time_embed_act_fn": "gelu", "time_embed_dim": 4096,
    }
    text_encoder = {
        "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2,
        "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0,
        "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-5,
        "max_position_embeddings": 77, "num_attention_heads": 12, "num_hidden_layers": 12,
        "pad_token_id": 1, "projection_dim": 768, "vocab_size": 49408,
    }
    renderer = {
        "act_fn": "swish", "background": [255.0, 255.0, 255.0], "d_hidden": 256, "d_latent": 1024,
        "insert_direction_at": 4, "n_hidden_layers": 6, "n_output": 12,
        "param_names": [f"nerstf.mlp.{i}.weight" for i in range(4)],
        "param_shapes": [[256, 93], [256, 256], [256, 256], [256, 256]],
    }
    return {"prior": prior, "text_encoder": text_encoder, "renderer": renderer,
            "scheduler": copy.deepcopy(SHAP_E_SCHEDULER)}


def tiny_shap_e_configs(vocab_size: int) -> dict[str, dict]:
    """The same architecture family, tiny: MLP width 12 (7 layers, direction inserted at 4),
    latent 48 x 16 (48 = the rows of the four projected weights), text width 32."""
    h, d_latent, text = 12, 16, 32
    prior = {
        "added_emb_type": None, "additional_embeddings": 0, "attention_head_dim": 8,
        "clip_embed_dim": 2 * d_latent, "embedding_dim": d_latent, "embedding_proj_dim": text,
        "encoder_hid_proj_type": None, "norm_in_type": "layer", "num_attention_heads": 2,
        "num_embeddings": 4 * h, "num_layers": 1, "time_embed_act_fn": "gelu",
        "time_embed_dim": 32,
    }
    text_encoder = {
        "hidden_act": "quick_gelu", "hidden_size": text, "intermediate_size": 37,
        "layer_norm_eps": 1e-5, "max_position_embeddings": 77, "num_attention_heads": 4,
        "num_hidden_layers": 2, "projection_dim": text, "vocab_size": vocab_size,
    }
    renderer = {
        "act_fn": "swish", "background": [255.0, 255.0, 255.0], "d_hidden": h,
        "d_latent": d_latent, "insert_direction_at": 4, "n_hidden_layers": 6, "n_output": 12,
        "param_names": [f"nerstf.mlp.{i}.weight" for i in range(4)],
        "param_shapes": [[h, 93], [h, h], [h, h], [h, h]],
    }
    return {"prior": prior, "text_encoder": text_encoder, "renderer": renderer,
            "scheduler": copy.deepcopy(SHAP_E_SCHEDULER)}


# ---------------------------------------------------------------------------------------------
# Marching-cubes tables in diffusers' MeshDecoder numbering
# ---------------------------------------------------------------------------------------------
def _edge_corners() -> list[tuple[int, int]]:
    """The two corners (c = dx + 2 dy + 4 dz) of each of the 12 cube edges, decoder order."""
    edges = []
    for k in range(4):  # along x at (dy, dz) = (k & 1, k >> 1)
        dy, dz = k & 1, k >> 1
        edges.append((2 * dy + 4 * dz, 1 + 2 * dy + 4 * dz))
    for k in range(4):  # along y at (dx, dz)
        dx, dz = k & 1, k >> 1
        edges.append((dx + 4 * dz, dx + 2 + 4 * dz))
    for k in range(4):  # along z at (dx, dy)
        dx, dy = k & 1, k >> 1
        edges.append((dx + 2 * dy, dx + 2 * dy + 4))
    return edges


def _corner_xyz(c: int) -> np.ndarray:
    return np.array([c & 1, (c >> 1) & 1, (c >> 2) & 1], dtype=np.float64)


def marching_cubes_tables(max_triangles: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(cases [256, max_triangles, 3] long, masks [256, max_triangles] bool) for MeshDecoder.

    1. crossed edges: the two corners of the edge are on different sides
    2. per cube face, pair its crossed edges (2 of them: one pair; 4: one pair per inside corner)
    3. every crossed edge lies on two faces, so the pairs chain into closed loops
    4. fan each loop into triangles, wound counter-clockwise seen from outside (the normal points
       from the inside corners of the loop's edges to their outside corners)
    """
    edges = _edge_corners()
    mid = [0.5 * (_corner_xyz(a) + _corner_xyz(b)) for a, b in edges]
    faces = []  # (corners, edges) of the 6 faces: axis fixed to 0 or 1
    for axis in range(3):
        for v in (0, 1):
            corners = [c for c in range(8) if (c >> axis) & 1 == v]
            face_edges = [e for e, (a, b) in enumerate(edges) if a in corners and b in corners]
            faces.append((corners, face_edges))
    cases = torch.zeros(256, max_triangles, 3, dtype=torch.long)
    masks = torch.zeros(256, max_triangles, dtype=torch.bool)
    for case in range(256):
        inside = [(case >> c) & 1 == 1 for c in range(8)]
        crossed = {e for e, (a, b) in enumerate(edges) if inside[a] != inside[b]}
        nbr: dict[int, list[int]] = {e: [] for e in crossed}
        for corners, face_edges in faces:
            fe = [e for e in face_edges if e in crossed]
            if len(fe) == 2:
                pairs = [tuple(fe)]
            elif len(fe) == 4:  # ambiguous: cut each inside corner off on its own
                pairs = [tuple(e for e in fe if c in edges[e]) for c in corners if inside[c]]
            else:
                pairs = []
            for a, b in pairs:
                nbr[a].append(b)
                nbr[b].append(a)
        tris = []
        todo = set(crossed)
        while todo:  # walk one loop
            start = min(todo)
            loop, prev, cur = [start], None, start
            while True:
                nxt = nbr[cur][0] if nbr[cur][0] != prev else nbr[cur][1]
                if nxt == start:
                    break
                loop.append(nxt)
                prev, cur = cur, nxt
            todo -= set(loop)
            pts = [mid[e] for e in loop]
            normal = sum(np.cross(pts[i], pts[(i + 1) % len(pts)]) for i in range(len(pts)))
            out = sum((_corner_xyz(b) - _corner_xyz(a)) if inside[a] else
                      (_corner_xyz(a) - _corner_xyz(b)) for a, b in (edges[e] for e in loop))
            if float(np.dot(normal, out)) < 0:
                loop = loop[::-1]
            tris += [(loop[0], loop[i], loop[i + 1]) for i in range(1, len(loop) - 1)]
        if len(tris) > max_triangles:
            raise AssertionError(f"case {case}: {len(tris)} triangles > {max_triangles}")
        for i, t in enumerate(tris):
            cases[case, i] = torch.tensor(t)
            masks[case, i] = True
    return cases, masks


# ---------------------------------------------------------------------------------------------
# A known shape in the renderer's weights
# ---------------------------------------------------------------------------------------------
OFFSET = 20.0          # C: silu(C + u) = C + u for |u| < 5 (error < 1e-5)
SLAB_NORMAL = (0.25, -0.5, 1.0)  # Shap-E frame: up (+z) + half the front (-y) + a quarter
#                                  of the right side (+x, as seen from the front)
SLAB_LEVEL = 0.25      # inside: dot(SLAB_NORMAL, p) < SLAB_LEVEL (within the [-1, 1]^3 volume)
SLAB_SHARPNESS = 2.0   # sdf logit = SHARPNESS * (LEVEL - dot(n, p))
COLOR_LOGITS = ((3.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, -2.0))
# stf channel j = sigmoid(a_j . p + b_j) with rows (a_x, a_y, a_z, b): R rises with height z


def known_sdf_logit(p: np.ndarray) -> np.ndarray:
    """[N, 3] Shap-E-frame points -> [N] pre-tanh signed distance of the known shape."""
    return SLAB_SHARPNESS * (SLAB_LEVEL - p @ np.asarray(SLAB_NORMAL))


def known_srgb(p: np.ndarray) -> np.ndarray:
    """[N, 3] Shap-E-frame points -> [N, 3] the renderer's colour output (sigmoid, sRGB)."""
    a = np.asarray(COLOR_LOGITS)
    return 1.0 / (1.0 + np.exp(-(p @ a[:, :3].T + a[:, 3])))


@torch.no_grad()
def set_known_shape(renderer) -> None:
    """Make `renderer` (a diffusers ShapERenderer) decode the known slab with known colours.

    Hidden unit 0 carries C + sdf logit, units 1..3 carry C + colour logits, all as linear
    functions of the raw position (the first 3 of the 93 position-encoding inputs). Every layer
    after the first passes them on (identity, SiLU in its linear range); the last one subtracts C
    into output 0 (sdf) and outputs 3..5 (the "stf" colour channels). Nothing else is used.
    """
    mlp = renderer.mlp.mlp  # ModuleList of Linear
    h = renderer.config.d_hidden
    assert h >= 4 and len(mlp) >= 3, "the known shape needs a width >= 4 and >= 3 layers"
    n = torch.tensor(SLAB_NORMAL, dtype=torch.float64)
    a = torch.tensor(COLOR_LOGITS, dtype=torch.float64)
    ws: list[torch.Tensor] = []
    bs: list[torch.Tensor] = []
    for i, layer in enumerate(mlp):
        w = torch.zeros_like(layer.weight, dtype=torch.float64)  # [out, in]
        b = torch.zeros_like(layer.bias, dtype=torch.float64)
        if i == 0:
            w[0, :3] = -SLAB_SHARPNESS * n
            b[0] = OFFSET + SLAB_SHARPNESS * SLAB_LEVEL
            w[1:4, :3] = a[:, :3]
            b[1:4] = OFFSET + a[:, 3]
        elif i < len(mlp) - 1:
            w[0:4, 0:4] = torch.eye(4, dtype=torch.float64)  # direction inputs come after h
        else:
            w[0, 0] = 1.0
            b[0] = -OFFSET
            w[3:6, 1:4] = torch.eye(3, dtype=torch.float64)
            b[3:6] = -OFFSET
        ws.append(w)
        bs.append(b)
    for layer, w, b in zip(mlp, ws, bs):
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    # projected weights: proj weight 0 -> LayerNorm(0) = its bias (0) -> + proj bias = W
    names = list(renderer.params_proj.config.param_names)
    for name, shape in zip(names, renderer.params_proj.config.param_shapes):
        i = int(name.split(".")[2])
        proj = renderer.params_proj.projections[name.replace(".", "__")]
        proj.proj.weight.zero_()
        proj.norm.bias.zero_()
        assert tuple(ws[i].shape) == tuple(shape), (name, tuple(ws[i].shape), shape)
        proj.proj.bias.copy_(ws[i].reshape(-1))


# ---------------------------------------------------------------------------------------------
# Build and save
# ---------------------------------------------------------------------------------------------
def _build_and_save(path: str | Path, configs: dict[str, dict], tokenizer, seed: int,
                    known_shape: bool) -> Path:
    from diffusers import HeunDiscreteScheduler, PriorTransformer, ShapEPipeline
    from diffusers.pipelines.shap_e import ShapERenderer
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prior = PriorTransformer(**configs["prior"])
        text_cfg = dict(configs["text_encoder"], bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**text_cfg))
        renderer = ShapERenderer(**configs["renderer"])
    cases, masks = marching_cubes_tables()
    renderer.mesh_decoder.cases.copy_(cases)
    renderer.mesh_decoder.masks.copy_(masks)
    if known_shape:
        set_known_shape(renderer)
    scheduler = HeunDiscreteScheduler(**configs["scheduler"])
    pipe = ShapEPipeline(prior=prior, text_encoder=text_encoder, tokenizer=tokenizer,
                         scheduler=scheduler, shap_e_renderer=renderer)
    return save_quietly(path, pipe)


def make_tiny_shap_e(path: str | Path, seed: int = 0) -> Path:
    """Save a tiny random Shap-E pipeline whose decoder makes the known slab; returns `path`."""
    tok = tiny_clip_tokenizer("1")
    return _build_and_save(path, tiny_shap_e_configs(len(tok)), tok, seed, known_shape=True)


def make_shap_e_random(path: str | Path, seed: int = 0, known_shape: bool = True) -> Path:
    """Save the exact openai/shap-e architecture with random weights (GPU benchmarks).

    The tokenizer is the tiny offline one (its ids are valid in the 49408-token embedding); with
    `known_shape` the decoder makes the known slab (a realistic mesh of ~10^5 faces at grid 128)
    instead of the empty or noise mesh random projections give. Shapes and FLOPs are the real ones.
    """
    tok = tiny_clip_tokenizer("1")
    return _build_and_save(path, shap_e_configs(), tok, seed, known_shape=known_shape)


__all__ = [
    "SLAB_LEVEL",
    "SLAB_NORMAL",
    "known_sdf_logit",
    "known_srgb",
    "make_shap_e_random",
    "make_tiny_shap_e",
    "marching_cubes_tables",
    "set_known_shape",
    "shap_e_configs",
    "tiny_shap_e_configs",
]
