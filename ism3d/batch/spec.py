"""The prompts file of `ism3d batch`: parse it, check every line, and turn it into job specs.

Two formats, chosen by the file's extension:
    .txt    one prompt per line
    .jsonl  one JSON object per line: {"prompt": "...", "seed": 3, "preset": "fast",
            "negative_prompt": "...", "overrides": {"train.iters": 800}} (only "prompt" is needed;
            "overrides" may also be a list of "KEY=VALUE" strings)
Blank lines and lines starting with '#' are skipped in both.

A line's config, lowest to highest precedence:
    preset (the line's, else --preset, else the default) < --config file < command-line flags and
    KEY=VALUE overrides < the line's seed and negative_prompt < the line's overrides.

`load_jobs` checks the whole file before anything runs: JSON syntax, known keys, types, presets,
overrides and config values (via `ism3d.config`), prompt length, the prior (it must resolve the way
`generate` resolves it; a ToyWorld-style pixel prior's vocabulary is checked too), the device
against `--gpus-per-job`, and duplicates. The first problem raises `BatchError` with one line
"FILE:LINE: what is wrong", which the CLI prints before exiting with code 2; nothing is started
and nothing is written.

Each job's run folder is `slugify(prompt)_s<seed>`; a later line whose folder name is taken by an
earlier one gets `_<hash8>` of its own prompt and config appended. The mapping depends only on
the file, so running the same file again finds the same folders.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import config as C
from ..errors import one_line

LINE_KEYS = ("prompt", "seed", "preset", "negative_prompt", "overrides")


class BatchError(ValueError):
    """A bad prompts file, line or batch option: the CLI prints the one-line message, exits 2."""


@dataclass
class JobSpec:
    """One line of the prompts file, checked and fully resolved."""
    # 1-based line number in the prompts file
    line: int
    prompt: str
    # the line's own fields, as given (for the index); the resolved values are in `cfg`
    preset: str
    seed: int
    negative_prompt: str
    overrides: dict[str, Any] = field(default_factory=dict)
    cfg: C.Config = field(default_factory=C.Config)
    # run folder name under ROOT
    run: str = ""

    def to_wire(self) -> dict:
        """A JSON-able dict a worker process turns back into the job (`from_wire`)."""
        return {"line": self.line, "prompt": self.prompt, "preset": self.preset,
                "seed": self.seed, "negative_prompt": self.negative_prompt,
                "overrides": self.overrides, "config": C.to_dict(self.cfg), "run": self.run}

    @classmethod
    def from_wire(cls, d: dict) -> "JobSpec":
        return cls(line=d["line"], prompt=d["prompt"], preset=d["preset"], seed=d["seed"],
                   negative_prompt=d["negative_prompt"], overrides=d["overrides"],
                   cfg=C.from_dict(d["config"]), run=d["run"])


def load_jobs(path: str | Path, *, preset: str | None = None,
              config_data: dict | None = None, overrides: dict[str, Any] | None = None,
              gpus_per_job: float | None = None) -> list[JobSpec]:
    """Read and check a prompts file; return one `JobSpec` per prompt line, in file order.

    Args:
        path: a `.txt` or `.jsonl` prompts file.
        preset: the preset of lines that name none (None: `config.DEFAULT_PRESET`).
        config_data: a `--config` file's mapping of sections, applied over the preset.
        overrides: `{"section.key": value}` from the command line, applied over `config_data`.
        gpus_per_job: GPUs each job will see (0: CPU jobs; None: not known yet, not checked).
    Returns:
        The jobs, each with its resolved `Config` and run folder name.
    Raises:
        BatchError: "FILE:LINE: ..." for the first bad line (or a file-level problem).
    """
    from ..generate import slugify  # (torch: imported only when a file is read)

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        raise BatchError(f"{path}: a prompts file must end in .txt (one prompt per line) or "
                         ".jsonl (one JSON object per line)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BatchError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise BatchError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise BatchError(f"{path}: cannot read ({e.strerror or e})") from None

    default_preset = preset or C.DEFAULT_PRESET
    if default_preset not in C.PRESETS:
        raise BatchError(f"unknown preset {default_preset!r}: choose one of {', '.join(C.PRESETS)}")
    priors: dict[tuple[str, bool], str] = {}   # resolve each prior once
    jobs: list[JobSpec] = []
    seen: dict[str, int] = {}                  # job identity -> line
    names: set[str] = set()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        where = f"{path}:{lineno}"
        try:
            fields = _parse_line(s, suffix)
            job = _make_job(fields, lineno, default_preset, config_data, overrides or {},
                            gpus_per_job, priors)
        except (C.ConfigError, ValueError) as e:  # ConfigError, PriorError, PromptError, ...
            raise BatchError(f"{where}: {one_line(e)}") from None
        # 1. duplicates: the same prompt and config twice would race for one folder
        ident = _identity(job)
        if ident in seen:
            raise BatchError(f"{where}: the same prompt and config as line {seen[ident]}; remove "
                             "one of them or give it another seed")
        seen[ident] = lineno
        # 2. folder name: slug + seed, plus a hash of the job when an earlier line took the name
        name = f"{slugify(job.prompt)}_s{job.cfg.train.seed}"
        if name in names:
            name = f"{name}_{ident[:8]}"
        names.add(name)
        job.run = name
        jobs.append(job)
    if not jobs:
        raise BatchError(f"{path}: no prompts (blank lines and '#' comments are skipped)")
    return jobs


def _parse_line(s: str, suffix: str) -> dict[str, Any]:
    if suffix == ".txt":
        return {"prompt": s}
    try:
        d = json.loads(s)
    except json.JSONDecodeError as e:
        raise BatchError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(d, dict):
        raise BatchError('a .jsonl line must be a JSON object such as {"prompt": "a red cube"}')
    unknown = [k for k in d if k not in LINE_KEYS]
    if unknown:
        raise BatchError(f"unknown key(s) {', '.join(map(repr, unknown))}: a line may hold "
                         f"{', '.join(LINE_KEYS)}")
    if "prompt" not in d:
        raise BatchError('missing "prompt"')
    return d


def _make_job(d: dict, lineno: int, default_preset: str, config_data: dict | None,
              overrides: dict[str, Any], gpus_per_job: float | None,
              priors: dict[tuple[str, bool], str]) -> JobSpec:
    from ..generate import MAX_PROMPT_CHARS

    # 1. the line's fields and their types
    prompt = d["prompt"]
    if not isinstance(prompt, str):
        raise BatchError(f'"prompt" must be a string, got {prompt!r}')
    if not prompt.strip():
        raise BatchError("the prompt is empty")
    prompt = prompt.strip()
    if len(prompt) > MAX_PROMPT_CHARS:  # the same limit as `generate.prepare`
        raise BatchError(f"the prompt is {len(prompt)} characters long; the limit is "
                         f"{MAX_PROMPT_CHARS}")
    preset = d.get("preset", default_preset)
    if preset not in C.PRESETS:
        raise BatchError(f"unknown preset {preset!r}: choose one of {', '.join(C.PRESETS)}")
    seed = d.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise BatchError(f'"seed" must be a whole number >= 0, got {seed!r}')
    negative = d.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise BatchError(f'"negative_prompt" must be a string, got {negative!r}')
    line_over = d.get("overrides", {})
    if isinstance(line_over, list):
        if not all(isinstance(x, str) for x in line_over):
            raise BatchError('"overrides" must be an object or a list of "KEY=VALUE" strings')
        line_over = C.parse_override_strings(line_over)
    if not isinstance(line_over, dict):
        raise BatchError('"overrides" must be an object such as {"train.iters": 800} or a list '
                         'of "KEY=VALUE" strings')

    # 2. the config, in precedence order
    cfg = C.preset_config(preset)
    if config_data:
        cfg = C.from_dict(config_data, base=cfg)
    cfg = C.apply_overrides(cfg, overrides)
    line_fields = {}
    if seed is not None:
        line_fields["train.seed"] = seed
    if negative is not None:
        line_fields["guidance.negative_prompt"] = negative
    cfg = C.apply_overrides(cfg, {**line_fields, **line_over})
    C.validate(cfg)

    # 3. the prior (as `generate.prepare` resolves it) and the prompt's words
    _check_prior(cfg, prompt, priors)

    # 4. the device: each job sees only its own GPUs (CUDA_VISIBLE_DEVICES), as cuda:0...
    dev = cfg.train.device
    if gpus_per_job is not None and dev.startswith("cuda"):
        visible = int(gpus_per_job) if gpus_per_job >= 1 else int(gpus_per_job > 0)
        index = int(dev.split(":")[1]) if ":" in dev else 0
        if index >= visible:
            raise BatchError(f"train.device={dev} but each job sees {visible} GPU(s) "
                             f"(--gpus-per-job {gpus_per_job:g}); use auto or cuda")
    return JobSpec(line=lineno, prompt=prompt, preset=preset, seed=cfg.train.seed,
                   negative_prompt=cfg.guidance.negative_prompt,
                   overrides={k: v for k, v in line_over.items()}, cfg=cfg)


def _check_prior(cfg: C.Config, prompt: str, cache: dict[tuple[str, bool], str]) -> None:
    from ..priors import resolve_prior
    from ..priors.pixel import is_pixel_prior

    key = (cfg.prior.name, cfg.prior.offline)
    if key not in cache:
        cache[key] = resolve_prior(cfg.prior.name, offline=cfg.prior.offline)  # PriorError
    loc = cache[key]
    pixel = loc == "tiny" or is_pixel_prior(loc)
    C.validate(cfg, latent_prior=not pixel)
    if pixel and loc != "tiny":
        _check_words(loc, prompt)


def _check_words(loc: str, prompt: str) -> None:
    """A non-permissive pixel prior (e.g. ToyWorld) knows only its vocabulary: check the prompt
    against it from its config alone, without loading weights (PixelPrior.check_prompt's rule)."""
    from ..priors import PromptError
    from ..priors.pixel import _SPLIT, PixelPriorConfig

    p = Path(loc)
    if p.is_dir():
        text, where = (p / "config.json").read_text(), str(p / "config.json")
    else:
        from safetensors import safe_open
        with safe_open(str(p), framework="pt") as f:
            text, where = (f.metadata() or {}).get("config", "{}"), str(p)
    pc = PixelPriorConfig.from_json(text, where)
    if pc.permissive:
        return
    vocab = set(pc.vocab)
    unknown = [w for w in dict.fromkeys(_SPLIT.split(prompt.lower())) if w and w not in vocab]
    if unknown:
        raise PromptError(f"the {pc.name} prior does not know the word(s) {', '.join(unknown)}; "
                          f"use only these words: {' '.join(pc.vocab)}")


def _identity(job: JobSpec) -> str:
    """A hash of what a run depends on: the prompt, the preset name and the resolved config."""
    blob = json.dumps({"prompt": job.prompt, "preset": job.preset, "config": C.to_dict(job.cfg)},
                      sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()
