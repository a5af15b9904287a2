"""ToyWorld: a procedural world of coloured 3D objects, and the training of ism3d's embedded prior.

- `world`: the objects as opaque surface gaussians (`make_object`) and the asymmetric parts;
- `captions`: the caption language (`vocabulary`, `caption`, `view_of_azimuth`, `parse_prompt`),
  re-exported by `world`.
- `data`: training batches rendered on the fly (`ToyWorldData`).
- `train_prior`: `python -m ism3d.toyworld.train_prior --out DIR` trains a `PixelPrior` on them
  (the loop and its command line); `prior_model`: its architectures and shipped weights;
  `prior_eval`: sampling it and scoring the samples; `model_card`: its MODEL_CARD.md.
"""
from .world import (ASYMMETRIC, COLOURS, FAMILIES, SYMMETRIC, VIEWS, WorldError,
                    asymmetric_part_mask, caption, make_object, parse_prompt, view_of_azimuth,
                    vocabulary)

__all__ = ["ASYMMETRIC", "COLOURS", "FAMILIES", "SYMMETRIC", "VIEWS", "WorldError",
           "asymmetric_part_mask", "caption", "make_object", "parse_prompt", "view_of_azimuth",
           "vocabulary"]
