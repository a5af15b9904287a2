"""Custom models (issue #26): textual inversion, LoRA, SDXL, low-VRAM mode, on tiny random models
of the real layouts, loaded through the user's path (`load_prior` / `ism3d generate`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ism3d.config import PriorConfig
from ism3d.priors import PriorError, load_prior
from tiny_sd import make_tiny_sd_wide_text, make_tiny_sdxl

UNET_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"   # a Linear [32, 32] in tiny SD 2
UNET_CONV = "down_blocks.0.resnets.0.conv1"                              # a Conv2d [32, 32, 3, 3]
TE_Q = "text_model.encoder.layers.0.self_attn.q_proj"                   # a Linear [32, 32]
TINY_GEN = ["train.iters=2", "train.batch=2", "render.width=64", "render.height=64", "init.num_points=300",
            "strategy.max_gaussians=600", "guidance.warmup_iters=2", "guidance.xs_inv_steps=1",
            "guidance.delta_s=1000", "output.video_frames=4", "output.video_size=32", "output.mesh_resolution=16",
            "output.mesh_faces=200", "train.checkpoint_every=0", "train.preview_every=0", "camera.decay_every=1"]


ROOT = Path(__file__).resolve().parents[1]


def ism3d(*args, timeout=600, cwd=None):
    return subprocess.run([sys.executable, "-m", "ism3d", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"), cwd=cwd)


@pytest.fixture(scope="module")
def xl_dir(tmp_path_factory) -> str:
    return str(make_tiny_sdxl(tmp_path_factory.mktemp("xl") / "xl"))


@pytest.fixture(scope="module")
def wide_dir(tmp_path_factory) -> str:
    """Tiny SD 2 whose text encoder is 1024 wide, like SD 2.x (the reference's embedding file fits)."""
    return str(make_tiny_sd_wide_text(tmp_path_factory.mktemp("wide") / "sd"))


def _sub(net, name):
    """net.get_submodule(name), allowing for transformers 5's CLIPTextModel without `text_model.`."""
    try:
        return net.get_submodule(name)
    except AttributeError:
        return net.get_submodule(name.removeprefix("text_model."))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# SDXL
# ---------------------------------------------------------------------------------------------
def test_sdxl_embedding_packs_both_encoders_and_eps_matches_a_direct_unet_call(xl_dir):
    p = load_prior(PriorConfig(name=xl_dir), "cpu")
    assert type(p).__name__ == "StableDiffusionXLPrior" and p.image_size == 64
    emb = p.embed(["a red cube", ""])                                    # [2, 78, 32 + 48]
    assert emb.shape == (2, 78, 80)
    assert torch.count_nonzero(emb[1]) == 0                              # force_zeros_for_empty_prompt
    # independent: both encoders' penultimate states and encoder 2's projection, by hand
    hs = []
    for tok, enc in ((p.tokenizer, p.text_encoder), (p.tokenizer_2, p.text_encoder_2)):
        ids = tok(["a red cube"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        out = enc(ids, output_hidden_states=True)
        hs.append(out.hidden_states[-2])
    pooled = out.text_embeds                                             # [1, 48]
    torch.testing.assert_close(emb[0, :77], torch.cat(hs, -1)[0])
    torch.testing.assert_close(emb[0, 77, :48], pooled[0])
    assert torch.count_nonzero(emb[0, 77, 48:]) == 0
    x, t = torch.randn(1, 4, 8, 8, generator=_gen()), torch.tensor([400])
    want = p.unet(x, t, encoder_hidden_states=torch.cat(hs, -1),
                  added_cond_kwargs={"text_embeds": pooled, "time_ids": torch.tensor([[64., 64, 0, 0, 64, 64]])}).sample
    torch.testing.assert_close(p.eps(x, t, emb[:1]), want)


def test_sdxl_view_prompts_and_perp_neg_interpolate_both_encoders(xl_dir):
    from ism3d.guidance.prompts import ViewPrompts

    p = load_prior(PriorConfig(name=xl_dir), "cpu")
    vp = ViewPrompts(p, "a red cube", "blurry")
    y = vp.positive(torch.tensor([45.0]))                                # halfway front/side
    f, s = p.embed(["a red cube, front view", "a red cube, side view"])
    torch.testing.assert_close(y[0], 0.5 * f + 0.5 * s)                 # context and pooled alike
    x, t = torch.randn(1, 4, 8, 8, generator=_gen()), torch.tensor([300])
    pooled = 0.5 * f[77, :48] + 0.5 * s[77, :48]
    want = p.unet(x, t, encoder_hidden_states=(0.5 * f[:77] + 0.5 * s[:77])[None],
                  added_cond_kwargs={"text_embeds": pooled[None],
                                     "time_ids": torch.tensor([[64., 64, 0, 0, 64, 64]])}).sample
    torch.testing.assert_close(p.eps(x, t, y), want)


def test_ism_step_with_perp_neg_runs_through_the_sdxl_prior(xl_dir):
    from ism3d.config import GuidanceConfig
    from ism3d.guidance import make_guidance

    p = load_prior(PriorConfig(name=xl_dir), "cpu")
    g = make_guidance(p, GuidanceConfig(perp_neg=True, xs_inv_steps=1, delta_s=1000, negative_prompt="blurry"),
                      "a red cube")
    img = torch.rand(2, 3, 64, 64, generator=_gen(), requires_grad=True)
    out = g(img, torch.tensor([0.0, 120.0]), 0.5, _gen(1))
    out.loss.backward()
    assert torch.isfinite(out.loss) and img.grad.abs().sum() > 0


def test_sdxl_vae_runs_fp32_under_fp16_unless_it_is_fp16_safe(xl_dir, tmp_path):
    from diffusers import AutoencoderKL

    from ism3d.priors.sdxl import StableDiffusionXLPrior as XL

    vae = AutoencoderKL.from_pretrained(xl_dir, subfolder="vae")
    assert vae.config.force_upcast and XL.vae_dtype_for(vae, torch.float16) == torch.float32
    assert XL.vae_dtype_for(vae, torch.bfloat16) == torch.bfloat16
    # an fp16-fix style VAE (force_upcast false) given with prior.vae replaces the model's own
    fixed = AutoencoderKL.from_config({**vae.config, "force_upcast": False, "scaling_factor": 0.2})
    fixed.save_pretrained(tmp_path / "vae_fix")
    assert XL.vae_dtype_for(fixed, torch.float16) == torch.float16
    p = load_prior(PriorConfig(name=xl_dir, vae=str(tmp_path / "vae_fix")), "cpu")
    assert p.scaling_factor == 0.2 and p.custom["vae"] == str(tmp_path / "vae_fix")
    img = torch.rand(1, 3, 64, 64, generator=_gen())
    mean = p.vae.encoder(img * 2 - 1)
    mean = p.vae.quant_conv(mean).chunk(2, 1)[0]
    torch.testing.assert_close(p.encode(img), mean * 0.2)


def test_sdxl_single_file_loads_the_same_model_as_its_folder(xl_dir, tmp_path):
    from tiny_sd import save_ldm_single_file_sdxl

    f = save_ldm_single_file_sdxl(xl_dir, tmp_path / "xl.safetensors")
    a = load_prior(PriorConfig(name=xl_dir), "cpu")
    b = load_prior(PriorConfig(name=str(f), single_file_config=xl_dir), "cpu")
    assert type(b).__name__ == "StableDiffusionXLPrior"
    emb = a.embed(["a red cube"])
    torch.testing.assert_close(b.embed(["a red cube"]), emb)          # both text encoders, pooled
    x, t = torch.randn(1, 4, 8, 8, generator=_gen()), torch.tensor([300])
    torch.testing.assert_close(b.eps(x, t, emb), a.eps(x, t, emb))
    img = torch.rand(1, 3, 64, 64, generator=_gen(1))
    torch.testing.assert_close(b.encode(img), a.encode(img))


def test_sdxl_resolution_512_style_override_changes_latents_and_time_ids(xl_dir):
    p = load_prior(PriorConfig(name=xl_dir, resolution=128), "cpu")
    assert p.latent_shape == (4, 16, 16) and p._time_ids.tolist() == [[128.0, 128, 0, 0, 128, 128]]


def test_generate_with_the_sdxl_preset_end_to_end(xl_dir, tmp_path):
    out = tmp_path / "xl_run"
    r = ism3d("generate", "a red cube", "--preset", "sdxl", "--prior", xl_dir, "--out", str(out), "--quiet",
              "--device", "cpu", *TINY_GEN)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["preset"] == "sdxl" and s["iterations"] == 2 and s["nonfinite_steps"] == 0
    assert (out / "gaussians.ply").stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# Textual inversion
# ---------------------------------------------------------------------------------------------
def test_reference_taylor_swift_file_adds_its_token(wide_dir, tmp_path):
    """The reference's layout: one-key safetensors {"<Taylor_Swift>": [1024]} on SD 2.x width."""
    vec = torch.randn(1024, generator=_gen(1))
    f = tmp_path / "taylor.safetensors"
    save_file({"<Taylor_Swift>": vec}, str(f))
    p = load_prior(PriorConfig(name=wide_dir, textual_inversion=(f"{f}:<Taylor_Swift>",)), "cpu")
    assert p.custom["textual_inversion"] == [{"source": str(f), "token": "<Taylor_Swift>", "vectors": 1}]
    tid = p.tokenizer.convert_tokens_to_ids("<Taylor_Swift>")
    ids = p.tokenizer("A <Taylor_Swift> wearing sunglasses.").input_ids
    assert tid in ids and ids.count(tid) == 1
    torch.testing.assert_close(p.text_encoder.get_input_embeddings().weight[tid], vec)
    # the embedding flows into the condition: changing the vector changes embed()
    e1 = p.embed(["A <Taylor_Swift> wearing sunglasses."])
    with torch.no_grad():
        p.text_encoder.get_input_embeddings().weight[tid] += 1.0
    p._cache.clear()
    assert not torch.allclose(e1, p.embed(["A <Taylor_Swift> wearing sunglasses."]))


def test_a1111_multi_vector_file_expands_in_the_prompt(tiny_sd_dir, tmp_path):
    vecs = torch.randn(3, 32, generator=_gen(2))
    f = tmp_path / "style.pt"
    torch.save({"string_to_param": {"*": vecs}, "name": "mystyle"}, f)
    p = load_prior(PriorConfig(name=tiny_sd_dir, textual_inversion=(str(f),)), "cpu")
    assert p.custom["textual_inversion"][0]["token"] == "mystyle"
    from ism3d.priors.textual_inversion import expand_prompt
    assert expand_prompt("a mystyle cat", p.tokenizer) == "a mystyle mystyle_1 mystyle_2 cat"
    table = p.text_encoder.get_input_embeddings().weight
    for i, name in enumerate(["mystyle", "mystyle_1", "mystyle_2"]):
        torch.testing.assert_close(table[p.tokenizer.convert_tokens_to_ids(name)], vecs[i])


def test_width_mismatch_is_one_line_naming_both_widths(tiny_sd_dir, tmp_path):
    f = tmp_path / "sd2.safetensors"
    save_file({"<x>": torch.zeros(1024)}, str(f))
    with pytest.raises(PriorError) as e:
        load_prior(PriorConfig(name=tiny_sd_dir, textual_inversion=(str(f),)), "cpu")
    msg = str(e.value)
    assert "1024" in msg and "32" in msg and "\n" not in msg


# ---------------------------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------------------------
def _lora_tensors(seed=3, r=2):
    g = _gen(seed)
    return {"qA": torch.randn(r, 32, generator=g) * 0.3, "qB": torch.randn(32, r, generator=g) * 0.3,
            "cA": torch.randn(r, 32, 3, 3, generator=g) * 0.1, "cB": torch.randn(32, r, 1, 1, generator=g) * 0.1,
            "tA": torch.randn(r, 32, generator=g) * 0.3, "tB": torch.randn(32, r, generator=g) * 0.3}


def _hooked(prior, mods, scale):
    """Unfused LoRA: y = W x + scale * B (A x), added by forward hooks (the independent twin)."""
    hs = []
    for mod, A, B in mods:
        if isinstance(mod, torch.nn.Conv2d):
            fn = lambda m, i, o, A=A, B=B: o + scale * F.conv2d(F.conv2d(i[0], A, padding=m.padding), B)  # noqa: E731
        else:
            fn = lambda m, i, o, A=A, B=B: o + scale * F.linear(F.linear(i[0], A), B)  # noqa: E731
        hs.append(mod.register_forward_hook(fn))
    return hs


def test_lora_changes_eps_and_text_by_exactly_scale_BA(tiny_sd_dir, tmp_path):
    T = _lora_tensors()
    f = tmp_path / "peft_lora.safetensors"   # diffusers/peft layout
    save_file({f"unet.{UNET_Q}.lora_A.weight": T["qA"], f"unet.{UNET_Q}.lora_B.weight": T["qB"],
               f"unet.{UNET_CONV}.lora_A.weight": T["cA"], f"unet.{UNET_CONV}.lora_B.weight": T["cB"],
               f"text_encoder.{TE_Q}.lora_A.weight": T["tA"], f"text_encoder.{TE_Q}.lora_B.weight": T["tB"]}, str(f))
    fused = load_prior(PriorConfig(name=tiny_sd_dir, lora=(f"{f}:0.7",)), "cpu")
    assert fused.custom["lora"] == [{"source": str(f), "scale": 0.7, "modules": {"unet": 2, "text_encoder": 1}}]
    base = load_prior(PriorConfig(name=tiny_sd_dir), "cpu")
    W0 = base.unet.get_submodule(UNET_Q).weight.double()
    torch.testing.assert_close(fused.unet.get_submodule(UNET_Q).weight.double(),
                               W0 + 0.7 * T["qB"].double() @ T["qA"].double(), rtol=0, atol=1e-6)
    hooks = _hooked(base, [(base.unet.get_submodule(UNET_Q), T["qA"], T["qB"]),
                           (base.unet.get_submodule(UNET_CONV), T["cA"], T["cB"]),
                           (_sub(base.text_encoder, TE_Q), T["tA"], T["tB"])], 0.7)
    emb_f, emb_b = fused.embed(["a red car"]), base.embed(["a red car"])
    torch.testing.assert_close(emb_f, emb_b, rtol=1e-5, atol=1e-5)
    x, t = torch.randn(2, 4, 8, 8, generator=_gen()), torch.tensor([100, 700])
    e_f, e_b = fused.eps(x, t, emb_f.expand(2, -1, -1)), base.eps(x, t, emb_b.expand(2, -1, -1))
    torch.testing.assert_close(e_f, e_b, rtol=1e-5, atol=1e-5)
    for h in hooks:
        h.remove()
    assert (base.eps(x, t, emb_b.expand(2, -1, -1)) - e_f).abs().max() > 1e-3   # the LoRA did something


def test_kohya_layout_with_alpha_equals_the_peft_layout(tiny_sd_dir, tmp_path):
    T = _lora_tensors(seed=4)
    kq = "lora_unet_" + UNET_Q.replace(".", "_")
    kt = "lora_te_" + TE_Q.replace(".", "_")
    kohya = tmp_path / "kohya.safetensors"   # alpha 1 with rank 2: effective scale 0.5
    save_file({f"{kq}.lora_down.weight": T["qA"], f"{kq}.lora_up.weight": T["qB"], f"{kq}.alpha": torch.tensor(1.0),
               f"{kt}.lora_down.weight": T["tA"], f"{kt}.lora_up.weight": T["tB"], f"{kt}.alpha": torch.tensor(1.0)},
              str(kohya))
    peft = tmp_path / "peft.safetensors"
    save_file({f"unet.{UNET_Q}.lora_A.weight": T["qA"], f"unet.{UNET_Q}.lora_B.weight": T["qB"],
               f"text_encoder.{TE_Q}.lora_A.weight": T["tA"], f"text_encoder.{TE_Q}.lora_B.weight": T["tB"]},
              str(peft))
    a = load_prior(PriorConfig(name=tiny_sd_dir, lora=(str(kohya),)), "cpu")
    b = load_prior(PriorConfig(name=tiny_sd_dir, lora=(f"{peft}:0.5",)), "cpu")
    for net, mod in (("unet", UNET_Q), ("text_encoder", TE_Q)):
        torch.testing.assert_close(_sub(getattr(a, net), mod).weight, _sub(getattr(b, net), mod).weight)


def test_lora_for_another_model_names_the_first_mismatching_module(tiny_sd_dir, tmp_path):
    f = tmp_path / "wide.safetensors"
    save_file({f"unet.{UNET_Q}.lora_A.weight": torch.zeros(2, 320),
               f"unet.{UNET_Q}.lora_B.weight": torch.zeros(320, 2)}, str(f))
    base_w = load_prior(PriorConfig(name=tiny_sd_dir), "cpu").unet.get_submodule(UNET_Q).weight.clone()
    with pytest.raises(PriorError) as e:
        load_prior(PriorConfig(name=tiny_sd_dir, lora=(str(f),)), "cpu")
    assert f"unet.{UNET_Q}" in str(e.value) and "\n" not in str(e.value)
    g = tmp_path / "other.safetensors"
    save_file({"unet.no_such_block.proj.lora_A.weight": torch.zeros(2, 4),
               "unet.no_such_block.proj.lora_B.weight": torch.zeros(4, 2)}, str(g))
    with pytest.raises(PriorError, match="no_such_block.proj"):
        load_prior(PriorConfig(name=tiny_sd_dir, lora=(str(g),)), "cpu")
    assert torch.equal(base_w, load_prior(PriorConfig(name=tiny_sd_dir), "cpu").unet.get_submodule(UNET_Q).weight)


def test_cli_bad_embedding_exits_2_with_one_line_and_writes_nothing(tiny_sd_dir, tmp_path):
    """(A LoRA that does not fit raises the same PriorError, tested above through load_prior.)"""
    ti = tmp_path / "wide.safetensors"
    save_file({"<x>": torch.zeros(1024)}, str(ti))
    out = tmp_path / "never"
    r = ism3d("generate", "a red cube", "--preset", "tiny", "--prior", tiny_sd_dir, "--out", str(out),
              "--quiet", "render.width=64", "render.height=64", f"prior.textual_inversion={ti}")
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "1024" in lines[0] and "32" in lines[0], r.stderr
    assert not out.exists()


def test_the_reference_ts_lora_config_runs_with_an_embedding_file(wide_dir, tmp_path):
    """examples/luciddreamer/ts_lora.yaml as shipped (prior.textual_inversion:
    step_inv_1000.safetensors:<Taylor_Swift>, a path relative to where ism3d runs), with an
    embedding file in the reference's layout ({"<Taylor_Swift>": tensor[1024]}) on a tiny SD 2 whose
    text encoder is 1024 wide; plus a LoRA. Both are recorded in summary.json."""
    save_file({"<Taylor_Swift>": torch.randn(1024, generator=_gen(5)) * 0.01}, str(tmp_path / "step_inv_1000.safetensors"))
    lo = tmp_path / "lora.safetensors"
    save_file({f"unet.{UNET_Q}.lora_A.weight": torch.randn(2, 32) * 0.01,
               f"unet.{UNET_Q}.lora_B.weight": torch.randn(32, 2) * 0.01}, str(lo))
    out = tmp_path / "ts"
    r = ism3d("generate", "A <Taylor_Swift> wearing sunglasses.", "--preset", "paper", "--config",
              str(ROOT / "examples" / "luciddreamer" / "ts_lora.yaml"), "--prior", wide_dir, "--out", str(out),
              "--quiet", "--device", "cpu", "init.kind=ball", f"prior.lora={lo}:0.8", *TINY_GEN, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["prior_custom"]["textual_inversion"] == [
        {"source": "step_inv_1000.safetensors", "token": "<Taylor_Swift>", "vectors": 1}]
    assert s["prior_custom"]["lora"][0]["scale"] == 0.8


# ---------------------------------------------------------------------------------------------
# Low-VRAM mode
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offload_and_slicing_give_the_same_numbers(tiny_sd_dir, mode):
    base = load_prior(PriorConfig(name=tiny_sd_dir), "cpu")
    low = load_prior(PriorConfig(name=tiny_sd_dir, offload=mode, attention_slicing=True), "cpu")
    assert low.custom["offload"] == mode and low.vae.encoder.gradient_checkpointing
    swaps = low._offload
    img = torch.rand(2, 3, 64, 64, generator=_gen(), requires_grad=True)
    emb = low.embed(["a red car", ""])
    torch.testing.assert_close(emb, base.embed(["a red car", ""]))
    x, t = torch.randn(2, 4, 8, 8, generator=_gen(1)), torch.tensor([10, 900])
    torch.testing.assert_close(low.eps(x, t, emb), base.eps(x, t, emb), rtol=1e-5, atol=1e-5)
    z_low = low.encode(img)
    (g_low,) = torch.autograd.grad(z_low.square().sum(), img)
    (g_base,) = torch.autograd.grad(base.encode(img).square().sum(), img)
    torch.testing.assert_close(g_low, g_base, rtol=1e-5, atol=1e-6)
    # after its forward a text encoder's weights are the kept CPU copies again
    te = swaps[0]
    assert not te.on_device and all(p.data_ptr() == te.home[n].data_ptr() for n, p in te.module.named_parameters())


def test_hub_ids_load_from_the_hf_cache_offline_and_fail_in_one_line_otherwise(tiny_sd_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    sha = "0123456789abcdef0123456789abcdef01234567"
    T = _lora_tensors(seed=6)
    for repo_id, name, tensors in (
            ("someone/tiny-lora", "pytorch_lora_weights.safetensors",
             {f"unet.{UNET_Q}.lora_A.weight": T["qA"], f"unet.{UNET_Q}.lora_B.weight": T["qB"]}),
            ("someone/tiny-concept", "learned_embeds.safetensors", {"<cat-toy>": torch.randn(32)})):
        snap = cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / sha
        snap.mkdir(parents=True)
        (snap.parents[1] / "refs").mkdir()
        (snap.parents[1] / "refs" / "main").write_text(sha)
        save_file(tensors, str(snap / name))
    p = load_prior(PriorConfig(name=tiny_sd_dir, offline=True, lora=("someone/tiny-lora:0.5",),
                               textual_inversion=("someone/tiny-concept",)), "cpu")
    assert p.custom["lora"][0]["modules"] == {"unet": 1}
    assert p.custom["textual_inversion"][0]["token"] == "<cat-toy>"
    with pytest.raises(PriorError, match="huggingface-cli download someone/not-cached") as e:
        load_prior(PriorConfig(name=tiny_sd_dir, offline=True, lora=("someone/not-cached",)), "cpu")
    assert "\n" not in str(e.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offload_on_cuda_keeps_weights_on_the_cpu_between_calls(tiny_sd_dir, mode):
    base = load_prior(PriorConfig(name=tiny_sd_dir, dtype="fp32", cuda_graphs=False), "cuda")
    low = load_prior(PriorConfig(name=tiny_sd_dir, dtype="fp32", offload=mode), "cuda")
    emb = low.embed(["a red car", ""])
    assert low.text_encoder.get_input_embeddings().weight.device.type == "cpu"
    x, t = torch.randn(2, 4, 8, 8, device="cuda"), torch.tensor([10, 900], device="cuda")
    torch.testing.assert_close(low.eps(x, t, emb), base.eps(x, t, emb), rtol=1e-4, atol=1e-4)
    low.encode(torch.rand(1, 3, 64, 64, device="cuda"))
    assert next(low.unet.parameters()).device.type == "cpu"   # off the GPU during the VAE pass


def test_sdxl_kohya_lora_reaches_both_text_encoders_and_the_unet(xl_dir, tmp_path):
    g = _gen(7)
    A, B = torch.randn(2, 32, generator=g), torch.randn(32, 2, generator=g)      # text encoder 1: 32 wide
    A2, B2 = torch.randn(2, 48, generator=g), torch.randn(48, 2, generator=g)    # text encoder 2: 48 wide
    q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"      # tiny SDXL: Linear [64, 64]
    qA, qB = torch.randn(2, 64, generator=g), torch.randn(64, 2, generator=g)
    names = {"lora_te1_" + TE_Q.replace(".", "_"): (A, B), "lora_te2_" + TE_Q.replace(".", "_"): (A2, B2),
             "lora_unet_" + q.replace(".", "_"): (qA, qB)}
    f = tmp_path / "xl_kohya.safetensors"
    save_file({k2: v for k, (a, b) in names.items()
               for k2, v in ((f"{k}.lora_down.weight", a), (f"{k}.lora_up.weight", b))}, str(f))
    p = load_prior(PriorConfig(name=xl_dir, lora=(f"{f}:2",)), "cpu")
    base = load_prior(PriorConfig(name=xl_dir), "cpu")
    assert p.custom["lora"][0]["modules"] == {"unet": 1, "text_encoder": 1, "text_encoder_2": 1}
    for net, mod, (a, b) in (("text_encoder", TE_Q, (A, B)), ("text_encoder_2", TE_Q, (A2, B2)), ("unet", q, (qA, qB))):
        torch.testing.assert_close(_sub(getattr(p, net), mod).weight, _sub(getattr(base, net), mod).weight + 2 * b @ a)


def test_missing_custom_files_fail_before_the_model_loads(tiny_sd_dir, monkeypatch):
    import ism3d.priors.stable_diffusion as sdmod

    monkeypatch.setattr(sdmod, "load_stable_diffusion", lambda *a, **k: pytest.fail("loaded the model"))
    for kw, needle in ((dict(lora=("gone.safetensors:0.5",)), "LoRA: no such file: gone.safetensors"),
                       (dict(textual_inversion=("./gone.pt:<x>",)), "textual inversion: no such file: ./gone.pt"),
                       (dict(vae="./no_vae_dir"), "prior.vae: no such folder")):
        with pytest.raises(PriorError, match=needle):
            load_prior(PriorConfig(name=tiny_sd_dir, **kw), "cpu")


def test_sdxl_preset_is_paper_with_the_dreamer_xl_changes():
    import ism3d.config as C

    paper, xl = C.to_dict(C.preset_config("paper")), C.to_dict(C.preset_config("sdxl"))
    diff = {f"{s}.{k}": xl[s][k] for s in paper for k in paper[s] if paper[s][k] != xl[s][k]}
    assert diff == {"prior.name": "stabilityai/stable-diffusion-xl-base-1.0", "render.width": 1024,
                    "render.height": 1024, "train.iters": 2500, "guidance.warmup_iters": 750,
                    "guidance.delta_t": 80, "strategy.densify_until": 1500, "strategy.reset_until": 1500}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sdxl_cuda_graph_replay_equals_the_eager_call(xl_dir):
    eager = load_prior(PriorConfig(name=xl_dir, cuda_graphs=False), "cuda")
    graphed = load_prior(PriorConfig(name=xl_dir, cuda_graphs=True), "cuda")
    emb = eager.embed(["a red cube", ""])
    x = torch.randn(2, 4, 8, 8, device="cuda")
    t = torch.tensor([10, 900], device="cuda")
    for _ in range(2):  # capture, then replay
        torch.testing.assert_close(graphed.eps(x, t, emb), eager.eps(x, t, emb), rtol=0, atol=0)
    assert graphed._graphed.replays >= 1
