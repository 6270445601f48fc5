"""Growing a low-resolution base into a pyramid model: its level 0 is the base at step 0."""

from __future__ import annotations

import pytest
import torch

from hpdm.cli import main
from hpdm.config import load_config
from hpdm.grow import init_from_state
from hpdm.model.hpdm import HPDM
from hpdm.pyramid import Boxes

BASE = ["pyramid.target=[2,8,8]", "pyramid.num_levels=1", "model.levels_per_block=[1,1,1]"]


def test_grown_level0_equals_base():
    torch.manual_seed(0)
    base = HPDM(load_config("tiny", BASE))
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))
    grown = HPDM(load_config("tiny"))
    report = init_from_state(grown, base.state_dict())
    assert "latents" in report["grown"] and "level_embed.weight" in report["grown"]
    assert any(k.startswith("fusion.") for k in report["new"])
    x = torch.randn(2, 1, 3, 2, 8, 8)
    c = torch.randn(2, 1)
    boxes = Boxes(torch.zeros(2, 1, 3), torch.ones(2, 1, 3))
    labels = torch.tensor([1, 4])
    torch.testing.assert_close(grown(x, c, boxes, labels), base(x, c, boxes, labels))
    # new levels start from the base's level-0 latents
    assert torch.equal(grown.latents[2], base.latents[0])


def test_grow_rejects_different_widths():
    base = HPDM(load_config("tiny", BASE + ["model.dim=16", "model.heads=2"]))
    with pytest.raises(ValueError, match="same widths"):
        init_from_state(HPDM(load_config("tiny")), base.state_dict())


def test_train_cli_init_from_base(tmp_path, capsys):
    base_dir, grown_dir = tmp_path / "base", tmp_path / "grown"
    assert main(["train", "tiny", *BASE, "train.steps=2", f"train.out_dir={base_dir}"]) == 0
    assert (
        main(["train", "tiny", "train.steps=2", f"train.out_dir={grown_dir}", "--init", str(base_dir)]) == 0
    )
    out = capsys.readouterr().out
    assert "initialised from" in out and "grown" in out
    assert (grown_dir / "checkpoints" / "step_0000002" / "model.safetensors").exists()
    # a grown model with larger patches (t2v-1k from t2v-base): the checkpoint's config gives the grid
    big = ["pyramid.patch=[2,16,16]", "pyramid.target=[4,64,64]", "train.steps=1"]
    assert main(["train", "tiny", *big, f"train.out_dir={tmp_path / 'big'}", "--init", str(base_dir)]) == 0


def test_a_base_with_a_smaller_patch_grows_with_its_positions_resized():
    """T2V-1K grows from the 8x36x64 base with 16x72x128 patches: every weight is copied but the
    positional table, which is resampled (trilinear) from the base's token grid to the new one."""
    from hpdm.grow import resize_positions

    base_cfg = load_config("tiny", BASE)
    base = HPDM(base_cfg)
    nf, nh, nw = base.grid
    ramp = torch.linspace(-1, 1, nw).repeat(nf * nh)  # the table rises along w only
    with torch.no_grad():
        base.pos.copy_(ramp[:, None].expand_as(base.pos))
    cfg = load_config(
        "tiny", ["pyramid.patch=[2,16,16]", "pyramid.target=[4,64,64]", "model.levels_per_block=[1,2,3]"]
    )
    model = HPDM(cfg)
    assert model.grid == (2, 4, 4) and base.grid == (2, 2, 2)
    with pytest.raises(ValueError, match="'pos'"):
        init_from_state(model, base.state_dict())  # without the base's grid it cannot be resized
    report = init_from_state(model, base.state_dict(), base_grid=base.grid)
    assert "pos" in report["grown"] and all(k.startswith("fusion.") for k in report["new"])
    pos = model.pos.detach().view(2, 4, 4, -1)
    assert torch.allclose(pos, pos[:1, :1, :, :1])  # still constant along f, h and the width
    assert torch.all(pos[0, 0, 1:, 0] > pos[0, 0, :-1, 0])  # and rising along w, within the base's range
    assert pos.min() >= -1 and pos.max() <= 1
    torch.testing.assert_close(resize_positions(base.pos, base.grid, base.grid), base.pos)
