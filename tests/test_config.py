"""Presets, `key=value` overrides and validation messages."""

from __future__ import annotations

import pytest

from hpdm.config import ConfigError, levels_per_block, list_presets, load_config, save_config
from hpdm.pyramid import PyramidGeometry

pytestmark = pytest.mark.usefixtures("single_thread")


def test_every_preset_loads_validates_and_round_trips(tmp_path):
    names = list_presets()
    assert {"tiny", "demo", "ucf101-s", "ucf101-m", "ucf101-l", "t2v"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.name == name
        geo = PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, cfg.pyramid.num_levels)
        assert geo.level_sizes[0] == tuple(cfg.pyramid.patch)  # level 0: the whole video at patch size
        assert geo.level_sizes[-1] == tuple(cfg.pyramid.target)
        assert len(levels_per_block(cfg)) == cfg.model.num_blocks
        save_config(cfg, tmp_path / f"{name}.yaml")
        assert load_config(tmp_path / f"{name}.yaml").to_dict() == cfg.to_dict()


def test_paper_geometries():
    ucf = load_config("ucf101-l")
    geo = PyramidGeometry(ucf.pyramid.patch, ucf.pyramid.target, ucf.pyramid.num_levels)
    assert geo.level_sizes == [(16, 64, 64), (32, 128, 128), (64, 256, 256)]
    t2v = load_config("t2v")
    geo = PyramidGeometry(t2v.pyramid.patch, t2v.pyramid.target, t2v.pyramid.num_levels)
    assert geo.level_sizes == [(8, 36, 64), (16, 72, 128), (32, 144, 256), (64, 288, 512)]


def test_overrides_parse_types():
    cfg = load_config(
        "tiny",
        [
            "model.levels_per_block=[1,2,3]",
            "train.lr=1e-3",
            "model.use_coords=false",
            "model.num_blocks=3",
            "pyramid.patch=[2,8,8]",
            "diffusion.P_mean=[-1.0,-0.5,0.0]",
            "train.betas=[0.8,0.9]",
        ],
    )
    assert cfg.model.levels_per_block == [1, 2, 3]
    assert all(type(v) is int for v in cfg.model.levels_per_block)
    assert cfg.train.lr == 1e-3 and type(cfg.train.lr) is float  # YAML reads `1e-3` as a string
    assert cfg.model.use_coords is False
    assert cfg.pyramid.patch == (2, 8, 8) and isinstance(cfg.pyramid.patch, tuple)
    assert cfg.diffusion.P_mean == [-1.0, -0.5, 0.0]
    assert cfg.train.betas == (0.8, 0.9)
    assert load_config("tiny", ["model.levels_per_block=null"]).model.levels_per_block is None


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.not_a_field=3", ["not_a_field"]),
        ("nosection.lr=3", ["nosection"]),
        ("train.lr=abc", ["train.lr", "number"]),
        ("model.num_blocks=2.5", ["model.num_blocks", "integer"]),
        ("model.use_coords=maybe", ["model.use_coords", "true/false"]),
        ("pyramid.patch=[2,8]", ["pyramid.patch", "3 values"]),
        ("model.fusion=wide", ["model.fusion", "deep"]),
        ("data.render=gpu", ["data.render", "device"]),
        ("data.shape_size=[0.3,0.2]", ["data.shape_size", "lo <= hi"]),
        ("data.shape_size=[0.2,0.6]", ["data.shape_size", "< 0.5"]),
        ("train.lr", ["key=value"]),
        ("sample.steps=0", ["sample.steps=0", "positive whole number"]),
        ("sample.steps=[8,4]", ["sample.steps=[8, 4]", "3 values"]),
        ("sample.steps=[8,4,2.5]", ["sample.steps", "list[int]"]),
    ],
)
def test_bad_override_names_the_key(override, words):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", [override])
    for w in words:
        assert w in str(e.value)


def test_unknown_field_in_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {dim: 32, widht: 64}\n")
    with pytest.raises(ConfigError, match="widht"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config("nope")


def test_bad_target_suggests_valid_size():
    with pytest.raises(ConfigError) as e:
        load_config("tiny", ["pyramid.target=[4,30,32]"])
    msg = str(e.value)
    assert "height" in msg and "30" in msg and "use 32" in msg
    with pytest.raises(ConfigError, match="frames.*use 4"):
        load_config("tiny", ["pyramid.target=[5,32,32]"])  # frames 5 is not 2 × 2^k


def test_too_few_levels_suggests_count():
    with pytest.raises(ConfigError, match="num_levels=3"):
        load_config("tiny", ["pyramid.num_levels=2", "model.levels_per_block=[1,2,2]"])


def test_levels_per_block_length_must_match_blocks():
    with pytest.raises(ConfigError) as e:
        load_config("tiny", ["model.levels_per_block=[1,2,3,3]"])
    assert "4 entries" in str(e.value) and "num_blocks=3" in str(e.value)


def test_level_processed_by_no_block():
    with pytest.raises(ConfigError) as e:
        load_config("tiny", ["model.levels_per_block=[1,2,2]"])
    assert "level 2" in str(e.value) and "processed by no block" in str(e.value)
    with pytest.raises(ConfigError, match="1..3"):
        load_config("tiny", ["model.levels_per_block=[0,2,3]"])


def test_cube_must_divide_patch():
    with pytest.raises(ConfigError) as e:
        load_config("tiny", ["model.cube=[1,3,4]"])
    msg = str(e.value)
    assert "model.cube" in msg and "h-size 8" in msg and "cube size 3" in msg


def test_other_validation_messages():
    with pytest.raises(ConfigError, match="heads"):
        load_config("tiny", ["model.heads=3"])
    with pytest.raises(ConfigError, match="one value per level"):
        load_config("tiny", ["diffusion.P_std=[1.0,1.0]"])
    with pytest.raises(ConfigError, match="data.path"):
        load_config("tiny", ["data.dataset=folder"])
    with pytest.raises(ConfigError, match="train.lr"):
        load_config("tiny", ["train.lr=-1"])


def test_tile_stride_is_checked():
    assert load_config("demo").sample.tile_stride == [5, 18, 18]  # with overlap: full
    cfg = load_config("demo", ["sample.overlap=spatial", "sample.tile_stride=18"])
    assert cfg.sample.tile_stride == 18
    with pytest.raises(ConfigError, match="between 1 and the patch"):  # full: 18 frames > 8
        load_config("demo", ["sample.overlap=full", "sample.tile_stride=18"])
    assert load_config("demo", ["sample.tile_stride=[8,18,14]"]).sample.tile_stride == [8, 18, 14]
    assert load_config("demo", ["sample.overlap=none", "sample.tile_stride=18"]).sample.tile_stride == 18
    for bad in ("0", "33", "[8,18]", "[8,40,18]"):
        with pytest.raises(ConfigError, match="tile_stride.*between 1 and the patch"):
            load_config("demo", ["sample.overlap=spatial", f"sample.tile_stride={bad}"])
    for bad in ("1.5", "true", "x"):
        with pytest.raises(ConfigError, match="tile_stride"):
            load_config("demo", [f"sample.tile_stride={bad}"])


def test_configs_saved_before_the_model_options_were_reorganised_still_load(tmp_path):
    """Issue 28 removed `model.cube0` and `model.token_attn` and folded `model.pixel_context` into
    `model.fusion`: a saved config that leaves the removed options off loads as today's, one that
    uses them is refused with the reason, and so is an override of a removed key."""
    import yaml

    raw = load_config("tiny").to_dict()
    raw["model"].update(cube0=None, token_attn=False, pixel_context=True)
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    assert cfg.model.fusion == "deep+pixels"
    raw["model"].update(pixel_context=False, cube0=list(cfg.model.cube))  # cube0 equal to the cube: a no-op
    path.write_text(yaml.safe_dump(raw))
    assert load_config(path).model.fusion == "deep"
    for bad, words in [
        ({"token_attn": True}, "token_attn .*removed"),
        ({"cube0": [1, 2, 2]}, "cube0 .*removed.*model.cube"),
        ({"pixel_context": True, "fusion": "shallow"}, "now model.fusion=deep\\+pixels"),
    ]:
        path.write_text(yaml.safe_dump({**raw, "model": {**raw["model"], "cube0": None, **bad}}))
        with pytest.raises(ConfigError, match=words):
            load_config(path)
    with pytest.raises(ConfigError, match="override 'model.pixel_context'.*model.fusion=deep\\+pixels"):
        load_config("tiny", ["model.pixel_context=true"])
    with pytest.raises(ConfigError, match="override 'model.cube0'.*removed"):
        load_config("tiny", ["model.cube0=[1,2,2]"])
    # the shipped demo's configs are written in today's fields
    from hpdm.demo import demo_checkpoint

    for sub in ("", "base", "guide"):
        text = (demo_checkpoint() / sub / "config.yaml").read_text()
        assert not any(k in text for k in ("cube0", "token_attn", "pixel_context")), sub


def test_global_batch_gives_the_per_rank_batch():
    """`train.global_batch` (the paper's numbers) splits over world size x grad_accum; a split that
    does not divide it says which grad_accum values would."""
    from hpdm.config import per_rank_batch

    t = load_config("tiny", ["train.global_batch=768", "train.grad_accum=4"]).train
    assert per_rank_batch(t, 8) == 24 and per_rank_batch(t, 1) == 192
    assert per_rank_batch(load_config("tiny", ["train.batch_size=5"]).train, 8) == 5  # per rank as given
    with pytest.raises(ConfigError, match=r"over 5 rank\(s\).*number of ranks that divides 768"):
        per_rank_batch(t, 5)
    with pytest.raises(ConfigError, match=r"grad_accum in \[1, 3, 9\]"):
        load_config("tiny", ["train.global_batch=9", "train.grad_accum=2"])
    with pytest.raises(ConfigError, match="global_batch"):
        load_config("tiny", ["train.global_batch=0"])
