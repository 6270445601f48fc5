"""`hpdm info`: measured parameters, FLOPs by level and block, and activation memory."""

from __future__ import annotations

import pytest

from hpdm.info import format_info, human_bytes, model_info
from hpdm.model.hpdm import HPDM, count_parameters

pytestmark = pytest.mark.usefixtures("single_thread")


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
    assert info["activation_bytes_per_video"] > 10_000

    text = format_info(info)
    assert "AC saves" in text and "parameters" in text and "4x32x32" in text


def test_model_info_without_ac(tiny_config):
    info = model_info(tiny_config("model.levels_per_block=null"), batch=1, measure_memory=False)
    assert info["train_step_flops_without_ac"] == info["train_step_flops"]
    assert info["ac_flops_saving"] == 0.0
    assert "activation_bytes_per_video" not in info
    assert [lv["blocks"] for lv in info["levels"]] == [[0, 1, 2]] * 3
    assert sum(lv["train_step_flops"] for lv in info["levels"]) == pytest.approx(
        info["train_step_flops"], rel=1e-9
    )


def test_human_bytes():
    assert human_bytes(0) == "0 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 2**30) == "3.0 GiB"
