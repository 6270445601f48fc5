"""`hpdm info`: counted parameters, FLOPs by level and block, activation memory, and the comparison
with the full-resolution counterpart, all on meta tensors."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hpdm.cli import main
from hpdm.config import Config, ConfigError, from_dict, levels_per_block, load_config
from hpdm.diffusion import input_scales
from hpdm.info import format_info, full_res_config, human_bytes, model_info
from hpdm.model.hpdm import HPDM, count_parameters
from hpdm.pyramid import PyramidGeometry

pytestmark = pytest.mark.usefixtures("single_thread")

TEXT_TOKENS = 8  # the dummy caption length `model_info` feeds a text model


def test_model_info_numbers(tiny_config):
    cfg = tiny_config()
    info = model_info(cfg, batch=2)
    assert info["parameters"] == count_parameters(HPDM(cfg)) > 10_000
    assert info["batch"] == 2
    total = info["train_step_flops"]
    assert total > 1e6
    levels = info["levels"]
    assert [lv["virtual_size"] for lv in levels] == [[2, 8, 8], [2, 16, 16], [4, 32, 32]]
    assert [lv["tokens"] for lv in levels] == [8, 8, 8]  # (2, 8, 8) patches in (1, 4, 4) cubes
    assert all(lv["train_step_flops"] > 0 for lv in levels)
    assert sum(lv["train_step_flops"] for lv in levels) == pytest.approx(total, rel=1e-9)
    # with AC [1, 2, 3] the coarse level passes through more blocks, so it costs the most
    flops = [lv["train_step_flops"] for lv in levels]
    assert flops[0] > flops[1] > flops[2]
    blocks = [bl["train_step_flops"] for bl in info["blocks"]]
    assert all(b > 0 for b in blocks) and sum(blocks) < total  # the rest: tokenizer, detokenizer, embeddings
    assert [bl["levels"] for bl in info["blocks"]] == [1, 2, 3]
    assert info["train_step_flops_without_ac"] > total
    assert info["activation_bytes_per_video_without_ac"] > info["activation_bytes_per_video"] > 10_000
    assert info["train_state_bytes"] == 20 * info["parameters"]

    text = format_info(info)
    assert "AC saves" in text and "parameters" in text and "4x32x32" in text
    assert "full resolution" not in text


def test_model_info_without_ac(tiny_config):
    info = model_info(tiny_config("model.levels_per_block=null"), batch=1, measure_memory=False)
    assert info["train_step_flops_without_ac"] == info["train_step_flops"]
    assert info["ac_flops_saving"] == 0.0
    assert "activation_bytes_per_video" not in info
    assert [lv["blocks"] for lv in info["levels"]] == [[0, 1, 2]] * 3
    assert sum(lv["train_step_flops"] for lv in info["levels"]) == pytest.approx(
        info["train_step_flops"], rel=1e-9
    )


# ---------------------------------------------------------------------------------------------
# the numbers of the old implementation

# Recorded with the implementation before issue 27 item 6 (commit 4bf8e3f: a real CPU training step
# under a plain FlopCounterMode; `hpdm info PRESET [OVERRIDES] --batch B --json`), before this
# module changed; constants only because that code produced them. Columns: preset, overrides, batch,
# parameters, train-step FLOPs per video, the same without AC, FLOPs per block, activation bytes
# per video.
OLD = [
    ("tiny", [], 1, 129072, 14035968, 21006336, [1794048, 3695616, 5597184], 432403.0),
    ("tiny", [], 2, 129072, 14035968, 21006336, [1794048, 3695616, 5597184], 430931.0),
    ("tiny", ["model.levels_per_block=null"], 1, 131344, 21006336, 21006336, [5597184] * 3, 636887.0),
    (
        "tiny",
        ["model.text_dim=16", "model.num_classes=0"],
        1,
        129328,
        20245504,
        30312448,
        [2768896, 5645312, 8521728],
        620731.0,
    ),
    (
        "demo",
        [],
        1,
        3410912,
        6257246208,
        8381005824,
        [483524608, 1018560512, 1553596416, 1553596416],
        33409179.0,
    ),
]


def _old_count_corrections(cfg: Config, lpb: list[int]) -> tuple[list[int], list[int]]:
    """Per block and video, new count - old count, in closed form: (to the total, to the block).

    The total gains the attention FLOPs the old count missed (FlopCounterMode has no formula for
    the CPU flash kernel) and loses (dim - 1) x the forward FLOPs of the depthwise token convolution
    that its weight-gradient formula added (it ignores `groups`). Fused attention is counted as
    torch counts it: 4 (forward) + 10 (backward, scores recomputed) x n_q x n_kv x width.
    The block also gains the backward of its write attention's three Linears and its write MLP,
    which the old per-block split (FlopCounterMode's module tracker) left outside the block, though
    inside the total."""
    m = cfg.model
    L = cfg.pyramid.num_levels
    n = math.prod(p // c for p, c in zip(cfg.pyramid.patch, m.cube))
    q = m.num_latents + 2 + (m.num_classes > 0) + (TEXT_TOKENS if m.text_dim > 0 else 0)
    d, dl, h = m.dim, m.latent_dim, int(m.dim * m.mlp_ratio)

    def to_total(tokens: int) -> int:
        attention = q * tokens * dl + m.latent_layers * q * q * dl + tokens * q * d
        conv = 2 * 27 * d * tokens if m.token_conv else 0
        return 14 * attention - (d - 1) * conv

    def to_block(tokens: int) -> int:
        write_backward = 4 * (2 * tokens * d * d + q * dl * 2 * d + 2 * tokens * d * h)
        return to_total(tokens) + write_backward

    total = [min(nb, L) * to_total(n) for nb in lpb]
    block = [min(nb, L) * to_block(n) for nb in lpb]
    return total, block


@pytest.mark.parametrize("preset, overrides, batch, params, flops, no_ac, blocks, act", OLD)
def test_counts_equal_the_old_implementation(preset, overrides, batch, params, flops, no_ac, blocks, act):
    cfg = load_config(preset, overrides)
    info = model_info(cfg, batch=batch)
    assert info["parameters"] == params
    assert info["activation_bytes_per_video"] == act  # meta storages add up like real ones
    to_total, to_block = _old_count_corrections(cfg, levels_per_block(cfg))
    assert info["train_step_flops"] == flops + sum(to_total)
    assert [bl["train_step_flops"] for bl in info["blocks"]] == [o + f for o, f in zip(blocks, to_block)]
    no_ac_cfg = copy.deepcopy(cfg)
    no_ac_cfg.model.levels_per_block = None
    assert info["train_step_flops_without_ac"] == no_ac + sum(
        _old_count_corrections(cfg, levels_per_block(no_ac_cfg))[0]
    )
    assert sum(lv["train_step_flops"] for lv in info["levels"]) == pytest.approx(info["train_step_flops"])


def test_meta_counts_equal_a_real_forward(tiny_config):
    """The meta step gives what a real CPU step gives (attention and token convolution on)."""
    cfg = tiny_config(
        "model.token_conv=true",
        "model.token_cond=true",
        "model.levels_per_block=null",
    )
    assert model_info(cfg, batch=2, device="meta") == model_info(cfg, batch=2, device="cpu")


class _LargestRealTensor(TorchDispatchMode):
    """Records the largest storage of any tensor not on the meta device that an op creates."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


@pytest.mark.parametrize("preset, full_res", [("ucf101-s", False), ("t2v", True)])
def test_large_presets_allocate_nothing(preset, full_res):
    """The paper's models, and text-to-video at full resolution (~10^9 parameters, ~200 GiB of
    activations), are counted with no real tensor larger than a few boxes: the model and the step
    live on the meta device."""
    cfg = full_res_config(load_config(preset)) if full_res else load_config(preset)
    with _LargestRealTensor() as mode:
        info = model_info(cfg)
    assert mode.largest < 2**16, human_bytes(mode.largest)
    assert info["parameters"] > 10**8 and info["activation_bytes_per_video"] > 2**30
    if full_res:
        assert info["activation_bytes_per_video"] > 100 * 2**30
        assert info["levels"][0]["tokens"] == 64 * 96 * 128  # 64x288x512 in 1x3x4 cubes


# ---------------------------------------------------------------------------------------------
# the full-resolution counterpart


def test_full_res_config_maps_every_per_level_setting():
    cfg = load_config("demo")
    full = full_res_config(cfg)
    assert full.pyramid.patch == full.pyramid.target == (16, 128, 128) and full.pyramid.num_levels == 1
    assert full.model.levels_per_block is None and full.model.cube == cfg.model.cube
    for key in ("dim", "latent_dim", "num_latents", "num_blocks", "latent_layers", "heads", "token_conv"):
        assert getattr(full.model, key) == getattr(cfg.model, key), key
    geo = PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, 3)
    assert (
        full.diffusion.sigma_in0 == pytest.approx(input_scales(cfg.diffusion, geo)[-1]) == pytest.approx(2.0)
    )
    assert (full.diffusion.P_mean, full.diffusion.P_std) == (0.0, 1.4)  # level 0's
    assert (full.sample.cfg, full.sample.steps, full.sample.start_sigma) == (3.0, 32, 0.0)
    assert full.name == "demo-full-res" and full.train.out_dir.endswith("-full-res")
    assert cfg.pyramid.num_levels == 3 and cfg.diffusion.P_mean == [0.0, -1.2, -1.2]  # input untouched
    from_dict(full.to_dict()).validate()  # a plain config, savable and loadable

    ucf = full_res_config(load_config("ucf101-s"))
    assert ucf.diffusion.sigma_in0 == pytest.approx(4.0 * 8)  # voxel rule: sqrt(64*256^2 / (16*64^2))
    t2v = full_res_config(load_config("t2v"))
    assert t2v.pyramid.patch == (64, 288, 512) and t2v.model.text_dim == 384


def test_full_res_config_of_every_per_level_list(tiny_config):
    """Every setting that takes one value per level, given as a list, becomes one value."""
    cfg = tiny_config(
        "pyramid.num_levels=4",
        "pyramid.target=[8,64,64]",
        "model.levels_per_block=[2,3,4]",
        "model.fusion=deep+pixels",
        "diffusion.P_mean=[0.5,-1.0,-1.1,-1.2]",
        "diffusion.P_std=[1.5,1.2,1.2,1.2]",
        "diffusion.level_weight=[1.0,0.5,0.5,0.0]",
        "diffusion.sigma_in_factor=1.5",
        "diffusion.clean_context=0.5",
        "sample.steps=[16,8,4,2]",
        "sample.cfg=[2.0,1.0,1.0,1.0]",
        "sample.start_sigma=[0.0,0.5,0.5,0.5]",
        "sample.consistency=1.0",
    )
    full = full_res_config(cfg)
    assert (full.diffusion.P_mean, full.diffusion.P_std, full.diffusion.level_weight) == (0.5, 1.5, 1.0)
    assert full.diffusion.sigma_in0 == pytest.approx(1.5**3) and full.diffusion.sigma_in_factor is None
    assert (full.sample.steps, full.sample.cfg, full.sample.start_sigma) == (16, 2.0, 0.0)
    assert full.model.cube == cfg.model.cube and full.model.fusion == "none"
    assert full.diffusion.clean_context == 0 and full.sample.consistency == 0
    assert model_info(full, measure_memory=False)["levels"][0]["tokens"] == 8 * 16 * 16


def test_full_res_of_a_one_level_model_is_itself():
    cfg = load_config("demo-base")  # level 0 alone, with its own 2x2x2 cube
    info = model_info(cfg, vs_full_res=True)
    assert info["full_res"]["parameters"] == info["parameters"]
    assert info["vs_full_res"] == {"flops": 1.0, "activation_bytes": 1.0}


def _full_res_block_flops(cfg: Config) -> int:
    """One RIN block of a 1-level model at patch = target, in closed form: every Linear costs
    6 x rows x in x out (forward, input and weight gradients), every attention 14 x n_q x n_kv x width."""
    m = cfg.model
    n = math.prod(p // c for p, c in zip(cfg.pyramid.target, m.cube))
    q = m.num_latents + 2 + (m.num_classes > 0)
    d, dl, h, hl = m.dim, m.latent_dim, int(m.dim * m.mlp_ratio), int(m.latent_dim * m.mlp_ratio)
    read = q * dl * dl * 2 + n * d * 2 * dl + q * dl * hl * 2
    process = m.latent_layers * (q * dl * dl * 2 + q * dl * 2 * dl + q * dl * hl * 2)
    write = n * d * d * 2 + q * dl * 2 * d + n * d * h * 2
    attention = q * n * dl + m.latent_layers * q * q * dl + n * q * d
    return 6 * (read + process + write) + 14 * attention


def test_full_res_flops_grow_with_the_target(tiny_config):
    """Closed form for one block, and linear growth in the token count (tiny has no token attention,
    so every term is either per token or per latent)."""
    flops = []
    for target, levels in (([4, 32, 32], 3), ([8, 64, 64], 4), ([16, 128, 128], 5)):
        cfg = tiny_config(
            f"pyramid.target={target}", f"pyramid.num_levels={levels}", "model.levels_per_block=null"
        )
        full = model_info(full_res_config(cfg), measure_memory=False)
        assert [bl["train_step_flops"] for bl in full["blocks"]] == [
            _full_res_block_flops(full_res_config(cfg))
        ] * 3
        flops.append(full["train_step_flops"])
    assert flops[2] - flops[1] == 8 * (flops[1] - flops[0]) > 0  # tokens x8 per step


def test_vs_full_res_ratio_is_the_ratio_of_the_two_counts(tiny_config):
    cfg = tiny_config("model.levels_per_block=null")
    info = model_info(cfg, vs_full_res=True)
    full = model_info(full_res_config(cfg))
    assert info["full_res"] == full
    assert info["vs_full_res"]["flops"] == full["train_step_flops"] / info["train_step_flops"] > 1
    assert (
        info["vs_full_res"]["activation_bytes"]
        == full["activation_bytes_per_video"] / info["activation_bytes_per_video"]
        > 1
    )
    text = format_info(info)
    assert "tiny-full-res: 1 level of 4x32x32, 256 tokens" in text
    assert f"{info['vs_full_res']['flops']:.2f}x the pyramid's" in text


def test_cli_info_vs_full_res(capsys):
    no_ac = "model.levels_per_block=null"  # one pyramid count instead of two
    assert main(["info", "tiny", "--vs-full-res", "--json", no_ac]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["full_res"]["name"] == "tiny-full-res"
    assert info["vs_full_res"]["flops"] == info["full_res"]["train_step_flops"] / info["train_step_flops"]
    assert main(["info", "tiny", no_ac, "--vs-full-res", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "full resolution   tiny-full-res" in out and "x the pyramid's" in out
    with pytest.raises(SystemExit):
        main(["info", "tiny", "--batch", "0"])
    assert "--batch" in capsys.readouterr().err


def test_human_bytes():
    assert human_bytes(0) == "0 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 2**30) == "3.0 GiB"


# paper Tab. 8: parameters of HPDM-S/M/L and HPDM-T2V (T2V-1K is the same network)
TAB8 = {"ucf101-s": 178e6, "ucf101-m": 321e6, "ucf101-l": 725e6, "t2v": 3934e6, "t2v-1k": 3934e6}


@pytest.mark.parametrize("preset", list(TAB8))
def test_paper_presets_have_the_papers_parameter_counts(preset):
    """Within 3% of Tab. 8 (the FIT block's widths are inferred from these counts: docs/model-size.md)."""
    from hpdm.model.hpdm import HPDM, count_parameters

    cfg = load_config(preset)
    with torch.device("meta"):
        n = count_parameters(HPDM(cfg))
    assert abs(n / TAB8[preset] - 1) < 0.03, n


def test_paper_presets_have_tab8_training_settings():
    """Batch, steps, warm-up, adaptive computation, levels and tokenisation as Tab. 8 states them;
    the text-to-video batches are half still images (4096 videos + 4096 images; T2V-1K 1024 + 1024)."""
    want = {
        "ucf101-s": (768, 40_000, 10_000, [1, 1, 2, 2, 3, 3], 3, (1, 4, 4)),
        "ucf101-m": (768, 40_000, 10_000, [1, 1, 2, 2, 3, 3], 3, (1, 4, 4)),
        "ucf101-l": (768, 65_000, 10_000, [1, 1, 2, 2, 3, 3], 3, (1, 4, 4)),
        "t2v": (8192, 15_000, 5_000, [1, 2, 2, 3, 3, 4], 4, (1, 3, 4)),
        "t2v-1k": (2048, 100_000, 5_000, [4] * 6, 4, (1, 3, 4)),
    }
    for preset, (batch, steps, warmup, lpb, levels, cube) in want.items():
        c = load_config(preset)
        got = (c.train.global_batch, c.train.steps, c.train.warmup, c.model.levels_per_block)
        assert got == (batch, steps, warmup, lpb), preset
        assert (c.pyramid.num_levels, tuple(c.model.cube), c.diffusion.cond_drop) == (levels, cube, 0.1), (
            preset
        )
        assert c.sample.steps == 128 and c.sample.halve_steps and c.sample.sampler == "euler"
        assert (c.sample.S_churn == 0.0) == preset.startswith("t2v")  # stochasticity off for T2V
        assert (c.data.image_ratio, bool(c.data.images)) == (
            (0.5, True) if preset.startswith("t2v") else (0.0, False)
        )
    k1 = load_config("t2v-1k")
    assert tuple(k1.pyramid.patch) == (16, 72, 128) and tuple(k1.pyramid.target) == (16, 576, 1024)
    base = load_config("t2v-base")
    assert (base.train.global_batch, base.data.image_ratio) == (8192, 0.5)
    assert base.pyramid.num_levels == 1 and tuple(base.pyramid.patch) == tuple(
        load_config("t2v").pyramid.patch
    )


def test_activation_checkpointing_memory_meta_equals_real_and_is_smaller(tiny_config):
    """With every block recomputed in the backward, what is held is the rest of the network's
    saved tensors, the blocks' inputs and one block's own: less than without, and the meta count
    is the real one."""
    from hpdm.info import checkpointed_activation_bytes

    cfg = tiny_config("model.levels_per_block=null")
    meta = checkpointed_activation_bytes(cfg, batch=2)
    assert meta == checkpointed_activation_bytes(cfg, batch=2, device="cpu")
    plain = model_info(cfg, batch=2)["activation_bytes_per_video"] * 2
    assert 0 < meta < plain


def test_recipe_costs_the_run_and_finds_a_micro_batch_that_fits(tiny_config):
    from hpdm.info import recipe

    cfg = tiny_config("train.global_batch=64", "train.steps=10", "train.distributed=fsdp")
    info = model_info(cfg)
    r = recipe(info, cfg, gpus=4, tflops=1e-3)
    assert (r["videos"], r["micro_batch_per_gpu"]) == (640, 16)
    assert r["gpu_hours"] == pytest.approx(640 * info["train_step_flops"] / 1e9 / 3600)
    assert r["state_per_gpu_bytes"] == info["train_state_bytes"] / 4  # FSDP shards it
    act = info["activation_bytes_per_video"]
    assert r["memory_per_gpu_bytes"] == pytest.approx(info["train_state_bytes"] / 4 + 16 * act)
    budget = (info["train_state_bytes"] / 4 + 5 * act) / 2**30  # room for 5 videos: 4 per micro-batch
    assert recipe(info, cfg, 4, 1.0, gpu_memory_gib=budget)["grad_accum_to_fit"] == 4
    assert recipe(info, cfg, 4, 1.0, gpu_memory_gib=1e-9)["grad_accum_to_fit"] is None
    with pytest.raises(ConfigError, match="global_batch"):
        recipe(info, cfg, gpus=3, tflops=1.0)
    assert r["images_per_batch"] == 0
    mixed = tiny_config("train.global_batch=64", "data.images=shapes", "data.image_ratio=0.25")
    r = recipe(model_info(mixed), mixed, gpus=4, tflops=1.0)
    assert (r["global_batch"], r["images_per_batch"]) == (64, 16)
    assert "64 clips (48 videos + 16 images)" in format_info({**model_info(mixed), "recipe": r})
