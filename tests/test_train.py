"""The trainer: it learns, resumes bit-exactly, saves atomically, prunes, stops on NaN, logs."""

from __future__ import annotations

import json
import math

import pytest
import torch

import hpdm.checkpoint as ckpt_mod
import hpdm.train as train_mod
from hpdm.data import batch_stream, build_dataset
from hpdm.data.shapes import ShapesDataset
from hpdm.pyramid import extract_patches, sample_boxes
from hpdm.train import Trainer, TrainingDiverged, list_checkpoints, load_model, resolve_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_overfits_one_batch(tiny_config):
    cfg = tiny_config(
        "train.lr=2e-3",
        "train.warmup=0",
        "train.schedule=constant",
        "diffusion.cond_drop=0",
        "train.batch_size=2",
    )
    tr = Trainer(cfg, progress=False)
    batch = next(tr._batches())
    boxes = sample_boxes(tr.geo, 2, torch.Generator().manual_seed(0))
    x = extract_patches(batch["video"], tr.geo, boxes)
    losses, first_per_level = [], None
    for _ in range(200):
        gen = torch.Generator().manual_seed(123)  # the same σ and noise at every step
        loss, per, _ = tr.diffusion.loss(
            tr.model,
            x,
            boxes,
            batch["label"],
            generator=gen,
            null_class=tr.model.null_class(),
        )
        tr.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tr.model.parameters(), 1.0)
        tr.opt.step()
        losses.append(loss.item())
        if first_per_level is None:
            first_per_level = per.mean(0)
    assert losses[0] > 0.5
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])  # ~60x on this setup (seeds 0-4: 57-125x)
    assert torch.all(per.mean(0) < first_per_level / 5), (first_per_level, per.mean(0))  # every level learns


def _video_folder(root):
    """Two classes of three short mp4s (4 and 7 frames, so clips loop and start at random)."""
    from hpdm.data.video import write_video

    g = torch.Generator().manual_seed(0)
    for name in ("a", "b"):
        for i in range(3):
            frames = 4 + 3 * (i % 2)
            write_video(root / name / f"{i}.mp4", torch.rand(3, frames, 32, 32, generator=g) * 2 - 1)
    return root


RESUME_VARIANTS = {
    "adamw": ["train.optimizer=adamw"],
    "lamb": ["train.optimizer=lamb"],
    # dropout draws from the global generator: it once shifted after a resume
    "dropout": ["model.dropout=0.2"],
    "self_cond": ["model.self_cond=0.5"],
    "grad_accum": ["train.grad_accum=2", "train.batch_size=1"],
    # the paper's way to state the batch: per-rank micro-batches of 1 derived from it
    "global_batch": ["train.global_batch=2", "train.grad_accum=2"],
    "folder_workers": ["data.dataset=folder", "data.num_workers=2", "model.dropout=0.1"],
    # joint image+video batches: 0 or 1 image among the 2 per step, from a stream of its own
    "images": ["data.images=shapes", "data.image_ratio=0.25"],
}


@pytest.mark.parametrize("variant", list(RESUME_VARIANTS))
def test_resume_is_bit_exact(tiny_config, tmp_path, variant):
    """Stopping at step 4 and resuming gives bit for bit the weights, EMA and log of a straight run."""
    common = ["train.steps=8", "train.ckpt_every=100", "train.batch_size=2", "train.log_every=4"]
    common += RESUME_VARIANTS[variant]
    if variant == "folder_workers":
        common.append(f"data.path={_video_folder(tmp_path / 'videos')}")
    straight = Trainer(tiny_config(*common, f"train.out_dir={tmp_path / 'straight'}"), progress=False)
    straight.train()

    cfg = tiny_config(*common, f"train.out_dir={tmp_path / 'resumed'}")
    first = Trainer(cfg, progress=False)
    first.train(until=4)
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")] == ["step_0000004"]
    del first
    torch.manual_seed(999)  # the resumed trainer must not depend on the global generators' history
    torch.rand(3)
    second = Trainer(cfg, resume="auto", progress=False)
    assert second.step == 4
    second.train()
    assert second.step == 8

    assert _states_equal(second.model.state_dict(), straight.model.state_dict())
    assert _states_equal(second.ema.state_dict(), straight.ema.state_dict())
    assert not _states_equal(second.model.state_dict(), second.ema.state_dict())
    # the logs agree too (same batches, boxes, σ and noise)
    logs = [
        [json.loads(s)["loss"] for s in (tmp_path / d / "log.jsonl").read_text().splitlines()]
        for d in ("straight", "resumed")
    ]
    assert logs[0] == logs[1] and len(logs[0]) == 2


def test_the_stream_reads_each_video_in_the_epoch_of_its_position(tmp_path):
    """A video's clip is drawn from (seed, index, epoch) with the epoch of its place in the stream:
    a new clip every pass over the data, the same whether workers or the main process read it."""
    from hpdm.data.folder import VideoFolderDataset
    from hpdm.data.video import write_video

    g = torch.Generator().manual_seed(0)
    for i in range(3):  # 24 frames, clips of 4: 21 possible starts
        write_video(tmp_path / "v" / "a" / f"{i}.mp4", torch.rand(3, 24, 16, 16, generator=g) * 2 - 1)
    ds = VideoFolderDataset(tmp_path / "v", 4, 16, 16, seed=3)
    seen = {}
    for workers in (0, 2):
        stream = batch_stream(ds, 3, seed=1, num_workers=workers)  # one step = one epoch of 3 videos
        seen[workers] = [next(stream) for _ in range(4)]
    for a, b in zip(seen[0], seen[2]):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["video"], b["video"])
    for epoch, batch in enumerate(seen[0]):
        ds.set_epoch(epoch)
        for i, video in zip(batch["index"].tolist(), batch["video"]):
            assert torch.equal(video, ds[i]["video"])
    clips = {e: dict(zip(b["index"].tolist(), b["video"])) for e, b in enumerate(seen[0])}
    assert not all(torch.equal(clips[0][i], clips[1][i]) for i in range(3))  # a new pass, new clips


def test_interrupted_save_keeps_previous_checkpoint(tiny_config, monkeypatch):
    cfg = tiny_config("train.steps=4", "train.ckpt_every=2", "train.batch_size=2")
    tr = Trainer(cfg, progress=False)
    tr.train(until=2)
    ema_at_2 = {k: v.clone() for k, v in tr.ema.state_dict().items()}

    real_save, calls = ckpt_mod.save_file, []

    def failing_save(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:  # the second save's second file: the process "dies" mid-save
            raise OSError("disk full (simulated)")
        return real_save(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(ckpt_mod, "save_file", failing_save)
    with pytest.raises(OSError, match="simulated"):
        tr.train()
    monkeypatch.undo()

    root = tr.out_dir / "checkpoints"
    assert (root / ".tmp_step_0000004" / "model.safetensors").exists()  # a half-written save is there...
    assert [p.name for p in list_checkpoints(tr.out_dir)] == ["step_0000002"]  # ...and ignored
    assert resolve_checkpoint(tr.out_dir).name == "step_0000002"
    model, loaded_cfg = load_model(tr.out_dir)
    assert _states_equal(model.state_dict(), ema_at_2)
    assert loaded_cfg.to_dict() == cfg.to_dict()

    with pytest.warns(UserWarning, match="removed 1 leftover.*tmp_step_0000004"):
        again = Trainer(cfg, resume="auto", progress=False)  # resuming goes on from the last good save
    assert again.step == 2 and not (root / ".tmp_step_0000004").exists()
    again.train()
    assert [p.name for p in list_checkpoints(tr.out_dir)] == ["step_0000002", "step_0000004"]
    assert not list(root.glob(".tmp_*"))


def test_keeps_only_the_newest_checkpoints(tiny_config):
    cfg = tiny_config("train.steps=7", "train.ckpt_every=2", "train.keep=2", "train.batch_size=2")
    tr = Trainer(cfg, progress=False)
    tr.train()
    assert [p.name for p in list_checkpoints(tr.out_dir)] == ["step_0000006", "step_0000007"]
    assert sorted(p.name for p in (tr.out_dir / "checkpoints").iterdir()) == ["step_0000006", "step_0000007"]
    state = json.loads((tr.out_dir / "checkpoints" / "step_0000007" / "state.json").read_text())
    assert state["step"] == 7 and state["data_position"] == 14


def test_nan_stops_training_cleanly(tiny_config):
    cfg = tiny_config("train.steps=6", "train.ckpt_every=2", "train.batch_size=2")
    tr = Trainer(cfg, progress=False)
    tr.train(until=2)
    with torch.no_grad():
        tr.model.latents[2] = float("nan")  # only level 2 reads its own latents
    with pytest.raises(TrainingDiverged) as e:
        tr.train()
    msg = str(e.value)
    assert "step 3" in msg and "level 2" in msg and "step_0000002" in msg
    assert tr.step == 2  # no optimizer step with a NaN loss
    assert [p.name for p in list_checkpoints(tr.out_dir)] == ["step_0000002"]
    model, _ = load_model(tr.out_dir, ema=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_in_an_early_micro_batch_is_caught(tiny_config):
    """With gradient accumulation a NaN in any micro-batch poisons the summed gradient."""
    cfg = tiny_config("train.steps=4", "train.ckpt_every=1", "train.batch_size=2", "train.grad_accum=2")
    tr = Trainer(cfg, progress=False)
    tr.train(until=1)
    real_micro_step, calls = tr._micro_step, []

    def first_micro_nan(batch):
        loss, per, sigma = real_micro_step(batch)
        calls.append(1)
        if len(calls) == 1:
            nan = torch.tensor(float("nan"))
            loss, per = loss * nan, per.clone().index_fill_(1, torch.tensor([1]), float("nan"))
        return loss, per, sigma

    tr._micro_step = first_micro_nan
    with pytest.raises(TrainingDiverged, match="step 2.*level 1"):
        tr.train()
    assert len(calls) == 2 and tr.step == 1
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())  # no step on a NaN gradient
    assert [p.name for p in list_checkpoints(tr.out_dir)] == ["step_0000001"]


def test_class_id_out_of_range_is_a_clear_error(tiny_config, monkeypatch):
    # the shapes dataset declares 8 classes: a 4-class model is refused when the trainer is built
    with pytest.raises(ValueError, match="set model.num_classes=8"):
        Trainer(tiny_config("model.num_classes=4", "train.steps=3"), progress=False)
    # a dataset that does not declare its classes is caught at the first batch, before any step
    monkeypatch.delattr(ShapesDataset, "num_classes")
    tr = Trainer(tiny_config("model.num_classes=4", "train.steps=3"), progress=False)
    with pytest.raises(ValueError) as e:
        tr.train()
    msg = str(e.value)
    assert "out of range for model.num_classes=4" in msg and "class id" in msg
    bad = int(msg.split("class id ")[1].split()[0])
    assert 4 <= bad < 8
    assert tr.step == 0 and list_checkpoints(tr.out_dir) == []


def test_dataset_with_more_classes_fails_at_construction(tiny_config, monkeypatch):
    class Labelled(torch.utils.data.Dataset):
        num_classes = 8

        def __init__(self, cfg, train=True):
            self.ds = build_dataset(cfg, train)

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            return self.ds[i]

    monkeypatch.setattr(train_mod, "build_dataset", Labelled)
    with pytest.raises(ValueError, match="set model.num_classes=8"):
        Trainer(tiny_config("model.num_classes=4"), progress=False)


def test_jsonl_log_records(tiny_config):
    cfg = tiny_config("train.steps=6", "train.log_every=3", "train.batch_size=2", "train.ckpt_every=100")
    tr = Trainer(cfg, progress=False)
    last = tr.train()
    lines = [json.loads(s) for s in (tr.out_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [3, 6]
    assert lines[-1] == last
    for r in lines:
        per_level = [r[f"loss_l{i}"] for i in range(3)]
        assert all(math.isfinite(v) and v > 0 for v in per_level)
        assert r["loss"] == pytest.approx(sum(per_level), rel=1e-5)  # the loss is the sum over levels
        assert r["steps_per_s"] > 0 and r["videos_per_s"] == pytest.approx(2 * r["steps_per_s"])
        assert 0 <= r["data_wait_share"] <= 1
        assert set(r["loss_by_sigma"]) == {"l0", "l1", "l2"}
        assert math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0
    # lr after step s is lr · f(s): warm-up over 5 steps, then cosine over the remaining 1
    assert lines[0]["lr"] == pytest.approx(2e-3 * 4 / 5)
    assert lines[1]["lr"] == pytest.approx(2e-3 * 0.1)
    assert (tr.out_dir / "config.yaml").exists()
