"""Checkpoints never crash a run: a corrupt file is one line naming it; auto-resume steps past it;
an interrupted save or prune leaves nothing that a later run trips over."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from hpdm.checkpoint import CheckpointError, clean_leftovers, list_checkpoints, read_weights
from hpdm.cli import main
from hpdm.train import Trainer

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("ckrun")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `single_thread`, which a module fixture cannot use
    try:
        argv = ["train", "tiny", "train.steps=4", "train.ckpt_every=2", "train.batch_size=2"]
        assert main([*argv, f"train.out_dir={out}"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def _broken_copy(run: Path, tmp_path: Path, name: str, how: str) -> Path:
    """A copy of the run whose newest checkpoint has `name` truncated or overwritten with garbage."""
    dest = tmp_path / "broken"
    shutil.copytree(run, dest)
    f = list_checkpoints(dest)[-1] / name
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2] if how == "truncated" else b"\x00not a checkpoint" * 8)
    return dest


def _commands(ck: Path, tmp_path: Path) -> dict[str, list[str]]:
    return {
        "sample": ["sample", "--ckpt", str(ck), "--num", "1", "--quiet", "--out", str(tmp_path / "s")],
        "eval": ["eval", "report", "--ckpt", str(ck), "--num", "2", "--out", str(tmp_path / "r")],
        "export": ["export", "--ckpt", str(ck), "--out", str(tmp_path / "e")],
        "init": ["train", "tiny", "train.steps=1", f"train.out_dir={tmp_path / 'i'}", "--init", str(ck)],
        "resume": ["train", "tiny", "train.steps=6", f"train.out_dir={tmp_path / 'x'}", "--resume", str(ck)],
    }


@pytest.mark.parametrize(
    "name, how, commands",
    [
        ("ema.safetensors", "truncated", ["sample", "eval", "export", "init", "resume"]),
        ("model.safetensors", "truncated", ["resume"]),
        ("model.safetensors", "garbage", ["sample", "resume"]),  # sample falls back to model only without EMA
        ("training.pt", "truncated", ["resume"]),
        ("training.pt", "garbage", ["resume"]),
        ("state.json", "garbage", ["export", "resume"]),
        ("config.yaml", "garbage", ["sample", "export"]),
    ],
)
def test_a_corrupt_file_is_one_line_naming_it(run, tmp_path, capsys, name, how, commands):
    broken = _broken_copy(run, tmp_path, name, how)
    ck = list_checkpoints(broken)[-1]
    for cmd in commands:
        argv = _commands(ck, tmp_path)[cmd]
        if name == "model.safetensors" and cmd == "sample":
            argv.insert(1, "--no-ema")
        assert main(argv) == 2, cmd
        err = capsys.readouterr().err.strip()
        assert err.startswith("hpdm: error:") and "\n" not in err, (cmd, err)
        assert str(ck / name) in err, (cmd, err)
        assert "Traceback" not in err


def test_weights_of_another_config_are_named(run, tmp_path, capsys):
    """A folder mixing files of two runs: the weights do not fit the config beside them."""
    other = tmp_path / "other"
    assert main(["train", "tiny", "train.steps=1", "model.dim=16", f"train.out_dir={other}"]) == 0
    capsys.readouterr()
    mixed = tmp_path / "mixed"
    shutil.copytree(list_checkpoints(run)[-1], mixed)
    shutil.copy(list_checkpoints(other)[-1] / "ema.safetensors", mixed / "ema.safetensors")
    for argv in (
        ["sample", "--ckpt", str(mixed), "--num", "1", "--quiet", "--out", str(tmp_path / "s")],
        ["export", "--ckpt", str(mixed), "--out", str(tmp_path / "e")],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert f"{mixed / 'ema.safetensors'}" in err and "fit the model" in err and "\n" not in err
    assert not (tmp_path / "e" / "model.safetensors").exists()  # checked before anything is written


def test_resume_auto_skips_a_corrupt_newest_checkpoint(run, tmp_path, tiny_config):
    broken = _broken_copy(run, tmp_path, "training.pt", "truncated")
    cfg = tiny_config("train.steps=6", "train.ckpt_every=2", f"train.out_dir={broken}")
    with pytest.warns(UserWarning, match="skipping step_0000004"):
        tr = Trainer(cfg, resume="auto", progress=False)
    assert tr.step == 2
    # the model is step 2's, bit for bit
    want = read_weights(list_checkpoints(run)[0] / "model.safetensors")
    assert all(torch.equal(tr.model.state_dict()[k], v) for k, v in want.items())
    # the bad one is set aside, not deleted, and never resumed from again
    assert (broken / "checkpoints" / "corrupt_step_0000004" / "training.pt").exists()
    assert [p.name for p in list_checkpoints(broken)] == ["step_0000002"]
    tr.train()
    assert [p.name for p in list_checkpoints(broken)][-1] == "step_0000006"


def test_resume_auto_with_every_checkpoint_corrupt_is_an_error_that_changes_nothing(run, tmp_path, capsys):
    dest = tmp_path / "allbad"
    shutil.copytree(run, dest)
    for ck in list_checkpoints(dest):
        (ck / "model.safetensors").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipping"):
        assert main(["train", "tiny", "train.steps=6", f"train.out_dir={dest}", "--resume", "auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert "none of the 2 checkpoint(s)" in err and "none was moved" in err and "\n" not in err
    assert [p.name for p in list_checkpoints(dest)] == ["step_0000002", "step_0000004"]


def test_resume_auto_with_another_config_stops_and_sets_nothing_aside(run, tmp_path, capsys):
    """Readable checkpoints that do not fit the given config: the config is wrong, not the run."""
    dest = tmp_path / "other"
    shutil.copytree(run, dest)
    argv = ["train", "tiny", "model.dim=16", "train.steps=6", f"train.out_dir={dest}", "--resume", "auto"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "step_0000004/model.safetensors: its tensors do not fit this config" in err and "\n" not in err
    assert "config.yaml" in err
    assert sorted(p.name for p in (dest / "checkpoints").iterdir()) == ["step_0000002", "step_0000004"]


def test_a_second_corrupt_checkpoint_of_the_same_step_is_set_aside_beside_the_first(
    run, tmp_path, tiny_config
):
    broken = _broken_copy(run, tmp_path, "ema.safetensors", "truncated")
    root = broken / "checkpoints"
    shutil.copytree(root / "step_0000004", root / "corrupt_step_0000004")  # set aside by an earlier resume
    (root / "corrupt_step_0000004" / "note").write_text("keep me")
    with pytest.warns(UserWarning, match="skipping step_0000004"):
        tr = Trainer(tiny_config("train.steps=6", f"train.out_dir={broken}"), resume="auto", progress=False)
    assert tr.step == 2
    assert (root / "corrupt_step_0000004" / "note").read_text() == "keep me"
    assert (root / "corrupt_step_0000004.1" / "ema.safetensors").exists()


def test_leftovers_of_an_interrupted_save_or_prune_are_cleaned_at_start(run, tmp_path, tiny_config):
    dest = tmp_path / "left"
    shutil.copytree(run, dest)
    root = dest / "checkpoints"
    shutil.copytree(root / "step_0000004", root / ".tmp_step_0000006")  # a save killed before its rename
    shutil.copytree(root / "step_0000002", root / ".del_step_0000000")  # a prune killed mid-delete
    half = root / "step_0000005"  # cut short outside hpdm: state.json and EMA left, training.pt gone
    shutil.copytree(root / "step_0000004", half)
    (half / "training.pt").unlink()
    with pytest.warns(UserWarning) as caught:
        tr = Trainer(tiny_config("train.steps=6", f"train.out_dir={dest}"), resume="auto", progress=False)
    said = " ".join(str(w.message) for w in caught)
    assert "removed 2 leftover(s)" in said and "set aside 1 checkpoint folder(s)" in said
    assert tr.step == 4
    # hpdm's own temporaries are gone; a folder that may still hold usable weights is kept aside
    assert sorted(p.name for p in root.iterdir()) == [
        "incomplete_step_0000005",
        "step_0000002",
        "step_0000004",
    ]
    assert clean_leftovers(dest) == []


def test_pruning_never_leaves_a_half_deleted_checkpoint(tiny_config, monkeypatch):
    """A prune renames first: if the delete dies, what is left is not named like a checkpoint."""
    import hpdm.checkpoint as ckmod

    cfg = tiny_config("train.steps=6", "train.ckpt_every=2", "train.keep=1")
    tr = Trainer(cfg, progress=False)
    tr.train(until=2)
    real_rmtree, calls = ckmod.shutil.rmtree, []

    def dying_rmtree(path, ignore_errors=False):
        calls.append(Path(path).name)
        if Path(path).name.startswith(".del_"):
            (Path(path) / "model.safetensors").unlink()  # halfway through, the process dies
            raise KeyboardInterrupt
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(ckmod.shutil, "rmtree", dying_rmtree)
    with pytest.raises(KeyboardInterrupt):
        tr.train(until=4)
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(tr.out_dir)] == ["step_0000004"]
    with pytest.warns(UserWarning, match="leftover"):
        again = Trainer(cfg, resume="auto", progress=False)
    assert again.step == 4


def test_resume_from_nothing_and_until_below_the_step_are_errors(run, tmp_path, capsys):
    assert main(["train", "tiny", f"train.out_dir={tmp_path / 'n'}", "--resume", str(tmp_path / "none")]) == 2
    assert "no checkpoint found at" in capsys.readouterr().err
    dest = tmp_path / "u"
    shutil.copytree(run, dest)
    assert (
        main(["train", "tiny", "train.steps=8", f"train.out_dir={dest}", "--resume", "auto", "--until", "3"])
        == 2
    )
    err = capsys.readouterr().err
    assert "--until 3 is not after the current step 4" in err


def test_read_weights_names_a_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="model.safetensors: the file is missing"):
        read_weights(tmp_path / "model.safetensors")


def test_a_new_run_into_a_folder_with_checkpoints_is_refused(run, tmp_path, capsys):
    """Without --resume it would overwrite and prune the earlier run's checkpoints."""
    dest = tmp_path / "taken"
    shutil.copytree(run, dest)
    before = sorted(p.name for p in (dest / "checkpoints").iterdir())
    assert main(["train", "tiny", "train.steps=2", f"train.out_dir={dest}"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run (newest checkpoint step_0000004)" in err and "--resume auto" in err
    assert sorted(p.name for p in (dest / "checkpoints").iterdir()) == before


def test_result_files_name_a_checkpoint_the_same_in_every_clone(tmp_path, monkeypatch):
    """The shipped demo is `hpdm:assets/demo` wherever hpdm is installed, a checkpoint under the
    working folder is named relative to it, any other by its absolute path."""
    from hpdm.checkpoint import checkpoint_label
    from hpdm.demo import demo_checkpoint

    assert checkpoint_label(demo_checkpoint()) == "hpdm:assets/demo"
    (tmp_path / "work" / "runs" / "a").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    assert checkpoint_label("runs/a") == "runs/a"
    assert checkpoint_label(tmp_path / "work" / "runs" / "a") == "runs/a"
    assert checkpoint_label(tmp_path / "elsewhere") == str((tmp_path / "elsewhere").resolve())
