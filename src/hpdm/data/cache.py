"""`hpdm prepare`: decode a dataset once into uint8 shards, so training never decodes video.

Layout of a cache folder:
  shard_00000.npy, shard_00001.npy, ...  (N, F, H, W, 3) uint8, at most `shard_size` clips each
  index.json                             written last (temp file + rename): no index, no cache

The index holds, per clip, its label, caption and source item index, plus the class names, a
description of the source dataset and the files skipped as unreadable. A shard's `count` in the
index is authoritative: a shard can have unused rows at its end when items were dropped.

For a text-to-video config, `hpdm prepare` also encodes every distinct caption once
(`prepare_text`), so training never runs the text encoder:
  text_tokens.npy    (total tokens, d) float16: each caption's real tokens, one after the other
  text.json          the encoder settings (`text` of the config), the distinct captions, each
                     one's offset and token count, and each clip's caption number; written last
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hpdm.data.video import to_uint8

__all__ = ["CacheError", "prepare_cache", "prepare_text", "CachedDataset", "INDEX_FILE", "TEXT_FILE"]

INDEX_FILE = "index.json"
TEXT_FILE = "text.json"
_FORMAT = "hpdm-clip-cache"
_VERSION = 1


class CacheError(FileNotFoundError):
    """A clip cache is missing, incomplete or inconsistent."""


def _shard_name(i: int) -> str:
    return f"shard_{i:05d}.npy"


def _describe(dataset) -> str:
    if type(dataset).__repr__ is object.__repr__:
        return type(dataset).__name__
    return repr(dataset)


def _items(dataset, num_workers: int):
    """Items of one pass over the dataset, in order, with the index each was asked for."""
    if num_workers > 0:
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers)
        yield from enumerate(loader)
    else:
        for i in range(len(dataset)):
            yield i, dataset[i]


def prepare_cache(
    dataset,
    out_dir: str | Path,
    clips_per_video: int = 1,
    shard_size: int = 1024,
    num_workers: int = 0,
    progress: bool = True,
) -> Path:
    """Write `clips_per_video` clips of every item of `dataset` into a cache at `out_dir`.

    `dataset` yields `{"video": (3, F, H, W) in [-1, 1], "label", "caption", "index"}` items. Clip k
    of every video comes from pass k with `dataset.set_epoch(k)` (passes are stored one after the
    other). An item whose "index" differs from the one asked for stood in for an unreadable file
    and is not stored twice. Returns `out_dir`.
    """
    if clips_per_video < 1 or shard_size < 1:
        raise ValueError(f"clips_per_video and shard_size must be >= 1, got {clips_per_video}, {shard_size}")
    if clips_per_video > 1 and not hasattr(dataset, "set_epoch"):
        raise ValueError(
            f"clips_per_video={clips_per_video} needs a dataset with set_epoch() to draw different clips; "
            f"{type(dataset).__name__} has none — use clips_per_video=1"
        )
    num_videos = len(dataset)
    if num_videos == 0:
        raise ValueError("prepare_cache: the dataset is empty")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Remove a previous cache first so that a crash now leaves a folder without an index.
    for stale in [out / INDEX_FILE, *out.glob("shard_*.npy")]:
        stale.unlink(missing_ok=True)

    total = num_videos * clips_per_video  # an upper bound: stand-in items are dropped
    shape: tuple[int, ...] | None = None
    shard: np.ndarray | None = None
    counts: list[int] = []
    labels: list[int] = []
    captions: list[str] = []
    video_index: list[int] = []
    skipped: list[int] = []
    epoch0 = getattr(dataset, "epoch", 0)
    bar = tqdm(total=total, disable=not progress, desc="hpdm prepare", unit="clip")
    try:
        for k in range(clips_per_video):
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(k)  # before the loader starts: workers copy the dataset then
            for i, item in _items(dataset, num_workers):
                bar.update(1)
                if int(item["index"]) != i:
                    skipped.append(i)
                    continue
                clip = to_uint8(item["video"])  # (F, H, W, 3)
                if shape is None:
                    shape = clip.shape
                elif clip.shape != shape:
                    raise ValueError(f"prepare_cache: item {i} has shape {clip.shape}, earlier items {shape}")
                row = len(labels) % shard_size
                if row == 0:  # open the next shard, sized for what can still come
                    if shard is not None:
                        shard.flush()
                    rows = min(shard_size, total - len(labels) - len(skipped))
                    shard = np.lib.format.open_memmap(
                        out / _shard_name(len(counts)), mode="w+", dtype=np.uint8, shape=(rows, *shape)
                    )
                    counts.append(0)
                shard[row] = clip
                counts[-1] += 1
                labels.append(int(item["label"]))
                captions.append(str(item["caption"]))
                video_index.append(i)
    finally:
        bar.close()
        if shard is not None:
            shard.flush()
        shard = None
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch0)
    if not labels:
        raise ValueError("prepare_cache: no item of the dataset could be read; nothing was written")

    # Files the dataset skipped at scan time, and those that failed here (maybe inside a worker).
    bad = list(getattr(dataset, "bad_files", []))
    entries = getattr(dataset, "entries", None)
    for i in sorted(set(skipped)):
        name = str(entries[i].path) if entries is not None else f"item {i}"
        if name not in bad:
            bad.append(name)
    index = {
        "format": _FORMAT,
        "version": _VERSION,
        "num_clips": len(labels),
        "shape": list(shape),
        "dtype": "uint8",
        "shards": [{"file": _shard_name(s), "count": c} for s, c in enumerate(counts)],
        "clips_per_video": clips_per_video,
        "labels": labels,
        "captions": captions,
        "video_index": video_index,
        "class_names": list(getattr(dataset, "classes", []) or []),
        "source": _describe(dataset),
        "skipped_files": bad,
    }
    tmp = out / (INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps(index))
    os.replace(tmp, out / INDEX_FILE)  # atomic: the index appears only once every shard is written
    return out


def _text_settings(text_cfg) -> dict:
    return {"encoder": text_cfg.encoder, "path": text_cfg.path, "max_length": text_cfg.max_length}


def prepare_text(
    cache_dir: str | Path, cfg, device="cpu", batch_size: int = 64, progress: bool = True
) -> Path:
    """Encode every distinct caption of a clip cache once with `cfg.text` (checked against
    `model.text_dim`); an empty caption reads "a video", as in training. Returns `text.json`'s path."""
    from hpdm.text import encode_text

    root = Path(cache_dir)
    index = json.loads((root / INDEX_FILE).read_text())
    captions = [c if c.strip() else "a video" for c in index["captions"]]
    distinct = sorted(set(captions))
    number = {c: k for k, c in enumerate(distinct)}
    (root / TEXT_FILE).unlink(missing_ok=True)  # no text.json while the tokens are rewritten
    chunks, lengths = [], []
    for a in tqdm(range(0, len(distinct), batch_size), disable=not progress, desc="hpdm prepare text"):
        x = encode_text(cfg, distinct[a : a + batch_size], device).cpu()  # (b, T, d), zero-padded
        n = x.ne(0).any(-1).sum(-1)  # real tokens: the model masks the zero padding
        for row, k in zip(x, n.tolist()):
            chunks.append(row[:k].to(torch.float16).numpy())
            lengths.append(k)
    tokens = np.concatenate(chunks)
    np.save(root / "text_tokens.npy", tokens)
    meta = {
        **_text_settings(cfg.text),
        "width": int(tokens.shape[1]),
        "captions": distinct,
        "offsets": np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist(),
        "lengths": lengths,
        "clip_caption": [number[c] for c in captions],
    }
    tmp = root / (TEXT_FILE + ".tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, root / TEXT_FILE)
    return root / TEXT_FILE


class CachedDataset(torch.utils.data.Dataset):
    """Clips from a `prepare_cache` folder, memory-mapped; items are the source dataset's dicts.

    `index` of an item is its clip index in the cache (the source item is in `video_index`).
    With `text` (a config's `text` settings) and captions encoded with those settings by
    `prepare_text`, items and batches also carry "text": (T, d) / (B, T, d) float32 tokens,
    zero-padded to `text.max_length`; otherwise none (training then encodes the captions).
    """

    def __init__(self, cache_dir: str | Path, text=None) -> None:
        self.root = Path(cache_dir)
        index_path = self.root / INDEX_FILE
        if not self.root.is_dir():
            raise CacheError(
                f"no clip cache at {self.root}: build one with `hpdm prepare` (see `hpdm prepare --help`)"
            )
        if not index_path.is_file():
            partial = any(self.root.glob("shard_*.npy"))
            raise CacheError(
                f"clip cache {self.root} is incomplete ({INDEX_FILE} is missing"
                f"{': an earlier `hpdm prepare` did not finish' if partial else ''}); "
                "run `hpdm prepare` again with this output folder"
            )
        meta = json.loads(index_path.read_text())
        if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
            raise CacheError(
                f"{index_path} is not an hpdm clip cache (version {_VERSION}); rebuild it with `hpdm prepare`"
            )
        self.meta = meta
        self.shape = tuple(meta["shape"])  # (F, H, W, 3)
        self.num_frames, self.height, self.width = self.shape[:3]
        self.labels = np.asarray(meta["labels"], dtype=np.int64)
        self.captions: list[str] = meta["captions"]
        self.video_index = np.asarray(meta["video_index"], dtype=np.int64)
        self.classes: list[str] = meta["class_names"]
        self.source: str = meta["source"]
        self.skipped_files: list[str] = meta["skipped_files"]
        self._files = [self.root / s["file"] for s in meta["shards"]]
        counts = np.asarray([s["count"] for s in meta["shards"]], dtype=np.int64)
        self._ends = np.cumsum(counts)  # clip i lives in the first shard whose end is > i
        self._starts = self._ends - counts
        if int(self._ends[-1]) != meta["num_clips"] or len(self.labels) != meta["num_clips"]:
            raise CacheError(
                f"{index_path} is inconsistent (clip counts disagree); rebuild it with `hpdm prepare`"
            )
        self._arrays: list[np.ndarray] | None = None
        self.text = self._text_meta(text) if text is not None else None
        self._tokens: np.ndarray | None = None
        self._open()
        for f, a, c in zip(self._files, self._arrays, counts):
            if a.shape[1:] != self.shape or a.shape[0] < c or a.dtype != np.uint8:
                raise CacheError(
                    f"{f} holds {a.dtype} {a.shape}, the index expects >= {c} clips of {self.shape}; "
                    "rebuild the cache with `hpdm prepare`"
                )

    def _text_meta(self, text_cfg) -> dict | None:
        path = self.root / TEXT_FILE
        if not path.is_file():
            return None
        meta = json.loads(path.read_text())
        want = _text_settings(text_cfg)
        if {k: meta.get(k) for k in want} != want:
            import warnings

            warnings.warn(
                f"{path}: its captions were encoded with { ({k: meta.get(k) for k in want}) }, this config "
                f"asks for {want}; they are encoded during training instead (run `hpdm prepare` with "
                "this config to precompute them)",
                stacklevel=2,
            )
            return None
        if len(meta["clip_caption"]) != len(self.labels):
            raise CacheError(
                f"{path} does not match {INDEX_FILE} (clip counts differ); run `hpdm prepare` again"
            )
        meta["offsets"], meta["lengths"] = np.asarray(meta["offsets"]), np.asarray(meta["lengths"])
        meta["clip_caption"] = np.asarray(meta["clip_caption"])
        return meta

    def _text(self, idx: np.ndarray) -> torch.Tensor:
        """(B, max_length, d) float32 text tokens of clips idx, zero past each caption's tokens."""
        if self._tokens is None:
            self._tokens = np.load(self.root / "text_tokens.npy", mmap_mode="r")
        t = self.text
        out = np.zeros((len(idx), t["max_length"], t["width"]), dtype=np.float32)
        for b, c in enumerate(t["clip_caption"][idx]):
            o, n = t["offsets"][c], t["lengths"][c]
            out[b, :n] = self._tokens[o : o + n]
        return torch.from_numpy(out)

    def _open(self) -> list[np.ndarray]:
        if self._arrays is None:
            arrays = []
            for f in self._files:
                if not f.is_file():
                    raise CacheError(
                        f"clip cache shard {f} is missing; rebuild the cache with `hpdm prepare`"
                    )
                arrays.append(np.load(f, mmap_mode="r"))
            self._arrays = arrays
        return self._arrays

    def __getstate__(self) -> dict:
        # Memory maps would pickle as their full contents; DataLoader workers reopen them instead.
        state = self.__dict__.copy()
        state["_arrays"] = state["_tokens"] = None
        return state

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"CachedDataset({str(self.root)!r}, {len(self)} clips of {self.shape}, from {self.source})"

    def _check(self, indices: np.ndarray) -> np.ndarray:
        n = len(self)
        if ((indices < -n) | (indices >= n)).any():
            raise IndexError(f"CachedDataset: index out of range for {n} clips")
        return indices % n

    def __getitem__(self, i: int) -> dict:
        i = int(self._check(np.asarray([int(i)]))[0])
        s = int(np.searchsorted(self._ends, i, side="right"))
        clip = torch.from_numpy(np.array(self._open()[s][i - self._starts[s]]))  # (F, H, W, 3) uint8
        video = clip.permute(3, 0, 1, 2).float().div_(127.5).sub_(1)
        item = {"video": video, "label": int(self.labels[i]), "caption": self.captions[i], "index": i}
        if self.text is not None:
            item["text"] = self._text(np.asarray([i]))[0]
        return item

    def get_batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor, as_uint8: bool = False) -> dict:
        """Vectorised batch: video (B, 3, F, H, W) float32 in [-1, 1] (uint8 with `as_uint8`, to convert
        on the GPU), label (B,), caption list, index (B,)."""
        idx = self._check(np.asarray(indices, dtype=np.int64).reshape(-1))
        shard_of = np.searchsorted(self._ends, idx, side="right")
        out = np.empty((len(idx), *self.shape), dtype=np.uint8)  # (B, F, H, W, 3)
        arrays = self._open()
        for s in np.unique(shard_of):
            pick = np.flatnonzero(shard_of == s)
            rows = idx[pick] - self._starts[s]
            order = np.argsort(rows, kind="stable")  # ascending rows read the memory map front to back
            out[pick[order]] = arrays[s][rows[order]]
        video = torch.from_numpy(out).permute(0, 4, 1, 2, 3).contiguous()  # (B, 3, F, H, W)
        if not as_uint8:
            video = video.float().div_(127.5).sub_(1)
        batch = {
            "video": video,
            "label": torch.from_numpy(self.labels[idx]),
            "caption": [self.captions[i] for i in idx],
            "index": torch.from_numpy(idx),
        }
        if self.text is not None:
            batch["text"] = self._text(idx)
        return batch
