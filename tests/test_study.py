"""Studies: the YAML, budgets, a whole study at tiny size (smoke), resuming it, and the report."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from hpdm.checkpoint import read_config
from hpdm.cli import main
from hpdm.config import ConfigError
from hpdm.study import Study, _eval_seeds, _markdown, _summaries, given_checkpoint, report_study

pytestmark = pytest.mark.usefixtures("single_thread")


def _write(path, **study):
    path.write_text(yaml.safe_dump(study))
    return path


BASE = dict(name="s", base="tiny", budget={"steps": 3}, variants=[{"name": "default"}])


def test_study_files_are_checked(tmp_path):
    p = tmp_path / "s.yaml"
    for bad, words in [
        (dict(BASE, extra=1), "unknown study keys"),
        (dict(BASE, variants=[]), "no variants"),
        (dict(BASE, variants=[{"name": "a"}, {"name": "a"}]), "repeat"),
        (dict(BASE, variants=[{"name": "a", "from": "b"}]), "from: b"),
        (dict(BASE, budget={"hours": 1}), "budget must be"),
        (dict(BASE, budget={"flops": -1}), "positive"),
        (dict(BASE, eval={"sample": ["train.lr=1"]}), "sample.key=value only"),
        (dict(BASE, eval={"at": [0.0, 1.0]}), "fractions"),
        (
            dict(BASE, variants=[{"name": "a", "checkpoint": "demo", "overrides": ["model.dim=8"]}]),
            "as it was",
        ),
        (dict(BASE, variants=[{"name": "a", "checkpoint": "demo"}], reuse={"a": "x"}), "not a trained"),
    ]:
        with pytest.raises(ConfigError, match=words):
            Study.load(_write(p, **bad))
    with pytest.raises(ConfigError, match="not found"):
        Study.load(tmp_path / "nope.yaml")


def test_a_flop_budget_gives_the_steps_hpdm_info_counts(tmp_path):
    from hpdm.info import model_info

    study = Study.load(_write(tmp_path / "s.yaml", **dict(BASE, budget={"flops": 1e9})))
    v = study.variants[0]
    cfg = study.config(v, seed=0)
    steps, per_step = study.steps(v, cfg)
    assert per_step == model_info(cfg, measure_memory=False)["train_step_flops"] * cfg.train.batch_size
    assert steps == math.ceil(1e9 / per_step) and (steps - 1) * per_step < 1e9 <= steps * per_step
    full = Study.load(_write(tmp_path / "f.yaml", **dict(BASE, variants=[{"name": "f", "full_res": True}])))
    assert full.config(full.variants[0], 0).pyramid.num_levels == 1


def test_summaries_are_means_and_stds_over_seeds():
    recs = [
        dict(variant="a", seed=s, step=4, eval_seed=e, flops=8.0, fvd=[10.0 * (1 + s + e), 1.0],
             seam_score=[None, 1.0], class_accuracy=0.5, shape_accuracy=0.25, generation_seconds=2.0,
             num=4, objects_per_frame=1.0 + e)
        for s in (0, 1) for e in (0, 1)
    ]  # fmt: skip
    (row,) = _summaries(recs)
    assert row["seconds_per_clip"] == 0.5 and row["objects_per_frame"][0] == 1.5
    assert row["fvd_mean"] == [20.0, 1.0] and row["evaluations"] == 4 and row["training_seeds"] == 2
    assert row["fvd_std"][0] == pytest.approx(math.sqrt(200 / 3)) and row["fvd_std"][1] == 0
    assert row["seam_score"] == [1.0, 0.0]
    (flat,) = _summaries([dict(r, seam_score=[None]) for r in recs])  # no tiles: no seam score
    assert flat["seam_score"] is None
    assert f"| {100 * 0.5:.1f} % | {100 * 0.25:.1f} % | — |" in _markdown([flat])


def test_curve_points_use_the_first_sampling_seed_and_the_final_point_all():
    ev = {"at": [0.25, 0.5, 1.0], "seeds": [3, 4, 5]}
    assert [_eval_seeds(ev, f) for f in ev["at"]] == [[3], [3], [3, 4, 5]]


def test_real_features_are_cached_by_content(tmp_path):
    import torch

    from hpdm.metrics.report import _real_features

    class Counting:
        weights_sha256 = "w"
        calls = 0

        def __call__(self, x):
            self.calls += 1
            return x.flatten(1)[:, :4].numpy()

    ex, a = Counting(), torch.rand(4, 3, 16, 8, 8) * 2 - 1
    first = _real_features(ex, a, 2, tmp_path)
    assert ex.calls == 2 and (_real_features(ex, a.clone(), 2, tmp_path) == first).all() and ex.calls == 2
    b = a.clone()
    b[0, 0, 0, 0, 0] = 0.123  # other clips: computed again
    _real_features(ex, b, 2, tmp_path)
    assert ex.calls == 4 and len(list(tmp_path.glob("*.npy"))) == 2


def test_smoke_study_runs_resumes_and_reports(tmp_path, capsys, stand_in_i3d):
    """A whole study at tiny size from the command line: a trained variant, its full-resolution
    counterpart and an inference-only variant; a second run reuses everything."""
    study = _write(
        tmp_path / "s.yaml",
        name="s",
        base="demo",
        budget={"flops": 1e15},
        eval={"at": [0.5, 1.0], "seeds": [0, 1]},
        variants=[
            {"name": "default"},
            {"name": "full-res", "full_res": True},
            {"name": "no-overlap", "from": "default", "sample": ["sample.overlap=none"]},
            {"name": "wide", "from": "default", "size": [16, 128, 256]},  # smoke: tiny's target, 2x wide
            # resolves to default's settings (smoke samples with 2 steps): copied, not sampled again
            {"name": "same", "from": "default", "sample": ["sample.steps=2"]},
        ],
    )
    out = tmp_path / "out"
    assert main(["study", "run", str(study), "--out", str(out), "--smoke", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert (
        "| default | 2 |" in text
        and "| full-res | 2 | 2.93e+08 | — | — |" in text
        and "| no-overlap | 2 |" in text
    )
    result = json.loads((out / "results.json").read_text())
    assert len(result["records"]) == 5  # smoke: evaluated once, one sampling seed
    recs = {r["variant"]: r for r in result["records"]}
    assert recs["same"]["reused_from"] == str(
        (out / "default" / "seed_0" / "eval_step_0000002_seed_0").resolve()
    )
    assert recs["same"]["fvd"] == recs["default"]["fvd"]
    assert recs["no-overlap"]["reused_from"] is None and recs["wide"]["reused_from"] is None
    wide = next(r for r in result["rows"] if r["variant"] == "wide")
    default = next(r for r in result["rows"] if r["variant"] == "default")
    assert wide["size"][2] == 2 * default["size"][2] and wide["size"][:2] == default["size"][:2]
    assert wide["objects_per_frame"][0] >= 0 and "| wide |" in text
    assert (out / "fvd_vs_flops.png").stat().st_size > 0 and (out / "fvd_per_level.png").stat().st_size > 0
    assert (
        len(result["rows"][1]["fvd_mean"]) == 1 and len(result["rows"][0]["fvd_mean"]) == 3
    )  # full-res: 1 level
    # the real clips' I3D features are computed once: default's 3 levels and wide's 3; full-res's
    # target-size clips are default's finest level, and no-overlap draws default's clips again
    assert len(list((out / ".real_i3d").glob("real_i3d_*.npy"))) == 6
    trained = (out / "default" / "seed_0" / "train_seconds.jsonl").read_text()
    assert (
        main(["study", "run", str(study), "--out", str(out), "--smoke", "--quiet", "--only", "no-overlap"])
        == 0
    )
    assert (out / "default" / "seed_0" / "train_seconds.jsonl").read_text() == trained  # nothing retrained
    assert report_study(out)["rows"] == result["rows"]  # nothing re-evaluated differently
    assert main(["study", "run", str(study), "--out", str(out), "--only", "nope"]) == 2
    assert "not variants" in capsys.readouterr().err

    # a given checkpoint (e.g. the shipped demo) evaluated as it is, nothing trained
    given = _write(
        tmp_path / "given.yaml",
        name="given",
        variants=[
            {"name": "model", "checkpoint": str(out / "default" / "seed_0")},
            {"name": "none", "from": "model", "sample": ["sample.overlap=none"]},
        ],
    )
    out2 = tmp_path / "out2"
    # the real features' folder shared with the first study: its files are read, none written
    shared = {f: f.stat().st_mtime_ns for f in (out / ".real_i3d").glob("real_i3d_*.npy")}
    run2 = ["study", "run", str(given), "--out", str(out2), "--smoke", "--quiet"]
    assert main([*run2, "--feature-cache", str(out / ".real_i3d")]) == 0
    assert not (out2 / ".real_i3d").exists()
    assert {f: f.stat().st_mtime_ns for f in (out / ".real_i3d").glob("real_i3d_*.npy")} == shared
    assert "| model | 2 | — |" in capsys.readouterr().out
    got = {r["variant"]: r for r in json.loads((out2 / "results.json").read_text())["records"]}
    assert got["model"]["fvd"] == recs["default"]["fvd"]  # the same checkpoint, seed and settings
    assert got["none"]["fvd"] == recs["no-overlap"]["fvd"] and got["none"]["flops"] is None
    assert not list(out2.glob("*/seed_0/checkpoints"))  # nothing trained
    # a pass with one of the sampling seeds
    given.write_text(given.read_text() + "eval: {seeds: [0, 1]}\n")
    assert (
        main(["study", "run", str(given), "--out", str(out2), "--smoke", "--quiet", "--eval-seeds", "1"]) == 0
    )
    seeds = {
        (r["variant"], r["eval_seed"]) for r in json.loads((out2 / "results.json").read_text())["records"]
    }
    assert seeds == {("model", 0), ("none", 0), ("model", 1), ("none", 1)}
    capsys.readouterr()
    assert main(["study", "run", str(given), "--out", str(out2), "--eval-seeds", "7"]) == 2
    assert "not sampling seeds" in capsys.readouterr().err

    # a fresh clone holds the evaluations but not the checkpoints (never committed): the study
    # reports from them and trains nothing; an evaluation still to make says what to run first
    for ck in out.glob("*/seed_0/checkpoints"):
        shutil.rmtree(ck)
    assert main(["study", "run", str(study), "--out", str(out), "--smoke", "--quiet"]) == 0
    assert (out / "default" / "seed_0" / "train_seconds.jsonl").read_text() == trained
    assert not list(out.glob("*/seed_0/checkpoints")) and report_study(out)["rows"] == result["rows"]
    spec = yaml.safe_load(study.read_text())
    spec["variants"].append({"name": "new", "from": "default", "sample": ["sample.steps=3"]})
    _write(study, **spec)
    capsys.readouterr()
    assert main(["study", "run", str(study), "--out", str(out), "--smoke", "--only", "new"]) == 2
    err = capsys.readouterr().err
    assert "has no checkpoint" in err and "--only default" in err


def test_the_shipped_studies_load_and_their_variants_are_valid_configs(tmp_path):
    from pathlib import Path

    files = sorted((Path(__file__).parent.parent / "studies").glob("*.yaml"))
    assert {f.stem for f in files} >= {"tab3-ablation", "hpdm-vs-full-res", "tab4-tiling", "sampling-steps"}
    for f in files:
        study = Study.load(f)
        for v in study.variants:
            given = next(t for t in study.variants if t.name == (v.source or v.name)).checkpoint
            if given is not None:  # the sampling overrides hold for the given model
                read_config(given_checkpoint(given), [*study.eval["sample"], *v.sample])
            elif v.source is None:
                cfg = study.config(v, study.seeds[0])  # raises ConfigError on a bad override
                steps, _ = study.steps(v, cfg)
                assert steps > 100, (f.name, v.name)
    bad = tmp_path / "bad.yaml"
    bad.write_text("variants: [{name: a  # no closing brace\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Study.load(bad)
    bad.write_text("variants: [{name: a, size: [128, 256]}]\n")
    with pytest.raises(ConfigError, match=r"size is \[frames, height, width\]"):
        Study.load(bad)


def test_a_study_reuses_another_studys_run_of_the_same_config_only(tmp_path):
    from hpdm.config import save_config

    other = tmp_path / "other"
    study = Study.load(_write(tmp_path / "s.yaml", **BASE, reuse={"default": str(other)}))
    v = study.variants[0]
    cfg = study.config(v, 0)
    cfg.train.steps = study.steps(v, cfg)[0]
    assert study.run_dir(tmp_path / "out", v, 0, cfg) == other / "seed_0"  # nothing trained there yet
    (other / "seed_0").mkdir(parents=True)
    save_config(study.config(v, 0), other / "seed_0" / "config.yaml")  # train.steps not set: differs
    with pytest.raises(ConfigError, match=r"another config \(train.steps differ\)"):
        study.run_dir(tmp_path / "out", v, 0, cfg)
    save_config(cfg, other / "seed_0" / "config.yaml")
    assert study.run_dir(tmp_path / "out", v, 0, cfg) == other / "seed_0"
    assert study.run_dir(tmp_path / "out", v, 0, cfg, smoke=True) == tmp_path / "out" / "default" / "seed_0"
    with pytest.raises(ConfigError, match="nope is not a trained variant"):
        Study.load(_write(tmp_path / "bad.yaml", **BASE, reuse={"nope": str(other)}))


def test_evaluation_checkpoints_are_never_pruned(tmp_path):
    """A study's evaluation points survive `train.keep` (an inference variant may read them after
    the run has trained on): train.keep_steps."""
    from hpdm.checkpoint import list_checkpoints
    from hpdm.config import load_config
    from hpdm.train import Trainer

    over = [
        "train.steps=5",
        "train.ckpt_every=1",
        "train.keep=1",
        "train.keep_steps=[2]",
        "train.batch_size=1",
    ]
    Trainer(load_config("tiny", [*over, f"train.out_dir={tmp_path}"]), progress=False).train()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000002", "step_0000005"]
    with pytest.raises(ConfigError, match="keep_steps"):
        load_config("tiny", ["train.keep_steps=[0]"])


def _index_many(run_dir: str, worker: int) -> None:
    from hpdm.study import _index_eval

    for i in range(40):
        _index_eval(Path(run_dir), f"w{worker}_{i}", Path(run_dir) / f"eval_{worker}_{i}")


def test_evaluation_index_loses_nothing_when_studies_share_a_run(tmp_path):
    """Two studies evaluating one run side by side both add to its eval_index.json: each
    read-modify-write holds a lock on the run folder, so no process overwrites another's entry."""
    import multiprocessing as mp

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    procs = [ctx.Process(target=_index_many, args=(str(tmp_path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    index = json.loads((tmp_path / "eval_index.json").read_text())
    assert len(index) == 160 and index["w3_39"] == "eval_3_39"
