"""Datasets and the deterministic batch stream used by training.

Every dataset item is a dict `{"video": (3, F, H, W) float in [-1, 1], "label": int,
"caption": str, "index": int}`. The batch of step `s` depends only on `(seed, s, rank)`, so a
resumed run sees exactly the batches an uninterrupted run would have seen. A dataset with
`set_epoch` (the real-video ones: the epoch picks each video's clip) is given the epoch of every
item's position in the stream, inside whichever DataLoader worker reads it.
"""

from __future__ import annotations

from collections.abc import Iterator

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

    def _perm(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def batches(self) -> Iterator[tuple[list[int], list[int]]]:
        """(indices, epochs) of every step from `start_step` on: epoch = stream position // n."""
        gb = self.batch * self.world
        step = self.start
        cache: dict[int, torch.Tensor] = {}
        while True:
            first = step * gb + self.rank * self.batch
            idx, epochs = [], []
            for pos in range(first, first + self.batch):
                epoch = pos // self.n
                if epoch not in cache:
                    cache.clear()
                    cache[epoch] = self._perm(epoch)
                idx.append(int(cache[epoch][pos % self.n]))
                epochs.append(epoch)
            yield idx, epochs
            step += 1

    def __iter__(self) -> Iterator[list[int]]:
        for idx, _ in self.batches():
            yield idx

    def __len__(self) -> int:  # an endless stream
        return 2**62


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

    def __init__(self, ds: Dataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def _item(self, i: int, epoch: int) -> dict:
        if hasattr(self.ds, "set_epoch") and getattr(self.ds, "epoch", None) != epoch:
            self.ds.set_epoch(epoch)
        return self.ds[i]

    def __getitem__(self, key: tuple[list[int], list[int]]) -> dict:
        indices, epochs = key
        if hasattr(self.ds, "get_batch") and not hasattr(self.ds, "set_epoch"):
            b = self.ds.get_batch(indices)
        else:
            items = [self._item(i, e) for i, e in zip(indices, epochs)]
            b = {
                "video": torch.stack([it["video"] for it in items]),
                "label": torch.tensor([int(it["label"]) for it in items]),
                "caption": [it["caption"] for it in items],
                "index": torch.tensor([int(it["index"]) for it in items]),
            }
        b["label"] = torch.as_tensor(b["label"]).long()
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
) -> Iterator[dict]:
    sampler = _WithEpochs(StepBatchSampler(len(ds), batch_size, seed, start_step, rank, world))
    loader = DataLoader(
        _Batched(ds),
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    return iter(loader)
