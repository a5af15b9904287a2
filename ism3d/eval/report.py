"""The `ism3d eval` report (step 4 of `run_bench`): summary numbers, report.json and report.md.

- `summarise`: means per method label, Janus rates, ISM >= SDS per prompt, the targets (ISM mean
  IoU >= `IOU_TARGET` and PSNR >= `PSNR_TARGET`) and the ablation, from the per-run rows;
- `machine`: what the benchmark ran on;
- `render_markdown`: the human-readable report; `write_report`: DIR/report.json and
  DIR/report.md, both written atomically.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from ..generate import write_text_atomic
from .spec import ABLATION

REPORT_SCHEMA = "ism3d-eval/1"
IOU_TARGET, PSNR_TARGET = 0.9, 25.0


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

