"""`hpdm demo`: the shipped checkpoint runs end to end (at a reduced size), and `--train` retrains."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from hpdm.cli import main
from hpdm.config import load_config, preset_dir
from hpdm.data.shapes import SHAPES_CLASSES
from hpdm.demo import demo_checkpoint


def test_shipped_demo_checkpoint_is_small_and_documented():
    ck = demo_checkpoint()
    for name in ("model.safetensors", "config.yaml", "state.json", "README.md"):
        assert (ck / name).exists(), name
    # the autoguidance guide and the level-0 model ship beside it
    for sub in ("guide", "base"):
        for name in ("model.safetensors", "config.yaml", "state.json"):
            assert (ck / sub / name).exists(), f"{sub}/{name}"
    # their complete training logs stay in the repository, out of the package
    assert not list(ck.rglob("*.jsonl"))
    logs = Path(__file__).resolve().parent.parent / "docs" / "experiments" / "demo-logs"
    for sub in ("model", "guide", "base"):
        assert (logs / sub / "train_log.jsonl").exists(), sub
    # the checkpoint (all three models' weights, configs and states) stays under 20 MB
    files = [
        ck / d / n for d in (".", "guide", "base") for n in ("model.safetensors", "config.yaml", "state.json")
    ]
    size = sum(p.stat().st_size for p in files)
    assert size <= 20_000_000, size
    text = (ck / "README.md").read_text()
    for cmd in ("hpdm train demo-guide", "hpdm train demo-base", "hpdm train demo"):
        assert cmd in text, cmd


def test_shipped_demo_samples_as_the_demo_preset_says():
    """`hpdm demo --train` samples with the `demo` preset's settings: the shipped checkpoint's
    config must name the same ones (truncated start, pyramid consistency, tile stride, guidance)."""
    preset = yaml.safe_load((preset_dir() / "demo.yaml").read_text())["sample"]
    shipped = load_config(demo_checkpoint() / "config.yaml").sample
    assert preset["consistency"] == 1.0 and preset["consistency_sigma"] == 0.1
    for key, value in preset.items():
        assert getattr(shipped, key) == value, key


def test_demo_runs_end_to_end_at_reduced_size(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size", "8x64x64", "--sample-steps", "8", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "contact sheet" in printed and str(out) in printed
    videos = sorted(out.glob("demo_*_*.mp4"))
    names = {SHAPES_CLASSES[i].replace(" ", "_") for i in range(len(SHAPES_CLASSES))}
    assert {p.stem.split("_", 2)[2] for p in videos if "level" not in p.stem} == names
    assert (out / "contact_sheet.png").exists() and (out / "levels_sheet.png").exists()
    settings = json.loads((out / "settings.json").read_text())
    assert settings["size"] == [8, 64, 64] and settings["labels"] == list(range(8))


def test_demo_train_retrains_from_scratch(tmp_path, capsys):
    out = tmp_path / "retrain"
    small = [
        "model.dim=32",
        "model.latent_dim=32",
        "model.num_latents=8",
        "model.heads=2",
        "train.batch_size=2",
    ]
    args = ["demo", "--train", "--steps", "2", "--out", str(out), "--size", "8x32x32", "--sample-steps", "2"]
    assert main([*args, "--quiet", *small]) == 0
    assert "trained the demo model, its level-0 model and its guide" in capsys.readouterr().out
    assert (out / "train" / "checkpoints" / "step_0000002" / "ema.safetensors").exists()
    assert (out / "guide" / "checkpoints" / "step_0000002" / "ema.safetensors").exists()
    assert (out / "base" / "checkpoints" / "step_0000002" / "ema.safetensors").exists()
    assert len(list(out.glob("demo_*_*.mp4"))) >= 8
    settings = json.loads((out / "settings.json").read_text())
    assert settings["sample"]["guide"] == str((out / "guide").resolve())
    assert settings["sample"]["base"] == str((out / "base").resolve())
