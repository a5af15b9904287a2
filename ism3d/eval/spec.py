"""What an `ism3d eval` benchmark runs: its input, checked, and the list of training runs.

Step 1 of `ism3d.eval.bench.run_bench`:
- the prompt sets (`DEFAULT_PROMPTS`, `QUICK_PROMPTS` or a file: `load_prompts`, every word in
  the ToyWorld vocabulary: `check_prompt`), `--seeds`, `--methods`, `--shard` parsed into one
  clear `EvalError` each;
- `make_spec`: the `ism3d eval` flags -> a checked `BenchSpec` (config precedence: preset <
  --prior/--iters/--device < `EVAL_OVERRIDES` < KEY=VALUE), with the command that reproduces it;
- `build_runs`: prompt x method x seed (+ the `ABLATION` variants) -> `RunSpec`s, runs whose
  resolved config is identical merged into one run serving several labels.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from .. import config as C
from ..generate import slugify

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


# ---------------------------------------------------------------------------------------------
# The benchmark and its runs
# ---------------------------------------------------------------------------------------------
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
# From the `ism3d eval` flags
# ---------------------------------------------------------------------------------------------
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
