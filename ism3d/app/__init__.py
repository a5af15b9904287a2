"""The web app (`ism3d serve`): a Gradio UI over `generate.prepare()` / `generate.run()`.

Everything that does not need Gradio is tested without a browser:
    form.py    the form's fields -> a checked `Config` (as the CLI builds one)
    runs.py    run folders under ROOT: create (atomic mkdir), name-check, list, read back
    jobs.py    the job manager: one job at a time per device, progress events, Cancel
`server.py` builds the Blocks UI on top of them and needs the optional extra: pip install "ism3d[app]".
"""
