"""`ism3d serve`: the Gradio UI over `jobs.JobManager` (needs the extra: pip install "ism3d[app]").

Layout: the form (prompt, negative prompt, preset, prior, guidance and scale, seed, iterations,
preview interval, KEY=VALUE overrides) with Generate / Cancel / Resume and a live status line
(step/total, loss, gaussian count, s/step, ETA) above the newest training preview; the result (the
gaussians — gaussians.ply itself, written upright in the 3DGS viewers' frame, ism3d/frames.py —
and the textured mesh in Gradio's Model3D viewers, on white; the turntable video, the 8-view grid,
download buttons for PLY, SPZ, the offline viewer.html, GLB, MP4 and summary.json); and the gallery of runs in ROOT, newest first.

Queue: Generate and Resume share one Gradio concurrency group whose limit is the number of device
slots (1 on a CPU or one GPU), so jobs run one at a time per GPU and the others see their place in
the queue. Cancel is not queued: it sets the job's flag, which the train callback reads after the
current step, so the checkpoint is written and the run can be resumed from the gallery.

Safe by default: binds to 127.0.0.1, no share link unless asked, no analytics or version check,
no web fonts; only files under ROOT (and Gradio's own cache) are served.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

# Before gradio is imported: no telemetry, no update check, no Hugging Face telemetry.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr

from .. import config as C
from ..score.runs import score_text
from .form import (MAX_FIELD_CHARS, MAX_OVERRIDES_CHARS, UI_MAX_PROMPT_CHARS, AppError, JobRequest,
                   one_line)
from .jobs import TERMINAL, JobEvent, JobManager, status_text
from .runs import read_record, run_dir_of, run_files

log = logging.getLogger("ism3d.app")

GALLERY_MAX = 60
PREVIEWS_PER_RUN = 20
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# gsplat.js paints its canvas background black inline and clears to transparent: show white under
# the splats instead (our objects are trained on white, like the mesh viewer's clear colour)
CSS = "#splat canvas { background: #ffffff !important; }"


def preset_fields(name: str) -> tuple:
    """The form fields a preset sets: negative prompt, prior, guidance, scale, iterations and
    the preview interval (about 20 previews a run in the UI, never fewer than the preset's)."""
    cfg = C.preset_config(name if name in C.PRESETS else C.DEFAULT_PRESET)
    t = cfg.train
    every = min(t.preview_every or t.iters, max(1, t.iters // PREVIEWS_PER_RUN))
    return (cfg.guidance.negative_prompt, cfg.prior.name, cfg.guidance.method, cfg.guidance.scale,
            t.iters, every)


def _owner(request: gr.Request | None) -> str:
    return (request.session_hash if request is not None else None) or "anonymous"


def gallery_caption(r) -> str:
    """A gallery entry's caption: prompt · status (step/total when stopped), and the CLIP score
    when `ism3d score` scored the run (RUN/clip_score.json)."""
    return (f"{r.prompt} · {r.status}" + (f" {r.step}/{r.total}" if r.status == "stopped" else "")
            + (f" · {s}" if (s := score_text(r.path, short=True)) else ""))


def _placeholder_png() -> str:
    """A small grey image for gallery entries that have no picture yet."""
    from PIL import Image
    path = Path(tempfile.mkdtemp(prefix="ism3d-app-")) / "no_views.png"
    Image.new("RGB", (64, 64), (200, 200, 200)).save(path)
    return str(path)


def build_app(manager: JobManager) -> gr.Blocks:
    """The Blocks UI over `manager`. Launch it with `launch()` (which sets the queue and paths).

    Args:
        manager: the JobManager whose ROOT holds the runs and whose devices set the concurrency.
    Returns:
        gr.Blocks (not launched).
    """
    slots = len(manager.devices)
    placeholder = _placeholder_png()
    neg0, prior0, guid0, scale0, iters0, prev0 = preset_fields(C.DEFAULT_PRESET)

    with gr.Blocks(title="ism3d", analytics_enabled=False) as demo:
        selected = gr.State(None)        # folder name of the run shown (Resume continues it)
        names = gr.State([])             # gallery order -> folder names
        gr.Markdown("## ism3d: text to 3D gaussians by Interval Score Matching")
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                prompt = gr.Textbox(label=f"Prompt (at most {UI_MAX_PROMPT_CHARS} characters)",
                                    placeholder="a red cube", lines=2,
                                    max_length=UI_MAX_PROMPT_CHARS, elem_id="prompt")
                negative = gr.Textbox(label="Negative prompt", value=neg0,
                                      max_length=MAX_FIELD_CHARS, elem_id="negative")
                with gr.Row():
                    preset = gr.Dropdown(list(C.PRESETS), value=C.DEFAULT_PRESET, label="Preset",
                                         elem_id="preset")
                    prior = gr.Textbox(label="Prior", value=prior0, max_length=MAX_FIELD_CHARS,
                                       info="toy, tiny, a diffusers hub id or a local path",
                                       elem_id="prior")
                with gr.Row():
                    guidance = gr.Radio(["ism", "sds"], value=guid0, label="Guidance",
                                        elem_id="guidance")
                    scale = gr.Number(value=scale0, label="Guidance scale", minimum=0,
                                      elem_id="scale")
                with gr.Row():
                    seed = gr.Number(value=0, label="Seed", precision=0, minimum=0,
                                     elem_id="seed")
                    iters = gr.Number(value=iters0, label="Iterations", precision=0, minimum=1,
                                      elem_id="iters")
                    preview_every = gr.Number(value=prev0, label="Preview every N steps",
                                              precision=0, minimum=0, elem_id="preview-every")
                with gr.Accordion("Config overrides", open=False):
                    overrides = gr.Textbox(
                        label="KEY=VALUE, one or more per line", lines=3,
                        max_length=MAX_OVERRIDES_CHARS, elem_id="overrides",
                        placeholder="train.batch=2 output.mesh=false",
                        info="every key: ism3d generate --help-config; these win over the fields")
                with gr.Row():
                    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
                    resume_btn = gr.Button("Resume", visible=False, elem_id="resume")
                status = gr.Markdown("Ready.", elem_id="status")
                preview = gr.Image(label="Training preview", type="filepath", interactive=False,
                                   height=200, elem_id="preview")
            with gr.Column(scale=3, min_width=400):
                with gr.Row():
                    splat = gr.Model3D(label="Gaussians (gaussians.ply)", interactive=False,
                                       height=340, clear_color=(1.0, 1.0, 1.0, 1.0),
                                       elem_id="splat")
                    mesh = gr.Model3D(label="Mesh (mesh.glb)", interactive=False, height=340,
                                      clear_color=(1.0, 1.0, 1.0, 1.0), elem_id="mesh")
                with gr.Row():
                    video = gr.Video(label="Turntable", interactive=False, autoplay=True,
                                     loop=True, height=260, elem_id="video")
                    views = gr.Image(label="8 views", type="filepath", interactive=False,
                                     height=260, elem_id="views")
                with gr.Row():
                    dl_ply = gr.DownloadButton("gaussians.ply", visible=False, elem_id="dl-ply")
                    dl_spz = gr.DownloadButton("gaussians.spz", visible=False, elem_id="dl-spz")
                    dl_html = gr.DownloadButton("viewer.html", visible=False, elem_id="dl-html")
                    dl_glb = gr.DownloadButton("mesh.glb", visible=False, elem_id="dl-glb")
                    dl_mp4 = gr.DownloadButton("turntable.mp4", visible=False, elem_id="dl-mp4")
                    dl_sum = gr.DownloadButton("summary.json", visible=False,
                                               elem_id="dl-summary")
                with gr.Accordion("summary.json", open=False):
                    summary = gr.JSON(elem_id="summary")
        with gr.Row():
            gr.Markdown(f"### Earlier runs in `{manager.root}`")
            refresh_btn = gr.Button("Refresh", size="sm", scale=0, elem_id="refresh")
        gallery = gr.Gallery(show_label=False, columns=6, height=300, allow_preview=False,
                             object_fit="contain", fit_columns=False, elem_id="gallery")

        form = [prompt, negative, preset, prior, guidance, scale, seed, iters, preview_every,
                overrides]
        result = [video, views, dl_ply, dl_spz, dl_html, dl_glb, dl_mp4, dl_sum, summary, selected,
                  resume_btn]
        viewers = [splat, mesh]
        job_outputs = [status, preview, gallery, names, *result]

        # ---------------------------------------------------------------- helpers
        def result_updates(run_dir: Path | None) -> dict:
            """Video, views, downloads, summary, the selected run and Resume for `run_dir`."""
            f = run_files(run_dir) if run_dir is not None else None
            rec = read_record(run_dir) if run_dir is not None else None

            def dl(path):
                return gr.DownloadButton(value=str(path) if path else None, visible=bool(path))

            def beside(name):          # written by generate next to gaussians.ply (when enabled)
                p = run_dir / name if run_dir is not None else None
                return p if p is not None and p.is_file() else None

            stopped = bool(rec and rec.get("status") == "stopped" and f.checkpoint)
            return {video: _str(f and f.mp4), views: _str(f and f.views),
                    dl_ply: dl(f and f.ply), dl_spz: dl(beside("gaussians.spz")),
                    dl_html: dl(beside("viewer.html")), dl_glb: dl(f and f.glb),
                    dl_mp4: dl(f and f.mp4),
                    dl_sum: dl(f and f.summary), summary: rec,
                    selected: run_dir.name if run_dir is not None else None,
                    resume_btn: gr.Button(visible=stopped)}

        def viewer_updates(run_dir: Path | None) -> dict:
            """The two Model3D viewers. Set only from plain (non-generator) events: in Gradio
            6.31 a .glb yielded by a generator never gets its Babylon canvas (a frontend race),
            so the job events chain `show_viewers` after the generator."""
            f = run_files(run_dir) if run_dir is not None else None
            return {splat: _str(f and f.ply), mesh: _str(f and f.glb)}

        def gallery_updates() -> dict:
            runs = manager.gallery()[:GALLERY_MAX]
            items = [(str(r.image) if r.image else placeholder, gallery_caption(r))
                     for r in runs]
            return {gallery: items, names: [r.name for r in runs]}

        def drive(events):
            """Job events -> UI updates (a generator for Gradio)."""
            try:
                for ev in events:
                    out = {status: status_text(ev)}
                    if ev.kind == "started":
                        out.update(result_updates(None))
                        out[preview] = None
                    elif ev.kind == "progress" and ev.preview:
                        out[preview] = ev.preview
                    elif ev.kind in TERMINAL:
                        if ev.kind == "error":
                            gr.Warning(ev.message)
                        elif ev.run_dir is not None:
                            out.update(result_updates(ev.run_dir))
                            files = run_files(ev.run_dir)
                            if files.preview is not None:
                                out[preview] = str(files.preview)
                        out.update(gallery_updates())
                    yield out
            except Exception as e:  # a failed job must not take the server down
                log.exception("the UI handler failed")
                msg = f"internal error ({type(e).__name__}): {one_line(e)}"
                gr.Warning(msg)
                yield {status: status_text(JobEvent("error", message=msg))}

        # ---------------------------------------------------------------- events
        def on_generate(prompt, negative, preset, prior, guidance, scale, seed, iters,
                        preview_every, overrides, request: gr.Request):
            req = JobRequest(prompt=prompt, preset=preset, negative=negative, prior=prior,
                             guidance=guidance, scale=scale, seed=seed, iters=iters,
                             preview_every=preview_every, overrides=overrides or "")
            yield from drive(manager.run_job(req, owner=_owner(request)))

        def on_resume(name, request: gr.Request):
            # no run selected: run_job answers with one error line (and consumes the request)
            yield from drive(manager.run_job(resume=name or "", owner=_owner(request)))

        def on_expect(request: gr.Request):
            manager.expect(_owner(request))
            return viewer_updates(None)

        def show_viewers(name):
            try:
                return viewer_updates(run_dir_of(manager.root, name) if name else None)
            except AppError:
                return viewer_updates(None)

        def on_cancel(request: gr.Request):
            return f"Cancel: {manager.cancel(_owner(request))}."

        def on_select(run_names, evt: gr.SelectData):
            try:
                run_dir = run_dir_of(manager.root, run_names[evt.index])
            except (AppError, IndexError, TypeError) as e:
                return {status: status_text(JobEvent("error", message=one_line(e)))}
            rec = read_record(run_dir) or {}
            out = {**result_updates(run_dir), **viewer_updates(run_dir)}
            out[status] = f"Showing `{run_dir.name}` ({rec.get('status', 'running')})."
            if (scored := score_text(run_dir)) is not None:   # `ism3d score` ran on it
                out[status] += f" {scored}."
            return out

        queued = {"concurrency_limit": slots, "concurrency_id": "device",
                  "show_progress": "full", "show_progress_on": [status]}
        for btn, fn, inputs, api in ((generate_btn, on_generate, form, "generate"),
                                     (resume_btn, on_resume, [selected], "resume")):
            btn.click(on_expect, None, viewers, queue=False, api_visibility="private").then(
                fn, inputs, job_outputs, api_name=api, **queued).then(
                show_viewers, selected, viewers, queue=False, api_visibility="private")
        cancel_btn.click(on_cancel, None, status, queue=False, api_name="cancel")
        preset.input(preset_fields, preset, [negative, prior, guidance, scale, iters,
                                             preview_every], queue=False, api_visibility="private")
        gallery.select(on_select, names, [status, *result, *viewers], api_visibility="private")
        refresh_btn.click(gallery_updates, None, [gallery, names], queue=False,
                          api_visibility="private")
        demo.load(gallery_updates, None, [gallery, names], api_visibility="private")
    return demo


def _str(path: Path | None) -> str | None:
    return str(path) if path else None


def launch(manager: JobManager, *, host: str = "127.0.0.1", port: int | None = 7860,
           share: bool = False, block: bool = True, quiet: bool = False) -> tuple[gr.Blocks, str]:
    """Build the UI, enable the queue and start serving.

    Args:
        manager: the JobManager (ROOT, devices).
        host: the interface to bind (127.0.0.1 unless the user says otherwise).
        port: the TCP port (None: Gradio picks one from 7860 up).
        share: ask Gradio for a public share link (off unless `--share`).
        block: serve until Ctrl-C (False: return at once, e.g. in tests; call demo.close()).
        quiet: no start-up banner.
    Returns:
        (demo, local_url).
    """
    demo = build_app(manager)
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True,
                allowed_paths=[str(manager.root)], ssr_mode=False, quiet=quiet, css=CSS,
                show_error=False, inbrowser=False, enable_monitoring=False, mcp_server=False)
    url = demo.local_url or f"http://{host}:{port}/"
    if block:
        demo.block_thread()
    return demo, url


def serve(host: str = "127.0.0.1", port: int = 7860, out_root: str = "outputs",
          share: bool = False) -> int:
    """`ism3d serve`: serve the app until Ctrl-C. Returns the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    manager = JobManager(out_root)
    if host not in LOOPBACK:
        print(f"ism3d serve: listening on {host}: anyone who can reach this machine can start "
              f"runs and read the files in {manager.root}", file=sys.stderr)
    try:
        demo, url = launch(manager, host=host, port=port, share=share, block=False, quiet=True)
        print(f"ism3d serve: open {url} (runs go to {manager.root}; {len(manager.devices)} "
              f"job(s) at a time on {', '.join(manager.devices)}; Ctrl-C stops)", file=sys.stderr)
        if share and demo.share_url:
            print(f"ism3d serve: public link {demo.share_url}", file=sys.stderr)
        demo.block_thread()             # until Ctrl-C (Gradio closes the server then)
    except KeyboardInterrupt:
        pass
    finally:
        n = manager.stop_all()
        if n:
            print(f"ism3d serve: stopped {n} run(s) with a checkpoint; resume them from the "
                  "gallery", file=sys.stderr)
    return 0
