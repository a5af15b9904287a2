"""Train ism3d's embedded ToyWorld prior: a small pixel-space text-to-image diffusion model.

    python -m ism3d.toyworld.train_prior --out DIR [--steps N] [--res 32] [--batch 256]
        [--minutes M] [--seed 0] [--device cuda] [--init-from DIR] [--patch P]

The run (numbered as in `main`):
    1. prior: a `PixelPrior` (UNet2DConditionModel + word tokenizer + small text transformer)
       over `world.vocabulary()`, new (architecture `--arch`) or loaded from `--init-from`;
    2. data: `ToyWorldData` batches rendered on the fly (gsplat on CUDA);
    3. loop: eps-prediction, t ~ U{0..T-1}, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,
       loss = mean (eps_hat - eps)^2; AdamW, linear warm-up then cosine decay to
       `min_lr_ratio` x lr (pure functions of the step and the horizon), grad-norm clipping,
       bf16 autocast on CUDA, EMA of the weights (the EMA is what is saved);
    4. time budget: with `--minutes M` the speed is measured over the first steps (during the
       warm-up) and the horizon -- the step count the cosine schedule ends on -- is cut to what
       fits in M minutes; the loop always ends at the horizon, so the schedule completes;
    5. save: `PixelPrior.save_pretrained(DIR)` with the EMA weights, then the safetensors file is
       rewritten in float16 (the weights ship in the package: <= 20 MB); reloaded with
       `PixelPrior.from_pretrained` for everything below, so the check uses the shipped file;
    6. samples: DIR/samples.png -- a ground-truth row (eval-ring framing) and sample rows
       (DDIM, classifier-free guidance with the empty prompt as the unconditional branch);
    7. metrics: DIR/metrics.json -- per prompt and view, (a) hue match, (b) best-match silhouette
       IoU against ground-truth renders of the requested object over a grid of cameras of the
       requested view, and shape accuracy (is the best-matching family the requested one);
    8. DIR/MODEL_CARD.md and a compact summary printed last.

Resolution: 32x32 by default, because `ism3d generate` must run on a 2-core CPU. One `eps` call of
the default architecture there (measured, idle machine, float32) costs 57 / 86 / 152 ms at batch
2 / 4 / 8 at 32x32 (8.2 GFLOP per batch-8 call) against 225 / 450 / 776 ms at 64x64 (32.8 GFLOP);
an ISM iteration makes about two calls at batch B and one at 2B, so 300 iterations with B = 2
spend ~60 s in the UNet at 32x32 but ~270 s at 64x64, over the 3-minute budget on their own.
`--patch 2` keeps the UNet at 32x32 for a 64x64 prior (pixel-unshuffle, see `PixelPrior`), and
`--init-from` a 32x32 prior with `--patch 2` starts it from that prior's weights (`patchify`). Such
a prior was trained and measured (BENCHMARKS.md, ToyWorld): it did not distil better than the
shipped 32x32 one, which stays the default.

Where each piece lives: the model (architectures, `prior_config`, `patchify`, `save_fp16`) in
`ism3d.toyworld.prior_model`; the data in `ism3d.toyworld.data`; the loop (1-5), its schedules and
the command line here; sampling and metrics (6-7) in `ism3d.toyworld.prior_eval`; the card (8) in
`ism3d.toyworld.model_card`. Their public names are re-exported here.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import CameraConfig, preset_config
from ..guidance.ddim import q_sample
from ..priors.pixel import PixelPrior
from .data import DataConfig, ToyWorldData
from .model_card import fmt_time, write_model_card
from .prior_eval import (EVAL_FOVY, EVAL_POLAR, EVAL_RADIUS, VIEW_AZIMUTH, candidate_cameras,
                         ddim_sample, evaluate, foreground, hue_match, iou_matrix, normalise_masks,
                         sample_grid, view_azimuths)
from .prior_model import (ARCHS, WEIGHTS_LIMIT, TrainPriorError, patchify, prior_config,
                          save_fp16)
from .world import FAMILIES, VIEWS, vocabulary

__all__ = ["main", "parse_args", "lr_at", "fit_horizon", "ema_decay_at",
           # re-exported from prior_model, prior_eval and model_card
           "ARCHS", "WEIGHTS_LIMIT", "TrainPriorError", "prior_config", "patchify", "save_fp16",
           "EVAL_RADIUS", "EVAL_FOVY", "EVAL_POLAR", "VIEW_AZIMUTH", "ddim_sample", "foreground",
           "hue_match", "iou_matrix", "normalise_masks", "view_azimuths", "candidate_cameras",
           "evaluate", "sample_grid", "write_model_card"]


# ---------------------------------------------------------------------------------------------
# Schedules (pure functions of the step)
# ---------------------------------------------------------------------------------------------
def lr_at(step: int, horizon: int, lr: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine from lr to min_ratio * lr at `horizon`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, horizon - warmup))
    return lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p)))


def fit_horizon(step: int, elapsed: float, per_step: float, budget: float, max_steps: int,
                margin: float = 0.97) -> int:
    """Steps the run can end on: `step` done after `elapsed` seconds at `per_step` seconds a step,
    `margin` x the rest of `budget` to spend; at least step + 1, at most max_steps."""
    fit = step + int(max(0.0, budget - elapsed) / max(per_step, 1e-9) * margin)
    return max(step + 1, min(max_steps, fit))


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay with a short start-up: min(decay, (1 + step) / (10 + step))."""
    return min(decay, (1.0 + step) / (10.0 + step))


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ism3d.toyworld.train_prior",
                                description="Train the embedded ToyWorld pixel prior.")
    p.add_argument("--out", required=True, help="output folder (config.json, model.safetensors, ...)")
    p.add_argument("--steps", type=int, default=20000, help="most optimisation steps")
    p.add_argument("--res", type=int, default=None, help="image size (default 32, or --init-from's)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--minutes", type=float, default=0.0,
                   help="training-loop time budget (0 = none); the evaluation adds about a minute on a GPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--init-from", default=None, help="a saved prior folder to continue training")
    p.add_argument("--arch", default="small", choices=sorted(ARCHS))
    p.add_argument("--patch", type=int, default=1,
                   help="pixel-unshuffle factor P: the UNet runs at res/P (a 64x64 prior at a 32x32 "
                        "one's cost with P=2); with --init-from a patch-1 prior of size S, start a "
                        "size S*P prior from its weights (a patch-P one just continues)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--min-lr-ratio", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping")
    p.add_argument("--objects-per-batch", type=int, default=0, help="0 = batch // 8")
    p.add_argument("--points", type=int, default=DataConfig().n_points, help="gaussians per object")
    p.add_argument("--p-disparity", type=float, default=DataConfig().p_disparity,
                   help="share of normalised-disparity images")
    p.add_argument("--bg-aug-prob", type=float, default=DataConfig().bg_aug_prob,
                   help="share of non-white backgrounds (random colour or black)")
    p.add_argument("--schedule-span", type=int, default=0,
                   help="camera schedule steps drawn in [0, span); 0 = 10 x camera.decay_every")
    p.add_argument("--framing", default="toy", choices=["toy", "spec"],
                   help="training cameras: the toy preset's fixed framing (radius 3.5, fovy 0.55, "
                        "the eval ring's) or the spec's orbit distribution with its zoom schedule")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--cfg", type=float, default=5.0, help="guidance scale of the samples/metrics")
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--eval-samples", type=int, default=4, help="samples per prompt and view")
    p.add_argument("--no-eval", action="store_true",
                   help="save the weights and stop (no samples, metrics or model card)")
    p.add_argument("--quick", action="store_true",
                   help="smoke-test evaluation: 2 families, front view, 1 sample, 1 camera per view")
    a = p.parse_args(argv)
    if a.steps < 1 or a.batch < 1 or a.minutes < 0 or a.warmup < 1:
        raise TrainPriorError("--steps, --batch and --warmup must be >= 1 and --minutes >= 0")
    return a


def _json_safe(x):
    """NaN (a metric with no valid sample) -> null, so metrics.json is standard JSON."""
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainPriorError("--device cuda asked for, but CUDA is not available")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    log = lambda *a: print(*a, flush=True)  # noqa: E731

    # 1. prior
    if args.patch < 1:
        raise TrainPriorError(f"--patch must be >= 1, got {args.patch}")
    if args.init_from:
        prior = PixelPrior.from_pretrained(args.init_from, device)
        if prior.words != vocabulary():
            raise TrainPriorError(f"{args.init_from}: its vocabulary is not ToyWorld's")
        if args.patch > 1 and prior.patch != args.patch:
            prior = patchify(prior, args.patch)
        if args.res is not None and args.res != prior.image_size:
            raise TrainPriorError(f"--res {args.res} differs from the image size {prior.image_size} of "
                                  f"--init-from{' x --patch' if args.patch > 1 else ''}; drop --res")
    else:
        prior = PixelPrior(prior_config(args.res or 32, args.arch, args.patch), device, seed=args.seed)
    res = prior.image_size
    modules = [prior.unet, prior.text_encoder]
    params = [p for m in modules for p in m.parameters()]
    for m in modules:
        m.train().requires_grad_(True)
    n_params = sum(p.numel() for p in params)
    log(f"[prior] {prior.name}: {res}x{res}, {n_params / 1e6:.2f}M parameters "
        f"(~{2 * n_params / 1e6:.1f} MB fp16), vocab {len(prior.words)}")

    # 2. data
    # the cameras of the preset that distils with this prior (toy: fixed framing) or the spec's
    # orbit distribution with its progressive zoom (--framing spec)
    camera = preset_config("toy").camera if args.framing == "toy" else CameraConfig()
    dcfg = DataConfig(res=res, n_points=args.points, objects_per_batch=args.objects_per_batch,
                      p_disparity=args.p_disparity, bg_aug_prob=args.bg_aug_prob,
                      schedule_span=args.schedule_span, camera=camera)
    t0 = time.perf_counter()
    data = ToyWorldData(dcfg, device)
    log(f"[data] {len(data.bank)} objects x {data.bank.means.shape[1]} gaussians, camera steps "
        f"U[0, {data.span}), built in {time.perf_counter() - t0:.1f}s")

    # 3. loop
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay)
    ema = [p.detach().clone().float() for p in params]
    abar = prior.alphas_cumprod.float()                                       # [T]
    T = abar.shape[0]
    data_gen = torch.Generator().manual_seed(args.seed)
    noise_gen = torch.Generator(device).manual_seed(args.seed + 1)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
           else torch.autocast("cpu", enabled=False))
    budget = args.minutes * 60.0 if args.minutes > 0 else math.inf
    horizon = args.steps
    calib = (min(10, args.warmup // 4), min(50, args.warmup))  # measure speed inside the warm-up
    t_loop = time.perf_counter()
    t_calib = t_loop
    loss_acc, n_acc, last_loss = torch.zeros((), device=device), 0, float("nan")
    history: list[tuple[int, float]] = []
    step = 0
    log(f"[train] batch {args.batch}, lr {args.lr} (warm-up {args.warmup}, cosine to "
        f"{args.min_lr_ratio}x), EMA {args.ema}, bf16 {device.type == 'cuda'}, "
        f"budget {'none' if budget == math.inf else fmt_time(budget)}")
    try:
        while step < horizon:
            # 4. time budget: fix the horizon once the speed is known
            if step == calib[0]:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t_calib = time.perf_counter()
            if step == calib[1] and budget < math.inf:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                per_step = (now - t_calib) / max(1, calib[1] - calib[0])
                horizon = fit_horizon(step, now - t_loop, per_step, budget, args.steps)
                log(f"[train] {per_step * 1000:.0f} ms/step -> horizon {horizon} steps "
                    f"(~{fmt_time(horizon * per_step)})")
            lr = lr_at(step, horizon, args.lr, args.warmup, args.min_lr_ratio)
            for g in opt.param_groups:
                g["lr"] = lr
            batch = data.batch(args.batch, data_gen)
            x0 = batch.images * 2.0 - 1.0                                    # [B, 3, R, R]
            t = torch.randint(0, T, (args.batch,), generator=noise_gen, device=device)
            noise = torch.randn(x0.shape, generator=noise_gen, device=device)
            xt = q_sample(x0, noise, abar[t])
            ids = prior.tokens(batch.captions)                                # [B, L]
            with amp:
                pred = prior.unet_forward(xt, t, prior.text_encoder(ids))
            loss = F.mse_loss(pred.float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, args.clip)
            opt.step()
            with torch.no_grad():
                d = ema_decay_at(step, args.ema)
                torch._foreach_lerp_(ema, [p.detach().float() for p in params], 1.0 - d)
            loss_acc += loss.detach()
            n_acc += 1
            step += 1
            if step % args.log_every == 0 or step == horizon:
                last_loss = float(loss_acc) / n_acc
                history.append((step, last_loss))
                loss_acc.zero_()
                n_acc = 0
                el = time.perf_counter() - t_loop
                log(f"[train] step {step}/{horizon} loss {last_loss:.4f} lr {lr:.2e} "
                    f"{step / el:.2f} it/s elapsed {fmt_time(el)} eta {fmt_time(el / step * (horizon - step))}")
            if time.perf_counter() - t_loop > budget * 1.05:
                log(f"[train] time budget exceeded at step {step}: stopping")
                break
    except KeyboardInterrupt:
        log(f"[train] interrupted at step {step}: saving the EMA weights")
    if n_acc:
        last_loss = float(loss_acc) / n_acc
        history.append((step, last_loss))
    train_s = time.perf_counter() - t_loop

    # 5. save the EMA weights (float16) and reload them as shipped
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    for m in modules:
        m.eval().requires_grad_(False)
    size = save_fp16(prior, out)
    if size > WEIGHTS_LIMIT:
        raise TrainPriorError(f"model.safetensors is {size / 1e6:.1f} MB, over the {WEIGHTS_LIMIT / 1e6:.0f} MB "
                              "limit for shipped weights: use a smaller --arch")
    shipped = PixelPrior.from_pretrained(out, device)
    log(f"[save] {out / 'model.safetensors'}: {size / 1e6:.2f} MB (float16)")

    if args.no_eval:
        log(f"SUMMARY {prior.name}: {step} steps x {args.batch} in {fmt_time(train_s)}, final loss "
            f"{last_loss:.4f}, weights {size / 1e6:.2f} MB -> {out} (no evaluation)")
        return {"training": {"steps": step, "horizon": horizon, "final_loss": last_loss,
                             "train_seconds": train_s, "weights_bytes": size}}

    # 6.-7. samples and metrics
    t_eval = time.perf_counter()
    families = list(FAMILIES[:2]) if args.quick else list(FAMILIES)
    steps_s = 2 if args.quick else args.ddim_steps
    grid_prompts = sample_grid(shipped, data.bank, out / "samples.png", families=families,
                               rows=1 if args.quick else 3, steps=steps_s, cfg_scale=args.cfg,
                               seed=args.seed)
    metrics = evaluate(shipped, data, families=families,
                       views=["front"] if args.quick else list(VIEWS),
                       colours_per_family=1 if args.quick else 2,
                       samples=1 if args.quick else args.eval_samples, steps=steps_s,
                       cfg_scale=args.cfg, seed=args.seed, quick=args.quick,
                       n_data=8 if args.quick else 512)
    eval_s = time.perf_counter() - t_eval
    log(f"[eval] {len(metrics['per_prompt'])} prompt-views sampled and scored in {eval_s:.1f}s")
    metrics["training"] = {"steps": step, "horizon": horizon, "batch": args.batch,
                           "final_loss": last_loss, "train_seconds": train_s,
                           "seconds_per_step": train_s / max(step, 1), "eval_seconds": eval_s,
                           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                           "parameters": n_params, "weights_bytes": size, "loss_history": history,
                           "args": vars(args), "data": {k: v for k, v in asdict(dcfg).items() if k != "camera"},
                           "camera": asdict(data.cfg.camera)}  # as drawn (independent azimuths)
    (out / "metrics.json").write_text(json.dumps(_json_safe(metrics), indent=2) + "\n")
    write_model_card(out / "MODEL_CARD.md", metrics, grid_prompts, prior)

    # 8. compact summary, last
    s = metrics["summary"]
    total = time.perf_counter() - t_start
    log("=" * 72)
    log(f"SUMMARY {prior.name}: {step} steps x {args.batch} in {fmt_time(train_s)} "
        f"({step / max(train_s, 1e-9):.2f} it/s), final loss {last_loss:.4f}, total {fmt_time(total)}")
    log(f"  weights {size / 1e6:.2f} MB fp16, {n_params / 1e6:.2f}M params -> {out}")
    log(f"  samples (cfg {args.cfg}, {steps_s} DDIM steps): hue_match {s['hue_match']:.3f}  "
        f"iou {s['iou']:.3f}  shape_acc {s['shape_acc']:.3f}  framed {s['framed']:.2f}")
    for name in ("data_reference", "gt_reference"):
        g = metrics[name]
        log(f"  {name + ':':25s} hue_match {g['hue_match']:.3f}  iou {g['iou']:.3f}  "
            f"shape_acc {g['shape_acc']:.3f}  framed {g['framed']:.2f}")
    log("  by family: " + "  ".join(f"{f} {v['hue_match']:.2f}/{v['iou']:.2f}/{v['shape_acc']:.2f}"
                                    for f, v in metrics["summary_by_family"].items()) + "  (hue/iou/acc)")
    log("  files: config.json model.safetensors samples.png metrics.json MODEL_CARD.md")
    return metrics


if __name__ == "__main__":
    try:
        main()
    except TrainPriorError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
