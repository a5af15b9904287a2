"""`ism3d eval`: the ToyWorld 3D-quality benchmark (ISM vs SDS against known ground truth).

ToyWorld objects (ism3d/toyworld/world.py) have an exact 3D ground truth, so a text-to-3D run for
"a blue mug" can be scored by rendering the result and the true mug from the same cameras.

The benchmark, numbered as in `run_bench`:
    1. runs: every prompt x method (ism, sds) x seed, at EQUAL iterations and otherwise the same
       config; with `ablation`, ISM on the asymmetric prompts also with view prompts + Perp-Neg
       ("ism-vp") and without ("ism-novp", which also leaves `output.orient` off: turning the
       result by the prior's view prompts is view information too). Runs whose resolved config
       is identical are trained once (e.g. "ism" and "ism-vp" when the preset already uses view
       prompts and Perp-Neg);
    2. each run is trained in-process with ONE loaded prior (`generate.run(plan, prior=...)`),
       into DIR/runs/<prompt>_<method>_s<seed>/ without turntables or meshes; a folder whose
       summary.json says done and whose config.yaml equals the run's config is reused, an
       interrupted one is resumed from its checkpoint;
    3. metrics on the fixed eval ring(s) (`views` views per polar angle of camera.eval_polars,
       `size` pixels, camera.eval_radius / eval_fovy), the ground truth rendered with the same
       cameras (ism3d/eval/metrics.py): mean per-view silhouette IoU (alpha > 0.5) and PSNR inside
       the union of the silhouettes (both on white, pooled over the views); for the asymmetric
       families the Janus test (ism3d/eval/janus.py). Cached per run in eval.json, with a GT-vs-
       result picture eval_views.png;
    4. summary: means per method, Janus rates, ISM >= SDS per prompt, the targets (ISM mean IoU
       >= 0.9 and PSNR >= 25 dB), the ablation; DIR/report.json (every number) and DIR/report.md,
       both written atomically.
"""
from __future__ import annotations

import datetime as _dt
import contextlib
import json
import math
import os
import platform
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from .. import config as C
from ..generate import RunError, slugify, write_text_atomic
from . import janus as J
from . import metrics as M

__all__ = ["DEFAULT_PROMPTS", "QUICK_PROMPTS", "METHODS", "ABLATION", "EVAL_OVERRIDES",
           "IOU_TARGET", "PSNR_TARGET", "EvalError", "BenchSpec", "RunSpec", "parse_seeds",
           "parse_methods", "parse_shard", "load_prompts", "check_prompt", "build_runs", "evaluate_gaussians",
           "make_spec",
           "summarise", "render_markdown", "write_report", "run_bench", "REPORT_SCHEMA"]

REPORT_SCHEMA = "ism3d-eval/1"
METRICS_VERSION = 1  # bump when a metric changes: cached eval.json files are recomputed

# Every family, each asymmetric one twice (the Janus rate needs them), colours spread out.
DEFAULT_PROMPTS = (
    "a red cube", "a blue sphere", "a green cylinder", "a yellow cone", "an orange torus",
    "a purple pyramid", "a blue mug", "a red mug", "a green house", "a pink house",
    "a cyan chair", "an orange chair",
)
QUICK_PROMPTS = ("a red cube", "a blue mug", "a green house")
METHODS = ("ism", "sds")
# --ablation: ISM on the asymmetric prompts with / without view prompts and Perp-Neg
ABLATION = {
    "ism-vp": {"guidance.method": "ism", "guidance.view_prompts": True, "guidance.perp_neg": True},
    "ism-novp": {"guidance.method": "ism", "guidance.view_prompts": False,
                 "guidance.perp_neg": False, "output.orient": False},
}
# Eval runs need no turntable, mesh or training previews, and a small views.png (the user's
# KEY=VALUE may set them back). Not tied to --size, so a new eval size reuses the trained runs.
EVAL_OVERRIDES = {"output.video": False, "output.gif": False, "output.mesh": False,
                  "train.preview_every": 0, "output.video_size": 64}
# Keys the benchmark sets per run: a KEY=VALUE for them is refused
RESERVED_KEYS = {"guidance.method": "--methods", "train.seed": "--seeds",
                 "train.iters": "--iters", "prior.name": "--prior"}
IOU_TARGET, PSNR_TARGET = 0.9, 25.0
QUICK_ITERS = 20


class EvalError(ValueError):
    """Bad benchmark input (prompt, seeds, methods, sizes): the CLI prints it and exits 2."""


# ---------------------------------------------------------------------------------------------
# Input
# ---------------------------------------------------------------------------------------------
def parse_seeds(text: str) -> list[int]:
    """"0,1" -> [0, 1]: distinct integers >= 0."""
    items = [s.strip() for s in str(text).split(",")]
    if not items or any(not re.fullmatch(r"\d+", s) for s in items):
        raise EvalError(f"--seeds {text!r}: give comma-separated integers >= 0, e.g. 0,1")
    seeds = [int(s) for s in items]
    if len(set(seeds)) != len(seeds):
        raise EvalError(f"--seeds {text!r}: a seed is repeated")
    return seeds


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' -> (K, N) with 0 <= K < N."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise EvalError(f"--shard must look like K/N, e.g. 0/4 (got {text!r})") from None
    if not 0 <= k < n:
        raise EvalError(f"--shard K/N needs 0 <= K < N (got {text!r})")
    return k, n


def parse_methods(text: str) -> list[str]:
    """"ism,sds" -> ["ism", "sds"]."""
    items = [s.strip() for s in str(text).split(",")]
    bad = [s for s in items if s not in METHODS]
    if bad or len(set(items)) != len(items):
        raise EvalError(f"--methods {text!r}: give distinct methods from {', '.join(METHODS)}")
    return items


def check_prompt(prompt: str) -> tuple[str, str]:
    """(colour, family) of a ToyWorld prompt; every word must be in the ToyWorld vocabulary.

    Raises:
        EvalError: an unknown word, or not exactly one colour and one family.
    """
    from ..toyworld.world import COLOURS, FAMILIES, parse_prompt, vocabulary

    words = re.findall(r"[a-z]+", prompt.lower())
    unknown = [w for w in dict.fromkeys(words) if w not in vocabulary()]
    if unknown:
        raise EvalError(f"prompt {prompt!r}: unknown word(s) {', '.join(unknown)} for ToyWorld; "
                        f"use 'a <colour> <family>' with a colour from {', '.join(COLOURS)} and "
                        f"a family from {', '.join(FAMILIES)}")
    parsed = parse_prompt(prompt)
    if parsed is None:
        raise EvalError(f"prompt {prompt!r}: name exactly one colour and one family, "
                        "e.g. 'a red cube'")
    return parsed


def load_prompts(arg: str) -> list[str]:
    """"default" | "quick" | a text file with one prompt per line ('#' starts a comment)."""
    if arg == "default":
        prompts = list(DEFAULT_PROMPTS)
    elif arg == "quick":
        prompts = list(QUICK_PROMPTS)
    else:
        try:
            text = Path(arg).read_text()
        except OSError as e:
            raise EvalError(f"--prompts {arg}: cannot read it ({e.strerror or e}); give "
                            "'default' or a text file with one prompt per line") from None
        prompts = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
        prompts = [p for p in prompts if p]
        if not prompts:
            raise EvalError(f"--prompts {arg}: the file holds no prompt")
    for p in prompts:
        check_prompt(p)
    if len(set(prompts)) != len(prompts):
        raise EvalError("--prompts: a prompt is repeated")
    return prompts


@dataclass
class BenchSpec:
    """Everything a benchmark depends on (the CLI builds it; `run_bench` runs it)."""
    out: Path
    prompts: list[str]
    seeds: list[int]
    methods: list[str]
    base_cfg: C.Config          # preset + --prior/--iters/--device + EVAL_OVERRIDES + KEY=VALUE
    preset: str
    views: int = 16
    size: int = 64
    ablation: bool = False
    command: str = ""           # the canonical command line, for the report
    # (k, n): train and score only the runs whose index is k mod n, and write no report -- one
    # of n processes (or machines) sharing `out`; a run without it then reuses them all
    shard: tuple[int, int] | None = None


@dataclass
class RunSpec:
    """One training run (possibly serving several method labels, see `build_runs`)."""
    name: str
    prompt: str
    colour: str
    family: str
    seed: int
    labels: list[str]           # e.g. ["ism"] or ["ism", "ism-vp"]
    cfg: C.Config

    @property
    def method(self) -> str:
        return self.labels[0]


def build_runs(spec: BenchSpec) -> list[RunSpec]:
    """Step 1: prompt x method x seed (+ the ablation), identical configs merged."""
    from ..toyworld.world import ASYMMETRIC

    runs: list[RunSpec] = []
    by_key: dict[str, RunSpec] = {}
    for prompt in spec.prompts:
        colour, family = check_prompt(prompt)
        labels = [(m, {"guidance.method": m}) for m in spec.methods]
        if spec.ablation and family in ASYMMETRIC:
            labels += list(ABLATION.items())
        for seed in spec.seeds:
            for label, over in labels:
                cfg = C.apply_overrides(spec.base_cfg, {**over, "train.seed": seed})
                key = json.dumps([prompt, C.to_dict(cfg)], sort_keys=True)
                if key in by_key:
                    by_key[key].labels.append(label)
                    continue
                run = RunSpec(f"{slugify(prompt)}_{label}_s{seed}", prompt, colour, family, seed,
                              [label], cfg)
                by_key[key] = run
                runs.append(run)
    return runs


# ---------------------------------------------------------------------------------------------
# Training (step 2)
# ---------------------------------------------------------------------------------------------
def _same_config(folder: Path, cfg: C.Config) -> bool:
    try:
        saved = C.load_config_file(folder / "config.yaml")
    except C.ConfigError:
        return False
    return C.to_dict(saved) == C.to_dict(cfg)


def finished_summary(folder: Path, run: RunSpec) -> dict | None:
    """The summary of a finished run with this exact prompt and config in `folder`, or None."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if (summary.get("status") != "done" or summary.get("prompt") != run.prompt
            or not (folder / "gaussians.ply").is_file() or not _same_config(folder, run.cfg)):
        return None
    return summary


def train_run(run: RunSpec, folder: Path, prior, preset: str,
              callback: Callable | None = None) -> tuple[dict, bool]:
    """Train `run` into `folder`, or reuse a finished run there. Returns (summary, reused)."""
    from ..generate import prepare
    from ..generate import run as generate_run
    from ..train import CHECKPOINT

    summary = finished_summary(folder, run)
    if summary is not None:
        return summary, True
    # Stale results of another config must never pass for this run's, even if it is interrupted.
    for name in ("summary.json", "gaussians.ply", "eval.json", "eval_views.png"):
        (folder / name).unlink(missing_ok=True)
    plan = None
    if (folder / CHECKPOINT).is_file():
        try:
            plan = prepare(run.prompt, cfg=run.cfg, preset=preset, out_dir=folder, resume=True)
        except RunError:  # another config or prompt: start over
            plan = None
    if plan is None:
        plan = prepare(run.prompt, cfg=run.cfg, preset=preset, out_dir=folder, force=True)
    return generate_run(plan, prior=prior, progress=False, callback=callback), False


# ---------------------------------------------------------------------------------------------
# Metrics (step 3)
# ---------------------------------------------------------------------------------------------
@dataclass
class Rings:
    """The fixed evaluation cameras: one ring of `views` per polar angle, rendered in chunks."""
    cams: list                 # [CameraBatch] one per polar
    polars: tuple[float, ...]
    device: torch.device
    backend: str = "auto"
    chunk: int = 16

    @classmethod
    def from_config(cls, cfg: C.Config, views: int, size: int, device) -> "Rings":
        from ..cameras import eval_ring
        c = cfg.camera
        cams = [eval_ring(views, size, size, c.eval_radius, c.eval_fovy, polar=p)
                for p in c.eval_polars]
        return cls(cams, tuple(c.eval_polars), torch.device(device), cfg.render.backend)

    @torch.no_grad()
    def render(self, g, background: float) -> tuple[Tensor, Tensor]:
        """-> rgb [V, 3, S, S] on a grey-level background, alpha [V, 1, S, S], every ring (CPU)."""
        from ..render import render
        bg = torch.full((3,), float(background), device=self.device)
        rgbs, alphas = [], []
        for ring in self.cams:
            for i in range(0, len(ring), self.chunk):
                out = render(g, ring[i:i + self.chunk].to(self.device), bg, backend=self.backend)
                rgbs.append(out.rgb.float().cpu())
                alphas.append(out.alpha.float().cpu())
        return torch.cat(rgbs), torch.cat(alphas)


@dataclass
class Reference:
    """Ground truth of one prompt on the rings: renders on white, and the Janus reference."""
    rgb: Tensor                # [V, 3, S, S] on white
    alpha: Tensor              # [V, 1, S, S]
    janus: J.JanusReference | None


def make_reference(colour: str, family: str, rings: Rings) -> Reference:
    from ..toyworld.world import ASYMMETRIC, COLOURS, make_object

    gt = make_object(family, colour, device=rings.device)
    rgb, alpha = rings.render(gt, 1.0)
    janus = None
    if family in ASYMMETRIC:
        janus = J.janus_reference(family, gt, lambda g: rings.render(g, 0.0),
                                  torch.tensor(COLOURS[colour], device=rings.device))
    return Reference(rgb, alpha, janus)


def _num(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else round(x, 4)


def evaluate_gaussians(g, ref: Reference, rings: Rings) -> tuple[dict, Tensor]:
    """Step 3 for one result. Returns (metrics dict, result rgb [V, 3, S, S] on white)."""
    rgb, alpha = rings.render(g, 1.0)
    iou = M.silhouette_iou(alpha, ref.alpha)                                   # [V]
    psnr_pooled = M.masked_psnr(rgb, alpha, ref.rgb, ref.alpha, pooled=True)   # []
    psnr_views = M.masked_psnr(rgb, alpha, ref.rgb, ref.alpha, pooled=False)   # [V]
    per_polar = {}
    n = rgb.shape[0] // len(rings.polars)
    for k, p in enumerate(rings.polars):
        sl = slice(k * n, (k + 1) * n)
        per_polar[f"{p:g}"] = {
            "iou": _num(iou[sl].mean()),
            "psnr": _num(M.masked_psnr(rgb[sl], alpha[sl], ref.rgb[sl], ref.alpha[sl])),
        }
    out = {
        "iou": _num(iou.mean()),
        "psnr": _num(psnr_pooled),
        "per_polar": per_polar,
        "iou_per_view": [_num(x) for x in iou],
        "psnr_per_view": [_num(x) for x in psnr_views],
        "janus": J.janus_test(rgb, alpha, ref.janus).to_dict() if ref.janus is not None else None,
    }
    return out, rgb


def _eval_key(spec: BenchSpec, rings: Rings, ply: Path) -> dict:
    st = ply.stat()
    return {"metrics_version": METRICS_VERSION, "views": spec.views, "size": spec.size,
            "polars": list(rings.polars), "radius": spec.base_cfg.camera.eval_radius,
            "fovy": spec.base_cfg.camera.eval_fovy, "ply_bytes": st.st_size,
            "ply_mtime_ns": st.st_mtime_ns}


def evaluate_run(folder: Path, reference: Callable[[], Reference], rings: Rings,
                 spec: BenchSpec) -> tuple[dict, bool]:
    """Metrics of the run in `folder` (cached in eval.json; `reference()` gives the ground
    truth, only called when the metrics are computed). Returns (metrics, from_cache)."""
    from ..export.video import to_uint8, views_grid, write_png
    from ..ply import load_ply
    from ..scene import activate

    ply = folder / "gaussians.ply"
    key = _eval_key(spec, rings, ply)
    with contextlib.suppress(OSError, ValueError):  # no cache, or an unreadable one: recompute
        cached = json.loads((folder / "eval.json").read_text())
        if cached.get("key") == key:
            return cached["metrics"], True
    params, deg = load_ply(ply)
    g = activate({k: v.detach().to(rings.device) for k, v in params.items()}, deg)
    ref = reference()
    metrics, rgb = evaluate_gaussians(g, ref, rings)
    # GT (top row) over the result (bottom row), the first ring, at most 8 views
    n = min(8, rgb.shape[0] // len(rings.polars))
    step = max(1, (rgb.shape[0] // len(rings.polars)) // n)
    idx = list(range(0, n * step, step))
    write_png(views_grid(to_uint8(torch.cat([ref.rgb[idx], rgb[idx]])), cols=len(idx)),
              folder / "eval_views.png")
    write_text_atomic(folder / "eval.json", json.dumps({"key": key, "metrics": metrics}) + "\n")
    return metrics, False


# ---------------------------------------------------------------------------------------------
# Summary and report (step 4)
# ---------------------------------------------------------------------------------------------
def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(sum(xs) / len(xs), 4) if xs else None


def summarise(rows: list[dict], methods: list[str], ablation: bool) -> dict:
    """Means per method label, Janus rates, ISM >= SDS per prompt, targets and ablation.

    Args:
        rows: one dict per run with at least labels, prompt, status, iou, psnr, janus (dict|None).
    """
    labels = list(methods) + (list(ABLATION) if ablation else [])
    per_label = {}
    for lab in labels:
        rs = [r for r in rows if lab in r["labels"]]
        done = [r for r in rs if r["status"] == "done"]
        asym = [r for r in done if r.get("janus") is not None]
        janus_n = sum(bool(r["janus"]["janus"]) for r in asym)
        shaped = [r for r in asym if r["iou"] is not None and r["iou"] >= IOU_TARGET]
        shaped_n = sum(bool(r["janus"]["janus"]) for r in shaped)
        per_label[lab] = {
            "runs": len(rs), "done": len(done), "failed": len(rs) - len(done),
            "iou": _mean(r["iou"] for r in done), "psnr": _mean(r["psnr"] for r in done),
            "janus_runs": len(asym), "janus_count": janus_n,
            "janus_rate": round(janus_n / len(asym), 4) if asym else None,
            "janus_shaped_runs": len(shaped), "janus_shaped_count": shaped_n,
            "janus_shaped_rate": round(shaped_n / len(shaped), 4) if shaped else None,
            "part_missing": sum(r["janus"]["verdict"] == "missing" for r in asym),
        }
    by_prompt = []
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    if "ism" in methods and "sds" in methods:
        for p in prompts:
            def avg(lab, k):
                return _mean(r[k] for r in rows
                             if r["prompt"] == p and lab in r["labels"] and r["status"] == "done")
            ism_iou, sds_iou, ism_psnr, sds_psnr = (avg("ism", "iou"), avg("sds", "iou"),
                                                    avg("ism", "psnr"), avg("sds", "psnr"))
            iou_ge = None if None in (ism_iou, sds_iou) else ism_iou >= sds_iou
            psnr_ge = None if None in (ism_psnr, sds_psnr) else ism_psnr >= sds_psnr
            by_prompt.append({"prompt": p, "ism_iou": ism_iou, "sds_iou": sds_iou,
                              "ism_psnr": ism_psnr, "sds_psnr": sds_psnr,
                              "ism_ge_sds_iou": iou_ge, "ism_ge_sds_psnr": psnr_ge,
                              "ism_ge_sds": (None if None in (iou_ge, psnr_ge)
                                             else iou_ge and psnr_ge)})
    targets = None
    if "ism" in per_label:
        s = per_label["ism"]
        iou_ok = s["iou"] is not None and s["iou"] >= IOU_TARGET and s["failed"] == 0
        psnr_ok = s["psnr"] is not None and s["psnr"] >= PSNR_TARGET and s["failed"] == 0
        targets = {"iou_target": IOU_TARGET, "psnr_target": PSNR_TARGET, "ism_iou": s["iou"],
                   "ism_psnr": s["psnr"], "iou_met": iou_ok, "psnr_met": psnr_ok,
                   "met": iou_ok and psnr_ok}
    return {"per_method": per_label, "ism_vs_sds": by_prompt,
            "ism_ge_sds_prompts": sum(bool(b["ism_ge_sds"]) for b in by_prompt),
            "targets": targets}


def machine() -> dict:
    dev = "none"
    if torch.cuda.is_available():
        dev = torch.cuda.get_device_name(0)
    return {"host": platform.node(), "platform": platform.platform(), "python":
            platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "gpu": dev}


def _fmt(x, digits=3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _rate(k: int, n: int) -> str:
    return f"{k}/{n} = {k / n:.2f}" if n else "–"


def render_markdown(report: dict) -> str:
    """The human-readable report: settings, one row per run, means, Janus, ISM vs SDS, targets."""
    s, summ = report["settings"], report["summary"]
    L = [f"# ToyWorld benchmark ({report['status']})", "",
         f"- command: `{report['command']}`",
         f"- date: {report['date']}  ",
         f"- machine: {report['machine']['processor']}, {report['machine']['cpu_count']} cores, "
         f"GPU {report['machine']['gpu']}; torch {report['machine']['torch']}",
         f"- preset `{s['preset']}`, prior `{s['prior']}`, {s['iters']} iterations per run, "
         f"seeds {s['seeds']}, methods {', '.join(s['methods'])}"
         + (" + ablation (ism-vp, ism-novp)" if s["ablation"] else ""),
         f"- metrics on {s['views']} views x polar {', '.join(f'{p:g}' for p in s['polars'])} at "
         f"{s['size']}x{s['size']} (radius {s['radius']:g}, fovy {s['fovy']:g}): IoU of alpha > "
         "0.5 silhouettes (mean over views), PSNR inside their union on white (pooled), Janus test "
         "for mug/house/chair (ism3d/eval/janus.py)",
         f"- wall time {report['wall_seconds']:.0f} s; {len(report['runs'])} runs "
         f"({sum(r['reused'] for r in report['runs'])} reused)", ""]
    t = summ["targets"]
    if t is not None:
        L += ["## Targets", "",
              f"ISM mean IoU {_fmt(t['ism_iou'])} (target >= {t['iou_target']}: "
              f"**{_fmt(t['iou_met'])}**), ISM mean PSNR {_fmt(t['ism_psnr'], 2)} dB (target >= "
              f"{t['psnr_target']:g}: **{_fmt(t['psnr_met'])}**); "
              f"targets met: **{_fmt(t['met'])}**",
              ""]
    L += ["## Means per method", "",
          "| method | runs | failed | IoU | PSNR (dB) | Janus rate | Janus rate, IoU >= "
          f"{IOU_TARGET:g} | part missing |",
          "|---|---|---|---|---|---|---|---|"]
    for lab, m in summ["per_method"].items():
        L.append(f"| {lab} | {m['runs']} | {m['failed']} | {_fmt(m['iou'])} | "
                 f"{_fmt(m['psnr'], 2)} | {_rate(m['janus_count'], m['janus_runs'])} | "
                 f"{_rate(m['janus_shaped_count'], m['janus_shaped_runs'])} | "
                 f"{m['part_missing'] if m['janus_runs'] else '–'} |")
    L += ["", "Janus: the asymmetric part (mug handle, house door, chair backrest) shows where its "
          "mirror image (x -> -x) would be in most views that can see it. The test is pixel-"
          "aligned; a symmetric blob covering both sides also reads as two copies, so the rate "
          f"over well-shaped runs (IoU >= {IOU_TARGET:g}) is given too.", ""]
    if summ["ism_vs_sds"]:
        L += ["## ISM >= SDS? (means over seeds)", "",
              "| prompt | IoU ISM | IoU SDS | PSNR ISM | PSNR SDS | ISM >= SDS? |",
              "|---|---|---|---|---|---|"]
        for b in summ["ism_vs_sds"]:
            L.append(f"| {b['prompt']} | {_fmt(b['ism_iou'])} | {_fmt(b['sds_iou'])} | "
                     f"{_fmt(b['ism_psnr'], 2)} | {_fmt(b['sds_psnr'], 2)} | "
                     f"{_fmt(b['ism_ge_sds'])} (IoU {_fmt(b['ism_ge_sds_iou'])}, PSNR "
                     f"{_fmt(b['ism_ge_sds_psnr'])}) |")
        L += ["", f"ISM >= SDS on both metrics for {summ['ism_ge_sds_prompts']} of "
              f"{len(summ['ism_vs_sds'])} prompts.", ""]
    if s["ablation"]:
        a = summ["per_method"]
        L += ["## Ablation: view prompts + Perp-Neg (asymmetric prompts, ISM)", "",
              "| variant | Janus rate | IoU | PSNR (dB) |", "|---|---|---|---|"]
        for lab in ABLATION:
            m = a[lab]
            L.append(f"| {lab} | {_rate(m['janus_count'], m['janus_runs'])} | {_fmt(m['iou'])} | "
                     f"{_fmt(m['psnr'], 2)} |")
        L.append("")
    L += ["## Runs", "",
          "| run | prompt | method | seed | IoU | PSNR (dB) | Janus | part seen | mirror seen | "
          "s/iter | gaussians | status |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        j = r.get("janus")
        L.append(
            f"| [{r['name']}](runs/{r['name']}/eval_views.png) | {r['prompt']} | "
            f"{', '.join(r['labels'])} | {r['seed']} | {_fmt(r['iou'])} | {_fmt(r['psnr'], 2)} | "
            f"{j['verdict'] if j else '–'} | {_fmt(j['part_seen'], 2) if j else '–'} | "
            f"{_fmt(j['mirror_seen'], 2) if j else '–'} | {_fmt(r.get('seconds_per_iter'), 4)} | "
            f"{_fmt(r.get('num_gaussians'))} | {r['status']}{' (reused)' if r['reused'] else ''} |")
    L.append("")
    return "\n".join(L)


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    """DIR/report.json and DIR/report.md, each written to a temporary name and renamed."""
    out.mkdir(parents=True, exist_ok=True)
    j, m = out / "report.json", out / "report.md"
    write_text_atomic(j, json.dumps(report, indent=2, allow_nan=False) + "\n")
    write_text_atomic(m, render_markdown(report))
    return j, m


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------
def run_bench(spec: BenchSpec, *, progress: bool = True,
              should_stop: Callable[[], bool] = lambda: False,
              log: Callable[[str], None] = print) -> dict:
    """Steps 1-4 of the module docstring. Returns the report dict (also written to spec.out).

    A stop request (`should_stop()` True, e.g. after Ctrl-C) ends the current run between two
    steps (it stays resumable) and writes a partial report with status "interrupted".

    Raises:
        EvalError, ConfigError, PriorError, PromptError: bad input, before any training.
    """
    from ..guidance.prompts import VIEW_SUFFIXES
    from ..priors import load_prior, resolve_prior
    from ..priors.pixel import is_pixel_prior
    from ..train import TrainingDiverged, resolve_device

    t0 = time.perf_counter()
    # 1. runs, every config checked before anything heavy
    runs = build_runs(spec)
    if spec.shard is not None:
        k, n = spec.shard
        runs = runs[k::n]
    cfg0 = spec.base_cfg
    loc = resolve_prior(cfg0.prior.name, offline=cfg0.prior.offline)
    for r in runs:
        C.validate(r.cfg, latent_prior=not (loc == "tiny" or is_pixel_prior(loc)))
    device = resolve_device(cfg0.train.device)
    prior = load_prior(cfg0.prior, device)
    for r in runs:  # every text a run will embed: the prompt (with view suffixes), the negative
        gd = r.cfg.guidance
        texts = [r.prompt + sfx for sfx in VIEW_SUFFIXES] if gd.view_prompts else [r.prompt]
        for text in texts + ([gd.negative_prompt] if gd.negative_prompt else []):
            prior.check_prompt(text)
    rings = Rings.from_config(cfg0, spec.views, spec.size, device)
    settings = {
        "preset": spec.preset, "prior": cfg0.prior.name, "iters": cfg0.train.iters,
        "seeds": spec.seeds, "methods": spec.methods, "ablation": spec.ablation,
        "prompts": spec.prompts, "views": spec.views, "size": spec.size,
        "polars": list(rings.polars), "radius": cfg0.camera.eval_radius,
        "fovy": cfg0.camera.eval_fovy, "device": str(device),
        "config": C.to_dict(cfg0),
    }
    refs: dict[str, Reference] = {}
    rows: list[dict] = []
    status = "done"
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(runs), desc="eval", unit="run", dynamic_ncols=True)

    def report(status: str) -> dict:
        rep = {"schema": REPORT_SCHEMA, "status": status, "command": spec.command,
               "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), "wall_seconds": round(time.perf_counter() - t0, 1),
               "settings": settings, "runs": rows,
               "summary": summarise(rows, spec.methods, spec.ablation)}
        if spec.shard is None:
            write_report(rep, spec.out)
        return rep

    try:
        for run in runs:
            folder = spec.out / "runs" / run.name
            if bar is not None:
                bar.set_postfix_str(run.name)

            def cb(p, _name=run.name):
                if bar is not None and (p.step % 10 == 0 or p.step == p.total):
                    bar.set_postfix_str(f"{_name} {p.step}/{p.total}")
                return should_stop()

            row = {"name": run.name, "prompt": run.prompt, "family": run.family,
                   "colour": run.colour, "labels": run.labels, "method": run.method,
                   "seed": run.seed, "folder": f"runs/{run.name}", "iters": run.cfg.train.iters}
            t_run = time.perf_counter()
            try:
                summary, reused = train_run(run, folder, prior, spec.preset, cb)
            except TrainingDiverged as e:
                rows.append({**row, "status": "failed", "error": str(e), "reused": False,
                             "iou": None, "psnr": None, "janus": None})
                log(f"ism3d eval: {run.name} failed: {e}")
                if bar is not None:
                    bar.update(1)
                continue
            if summary["status"] != "done":
                status = "interrupted"
                break
            def reference(_run=run) -> Reference:  # ground truth renders, once per prompt
                if _run.prompt not in refs:
                    refs[_run.prompt] = make_reference(_run.colour, _run.family, rings)
                return refs[_run.prompt]

            metrics, cached = evaluate_run(folder, reference, rings, spec)
            rows.append({**row, "status": "done", "reused": reused, "metrics_cached": cached,
                         "seconds": round(time.perf_counter() - t_run, 2),
                         "train_seconds": summary.get("train_seconds"),
                         "seconds_per_iter": summary.get("seconds_per_iter"),
                         "num_gaussians": summary.get("num_gaussians"),
                         "iou": metrics["iou"], "psnr": metrics["psnr"],
                         "janus": metrics["janus"], "per_polar": metrics["per_polar"],
                         "iou_per_view": metrics["iou_per_view"],
                         "psnr_per_view": metrics["psnr_per_view"]})
            if bar is not None:
                bar.update(1)
            report("running")  # so a long benchmark can be read (and survives a crash) midway
            if should_stop():
                status = "interrupted"
                break
    finally:
        if bar is not None:
            bar.close()
    return report(status)


def make_spec(*, out: str | Path = "outputs/eval", preset: str | None = None,
              prior: str | None = None, prompts: str | None = None, seeds: str | None = None,
              methods: str | None = None, iters: int | None = None, views: int | None = None,
              size: int | None = None, ablation: bool = False, device: str = "auto",
              quick: bool = False, overrides: list[str] = (), shard: str | None = None) -> BenchSpec:
    """The `ism3d eval` flags -> a checked BenchSpec (None = the default; `quick` changes the
    defaults of prompts, seeds, iters, views and size, explicit values win).

    Config precedence: preset < --prior/--iters/--device < EVAL_OVERRIDES < KEY=VALUE; the keys
    the benchmark sets per run (RESERVED_KEYS) are refused as KEY=VALUE.

    Raises:
        EvalError, ConfigError: bad input (one line).
    """
    preset = preset or ("toy" if "toy" in C.PRESETS else C.DEFAULT_PRESET)
    prompts_arg = prompts or ("quick" if quick else "default")
    prompt_list = load_prompts(prompts_arg)
    seed_list = parse_seeds(seeds if seeds is not None else ("0" if quick else "0,1"))
    method_list = parse_methods(methods or "ism,sds")
    views = views if views is not None else (8 if quick else 16)
    size = size if size is not None else (32 if quick else 64)
    if not 4 <= views <= 360:
        raise EvalError(f"--views must be between 4 and 360 (got {views})")
    if not 16 <= size <= 1024:
        raise EvalError(f"--size must be between 16 and 1024 (got {size})")
    over = C.parse_override_strings(list(overrides))
    for key, flag in RESERVED_KEYS.items():
        if key in over:
            raise EvalError(f"{key} is set by {flag} in ism3d eval, not as KEY=VALUE")
    cfg = C.preset_config(preset)
    flags = {"train.iters": iters if iters is not None else (QUICK_ITERS if quick
                                                             else cfg.train.iters),
             "train.device": device}
    if prior is not None:
        flags["prior.name"] = prior
    cfg = C.apply_overrides(cfg, {**flags, **EVAL_OVERRIDES})
    cfg = C.apply_overrides(cfg, over)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EvalError(f"--out {out} exists and is not a folder")
    spec = BenchSpec(out=out, prompts=prompt_list, seeds=seed_list, methods=method_list,
                     base_cfg=cfg, preset=preset, views=views, size=size, ablation=ablation,
                     shard=parse_shard(shard) if shard is not None else None)
    spec.command = canonical_command(spec, list(overrides), prompts_arg)
    return spec


def canonical_command(spec: BenchSpec, overrides: list[str], prompts_arg: str) -> str:
    """The `ism3d eval` command line that reproduces `spec`."""
    parts = ["ism3d", "eval", "--out", str(spec.out), "--preset", spec.preset,
             "--prior", spec.base_cfg.prior.name, "--prompts", prompts_arg,
             "--seeds", ",".join(map(str, spec.seeds)), "--methods", ",".join(spec.methods),
             "--iters", str(spec.base_cfg.train.iters), "--views", str(spec.views),
             "--size", str(spec.size), "--device", spec.base_cfg.train.device]
    if spec.ablation:
        parts.append("--ablation")
    return shlex.join(parts + list(overrides))
