"""DIR/MODEL_CARD.md of a trained ToyWorld prior (step 8 of `train_prior`): what it knows, its
model, data, training, samples and metrics, from the run's metrics.json dict.
"""
from __future__ import annotations

from pathlib import Path

from ..priors.pixel import PixelPrior
from .prior_eval import EVAL_POLAR
from .world import COLOURS, FAMILIES


def fmt_time(s: float) -> str:
    """Seconds -> "12m05s"."""
    return f"{int(s // 60)}m{int(s % 60):02d}s"


def _jitter(cam: dict) -> str:
    j = (cam["jitter_center"], cam["jitter_target"], cam["jitter_up"])
    return ("none" if not any(j) else
            f"centre U(+-{j[0] / 2:g}), target N(0, {j[1]:g}^2), up N(0, {j[2]:g}^2)")


def write_model_card(path: Path, metrics: dict, grid_prompts: list[str], prior: PixelPrior) -> None:
    tr, s, g = metrics["training"], metrics["summary"], metrics["gt_reference"]
    dr = metrics["data_reference"]
    st = metrics["settings"]
    c = prior.config
    lines = [
        f"# {prior.name}: the ToyWorld pixel prior",
        "",
        "A small text-to-image diffusion model (pixel space, eps-prediction) that ism3d ships so that",
        "text-to-3D runs offline without Stable Diffusion weights. It knows only ToyWorld: the",
        f"objects of `ism3d.toyworld.world` ({', '.join(FAMILIES)}) in {len(COLOURS)} colours",
        f"({', '.join(COLOURS)}), opaque, with baked Lambert shading from a fixed light.",
        "",
        "## Prompts",
        f"Vocabulary ({len(prior.words)} words): {' '.join(prior.words)}.",
        "Captions: `a {colour} {family}` (`an orange`, also `a orange`) with an optional",
        "`, {front|side|back} view` suffix (view by",
        "azimuth: |az| < 45 front, < 135 side, else back, matching the guidance's interpolated view",
        "prompts); the empty prompt is the unconditional branch. Other words are rejected.",
        "",
        "## Model",
        f"- {c.image_size}x{c.image_size} RGB in [-1, 1]; UNet2DConditionModel "
        f"{c.unet['block_out_channels']} ({', '.join(c.unet['down_block_types'])})"
        + (f" on {c.patch}x{c.patch} pixel-unshuffled images ({3 * c.patch ** 2} channels at "
           f"{c.image_size // c.patch}x{c.image_size // c.patch})" if c.patch > 1 else "")
        + ", pooled text added to",
        f"  the time embedding; text encoder: {c.text_layers} transformer layer(s), width {c.text_dim}.",
        f"- {tr['parameters'] / 1e6:.2f}M parameters, {tr['weights_bytes'] / 1e6:.2f} MB (float16 safetensors).",
        "- Schedule: 1000 steps, scaled-linear betas 0.00085..0.012 (Stable Diffusion's abar_t).",
        "",
        "## Data",
        "Rendered on the fly (no dataset): a random object, cameras from `cameras.sample_orbit`",
        ("(the `toy` preset's: polar 45..105, any azimuth, fixed framing radius 3.5 and fovy 0.55 = "
         "the eval ring's, so the distilled object's size is pinned),"
         if tr["args"].get("framing", "spec") == "toy" else
         "(the spec's distribution: polar 45..105, any azimuth, radius and fovy over the whole "
         "progressive schedule),"),
        f"look-at jitter {_jitter(tr['camera'])};",
        "backgrounds white or (p = 0.66) a random colour or black, "
        f"{tr['data']['p_disparity']:.0%} normalised",
        f"disparity maps; captions {tr['data']['p_empty']:.0%} empty, {tr['data']['p_plain']:.0%} without view suffix.",
        "",
        "## Training",
        f"- {tr['steps']} steps x batch {tr['batch']} in {fmt_time(tr['train_seconds'])} on {tr['device']} "
        f"({tr['seconds_per_step'] * 1000:.0f} ms/step); final loss {tr['final_loss']:.4f}.",
        f"- AdamW lr {tr['args']['lr']} (warm-up {tr['args']['warmup']}, cosine to "
        f"{tr['args']['min_lr_ratio']}x), weight decay {tr['args']['weight_decay']}, grad clip "
        f"{tr['args']['clip']}, EMA {tr['args']['ema']} (saved), bf16 autocast on CUDA, seed {tr['args']['seed']}.",
        *([f"- Continued from `{tr['args']['init_from']}` (its own card gives its training)."]
          if tr["args"].get("init_from") else []),
        "",
        "## Samples",
        "![samples](samples.png)",
        "",
        "Columns: " + "; ".join(f"{j + 1}. {p}" for j, p in enumerate(grid_prompts)) + ".",
        f"Row 1: ground truth (eval ring framing, polar {EVAL_POLAR:g}); other rows: DDIM "
        f"{st['ddim_steps']} steps, CFG {st['cfg_scale']}.",
        "",
        "## Metrics",
        f"{st['samples_per_prompt']} samples per prompt and view (DDIM {st['ddim_steps']}, CFG {st['cfg_scale']}, "
        "unconditional = empty prompt). Foreground = pixels differing from the median border colour",
        "by > 0.15. hue_match: coloured foreground pixels whose nearest palette hue is the requested",
        "one. iou: silhouettes are normalised (bounding box scaled to 32x32, centred), then the best",
        "IoU against ground-truth renders of the requested object over a grid of cameras of the",
        "requested view (polar 45..105 x the view's azimuths, 10 degrees apart); shape_acc: the",
        "best-matching family is the requested one. iou/shape_acc count only framed samples (a whole",
        "object: not touching the border; close-ups are in the training distribution).",
        "",
        "| | hue_match | iou | shape_acc | framed |",
        "|---|---|---|---|---|",
        f"| samples | {s['hue_match']:.3f} | {s['iou']:.3f} | {s['shape_acc']:.3f} | {s['framed']:.2f} |",
        f"| training images (ceiling) | {dr['hue_match']:.3f} | {dr['iou']:.3f} | {dr['shape_acc']:.3f} | {dr['framed']:.2f} |",
        f"| ground truth, eval ring | {g['hue_match']:.3f} | {g['iou']:.3f} | {g['shape_acc']:.3f} | {g['framed']:.2f} |",
        "",
        "Samples by family:",
        "",
        "| family | hue_match | iou | shape_acc | framed |",
        "|---|---|---|---|---|",
    ]
    for f, v in metrics["summary_by_family"].items():
        lines.append(f"| {f} | {v['hue_match']:.3f} | {v['iou']:.3f} | {v['shape_acc']:.3f} | {v['framed']:.2f} |")
    lines += ["", "## Limits",
              f"Only ToyWorld objects and words; {c.image_size}x{c.image_size} images (the "
              "distillation's renders are resized to it by `PixelPrior.encode`).", ""]
    path.write_text("\n".join(lines))

