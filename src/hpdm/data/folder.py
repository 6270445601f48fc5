"""Real-video datasets: a class-per-folder tree, UCF-101 with its split files, and caption lists.

Every item is `{"video": (3, F, H, W) float32 in [-1, 1], "label": int, "caption": str, "index": int}`
(label -1 and caption "" when unknown), like the embedded `shapes` dataset. `index` is the index
of the item actually returned: it differs from the one asked for only when that file failed to
decode and the next readable item stood in for it.

Clip rule. A video of n frames gives a clip of `num_frames` frames taken every `frame_stride`
frames, spanning `span = (num_frames - 1) * frame_stride + 1` source frames. When n >= span the
start is uniform in [0, n - span], drawn from (seed, index, epoch) — call `set_epoch` each epoch
for fresh clips. When n < span, `short_video` decides: "loop" (default) takes frame
`(t * frame_stride) % n`, "pad" repeats the last frame, "skip" drops the video at scan time.
Image files are still videos (the frame repeated) whatever `short_video` says.

Frames are resized (bilinear, antialiased) so the short side covers the target, then
centre-cropped to H x W.

Broken files never stop training: the scan opens every container (threaded) and skips the
unreadable ones with one warning naming them; a file that fails later, at read time, is warned
about once and replaced by the next readable item. `bad_files` lists both kinds (read-time
failures inside DataLoader workers stay in the worker's copy of the dataset).

Lengths come from the container header at the scan (cheap: no file is read through). A header
can promise more frames than decode (a truncated download: 444 claimed, 68 decodable), so the
first read that comes back short counts the frames that decode, keeps that count in the entry
(`short_headers` lists such files, with one warning each) and draws the clip again within it;
the file is never called unreadable for it. The correction lives in this process's entries: in
DataLoader workers it is redone once per worker (the same clip, since starts depend only on
(seed, index, epoch, length)).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hpdm.data.video import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    VideoReadError,
    count_frames,
    probe_num_frames,
    read_image,
    read_video,
)

__all__ = [
    "VideoEntry",
    "ClipDataset",
    "VideoFolderDataset",
    "UCF101Dataset",
    "CaptionDataset",
    "resize_center_crop",
    "SHORT_VIDEO_RULES",
]

logger = logging.getLogger(__name__)

SHORT_VIDEO_RULES = ("loop", "pad", "skip")
_MAX_NAMED = 10  # bad files named in one warning; the rest are counted


def _warn(message: str) -> None:
    """warnings.warn, attributed to the first caller outside this module (the user's code)."""
    frame, level = sys._getframe(1), 2  # level 1 is this function
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


@dataclass
class VideoEntry:
    """One source file: where it is, what it is labelled with and (after the scan) its length."""

    path: Path
    label: int = -1
    caption: str = ""
    num_frames: int = 0
    is_image: bool = False


def resize_center_crop(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(F, h, w, 3) uint8 -> (3, F, height, width) float32 in [-1, 1]: cover the target, centre-crop."""
    if not frames.flags.writeable:  # torch.from_numpy warns on read-only arrays
        frames = frames.copy()
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (F, 3, h, w)
    h, w = x.shape[-2:]
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    if (new_h, new_w) != (h, w):
        # antialias: without it a large downscale aliases (bilinear reads only 2 taps per axis)
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    x = x[:, :, top : top + height, left : left + width]
    return (x / 127.5 - 1).clamp_(-1, 1).permute(1, 0, 2, 3).contiguous()


class ClipDataset(torch.utils.data.Dataset):
    """Clips from a list of `VideoEntry`; subclasses only build the list (see the module docstring)."""

    def __init__(
        self,
        entries: Sequence[VideoEntry],
        num_frames: int,
        height: int,
        width: int,
        frame_stride: int = 1,
        short_video: str = "loop",
        seed: int = 0,
        classes: Sequence[str] | None = None,
        source: str = "",
        probe_workers: int = 8,
    ) -> None:
        if min(num_frames, height, width, frame_stride) < 1:
            raise ValueError(
                f"num_frames, height, width and frame_stride must be >= 1, got "
                f"{num_frames}, {height}, {width}, {frame_stride}"
            )
        if short_video not in SHORT_VIDEO_RULES:
            raise ValueError(f"short_video must be one of {SHORT_VIDEO_RULES}, got {short_video!r}")
        self.num_frames, self.height, self.width = num_frames, height, width
        self.frame_stride = frame_stride
        self.short_video = short_video
        self.seed = seed
        self.epoch = 0
        self.classes: list[str] = list(classes or [])
        self.source = source
        self.bad_files: list[str] = []
        self.short_files: list[str] = []
        self.short_headers: list[str] = []  # files whose header overstates their length (corrected)
        self._bad: set[int] = set()  # entry indices that failed at read time
        self.entries = self._scan(list(entries), probe_workers)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def span(self) -> int:
        """Source frames one clip covers."""
        return (self.num_frames - 1) * self.frame_stride + 1

    def set_epoch(self, epoch: int) -> None:
        """Clip starts are drawn from (seed, index, epoch): a new epoch gives new clips."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.source!r}, {len(self)} videos, clips {self.num_frames}x"
            f"{self.height}x{self.width}, frame_stride={self.frame_stride}, short_video={self.short_video!r})"
        )

    # -- scan ------------------------------------------------------------------------------------

    def _scan(self, entries: list[VideoEntry], workers: int) -> list[VideoEntry]:
        def probe(e: VideoEntry) -> VideoEntry | str:
            try:
                n = probe_num_frames(e.path)
            except VideoReadError as err:
                return err.reason
            return VideoEntry(e.path, e.label, e.caption, n, e.path.suffix.lower() in IMAGE_EXTENSIONS)

        workers = max(1, min(workers, len(entries)))
        if workers > 1:  # waiting on file I/O (network disks!) overlaps; PyAV releases the GIL
            with ThreadPoolExecutor(workers) as pool:
                probed = list(pool.map(probe, entries))
        else:
            probed = [probe(e) for e in entries]

        good, bad = [], []
        for e, p in zip(entries, probed):
            if isinstance(p, str):
                bad.append((e.path, p))
                logger.warning("hpdm: skipping unreadable file %s: %s", e.path, p)
            elif not p.is_image and p.num_frames < self.span and self.short_video == "skip":
                self.short_files.append(str(e.path))
            else:
                good.append(p)
        self.bad_files.extend(str(path) for path, _ in bad)
        if bad:
            named = "; ".join(f"{path} ({why})" for path, why in bad[:_MAX_NAMED])
            more = f"; and {len(bad) - _MAX_NAMED} more" if len(bad) > _MAX_NAMED else ""
            msg = f"hpdm: skipped {len(bad)} of {len(entries)} files that could not be read: {named}{more}"
            _warn(msg)
        if self.short_files:
            logger.info(
                "hpdm: dropped %d videos shorter than a %d-frame clip (short_video='skip')",
                len(self.short_files),
                self.span,
            )
        if not good:
            raise ValueError(
                f"{type(self).__name__}: no usable videos in {self.source or 'the given list'} "
                f"({len(entries)} files listed, {len(bad)} unreadable, {len(self.short_files)} too short); "
                "check the path, the file extensions and `short_video`."
            )
        return good

    # -- items -----------------------------------------------------------------------------------

    def _positions(self, n: int, step: int) -> np.ndarray:
        """Frame positions t * step of a clip in an n-frame video shorter than the clip."""
        t = np.arange(self.num_frames) * step
        return t % n if self.short_video == "loop" else np.minimum(t, n - 1)

    def clip_start(self, index: int) -> int:
        """First source frame of item `index`'s clip this epoch (0 for videos shorter than a clip)."""
        slack = self.entries[index].num_frames - self.span
        if slack <= 0:
            return 0
        rng = np.random.default_rng([self.seed, index, self.epoch])
        return int(rng.integers(0, slack + 1))

    def load_clip(self, index: int) -> torch.Tensor:
        """Decode, resize and crop item `index`'s clip: (3, F, H, W) float32. Raises VideoReadError."""
        e = self.entries[index]
        if e.is_image:
            still = resize_center_crop(read_image(e.path)[None], self.height, self.width)
            return still.expand(-1, self.num_frames, -1, -1).contiguous()
        if e.num_frames >= self.span:
            try:
                frames = read_video(e.path, self.num_frames, self.clip_start(index), self.frame_stride)
            except VideoReadError:
                frames = None
            if (frames is None or len(frames) < self.num_frames) and self._true_length(e):
                return self.load_clip(index)  # drawn again within the frames that really decode
            if frames is None:
                raise VideoReadError(e.path, f"no decodable frame at index {self.clip_start(index)}")
            pos = self._positions(len(frames), 1) if len(frames) < self.num_frames else slice(None)
        else:
            frames = read_video(e.path, max_frames=self.span)
            pos = self._positions(len(frames), self.frame_stride)
        # resize each decoded frame once, then repeat (loop / pad) on the small frames
        return resize_center_crop(frames, self.height, self.width)[:, pos]

    def _true_length(self, e: VideoEntry) -> bool:
        """A read came back short: count the frames that decode and, when the header promised more,
        keep the true count in the entry (this process's index) and say so once. True if it changed.
        The clip start is a pure function of (seed, index, epoch, length), so every worker that
        corrects the entry draws the same clip."""
        n = count_frames(e.path)
        if n >= e.num_frames:
            return False
        _warn(
            f"hpdm: {e.path}: its header says {e.num_frames} frames but {n} decode (a truncated file?); "
            f"reading it as {n} frames"
        )
        self.short_headers.append(str(e.path))
        e.num_frames = n
        return True

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{type(self).__name__}: index {index} out of range for {n} items")
        index %= n
        for j in (x % n for x in range(index, index + n)):
            if j in self._bad:
                continue
            e = self.entries[j]
            try:
                video = self.load_clip(j)
            except VideoReadError as err:
                self._bad.add(j)
                self.bad_files.append(str(e.path))
                _warn(f"hpdm: {err} Using the next readable item instead.")
                continue
            return {"video": video, "label": e.label, "caption": e.caption, "index": j}
        raise VideoReadError(self.source or type(self).__name__, "no readable video left in the dataset")


def _walk(root: Path, extensions: Sequence[str]) -> list[Path]:
    """Files under root with one of the suffixes, sorted; hidden files and folders skipped."""
    exts = {x.lower() if x.startswith(".") else f".{x.lower()}" for x in extensions}
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        # "._x.mp4" are macOS resource forks, a frequent stowaway in dataset archives
        out.extend(
            Path(dirpath, f) for f in filenames if not f.startswith(".") and Path(f).suffix.lower() in exts
        )
    return sorted(out)


class VideoFolderDataset(ClipDataset):
    """Every video (and image) under `root`, recursively; the class is the top-level folder name.

    `root/<class>/.../x.mp4` has class `<class>` (sorted names -> ids 0..C-1, or the ids of a given
    `classes` list, whose other folders are then ignored); files directly in `root` get label -1.
    Images (`image_extensions`) are still videos; pass `image_extensions=()` to ignore them.
    """

    def __init__(
        self,
        root: str | Path,
        num_frames: int,
        height: int,
        width: int,
        frame_stride: int = 1,
        extensions: Sequence[str] = VIDEO_EXTENSIONS,
        short_video: str = "loop",
        seed: int = 0,
        classes: Sequence[str] | None = None,
        image_extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(
                f"VideoFolderDataset: {root} is not a folder; point data.path at a video folder"
            )
        files = _walk(root, tuple(extensions) + tuple(image_extensions))
        if not files:
            raise ValueError(f"VideoFolderDataset: no files with extensions {tuple(extensions)} under {root}")
        folder = [f.relative_to(root).parts[0] if len(f.relative_to(root).parts) > 1 else None for f in files]
        names = list(classes) if classes is not None else sorted({c for c in folder if c is not None})
        ids = {c: i for i, c in enumerate(names)}
        entries = [
            VideoEntry(f, -1 if c is None else ids[c]) for f, c in zip(files, folder) if c is None or c in ids
        ]
        super().__init__(
            entries, num_frames, height, width, frame_stride, short_video, seed, names, source=str(root)
        )
        if classes is None:
            self._drop_empty_classes()

    def _drop_empty_classes(self) -> None:
        """A class folder none of whose files could be used is no class: drop it, renumber the rest."""
        used = sorted({e.label for e in self.entries if e.label >= 0})
        if len(used) == len(self.classes):
            return
        empty = [c for i, c in enumerate(self.classes) if i not in set(used)]
        if not used:
            raise ValueError(
                f"VideoFolderDataset: no class folder under {self.source} has a usable file "
                f"(empty: {', '.join(empty[:_MAX_NAMED])}); check the files (see the warnings above) "
                "or put videos in one folder per class"
            )
        _warn(
            f"hpdm: dropped {len(empty)} class folder(s) without a usable file under {self.source}: "
            f"{', '.join(empty[:_MAX_NAMED])}{' ...' if len(empty) > _MAX_NAMED else ''}; "
            f"{len(used)} classes remain, numbered 0..{len(used) - 1} in name order"
        )
        new = {old: i for i, old in enumerate(used)}
        for e in self.entries:
            if e.label >= 0:
                e.label = new[e.label]
        self.classes = [self.classes[i] for i in used]
        self.dropped_classes = empty


class UCF101Dataset(ClipDataset):
    """UCF-101 from its official split files.

    `split_dir` holds `classInd.txt` ("1 ApplyEyeMakeup"), `trainlist0{fold}.txt`
    ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1") and `testlist0{fold}.txt` (paths only);
    video paths are relative to `root`. Labels are 0-based (classInd id - 1). Without `split_dir`,
    `root/ucfTrainTestlist` and `root/../ucfTrainTestlist` are tried.
    """

    def __init__(
        self,
        root: str | Path,
        split_dir: str | Path | None = None,
        fold: int = 1,
        train: bool = True,
        *,
        num_frames: int,
        height: int,
        width: int,
        frame_stride: int = 1,
        short_video: str = "loop",
        seed: int = 0,
    ) -> None:
        root = Path(root)
        if fold not in (1, 2, 3):
            raise ValueError(f"UCF101Dataset: fold must be 1, 2 or 3, got {fold}")
        if split_dir is None:
            tries = [root / "ucfTrainTestlist", root.parent / "ucfTrainTestlist"]
            split_dir = next((d for d in tries if d.is_dir()), tries[0])
        split_dir = Path(split_dir)
        class_file = split_dir / "classInd.txt"
        list_file = split_dir / f"{'train' if train else 'test'}list0{fold}.txt"
        for f in (class_file, list_file):
            if not f.is_file():
                raise FileNotFoundError(
                    f"UCF101Dataset: missing {f}; set data.split_dir to the folder with classInd.txt and "
                    "the train/test lists (ucfTrainTestlist from the UCF-101 release)"
                )
        classes = []
        for line in class_file.read_text().splitlines():
            if line.strip():
                cid, name = line.split()
                if int(cid) != len(classes) + 1:
                    raise ValueError(
                        f"UCF101Dataset: {class_file}: class ids must run 1, 2, ...; got {line!r}"
                    )
                classes.append(name)
        ids = {c.lower(): i for i, c in enumerate(classes)}
        entries = []
        for line in list_file.read_text().splitlines():
            parts = line.split()
            if not parts:
                continue
            rel = parts[0].replace("\\", "/")
            if len(parts) > 1:
                label = int(parts[1]) - 1
            else:
                label = ids.get(rel.split("/")[0].lower(), -1)
            if not 0 <= label < len(classes):
                raise ValueError(f"UCF101Dataset: {list_file}: no class for {line!r} in {class_file}")
            entries.append(VideoEntry(root / rel, label))
        super().__init__(
            entries,
            num_frames,
            height,
            width,
            frame_stride,
            short_video,
            seed,
            classes,
            source=f"{root} ({list_file.name})",
        )


def _label(value: object) -> int:
    """An optional label cell: missing / empty -> -1."""
    return -1 if value is None or str(value).strip() == "" else int(value)


_CAPTION_FILES = ("captions.csv", "captions.jsonl", "metadata.csv", "metadata.jsonl")


class CaptionDataset(ClipDataset):
    """Videos or images with captions for text-to-video, listed in a CSV or JSONL file.

    CSV: header `path,caption` (an optional `label` column is read too). JSONL: one
    `{"path": ..., "caption": ...}` per line. Paths are relative to the list file's folder.
    Given a folder, its `captions.csv`, `captions.jsonl`, `metadata.csv` or `metadata.jsonl` is used.
    """

    def __init__(
        self,
        root_or_file: str | Path,
        *,
        num_frames: int,
        height: int,
        width: int,
        frame_stride: int = 1,
        short_video: str = "loop",
        seed: int = 0,
    ) -> None:
        path = Path(root_or_file)
        if path.is_dir():
            found = [path / n for n in _CAPTION_FILES if (path / n).is_file()]
            if not found:
                raise FileNotFoundError(f"CaptionDataset: no {' / '.join(_CAPTION_FILES)} in {path}")
            path = found[0]
        if not path.is_file():
            raise FileNotFoundError(
                f"CaptionDataset: {path} does not exist; give a .csv or .jsonl caption list"
            )
        rows = self._read_rows(path)
        base = path.parent
        entries = [
            VideoEntry(base / str(r["path"]), _label(r.get("label")), str(r.get("caption") or ""))
            for r in rows
        ]
        super().__init__(
            entries, num_frames, height, width, frame_stride, short_video, seed, source=str(path)
        )

    @staticmethod
    def _read_rows(path: Path) -> list[dict]:
        suffix = path.suffix.lower()
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                missing = {"path", "caption"} - set(reader.fieldnames or ())
                if missing:
                    raise ValueError(
                        f"CaptionDataset: {path} needs a header with columns path,caption; "
                        f"missing {sorted(missing)}"
                    )
                return list(reader)
        if suffix in (".jsonl", ".json"):
            rows = []
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"CaptionDataset: {path}:{n} is not valid JSON: {err}") from err
                if not isinstance(row, dict) or "path" not in row:
                    raise ValueError(f'CaptionDataset: {path}:{n} needs {{"path": ..., "caption": ...}}')
                rows.append(row)
            return rows
        raise ValueError(f"CaptionDataset: {path} must be a .csv or .jsonl file")
