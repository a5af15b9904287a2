"""The web app (`ism3d serve`): a Gradio UI over `generate.prepare()` / `generate.run()`.

`jobs.py` holds everything that does not need Gradio (requests, run folders, the one-job-per-device
pool, Cancel, the gallery), so it is tested without a browser; `server.py` builds the Blocks UI on
top of it and needs the optional extra: pip install "ism3d[app]".
"""
