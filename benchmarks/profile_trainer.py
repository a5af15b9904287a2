"""Profile behind BENCHMARKS.md "GPU speed" (session 3): a torch.profiler trace of three steps of the
`paper` preset in the real trainer (random SD-2.1-base weights), written to $OUT/trace.json (Chrome
trace format; the GPU idle gaps were summed from it). Run from the repository root on CUDA:

    OUT=/tmp python benchmarks/profile_trainer.py
"""
# Kept exactly as run (a scratch script: terse on purpose).
# ruff: noqa: E401, E402, E701, E702
import sys, os, tempfile, time, torch
sys.path[:0] = ["tests", "."]
from tiny_sd import make_sd21_random
import ism3d.train as T
from ism3d import config as C
from ism3d.priors import load_prior
from torch.profiler import profile, ProfilerActivity, schedule
out = os.environ.get("OUT", "/tmp")
sd = make_sd21_random("/tmp/sd21")
cfg = C.apply_overrides(C.preset_config("paper"), {"prior.name": "/tmp/sd21", "train.iters": 12, "train.checkpoint_every": 0,
                                                  "train.preview_every": 0, "train.device": "cuda"})
prior = load_prior(cfg.prior, torch.device("cuda"))
prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], schedule=schedule(wait=6, warmup=2, active=3))
prof.start()
walls = []; last = [time.perf_counter()]
def cb(p):
    torch.cuda.synchronize(); now = time.perf_counter(); walls.append((now - last[0]) * 1e3); last[0] = now
    prof.step()
with tempfile.TemporaryDirectory() as tmp:
    T.train(cfg, "a DSLR photo of a hamburger", prior, tmp, progress=False, callback=cb)
prof.stop()
print("walls ms", [round(w, 1) for w in walls])
prof.export_chrome_trace(f"{out}/trace.json")
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))
