"""`hpdm demo`: the shipped checkpoint runs end to end (at a reduced size), and `--train` retrains."""

from __future__ import annotations

import json
import re
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
    assert main(["demo", "--out", str(out), "--size", "8x64x64", "--sample-steps", "4", "--quiet"]) == 0
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


def _recipe_overrides(script: Path, out: str) -> tuple[str, list[str]]:
    """The preset and key=value overrides of the `hpdm train` (and its `hpdm export`) line that
    writes `--out out` in the recipe script, with its shell variables expanded."""
    text = script.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    preset, overrides = None, []
    for line in text.splitlines():
        line = line.strip()
        m = re.fullmatch(r'([A-Z]+)="(.*)"', line)
        if m:
            env[m[1]] = re.sub(r"\$(\w+)", lambda v: env.get(v[1], v[0]), m[2])
            continue
        words = re.sub(r"\$(\w+)", lambda v: env.get(v[1], v[0]), line).split()
        pairs = set(zip(words, words[1:]))
        if words[:2] == ["hpdm", "train"] and ("--out", out) in pairs:
            preset = words[2]
            overrides += [w for w in words[3:] if "=" in w and not w.startswith("-")]
        elif words[:2] == ["hpdm", "export"] and ("--ckpt", out) in pairs:
            overrides += [w for w in words[2:] if "=" in w and not w.startswith("-")]
    return preset, overrides


def test_the_recipe_reproduces_the_shipped_config():
    """scripts/make_demo_checkpoint.sh is the demo's recipe: its last stage's command line (and
    export settings), applied to its preset, gives the shipped config.yaml field for field."""
    root = Path(__file__).resolve().parent.parent
    preset, overrides = _recipe_overrides(root / "scripts" / "make_demo_checkpoint.sh", "runs/demo_gpu2")
    assert preset == "demo" and overrides
    rebuilt = load_config(preset, overrides).to_dict()
    shipped = load_config(demo_checkpoint() / "config.yaml").to_dict()
    for part in ("pyramid", "model", "diffusion", "train", "sample", "data"):
        if part == "train":
            rebuilt[part].pop("out_dir"), shipped[part].pop("out_dir")
        if part == "sample":  # companions are named relative to the shipped folder
            for key in ("guide", "base"):
                assert Path(shipped[part].pop(key)).name == Path(rebuilt[part].pop(key)).name
        assert rebuilt[part] == shipped[part], part


def test_shipped_text_to_video_demo_is_small_logged_and_made_by_its_recipe():
    """`src/hpdm/assets/t2v` is what scripts/make_t2v_demo.sh makes: under 20 MB, its three stages'
    complete logs in docs/experiments, and the recipe's last command line giving its config."""
    ck = demo_checkpoint("t2v")
    files = [ck / n for n in ("model.safetensors", "config.yaml", "state.json")]
    assert all(p.exists() for p in files) and (ck / "README.md").exists()
    assert sum(p.stat().st_size for p in files) <= 20_000_000
    assert not list(ck.rglob("*.jsonl"))
    root = Path(__file__).resolve().parent.parent
    script = root / "scripts" / "make_t2v_demo.sh"
    logs = root / "docs" / "experiments" / "t2v-demo-logs"
    for run in ("t2v-tiny-base", "t2v-tiny", "t2v-tiny-ft"):
        preset, overrides = _recipe_overrides(script, f"runs/{run}")
        steps = load_config(preset, overrides).train.steps
        last = json.loads((logs / f"{run}.jsonl").read_text().splitlines()[-1])
        assert last["step"] == steps, run  # each stage ran to its end
    preset, overrides = _recipe_overrides(script, "runs/t2v-tiny-ft")
    rebuilt = load_config(preset, overrides).to_dict()
    shipped = load_config(ck / "config.yaml").to_dict()
    rebuilt["train"].pop("out_dir"), shipped["train"].pop("out_dir")
    assert rebuilt == shipped
    assert json.loads((ck / "state.json").read_text())["step"] == rebuilt["train"]["steps"]


def test_prompt_demo_runs_the_shipped_text_to_video_model(tmp_path, capsys):
    """`hpdm demo --prompt` with no --ckpt samples the shipped model (here at a reduced size)."""
    out = tmp_path / "t2v"
    prompt = "a red circle moves left over thin slate stripes"
    args = [
        "demo",
        "--prompt",
        prompt,
        "--size",
        "8x64x64",
        "--sample-steps",
        "3",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "generated 1 video(s) of 8x64x64" in capsys.readouterr().out
    settings = json.loads((out / "settings.json").read_text())
    assert settings["prompt"] == prompt and settings["ckpt"] == str(demo_checkpoint("t2v"))
    assert (out / "contact_sheet.png").exists() and list(out.glob("t2v_*.mp4"))
