"""Datasets and the deterministic batch stream used by training.

Every dataset item is a dict `{"video": (3, F, H, W) float in [-1, 1], "label": int,
"caption": str, "index": int}`. The batch of step `s` depends only on `(seed, s, rank)`, so a
resumed run sees exactly the batches an uninterrupted run would have seen. A dataset with
`set_epoch` (the real-video ones: the epoch picks each video's clip) is given the epoch of every
item's position in the stream, inside whichever DataLoader worker reads it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hpdm.config import Config


def build_dataset(cfg: Config, train: bool = True) -> Dataset:
    """The dataset named by `cfg.data`, producing clips of the pyramid's target size."""
    d = cfg.data
    F, H, W = cfg.pyramid.target
    if d.dataset == "shapes":
        from hpdm.data.shapes import ShapesDataset

        seed = d.seed if train else d.seed + 1_000_003  # a held-out set for evaluation
        return ShapesDataset(d.num_samples, F, H, W, seed=seed, size_range=d.shape_size)
    if d.dataset == "cache":
        from hpdm.data.cache import CachedDataset

        return CachedDataset(d.path, text=cfg.text if cfg.model.text_dim > 0 else None)
    from hpdm.data import folder

    common = dict(
        num_frames=F, height=H, width=W, frame_stride=d.frame_stride, short_video=d.short_video, seed=d.seed
    )
    if d.dataset == "folder":
        return folder.VideoFolderDataset(d.path, **common)
    if d.dataset == "ucf101":
        return folder.UCF101Dataset(d.path, d.split_dir, fold=d.fold, train=train and d.train_split, **common)
    return folder.CaptionDataset(d.path, **common)


def build_image_dataset(cfg: Config, train: bool = True) -> Dataset | None:
    """The image source of joint image+video training (`data.images`), each image a still video
    of the target size; None without one."""
    d = cfg.data
    if not d.images:
        return None
    F, H, W = cfg.pyramid.target
    if d.images == "shapes":
        from hpdm.data.shapes import ShapesDataset

        seed = (d.seed if train else d.seed + 1_000_003) + 7_919  # other scenes than the videos'
        return ShapesDataset(d.num_samples, F, H, W, seed=seed, size_range=d.shape_size, still=True)
    from hpdm.data import folder

    common = dict(num_frames=F, height=H, width=W, seed=d.seed)
    path = Path(d.images)
    if path.is_file() or any((path / name).is_file() for name in folder._CAPTION_FILES):
        return folder.CaptionDataset(d.images, **common)
    return folder.VideoFolderDataset(d.images, **common)


def images_in_batch(step: int, batch: int, ratio: float) -> int:
    """Images among the `batch` items of `step`: floor((step+1)·batch·ratio) − floor(step·batch·ratio),
    so every batch holds ⌊batch·ratio⌋ or one more, and the first s steps hold ⌊s·batch·ratio⌋
    images in all: exactly the ratio over time, the same on every rank, and known at any step
    (a resumed run draws the images and videos an uninterrupted run would)."""
    return math.floor((step + 1) * batch * ratio + 1e-9) - math.floor(step * batch * ratio + 1e-9)


class _Source:
    """One source's endless seeded stream of (index, epoch): a permutation per epoch."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def take(self, first: int, count: int) -> tuple[list[int], list[int]]:
        idx, epochs = [], []
        for pos in range(first, first + count):
            epoch = pos // self.n
            if epoch != self._epoch:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
            idx.append(int(self._perm[pos % self.n]))
            epochs.append(epoch)
        return idx, epochs


class StepBatchSampler(Sampler):
    """Yields the index list of every step from `start_step` on: a seeded permutation per epoch,
    each rank taking its own slice of the global batch."""

    def __init__(
        self, n: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0, world: int = 1
    ):
        if n <= 0:
            raise ValueError("the dataset is empty: check data.path and the files in it")
        self.n, self.batch, self.seed, self.start = n, batch_size, seed, start_step
        self.rank, self.world = rank, world

    def batches(self) -> Iterator[tuple[list[int], list[int]]]:
        """(indices, epochs) of every step from `start_step` on: epoch = stream position // n."""
        source = _Source(self.n, self.seed)
        step = self.start
        while True:
            yield source.take((step * self.world + self.rank) * self.batch, self.batch)
            step += 1

    def __iter__(self) -> Iterator[list[int]]:
        for idx, _ in self.batches():
            yield idx

    def __len__(self) -> int:  # an endless stream
        return 2**62


class MixedBatchSampler(StepBatchSampler):
    """Joint image+video batches: step s takes `images_in_batch(s)` images from the image
    source's own seeded stream and the rest from the videos' (each rank its slice of both)."""

    def __init__(
        self,
        n_video: int,
        n_image: int,
        ratio: float,
        batch_size: int,
        seed: int,
        start_step=0,
        rank=0,
        world=1,
    ):
        super().__init__(n_video, batch_size, seed, start_step, rank, world)
        if n_image <= 0:
            raise ValueError("the image source (data.images) is empty: check the path and the files in it")
        self.n_image, self.ratio = n_image, ratio

    def batches(self) -> Iterator[tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]]:
        videos, images = _Source(self.n, self.seed), _Source(self.n_image, self.seed + 1)
        B, step = self.batch, self.start
        while True:
            k = images_in_batch(step, B, self.ratio)
            before = math.floor(step * B * self.ratio + 1e-9)  # images of one rank in steps < s
            first_img = before * self.world + self.rank * k
            first_vid = (step * B - before) * self.world + self.rank * (B - k)
            yield videos.take(first_vid, B - k), images.take(first_img, k)
            step += 1

    def __iter__(self):
        for (vid, _), (img, _) in self.batches():
            yield vid, img


class _WithEpochs(Sampler):
    """A `StepBatchSampler` yielding (indices, epochs): the workers set each item's epoch themselves."""

    def __init__(self, sampler: StepBatchSampler):
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[list[int], list[int]]]:
        return self.sampler.batches()

    def __len__(self) -> int:
        return len(self.sampler)


class _Batched(Dataset):
    """Wraps a dataset so that one fetch returns a whole batch (vectorised when it has get_batch).

    A fetch is `(indices, epochs)`: a dataset with `set_epoch` reads item i in its epoch (this
    copy of the dataset: each DataLoader worker holds its own), so its clip depends only on
    (seed, index, epoch), never on which worker reads it or what that worker read before."""

    def __init__(self, ds: Dataset, images: Dataset | None = None):
        self.ds, self.images = ds, images

    def __len__(self) -> int:
        return len(self.ds)

    @staticmethod
    def _fetch(ds: Dataset, indices: list[int], epochs: list[int]) -> dict:
        if hasattr(ds, "get_batch") and not hasattr(ds, "set_epoch"):
            b = ds.get_batch(indices)
        else:
            items = []
            for i, e in zip(indices, epochs):
                if hasattr(ds, "set_epoch") and getattr(ds, "epoch", None) != e:
                    ds.set_epoch(e)
                items.append(ds[i])
            b = {
                "video": torch.stack([it["video"] for it in items]),
                "label": torch.tensor([int(it["label"]) for it in items]),
                "caption": [it["caption"] for it in items],
                "index": torch.tensor([int(it["index"]) for it in items]),
            }
        b["label"] = torch.as_tensor(b["label"]).long()
        return b

    def __getitem__(self, key) -> dict:
        if self.images is None:
            return self._fetch(self.ds, *key)
        (vi, ve), (ii, ie) = key
        parts = [self._fetch(src, i, e) for src, i, e in ((self.ds, vi, ve), (self.images, ii, ie)) if i]
        keys = set.intersection(*(set(p) for p in parts))  # e.g. "text" only when both sources have it
        b = {
            k: (sum((p[k] for p in parts), []) if k == "caption" else torch.cat([p[k] for p in parts]))
            for k in keys
        }
        b["is_image"] = torch.cat(
            [torch.zeros(len(vi), dtype=torch.bool), torch.ones(len(ii), dtype=torch.bool)]
        )
        return b


def batch_stream(
    ds: Dataset,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    rank: int = 0,
    world: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
    images: Dataset | None = None,
    image_ratio: float = 0.0,
) -> Iterator[dict]:
    """The training batches from `start_step` on; with an image source, joint image+video
    batches (`MixedBatchSampler`), each with "is_image" (B,) bool: videos first, then images."""
    if images is not None:
        steps = MixedBatchSampler(
            len(ds), len(images), image_ratio, batch_size, seed, start_step, rank, world
        )
    else:
        steps = StepBatchSampler(len(ds), batch_size, seed, start_step, rank, world)
    sampler = _WithEpochs(steps)
    loader = DataLoader(
        _Batched(ds, images),
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    return iter(loader)
