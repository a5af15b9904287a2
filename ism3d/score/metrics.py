"""CLIP score and CLIP R-precision of a run's rendered views (DreamFusion / Dream Fields protocol).

Notation (all embeddings L2-normalised, float64):

    I_v        image embedding of view v, v = 0..V-1                          [V, D]
    T_k        text embedding of caption k, k = 0..K-1 (the caption set)      [K, D]
    p          index of the run's own prompt in the caption set
    S[v, k]    = I_v . T_k, the cosine similarity                             [V, K]

Per run, numbered as `run_metrics` computes them:

    1. per-view CLIP score       s_v   = S[v, p]
    2. CLIP score                mean_v s_v                                   ("clip_score")
    3. trimmed CLIP score        the mean of s_v without the single best and the single worst
                                 view (V >= 3; the "drop the best and worst view" variant)
                                                                              ("clip_score_trimmed")
    4. per-view rank             r_v   = 1 + #{k != p : S[v, k] >= S[v, p]}   (a tie counts against)
       view R-precision          mean_v [r_v == 1]                            ("r_precision_views")
    5. run embedding             Ibar  = normalize(mean_v I_v)
       run rank / hit            the same rank with Ibar in place of I_v      ("r_precision_run")

Over runs (`aggregate`): CLIP scores are means over runs; view R-precision is pooled over every
view of every run (the fraction of all views whose own prompt ranks first); run R-precision is the
fraction of runs whose mean embedding ranks its own prompt first.

With embeddings unrelated to the captions every caption is equally likely to rank first, so
R-precision is 1/K at chance; an image embedding equal to its caption's scores 1.0.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["similarities", "ranks", "trimmed_mean", "run_metrics", "aggregate"]


def similarities(
    image_emb: Tensor,    # [V, D] unit
    caption_emb: Tensor,  # [K, D] unit
) -> Tensor:
    """S = I T^T: [V, K] float64 cosine similarities."""
    assert image_emb.ndim == 2 and caption_emb.ndim == 2, (image_emb.shape, caption_emb.shape)
    assert image_emb.shape[1] == caption_emb.shape[1], (image_emb.shape, caption_emb.shape)
    return image_emb.double() @ caption_emb.double().T


def ranks(sim: Tensor, own: int) -> Tensor:
    """[V, K] similarities -> [V] rank of caption `own` (1 = strictly above every other caption;
    a caption scoring equal to `own` counts as above it)."""
    assert sim.ndim == 2 and 0 <= own < sim.shape[1], (sim.shape, own)
    s_own = sim[:, own:own + 1]                                            # [V, 1]
    above = (sim >= s_own).sum(dim=1) - 1                                  # [V] others >= own
    return above + 1


def trimmed_mean(x: Tensor) -> float | None:
    """Mean of [V] values without one maximum and one minimum; None for V < 3."""
    assert x.ndim == 1, x.shape
    if x.numel() < 3:
        return None
    s = torch.sort(x.double()).values
    return float(s[1:-1].mean())


def run_metrics(
    image_emb: Tensor,    # [V, D] unit image embeddings of one run's views
    caption_emb: Tensor,  # [K, D] unit caption embeddings
    own: int,             # index of the run's prompt among the captions
) -> dict:
    """The per-run numbers of the module docstring (steps 1-5).

    Returns:
        {"clip_score", "clip_score_trimmed" (None for fewer than 3 views), "r_precision_views",
         "r_precision_run" (0.0 or 1.0), "rank_run", "views": {"clip_score": [V], "rank": [V]}}
    """
    V = image_emb.shape[0]
    assert V >= 1 and caption_emb.shape[0] >= 1, (image_emb.shape, caption_emb.shape)
    sim = similarities(image_emb, caption_emb)                             # [V, K]
    s = sim[:, own]                                                        # 1. [V]
    r = ranks(sim, own)                                                    # 4. [V]
    mean_emb = torch.nn.functional.normalize(image_emb.double().mean(0, keepdim=True), dim=-1)
    r_run = int(ranks(similarities(mean_emb, caption_emb), own)[0])        # 5.
    return {"clip_score": float(s.mean()),                                 # 2.
            "clip_score_trimmed": trimmed_mean(s),                         # 3.
            "r_precision_views": float((r == 1).double().mean()),
            "r_precision_run": float(r_run == 1), "rank_run": r_run,
            "views": {"clip_score": [float(x) for x in s], "rank": [int(x) for x in r]}}


def aggregate(per_run: list[dict]) -> dict:
    """Means over runs (see the module docstring); None values are left out of a mean."""
    def mean(key):
        xs = [m[key] for m in per_run if m.get(key) is not None]
        return sum(xs) / len(xs) if xs else None

    views = [r for m in per_run for r in m["views"]["rank"]]
    return {"runs": len(per_run), "views": len(views),
            "clip_score": mean("clip_score"), "clip_score_trimmed": mean("clip_score_trimmed"),
            "r_precision_views": (sum(r == 1 for r in views) / len(views)) if views else None,
            "r_precision_runs": mean("r_precision_run"),
            "clip_score_std": _std([m["clip_score"] for m in per_run])}


def _std(xs: list[float]) -> float | None:
    """Sample standard deviation over runs (None for fewer than 2)."""
    if len(xs) < 2:
        return None
    mu = sum(xs) / len(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1))
