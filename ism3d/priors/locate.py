"""Where a Stable Diffusion prior comes from: a name -> "tiny" | a local path | a hub id, cheaply,
before anything heavy is loaded; plus the loading helpers every diffusers prior shares.

- a hub id (default `stabilityai/stable-diffusion-2-1-base`): the HF cache is checked first
  (`huggingface_hub.try_to_load_from_cache`, no network); if the model is not there, a ~3 s socket
  probe of the hub host (HF_ENDPOINT, or the https proxy) decides whether it can be downloaded.
  HF_HUB_OFFLINE=1 or `prior.offline=true` skip the probe. Unreachable -> one-line PriorError.
  A cached or freshly downloaded hub model is then loaded from its snapshot FOLDER, by the very
  same code as a local folder.
- a local diffusers folder (what `StableDiffusionPipeline.save_pretrained` writes).
- a single original-layout `.safetensors` / `.ckpt` file: `inferred_config_repo` names the diffusers
  repo whose configs `from_single_file` needs and `config_source` finds them (a local folder, the
  HF cache, or the reachable hub).

The prior itself is in stable_diffusion.py (SD 1.x/2.x) and sdxl.py (SDXL).
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor

from .base import PriorError

DEFAULT_PRIOR = "stabilityai/stable-diffusion-2-1-base"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_COMPONENTS = ("text_encoder_2", "tokenizer_2")  # also read for an SDXL model
_WEIGHT_NAMES = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
PROBE_TIMEOUT_S = 3.0


# ---------------------------------------------------------------------------------------------
# Resolution: name -> "tiny" | local path | hub id to download. Cheap: no model is loaded.
# ---------------------------------------------------------------------------------------------
def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (not at import time)."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True if a TCP connection to the hub host (or to the https proxy) opens within `timeout`.

    The probe runs in a daemon thread so that a slow DNS lookup cannot hold us past the timeout.
    HF_HUB_OFFLINE=1 answers False without probing.
    """
    if hub_offline():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    u = urlparse(endpoint if "://" in endpoint else "https://" + endpoint)
    proxy = (os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")) if u.scheme == "https" else \
        (os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy"))
    if proxy:
        u = urlparse(proxy if "://" in proxy else "http://" + proxy)
    host, port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
    if not host:
        return False
    ok = []

    def probe():
        with contextlib.suppress(OSError):  # unreachable: `ok` stays empty
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)

    th = threading.Thread(target=probe, daemon=True)
    th.start()
    th.join(timeout + 0.5)
    return bool(ok)


def cached_or_reachable(repo_id: str, offline: bool, cached: Callable[[str], Path | None],
                        offline_error: Callable[[str], Exception]) -> str:
    """The one offline policy for every hub id ism3d loads (priors, Shap-E, CLIP): the id's
    HF-cache snapshot folder if `cached(repo_id)` finds a usable one (no network); else the id
    itself when the hub can be reached (a ~3 s probe, skipped offline); else `offline_error(id)`."""
    snap = cached(repo_id)
    if snap is not None:
        return str(snap)
    if offline or hub_offline() or not hub_reachable():
        raise offline_error(repo_id)
    return repo_id


def _offline_error(repo_id: str) -> PriorError:
    return PriorError(
        f"model '{repo_id}' is not available offline: download it where there is internet "
        f"(huggingface-cli download {repo_id}) and copy the HF cache here, or pass a local "
        f"folder/file with --prior PATH")


def weights_file_like(name: str) -> bool:
    """A name that can only be a local file (a weights suffix, or path-like): never a hub id."""
    return name.lower().endswith((".pt", ".bin", ".safetensors", ".ckpt")) or _looks_like_path(name)


def hub_file_offline_error(what: str, repo_id: str) -> PriorError:
    """One line for an extra file (LoRA, embedding, VAE) named by a hub id that cannot be had offline."""
    return PriorError(f"{what} '{repo_id}' is not available offline: download it where there is internet "
                      f"(huggingface-cli download {repo_id}) and copy the HF cache here, or give a local "
                      f"file/folder instead")


def hub_weights_file(what: str, repo_id: str, prefer: tuple[str, ...], offline: bool = False) -> Path:
    """The weights file of a small hub repo (a LoRA, an embedding): the HF cache first, the hub if
    reachable. `prefer`: file names tried first; else the repo's only .safetensors/.bin/.pt file.
    Raises PriorError (one line)."""
    from huggingface_hub import snapshot_download

    local = offline or hub_offline() or not hub_reachable()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            folder = Path(snapshot_download(repo_id, local_files_only=local,
                                            allow_patterns=["*.safetensors", "*.bin", "*.pt"]))
    except Exception as e:  # not cached offline, unknown repo, network errors
        if local:
            raise hub_file_offline_error(what, repo_id) from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PriorError(f"{what} '{repo_id}': cannot download it: {first}") from None
    for name in prefer:
        if (folder / name).is_file():
            return folder / name
    files = sorted(f for f in folder.rglob("*") if f.suffix in (".safetensors", ".bin", ".pt"))
    if len(files) != 1:
        raise PriorError(f"{what} '{repo_id}': {len(files)} weights files in the repo; download the one you "
                         f"want and give its path")
    return files[0]


def hf_cache_folder(repo_id: str) -> Path | None:
    """The HF-cache snapshot folder (main revision) holding `repo_id`'s model_index.json, or None.
    Never touches the network; the caller checks the folder is complete."""
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(repo_id, "model_index.json")
    except ValueError:  # malformed id
        return None
    return Path(hit).parent if isinstance(hit, str) else None


def cached_snapshot(repo_id: str, need_weights: bool = True) -> Path | None:
    """The HF-cache snapshot folder of `repo_id` (main revision) if it holds a diffusers SD model
    (configs, and weights for unet, vae and text_encoder unless `need_weights` is False); None
    otherwise. Never touches the network."""
    folder = hf_cache_folder(repo_id)
    if folder is None:
        return None
    if need_weights:
        return folder if missing_parts(folder) == [] else None
    return folder if all((folder / c).is_dir() for c in COMPONENTS) else None


def missing_parts(folder: Path) -> list[str]:
    """Components of a diffusers SD folder that are absent (config or weights)."""
    missing = []
    for comp in COMPONENTS:
        d = folder / comp
        if comp in _WEIGHT_NAMES:
            if not (d / "config.json").is_file() or weights_variant(d, comp) is False:
                missing.append(comp)
        elif not d.is_dir():
            missing.append(comp)
    return missing


def weights_variant(d: Path, comp: str) -> str | None | bool:
    """None: plain weights present; "fp16": only fp16-variant weights; False: no weights."""
    stem = _WEIGHT_NAMES[comp]
    if (d / f"{stem}.safetensors").is_file() or (d / f"{stem}.bin").is_file() \
            or (d / f"{stem}.safetensors.index.json").is_file():
        return None
    if (d / f"{stem}.fp16.safetensors").is_file() or (d / f"{stem}.fp16.bin").is_file():
        return "fp16"
    return False


def _looks_like_path(name: str) -> bool:
    """A weights-file suffix, a leading / . ~, a backslash, or anything that is not `org/name`."""
    if name.lower().endswith(SINGLE_FILE_SUFFIXES) or "\\" in name:
        return True
    return name.startswith(("/", ".", "~")) or not _HUB_ID.match(name)


TOY_PRIOR_DIR = Path(__file__).resolve().parents[1] / "assets" / "toyworld"


def resolve_prior(name: str, offline: bool = False) -> str:
    """Decide where a prior comes from, without loading it.

    Args:
        name: "tiny", "toy" (the shipped ToyWorld prior), a hub id, a local diffusers/pixel-prior
            folder or a single weights file.
        offline: never use the network (as HF_HUB_OFFLINE=1).

    Returns:
        "tiny"; or the absolute path of an existing local folder/file (for a hub id: its HF-cache
        snapshot folder); or the hub id itself when it is not cached but the hub is reachable
        (`load_prior` downloads it).

    Raises:
        PriorError: "no such file or folder: PATH" for a path-like name that does not exist;
        the one-line offline message for a hub id that is neither cached nor reachable.
    """
    name = name.strip()
    if not name:
        raise PriorError("prior.name is empty: use tiny, a hub id, a folder or a .safetensors/.ckpt file")
    if name == "tiny":
        return "tiny"
    if name == "toy":  # the ToyWorld prior shipped inside the package (ism3d/toyworld)
        return str(TOY_PRIOR_DIR)
    path = Path(os.path.expanduser(name))
    if path.exists():
        return str(path.resolve())
    if _looks_like_path(name):
        raise PriorError(f"no such file or folder: {name}")
    return cached_or_reachable(name, offline, cached_snapshot, _offline_error)


def download(repo_id: str) -> Path:
    """Download the parts of a diffusers SD repo we read (fp32 safetensors + configs)."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            repo_id,
            allow_patterns=["model_index.json", *[f"{c}/*" for c in COMPONENTS + SDXL_COMPONENTS]],
            ignore_patterns=["*.bin", "*.ckpt", "*.msgpack", "*.onnx", "*.pb", "*.h5", "*fp16*", "*non_ema*"],
        )
    except Exception as e:  # network errors, gated repos, unknown ids
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise PriorError(f"cannot download '{repo_id}' from the hub: {first}") from None
    return Path(folder)


# ---------------------------------------------------------------------------------------------
# The prior
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet_hf():
    """Silence diffusers/transformers info logs and progress bars while loading (errors still
    show); restores their previous settings."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in (dlog, tlog)]
    for lib, _, _ in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, verbosity, bar in saved:
            lib.set_verbosity(verbosity)
            (lib.enable_progress_bar if bar else lib.disable_progress_bar)()


def resolve_dtype(name: str, device: torch.device, auto: torch.dtype | None = None) -> torch.dtype:
    """auto -> `auto` if given, else fp16 on CUDA and fp32 elsewhere; fp16 | bf16 | fp32 as named."""
    table = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if name == "auto":
        if auto is not None:
            return auto
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in table:
        raise PriorError(f"prior.dtype: {name!r} is not one of auto, fp16, bf16, fp32")
    return table[name]


def inferred_config_repo(path: Path) -> str:
    """The diffusers repo whose configs `from_single_file` would use for this checkpoint,
    inferred from the checkpoint's key names and shapes without reading its tensors."""
    from diffusers.loaders.single_file_utils import fetch_diffusers_config

    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                meta = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
        else:
            sd = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
            sd = sd.get("state_dict", sd)
            meta = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
    except Exception as e:
        raise PriorError(f"cannot read {path} as a checkpoint: {(str(e).splitlines() or ['?'])[0]}") from None
    repo = fetch_diffusers_config(meta)["pretrained_model_name_or_path"]
    if repo == "stabilityai/stable-diffusion-2-1":
        warnings.warn(f"{path.name}: diffusers assumes an SD 2.x single file is the 768px v-prediction "
                      "SD 2.1; for a 512px eps model (SD 2.0/2.1-base) set "
                      "prior.single_file_config=stabilityai/stable-diffusion-2-1-base", stacklevel=3)
    return repo


def config_source(src: str, weights: Path, offline: bool) -> str:
    """Where `from_single_file` reads its configs: a local folder, or a reachable hub id."""
    p = Path(os.path.expanduser(src))
    if p.is_dir():
        return str(p.resolve())
    if _looks_like_path(src):
        raise PriorError(f"no such file or folder: {src}")
    snap = cached_snapshot(src, need_weights=False)
    if snap is not None:
        return str(snap)
    if offline or hub_offline() or not hub_reachable():
        raise PriorError(
            f"{weights.name} needs the diffusers configs of '{src}', which are not available offline: "
            f"set prior.single_file_config to a local diffusers folder of the same architecture, or "
            f"download them where there is internet (huggingface-cli download {src} --exclude '*.bin' "
            f"'*.safetensors') and copy the HF cache here")
    return src
