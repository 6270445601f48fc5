"""Joint image+video training (paper §5.2: 4096 videos + 4096 images per T2V batch): the image
source, the per-batch mix, the rank split, and the per-level loss of images and videos."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hpdm.config import ConfigError, load_config
from hpdm.data import MixedBatchSampler, batch_stream, build_dataset, build_image_dataset, images_in_batch
from hpdm.train import Trainer

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("batch,ratio", [(8, 0.5), (3, 0.5), (2, 0.25), (5, 0.3), (4096 * 2, 0.5)])
def test_every_batch_holds_the_ratio_and_the_run_holds_it_exactly(batch, ratio):
    counts = [images_in_batch(s, batch, ratio) for s in range(200)]
    assert set(counts) <= {math.floor(batch * ratio), math.floor(batch * ratio) + 1}
    for s in (1, 7, 200):
        assert sum(counts[:s]) == math.floor(s * batch * ratio + 1e-9)


def test_ranks_take_disjoint_slices_of_both_streams():
    """Two ranks' images and videos over 30 steps: no item twice, no gap (each source's seeded
    permutation is consumed in order), and each rank's batch is its own mix."""
    n_vid, n_img, B, r = 1000, 1000, 3, 0.5
    taken = {"vid": [], "img": []}
    for rank in (0, 1):
        it = MixedBatchSampler(n_vid, n_img, r, B, seed=5, rank=rank, world=2).batches()
        for s in range(30):
            (vid, _), (img, _) = next(it)
            assert len(img) == images_in_batch(s, B, r) and len(vid) + len(img) == B
            taken["vid"] += vid
            taken["img"] += img
    for kind in ("vid", "img"):
        assert len(set(taken[kind])) == len(taken[kind])
    perm_img = torch.randperm(n_img, generator=torch.Generator().manual_seed(6 * 1_000_003)).tolist()
    assert sorted(taken["img"]) == sorted(perm_img[: len(taken["img"])])
    # a resumed stream (start_step) continues exactly where a straight one is
    straight = MixedBatchSampler(n_vid, n_img, r, B, seed=5, rank=1, world=2).batches()
    for _ in range(17):
        want = next(straight)
    assert (
        next(MixedBatchSampler(n_vid, n_img, r, B, seed=5, start_step=16, rank=1, world=2).batches()) == want
    )


def test_batches_mix_still_images_after_the_videos(tiny_config):
    cfg = tiny_config("data.images=shapes", "data.image_ratio=0.5", "model.num_classes=8")
    images = build_image_dataset(cfg)
    stream = batch_stream(build_dataset(cfg), 4, seed=0, images=images, image_ratio=0.5)
    b = next(stream)
    assert b["is_image"].tolist() == [False, False, True, True] and b["video"].shape[0] == 4
    still = b["video"][2:]
    assert (still - still[:, :, :1]).abs().max() == 0  # every frame the first
    assert (b["video"][:2] - b["video"][:2, :, :1]).abs().max() > 0.1  # the videos move
    assert " moves " in b["caption"][0] and " moves " not in b["caption"][2]
    with pytest.raises(ConfigError, match="needs both data.images"):
        load_config("tiny", ["data.image_ratio=0.5"])


def test_training_logs_the_loss_of_images_and_videos_per_level(tiny_config, tmp_path):
    cfg = tiny_config("data.images=shapes", "data.image_ratio=0.5", "train.steps=2", "train.log_every=2")
    Trainer(cfg, progress=False).train()
    rec = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    for kind in ("video", "image"):
        assert all(rec[f"loss_{kind}_l{i}"] > 0 for i in range(3))
    # the batch's per-level loss is the mean of the two halves
    assert rec["loss_l0"] == pytest.approx((rec["loss_video_l0"] + rec["loss_image_l0"]) / 2, rel=1e-5)
