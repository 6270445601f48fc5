"""Video and image I/O: PyAV for containers, Pillow for gifs, stills and contact sheets.

Conventions: a *video tensor* is `(3, F, H, W)` float in [-1, 1] (the model's layout); a *video
array* is `(F, H, W, 3)` uint8 (the file's layout). `to_uint8` converts the first to the second.

H.264 in yuv420p needs even sizes, so `write_video` pads an odd height or width by one row /
column of edge replication and `read_video` returns the padded (even) size: 3 frames of 17x33
written to mp4 read back as (3, 18, 34, 3). Crop on the caller's side if the exact size matters.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageSequence

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_H264_SUFFIXES = (".mp4", ".mkv", ".mov")
# Past this many frames into a file, `read_video` seeks to the key frame before the clip
# instead of decoding everything in front of it (long captioned videos).
_SEEK_MIN_START = 96
# What PyAV / Pillow raise on a broken or missing file.
_READ_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError, IndexError, SyntaxError, ZeroDivisionError)


class VideoReadError(RuntimeError):
    """A video or image file could not be opened or decoded."""

    def __init__(self, path: str | Path, reason: object) -> None:
        self.path = Path(path)
        # FFmpeg's messages repeat the path; its short error string is enough next to ours
        self.reason = str(getattr(reason, "strerror", None) or reason)
        super().__init__(
            f"could not read {self.path}: {self.reason}. Check that the file is a complete, playable video "
            f"or image (e.g. with `ffprobe {self.path}`); re-download or delete it if it is corrupt."
        )

    def __reduce__(self):  # picklable across worker processes despite the two-argument __init__
        return type(self), (self.path, self.reason)


def to_uint8(video: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3, F, H, W) float in [-1, 1] -> (F, H, W, 3) uint8; (F, H, W, 3) uint8 passes through."""
    if isinstance(video, torch.Tensor):
        if video.dtype == torch.uint8:
            video = video.cpu().numpy()
        else:
            if video.ndim != 4 or video.shape[0] != 3:
                raise ValueError(f"expected a (3, F, H, W) float video, got shape {tuple(video.shape)}")
            video = video.detach().float().cpu()
            video = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            return video.permute(1, 2, 3, 0).contiguous().numpy()
    video = np.asarray(video)
    if video.dtype == np.uint8:
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"expected a (F, H, W, 3) uint8 video, got shape {video.shape}")
        return video
    return to_uint8(torch.from_numpy(np.ascontiguousarray(video)))


def write_video(path: str | Path, video: torch.Tensor | np.ndarray, fps: int = 8) -> Path:
    """Write one video; the suffix picks the format.

    `.mp4` / `.mkv` / `.mov`: H.264 (libx264, yuv420p, crf 18), odd sizes padded to even by edge
    replication. `.gif`: Pillow animated gif that loops forever. `.png`: a contact sheet.
    """
    path = Path(path)
    frames = to_uint8(video)  # (F, H, W, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in _H264_SUFFIXES:
        _write_h264(path, frames, fps)
    elif suffix == ".gif":
        images = [Image.fromarray(f) for f in frames]
        # loop=0: forever. Pillow merges identical consecutive frames into one longer frame, and a
        # gif has no frame rate, so the comment records it for `read_video` to expand them again.
        images[0].save(
            path,
            save_all=True,
            append_images=images[1:],
            duration=1000 / fps,
            loop=0,
            comment=f"hpdm fps={fps}",
        )
    elif suffix == ".png":
        contact_sheet([frames], path)
    else:
        raise ValueError(
            f"cannot write {path}: unknown suffix {suffix!r}; use .mp4, .mkv, .mov, .gif or .png"
        )
    return path


def _write_h264(path: Path, frames: np.ndarray, fps: int) -> None:
    num, h, w, _ = frames.shape
    # yuv420p subsamples chroma 2x, so H.264 wants even sizes: replicate the last row / column.
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = w + pad_w, h + pad_h
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "medium"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))  # a writable copy: torch.from_numpy needs one
    except _READ_ERRORS as err:
        raise VideoReadError(path, err) from err


def read_video(
    path: str | Path, max_frames: int | None = None, start: int = 0, stride: int = 1
) -> np.ndarray:
    """Decode frames `start, start + stride, ...` (at most `max_frames`) as (F, H, W, 3) uint8.

    Containers (mp4/avi/webm/mkv/mov, anything FFmpeg reads) go through PyAV; `.gif` through Pillow;
    an image file is a one-frame video. Raises `VideoReadError` naming the file when it cannot be
    decoded or has no frame at `start`. Fewer frames than asked are returned when the video ends.
    """
    if start < 0 or stride < 1 or (max_frames is not None and max_frames < 1):
        raise ValueError(
            f"need start >= 0, stride >= 1, max_frames >= 1; got {start}, {stride}, {max_frames}"
        )
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        frames = read_image(path)[None]
    elif suffix == ".gif":
        frames = _read_gif(path)
    else:
        frames = None
    if frames is not None:
        stop = None if max_frames is None else start + max_frames * stride
        frames = frames[start:stop:stride]
    else:
        try:
            frames = _read_container(path, max_frames, start, stride)
        except _READ_ERRORS as err:
            raise VideoReadError(path, err) from err
    if len(frames) == 0:
        raise VideoReadError(path, f"no decodable frame at index {start}")
    return frames


def _read_gif(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            frames, durations = [], []
            comment = im.info.get("comment", b"")
            for frame in ImageSequence.Iterator(im):
                frames.append(np.asarray(frame.convert("RGB")))
                durations.append(frame.info.get("duration", 0) or 0)
    except _READ_ERRORS as err:
        raise VideoReadError(path, err) from err
    # Writers (Pillow included) merge identical consecutive frames into one longer frame; expand
    # them back so the frame index is time at the gif's base frame rate.
    base = min((d for d in durations if d > 0), default=0)
    match = re.fullmatch(rb"hpdm fps=(\d+)", comment if isinstance(comment, bytes) else comment.encode())
    if match:
        base = 1000 / int(match[1])
    repeats = [max(1, round(d / base)) if base else 1 for d in durations]
    return np.repeat(np.stack(frames), repeats, axis=0)


def _read_container(path: Path, max_frames: int | None, start: int, stride: int) -> np.ndarray:
    out = None
    if start >= _SEEK_MIN_START:
        table = _frame_table(path)
        # no key packet after the first before the clip: a seek would decode from the top anyway
        if table is not None and start < len(table) and table.last_key(start) > 0:
            out = _read_after_seek(path, table, max_frames, start, stride)
    if out is None:
        out = _read_sequential(path, max_frames, start, stride)
    if not out:
        return np.zeros((0, 0, 0, 3), np.uint8)
    return np.stack(out)


def _to_rgb(frame) -> np.ndarray:
    """A decoded frame as (H, W, 3) uint8 RGB, converted on this thread alone.

    swscale's default thread pool, made in the parent, is inherited by a forked DataLoader worker
    without its threads: a worker converting after its parent did hung in `sws_scale_frame`."""
    return frame.to_ndarray(format="rgb24", threads=1)


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise VideoReadError(path, "the file has no video stream")
    return container.streams.video[0]


def _read_sequential(path: Path, max_frames: int | None, start: int, stride: int) -> list[np.ndarray]:
    """Decode from the top: the reference every other path must agree with, frame for frame.

    A decoding error after some frames ends the video there (a truncated file is read for what it
    has); one before any frame is raised."""
    out: list[np.ndarray] = []
    with av.open(str(path)) as container:
        stream = _video_stream(container, path)
        i = -1
        try:
            for i, frame in enumerate(container.decode(stream)):  # noqa: B007
                if i < start or (i - start) % stride:
                    continue  # decoded (unavoidable) but not converted to RGB
                out.append(_to_rgb(frame))
                if max_frames is not None and len(out) == max_frames:
                    break
        except av.FFmpegError:
            if i < 0:
                raise
    return out


# One row per video packet of a file, as a plain demux reads them, cached per (path, mtime, size):
# reading it demuxes the whole file once (no decoding: ~1% of decoding it), later clips of the
# file find it here. A long file's table is a few arrays of its packet count.
_TABLES: OrderedDict[tuple, _FrameTable | None] = OrderedDict()
_TABLES_MAX = 256
# Key frames tried, going back, before a clip read gives up seeking.
_SEEK_TRIES = 4


@dataclass(frozen=True)
class _FrameTable:
    """A file's video packets in decode order, and its frames in presentation order.

    Frame i of a sequential decode is the frame with the i-th smallest packet pts (`frame_pts[i]`).
    Packets are known by (pts, size, key flag): after a seek, every packet must be the one a demux
    from the top reads at that place, or the seek is not trusted (MPEG-PS, for one, hands out
    shifted timestamps after a seek)."""

    pts: np.ndarray  # (P,) int64, decode order
    seek_ts: np.ndarray  # (P,) int64: min(pts, dts), a target every demuxer seeks to at or before
    size: np.ndarray  # (P,) int64
    key: np.ndarray  # (P,) bool: the container's key-frame flag
    frame_pts: np.ndarray  # (P,) int64: sorted pts
    order: np.ndarray  # (P,) int64: decode position of frame_pts[i]

    def __len__(self) -> int:
        return len(self.frame_pts)

    @classmethod
    def from_packets(cls, rows: list[tuple]) -> _FrameTable | None:
        """rows of (pts, dts, size, key); None when pts cannot place frames (one missing, two equal)."""
        pts = [r[0] for r in rows]
        if not rows or None in pts or len(set(pts)) != len(pts):
            return None
        p = np.asarray(pts, np.int64)
        dts = np.asarray([r[0] if r[1] is None else r[1] for r in rows], np.int64)
        order = np.argsort(p, kind="stable")
        return cls(
            p,
            np.minimum(p, dts),
            np.asarray([r[2] for r in rows], np.int64),
            np.asarray([r[3] for r in rows], bool),
            p[order],
            order,
        )

    def position(self, pts: int | None) -> int | None:
        """Decode position of the packet with this pts, None when there is none."""
        if pts is None:
            return None
        i = int(np.searchsorted(self.frame_pts, pts))
        return int(self.order[i]) if i < len(self) and self.frame_pts[i] == pts else None

    def keys_before(self, start: int) -> np.ndarray:
        """Decode positions of the key packets shown at or before frame `start`, in order."""
        return np.flatnonzero(self.key & (self.pts <= self.frame_pts[start]))

    def last_key(self, start: int) -> int:
        """Decode position of the last key packet shown at or before frame `start` (-1: none)."""
        keys = self.keys_before(start)
        return int(keys[-1]) if len(keys) else -1

    def matches(self, j: int, packet) -> bool:
        return (
            j < len(self)
            and packet.pts == self.pts[j]
            and packet.size == self.size[j]
            and packet.is_keyframe == self.key[j]
        )


def _frame_table(path: Path) -> _FrameTable | None:
    """The file's packet table, or None when it cannot place frames exactly (a packet without
    pts, two packets with one pts, a demuxing error): then clips are decoded from the top."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _TABLES:
        _TABLES.move_to_end(key)
        return _TABLES[key]
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container, path)
            rows = [(p.pts, p.dts, p.size, p.is_keyframe) for p in container.demux(stream) if p.size > 0]
        table = _FrameTable.from_packets(rows)
    except (av.FFmpegError, VideoReadError):
        table = None  # the sequential decode says what is wrong
    _TABLES[key] = table
    if len(_TABLES) > _TABLES_MAX:
        _TABLES.popitem(last=False)
    return table


def _read_after_seek(
    path: Path, table: _FrameTable, max_frames: int | None, start: int, stride: int
) -> list[np.ndarray] | None:
    """Frames `start, start + stride, ...` by seeking, or None where that cannot be proven exact.

    Seeks to the last key packet shown at or before frame `start`; when the demuxer lands after
    it, or the decoder does not take it for a key frame (AVI can flag P-frames), the key packet
    before it is tried, `_SEEK_TRIES` in all."""
    keys = table.keys_before(start)
    with av.open(str(path)) as container:
        stream = _video_stream(container, path)
        for k in keys[::-1][:_SEEK_TRIES]:
            try:
                out = _decode_from_key(container, stream, table, int(k), start, max_frames, stride)
            except (_Inexact, av.FFmpegError):
                return None
            if out is not None:
                return out
    return None


def _decode_from_key(
    container, stream, table: _FrameTable, k: int, start: int, max_frames: int | None, stride: int
) -> list[np.ndarray] | None:
    """Seek to key packet `k` and decode on. None: try an earlier key packet; raises `_Inexact`
    when what the demuxer or decoder hands out is not what a sequential read gets."""
    container.seek(int(table.seek_ts[k]), stream=stream, backward=True, any_frame=False)
    key_pts, want = table.pts[k], table.frame_pts[start]
    out: list[np.ndarray] = []
    j = -1  # decode position of the packet just read
    index = start  # frame index the next frame at or after `want` must have
    keyed = False
    for packet in container.demux(stream):
        if packet.size > 0:
            if j < 0:
                j = table.position(packet.pts)
                if j is None:
                    raise _Inexact  # a pts no packet had in a read from the top
                if j > k:
                    return None  # landed after the key packet
            else:
                j += 1
            if not table.matches(j, packet):
                raise _Inexact
            if j < k:
                continue  # before the key packet: not needed, not decoded
        elif j < k:
            return None  # the stream ended before the key packet
        for frame in packet.decode():
            if frame.pts is None:
                raise _Inexact
            if frame.pts == key_pts:
                if not frame.key_frame:
                    return None  # the container's key frame, not the decoder's
                keyed = True
            if frame.pts < want:
                continue  # before the clip (or a leading frame of an open GOP)
            if not keyed or index >= len(table) or frame.pts != table.frame_pts[index] or frame.is_corrupt:
                raise _Inexact
            if (index - start) % stride == 0:
                out.append(_to_rgb(frame))
                if max_frames is not None and len(out) == max_frames:
                    return out
            index += 1
    if index < len(table):
        raise _Inexact  # the decode ended before the table did
    return out


class _Inexact(Exception):
    """A seek-based read cannot be proven to match the sequential decode: decode from the top."""


def count_frames(path: str | Path) -> int:
    """Frames that actually decode (a full decode, no RGB conversion): the true length of a file
    whose header promises more. Raises `VideoReadError` when none does."""
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container, path)
            n = 0
            try:
                for _ in container.decode(stream):
                    n += 1
            except av.FFmpegError:
                if n == 0:
                    raise
    except _READ_ERRORS as err:
        raise VideoReadError(path, err) from err
    if n == 0:
        raise VideoReadError(path, "no frame of the video stream decodes")
    return n


def probe_num_frames(path: str | Path) -> int:
    """Number of frames: from the container header when it has one, else by counting packets.

    Cheap (no decoding) but only the header's word: a truncated file can claim more frames than
    decode. `count_frames` gives the true length; the datasets call it when a read comes back
    short, rather than decoding every file at the scan."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        try:
            with Image.open(path) as im:
                im.verify()  # header and structure only: no full decode
        except _READ_ERRORS as err:
            raise VideoReadError(path, err) from err
        return 1
    if suffix == ".gif":
        return len(_read_gif(path))
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container, path)
            if stream.frames > 0:
                return int(stream.frames)
            # webm/mkv carry no frame count: demuxing (no decoding) one packet per frame is cheap.
            count = sum(1 for packet in container.demux(stream) if packet.size > 0)
    except _READ_ERRORS as err:
        raise VideoReadError(path, err) from err
    if count == 0:
        raise VideoReadError(path, "the video stream has no frames")
    return count


def _rows(videos) -> list[np.ndarray]:
    """Normalise contact-sheet input to a list of (F, H, W, 3) uint8 rows."""
    if isinstance(videos, (torch.Tensor, np.ndarray)):
        videos = [videos]
    rows = []
    for v in videos:
        is_float_batch = v.ndim == 5 and v.dtype not in (torch.uint8, np.uint8)
        is_uint8_batch = v.ndim == 5 and v.shape[-1] == 3 and v.dtype in (torch.uint8, np.uint8)
        if is_float_batch or is_uint8_batch:
            rows.extend(to_uint8(x) for x in v)
        else:
            rows.append(to_uint8(v))
    return rows


def contact_sheet(
    videos,
    path: str | Path | None = None,
    max_frames: int = 8,
    pad: int = 2,
    labels: Sequence[str] | None = None,
) -> Image.Image:
    """Grid with one row per video and one column per frame (evenly spaced if more than `max_frames`).

    `videos`: a (B, 3, F, H, W) float batch in [-1, 1], one (3, F, H, W) video, (F, H, W, 3) uint8
    arrays, or a list mixing these. Rows of different sizes are scaled to the tallest row's height.
    Without labels the sheet is `pad + cols * (W + pad)` wide and `pad + rows * (H + pad)` high;
    `labels` adds a left margin with one line of text per row. Saved to `path` when given.
    """
    rows = _rows(videos)
    if not rows:
        raise ValueError("contact_sheet needs at least one video")
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"got {len(labels)} labels for {len(rows)} rows")
    height = max(r.shape[1] for r in rows)
    cells: list[list[Image.Image]] = []
    for r in rows:
        idx = np.linspace(0, len(r) - 1, min(len(r), max_frames)).round().astype(int)
        width = max(1, round(r.shape[2] * height / r.shape[1]))
        ims = [Image.fromarray(f) for f in r[idx]]
        if r.shape[1] != height:
            ims = [im.resize((width, height), Image.Resampling.BILINEAR) for im in ims]
        cells.append(ims)
    font = ImageFont.load_default()
    margin = 0
    if labels is not None:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        margin = max(probe.textbbox((0, 0), str(t), font=font)[2] for t in labels) + pad
    row_widths = [sum(im.width + pad for im in ims) for ims in cells]
    sheet = Image.new("RGB", (pad + margin + max(row_widths), pad + len(rows) * (height + pad)), (16, 16, 16))
    draw = ImageDraw.Draw(sheet)
    for i, ims in enumerate(cells):
        y = pad + i * (height + pad)
        if labels is not None:
            draw.text((pad, y), str(labels[i]), fill=(235, 235, 235), font=font)
        x = pad + margin
        for im in ims:
            sheet.paste(im, (x, y))
            x += im.width + pad
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        sheet.save(path)
    return sheet
