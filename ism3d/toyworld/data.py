"""ToyWorld training batches, rendered on the fly (no dataset on disk).

One batch of B samples (numbered as in `ToyWorldData.batch`):
    1. objects: G = objects_per_batch distinct draws from the object bank (all FAMILIES x COLOURS),
       each seen by B / G views (samples are object-major);
    2. cameras: `cameras.sample_orbit` at a schedule step drawn uniformly in [0, schedule_span)
       per object -- the distillation's own camera distribution (see below);
    3. backgrounds: `train.sample_backgrounds` -- white, or with probability bg_aug_prob a random
       colour or black (half each), exactly as the distillation's renders;
    4. render: `ObjectBank.render`, several objects per renderer call (gsplat on CUDA);
    5. disparity: with probability p_disparity the image is the normalised disparity map
       (`train.normalised_disparity`, 3 channels, black background), as the distillation guides
       it with probability train.disparity_prob under the same prompt;
    6. captions: "" (p_empty, for classifier-free guidance), "a {colour} {family}" (p_plain), or
       "a {colour} {family}, {view} view" with the view word of the nominal azimuth
       (`world.view_of_azimuth`: |az| < 45 front, < 135 side, else back); "an" before "orange",
       written "a" in P_LOOSE_ARTICLE of those captions.

Why sample_orbit over the whole schedule: the prior has to score the images the distillation
renders. `sample_orbit(cfg, step, ...)` draws polar 45..105, any azimuth, radius and fovy from
ranges that shrink every `decay_every` steps (radius 5.2..5.5 -> floors 3.5..5.0, fovy lower
bound 0.32 -> 0.16) and the camera section's look-at jitter (the reference's; none in the `toy`
preset, so the prior learns exactly where an object sits). Drawing `step` uniformly in
[0, 10 * decay_every) covers every stage (the floors are reached after 8 decays), so whatever
iteration count a distillation runs, each of its views is in the training distribution. For an
object 1 unit across, fill = 1 / (2 r tan(fovy / 2)) of the frame height spans 0.29 .. 1.8
(median about 0.6); the eval ring (radius 3.5, fovy 0.55) gives 0.51, inside the range.

Everything random comes from the `torch.Generator` passed to `batch`, so a batch is a pure
function of the generator state (bit-identical on the CPU).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from ..cameras import sample_orbit
from ..config import CameraConfig, TrainConfig
from ..render import render
from ..train import normalised_disparity, sample_backgrounds
from ..types import CameraBatch, Gaussians
from .world import COLOURS, DEFAULT_POINTS, FAMILIES, WorldError, caption, make_object, view_of_azimuth

__all__ = ["ObjectBank", "ToyWorldData", "DataConfig", "Batch", "cat_cameras"]

# Distance between two objects rendered in the same call: each camera only sees its own object
# (everything else is beyond its far plane, see ObjectBank.render).
SPACING = 40.0
# Share of "an orange ..." captions written "a orange ..." (both forms are prompts users type)
P_LOOSE_ARTICLE = 0.3


def cat_cameras(cams: list[CameraBatch]) -> CameraBatch:
    """Concatenate camera batches of the same image size."""
    assert len({(c.width, c.height) for c in cams}) == 1, "camera batches differ in size"
    return replace(cams[0], **{k: torch.cat([getattr(c, k) for c in cams])
                               for k in ("viewmats", "Ks", "polar", "azimuth", "radius")})


class ObjectBank:
    """Every (family, colour) object, stacked on one device; renders any object per camera.

    Args:
        families, colours: which objects (default: all).
        n_points: gaussians per object (target; padding up to the largest has opacity 0).
        seed: disc-position seed passed to `make_object`.
        device: where the gaussians live (CUDA renders with gsplat).
    """

    def __init__(self, families: tuple[str, ...] = FAMILIES, colours: tuple[str, ...] = tuple(COLOURS),
                 n_points: int = DEFAULT_POINTS, seed: int = 0, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.keys = [(f, c) for f in families for c in colours]       # bank index -> (family, colour)
        self._index = {k: i for i, k in enumerate(self.keys)}
        objs = [make_object(f, c, seed=seed, n_points=n_points) for f, c in self.keys]
        K, n_max = len(objs), max(len(g) for g in objs)
        self.counts = torch.tensor([len(g) for g in objs])
        # [K, n_max, ...]; padding: opacity 0 (culled by both renderers), tiny positive scale
        self.means = torch.zeros(K, n_max, 3)
        self.quats = torch.zeros(K, n_max, 4)
        self.quats[..., 0] = 1.0
        self.scales = torch.full((K, n_max, 3), 1e-3)
        self.opacities = torch.zeros(K, n_max)
        self.sh = torch.zeros(K, n_max, 1, 3)
        for i, g in enumerate(objs):
            n = len(g)
            self.means[i, :n], self.quats[i, :n], self.scales[i, :n] = g.means, g.quats, g.scales
            self.opacities[i, :n], self.sh[i, :n] = g.opacities, g.sh
        for k in ("means", "quats", "scales", "opacities", "sh"):
            setattr(self, k, getattr(self, k).to(self.device))

    def __len__(self) -> int:
        return len(self.keys)

    def index(self, family: str, colour: str) -> int:
        try:
            return self._index[(family, colour)]
        except KeyError:
            raise WorldError(f"no object ({family!r}, {colour!r}) in this bank") from None

    def gaussians(self, i: int) -> Gaussians:
        """Object i alone (without padding)."""
        n = int(self.counts[i])
        return Gaussians(self.means[i, :n], self.quats[i, :n], self.scales[i, :n],
                         self.opacities[i, :n], self.sh[i, :n], 0)

    @torch.no_grad()
    def render(self, obj: Tensor, cams: CameraBatch, background: Tensor, *,
               objects_per_call: int = 8, backend: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
        """Render camera c looking at object obj[c], several objects per renderer call.

        1. the distinct objects are split in chunks of `objects_per_call`;
        2. inside a chunk, object j is translated to o_j on a grid of step SPACING, and its cameras
           become viewmat @ T(-o_j) (the same image of a translated world);
        3. one render of the chunk's objects and cameras, far plane = max radius + 2, so no camera
           reaches another object (SPACING - far > object size);
        4. the outputs go back to the callers' camera order.

        Args:
            obj: `[C]` long bank indices.
            cams: C cameras (any device; moved to the bank's).
            background: `[C, 3]` or `[3]` RGB.
        Returns:
            rgb `[C, 3, H, W]`, alpha `[C, 1, H, W]`, depth `[C, 1, H, W]` on the bank's device.
        """
        C = len(cams)
        assert obj.shape == (C,), (obj.shape, C)
        cams = cams.to(self.device)
        bg = background.to(self.device).expand(C, 3)
        far = float(cams.radius.max()) + 2.0
        if SPACING - far < 2.0:
            raise WorldError(f"camera radius {float(cams.radius.max()):.1f} is too large for "
                             f"the bank's object spacing {SPACING}")
        H, W = cams.height, cams.width
        rgb = torch.empty(C, 3, H, W, device=self.device)
        alpha = torch.empty(C, 1, H, W, device=self.device)
        depth = torch.empty(C, 1, H, W, device=self.device)
        obj = obj.to(self.device)
        uniq = torch.unique(obj)
        for chunk in uniq.split(objects_per_call):
            # 2. translate the chunk's objects, move their cameras with them
            J = len(chunk)
            j = torch.arange(J, device=self.device)
            offsets = SPACING * torch.stack([j % 4, (j // 4) % 4, j // 16], -1).float()   # [J, 3]
            sel = torch.isin(obj, chunk).nonzero().squeeze(1)                            # [C']
            slot = torch.searchsorted(chunk, obj[sel])                                   # [C'] in [0, J)
            T = torch.eye(4, device=self.device).repeat(len(sel), 1, 1)
            T[:, :3, 3] = -offsets[slot]
            sub = cams[sel]
            sub = replace(sub, viewmats=sub.viewmats @ T)
            n = self.means.shape[1]
            g = Gaussians(
                means=(self.means[chunk] + offsets[:, None, :]).reshape(J * n, 3),
                quats=self.quats[chunk].reshape(J * n, 4),
                scales=self.scales[chunk].reshape(J * n, 3),
                opacities=self.opacities[chunk].reshape(J * n),
                sh=self.sh[chunk].reshape(J * n, 1, 3), sh_degree=0)
            # 3. one call
            out = render(g, sub, bg[sel], backend=backend, near=0.01, far=far)
            # 4. back to the callers' order
            rgb[sel], alpha[sel], depth[sel] = out.rgb, out.alpha, out.depth
        return rgb.clamp(0.0, 1.0), alpha, depth


@dataclass
class DataConfig:
    # Image size (square) of the batches: the prior's image_size
    res: int = 32
    # Gaussians per object
    n_points: int = DEFAULT_POINTS
    # The distillation's camera section (orbit distribution and progressive schedule)
    camera: CameraConfig = field(default_factory=CameraConfig)
    # Schedule steps are drawn uniformly in [0, schedule_span); 0 = 10 * camera.decay_every
    schedule_span: int = 0
    # Caption shares: empty (for classifier-free guidance) and plain (no view suffix); the rest
    # get ", {front|side|back} view"
    p_empty: float = 0.1
    p_plain: float = 0.2
    # Probability of a non-white background (the distillation's train.bg_aug_prob)
    bg_aug_prob: float = TrainConfig().bg_aug_prob
    # Probability that the image is the normalised disparity map (the distillation guides it
    # with probability train.disparity_prob, under the same prompt)
    p_disparity: float = 0.1
    # Distinct objects per batch (0 = batch // 8) and objects per renderer call
    objects_per_batch: int = 0
    objects_per_call: int = 8


@dataclass
class Batch:
    images: Tensor       # [B, 3, R, R] in [0, 1]
    captions: list[str]  # [B]
    obj: Tensor          # [B] long bank index
    polar: Tensor        # [B] degrees (nominal)
    azimuth: Tensor      # [B] degrees (nominal), (-180, 180]
    background: Tensor   # [B, 3]
    disparity: Tensor    # [B] bool: the image is a disparity map


class ToyWorldData:
    """Batches of (image, caption) from ToyWorld objects (see the module docstring).

    Args:
        cfg: the data configuration.
        device: where images are rendered and returned.
        bank: an existing ObjectBank to reuse (default: every family x colour).
    """

    def __init__(self, cfg: DataConfig | None = None, device: torch.device | str = "cpu",
                 bank: ObjectBank | None = None):
        cfg = cfg if cfg is not None else DataConfig()
        if not (0 <= cfg.p_empty and 0 <= cfg.p_plain and cfg.p_empty + cfg.p_plain <= 1):
            raise WorldError(f"caption shares must be >= 0 and sum to <= 1, got p_empty={cfg.p_empty}, "
                             f"p_plain={cfg.p_plain}")
        # the views of one object are consecutive in a batch, so their azimuths must be drawn
        # independently: a stratified sampler (the `toy` preset's, for distillation) would put
        # them all in one narrow slice of the azimuths
        self.cfg = replace(cfg, camera=replace(cfg.camera, azimuth_sampling="uniform"))
        self.device = torch.device(device)
        self.bank = bank if bank is not None else ObjectBank(n_points=cfg.n_points, device=self.device)
        self.span = cfg.schedule_span or 10 * cfg.camera.decay_every

    def batch(self, B: int, gen: torch.Generator) -> Batch:
        """B samples drawn with `gen` (a CPU generator; the only source of randomness)."""
        cfg = self.cfg
        G = min(B, cfg.objects_per_batch or max(1, B // 8))
        # 1. objects, B // G or B // G + 1 views each (object-major order)
        objs = torch.randint(len(self.bank), (G,), generator=gen)                    # [G]
        views = torch.full((G,), B // G, dtype=torch.long)
        views[: B % G] += 1
        obj = objs.repeat_interleave(views)                                          # [B]
        # 2. cameras: one schedule step per object. The ranges depend on the step only through
        #    its stage step // decay_every, so one sample_orbit call per stage draws them all.
        every = cfg.camera.decay_every
        stage = torch.randint(self.span, (G,), generator=gen) // every                # [G]
        stage = stage.repeat_interleave(views)                                       # [B]
        parts, where = [], []
        for st in torch.unique(stage).tolist():
            idx = (stage == st).nonzero().squeeze(1)
            parts.append(sample_orbit(cfg.camera, st * every, len(idx), cfg.res, cfg.res, gen))
            where.append(idx)
        order = torch.argsort(torch.cat(where))                                      # back to sample order
        cams = cat_cameras(parts)[order]
        # 3. backgrounds
        bg = sample_backgrounds(B, cfg.bg_aug_prob, gen)                             # [B, 3]
        # 4. render
        rgb, alpha, depth = self.bank.render(obj, cams, bg, objects_per_call=cfg.objects_per_call)
        # 5. disparity maps instead of colour for some
        disp_on = torch.rand(B, generator=gen) < cfg.p_disparity                     # [B]
        if bool(disp_on.any()):
            d = normalised_disparity(depth, alpha).expand(-1, 3, -1, -1)           # [B, 3, R, R]
            rgb = torch.where(disp_on.to(rgb.device)[:, None, None, None], d, rgb)
        # 6. captions
        u = torch.rand(B, 2, generator=gen)
        view_words = view_of_azimuth(cams.azimuth)
        captions = []
        for i in range(B):
            family, colour = self.bank.keys[int(obj[i])]
            if u[i, 0] < cfg.p_empty:
                captions.append("")
                continue
            plain = u[i, 0] < cfg.p_empty + cfg.p_plain
            text = caption(colour, family, None if plain else view_words[i])
            if text.startswith("an ") and u[i, 1] < P_LOOSE_ARTICLE:
                text = "a " + text[3:]                  # users write "a orange mug" too
            captions.append(text)
        return Batch(images=rgb, captions=captions, obj=obj, polar=cams.polar.cpu(),
                     azimuth=cams.azimuth.cpu(), background=bg, disparity=disp_on)
