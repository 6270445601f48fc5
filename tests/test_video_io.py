"""Video / image I/O: round trips through mp4 and gif, contact sheets, broken files."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from hpdm.data import video as V
from hpdm.data.video import (
    VideoReadError,
    contact_sheet,
    probe_num_frames,
    read_image,
    read_video,
    to_uint8,
    write_video,
)


def smooth_video(f: int, h: int, w: int) -> torch.Tensor:
    """(3, F, H, W) in [-1, 1]: gradients that drift over time (what H.264 keeps well)."""
    t = torch.linspace(0, 1, f)[:, None, None]
    y = torch.linspace(-1, 1, h)[None, :, None]
    x = torch.linspace(-1, 1, w)[None, None, :]
    channels = [0.8 * x + 0.1 * t, 0.7 * y - 0.2 * t, 0.5 * x * y + 0.3 * t - 0.1]
    return torch.stack(torch.broadcast_tensors(*channels)).clamp(-1, 1)


def coded_frames(codes: np.ndarray, h: int = 16, w: int = 16) -> np.ndarray:
    """(F, H, W, 3) uint8 flat frames whose brightness is the frame's code."""
    return np.broadcast_to(codes.astype(np.uint8)[:, None, None, None], (len(codes), h, w, 3)).copy()


def test_to_uint8_maps_range_and_passes_uint8_through():
    v = torch.tensor([-1.0, 0.0, 1.0, 2.0]).reshape(1, 4, 1, 1).expand(3, 4, 1, 1)
    u = to_uint8(v)
    assert u.shape == (4, 1, 1, 3) and u.dtype == np.uint8
    assert u[:, 0, 0, 0].tolist() == [0, 128, 255, 255]
    assert to_uint8(u) is u
    with pytest.raises(ValueError, match="3, F, H, W"):
        to_uint8(torch.zeros(4, 2, 8, 8))


def test_mp4_round_trip_pads_odd_sizes_to_even(tmp_path):
    video = smooth_video(6, 17, 33)
    path = write_video(tmp_path / "sub" / "odd.mp4", video, fps=8)
    assert path.is_file()
    frames = read_video(path)
    # documented: H.264 yuv420p needs even sizes, the padded size is what reads back
    assert frames.shape == (6, 18, 34, 3) and frames.dtype == np.uint8
    assert probe_num_frames(path) == 6
    ref = to_uint8(video).astype(float)
    assert np.abs(frames[:, :17, :33].astype(float) - ref).mean() < 8
    # the padding replicates the edge
    assert np.abs(frames[:, 17, :33].astype(float) - ref[:, 16]).mean() < 8
    assert np.abs(frames[:, :17, 33].astype(float) - ref[:, :, 32]).mean() < 8


def test_read_video_start_stride_max_frames(tmp_path):
    codes = np.arange(20) * 12
    path = write_video(tmp_path / "codes.mp4", coded_frames(codes))
    frames = read_video(path, max_frames=4, start=3, stride=4)
    assert frames.shape == (4, 16, 16, 3)
    np.testing.assert_allclose(frames.mean((1, 2, 3)), codes[3:19:4], atol=3)
    # the clip runs off the end: fewer frames, no error
    assert len(read_video(path, max_frames=10, start=15, stride=2)) == 3
    with pytest.raises(VideoReadError, match="no decodable frame"):
        read_video(path, start=20)


def test_seek_on_long_videos_matches_sequential_decoding(tmp_path, monkeypatch):
    # short GOP, so reading from frame 150 really seeks to a key frame in between
    codes = (np.arange(200) * 37) % 256
    frames = coded_frames(codes)
    path = tmp_path / "long.mkv"  # mkv: no frame count in the header, probe counts packets
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        stream.options = {"g": "10", "crf": "12"}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    assert probe_num_frames(path) == 200
    seeked = read_video(path, max_frames=5, start=153, stride=3)
    np.testing.assert_allclose(seeked.mean((1, 2, 3)), codes[153:168:3], atol=3)
    monkeypatch.setattr(V, "_SEEK_MIN_START", 10**9)
    np.testing.assert_array_equal(seeked, read_video(path, max_frames=5, start=153, stride=3))


def test_gif_round_trip_keeps_repeated_frames(tmp_path):
    video = smooth_video(5, 12, 20)
    video = torch.cat([video, video[:, -1:].expand(-1, 3, -1, -1)], dim=1)  # 3 identical frames at the end
    path = write_video(tmp_path / "a.gif", video, fps=10)
    frames = read_video(path)
    assert frames.shape == (8, 12, 20, 3)
    assert probe_num_frames(path) == 8
    assert np.abs(frames.astype(float) - to_uint8(video)).mean() < 8
    assert read_video(path, max_frames=2, start=1, stride=3).shape == (2, 12, 20, 3)


def test_png_is_a_contact_sheet_and_images_read_back(tmp_path):
    video = smooth_video(4, 10, 14)
    path = write_video(tmp_path / "sheet.png", video)
    sheet = read_image(path)
    assert sheet.shape == (2 + 10 + 2, 2 + 4 * (14 + 2), 3)
    assert read_video(path).shape == (1, *sheet.shape)  # an image is a one-frame video


def test_contact_sheet_layout(tmp_path):
    batch = smooth_video(12, 10, 14)[None].repeat(3, 1, 1, 1, 1)  # (B, 3, F, H, W)
    sheet = contact_sheet(batch, max_frames=8, pad=2)
    assert sheet.size == (2 + 8 * (14 + 2), 2 + 3 * (10 + 2))  # (width, height)
    # rows of different sizes are scaled to the tallest row; labels add a left margin
    rows = [smooth_video(3, 10, 14), smooth_video(5, 20, 20)]
    sheet = contact_sheet(rows, tmp_path / "mixed.png", labels=["small", "big"], pad=1)
    assert sheet.size[1] == 1 + 2 * (20 + 1)
    assert sheet.size[0] > 1 + 3 * (28 + 1)
    assert (tmp_path / "mixed.png").is_file()
    with pytest.raises(ValueError, match="labels"):
        contact_sheet(rows, labels=["one"])


def test_corrupt_and_missing_files_raise_video_read_error(tmp_path):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    for fn in (read_video, probe_num_frames):
        with pytest.raises(VideoReadError, match="corrupt.mp4"):
            fn(bad)
    with pytest.raises(VideoReadError, match="missing.avi"):
        read_video(tmp_path / "missing.avi")
    with pytest.raises(VideoReadError, match="broken.png"):
        (tmp_path / "broken.png").write_bytes(b"not a png")
        read_image(tmp_path / "broken.png")
    assert isinstance(VideoReadError(bad, "x"), RuntimeError)


def _encode(path, codec: str, n: int, fmt_opts: dict | None = None, gop: int = 12, bframes: int = 2) -> None:
    """n frames of 32x32 whose colours code the frame index; short GOPs with B-frames, so frames
    are stored out of display order and reading from the middle really seeks."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        if codec == "libx264":
            stream.options = {"x264-params": f"bframes={bframes}:keyint={gop}:min-keyint={gop}:scenecut=0"}
        else:
            stream.codec_context.gop_size = gop
            stream.codec_context.max_b_frames = bframes
        for i in range(n):
            img = np.zeros((32, 32, 3), np.uint8)
            img[..., 0], img[..., 1], img[: i % 32, :, 2] = (i * 3) % 256, (i * 7) % 256, 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())


@pytest.mark.parametrize(
    "name, codec",
    [("x264_bframes.mp4", "libx264"), ("x264_bframes.mkv", "libx264"), ("mpeg4_bframes.avi", "mpeg4")],
)
def test_every_start_gives_exactly_the_frames_of_a_sequential_decode(tmp_path, monkeypatch, name, codec):
    """Seeking is only a speed-up: for every start (and stride) the frames equal, byte for byte,
    those a decode from the top gives. MPEG-4 in AVI once came back one frame early after a seek
    from starts 103-105 of this file (its timestamps start at 1 and frames were numbered by them)."""
    path = tmp_path / name
    _encode(path, codec, 120)
    monkeypatch.setattr(V, "_SEEK_MIN_START", 10**9)
    reference = read_video(path)  # sequential decode
    assert len(reference) == 120
    monkeypatch.setattr(V, "_SEEK_MIN_START", 1)  # every start > 0 seeks
    seeks = []
    real = V._read_after_seek
    monkeypatch.setattr(V, "_read_after_seek", lambda *a: seeks.append(r := real(*a)) or r)
    for start in range(120):
        for stride in (1, 3) if start % 5 == 0 else (1,):
            got = read_video(path, max_frames=8, start=start, stride=stride)
            want = reference[start : start + 8 * stride : stride]
            assert np.array_equal(got, want), (name, start, stride)
    assert sum(s is not None for s in seeks) > 0.9 * len(seeks)  # the seek path did the reading


def test_a_header_that_overstates_the_length_is_read_for_what_it_has(tmp_path):
    """A truncated AVI keeps its header's frame count (120) while about 25 frames decode."""
    full = tmp_path / "full.avi"
    _encode(full, "mpeg4", 120)
    data = full.read_bytes()
    path = tmp_path / "truncated.avi"
    path.write_bytes(data[: len(data) // 2])
    claimed, real = probe_num_frames(path), V.count_frames(path)
    assert claimed == 120 and 0 < real < claimed
    everything = read_video(path)
    assert len(everything) == real
    # up to the last frames, which lost the B-frames shown before them, it is the full file's start
    assert np.array_equal(everything[: real - 3], read_video(full, max_frames=real - 3))
    assert np.array_equal(read_video(path, max_frames=8, start=real - 4), everything[real - 4 :])
    with pytest.raises(VideoReadError, match=f"no decodable frame at index {real}"):
        read_video(path, start=real)


def test_mpeg_ps_seeks_are_checked_packet_by_packet(tmp_path, monkeypatch):
    """MPEG-PS hands out timestamps shifted by one frame after a seek (frame 96 came back labelled
    97, so a clip from 97 started a frame early) and a seek near the end could find no frame at
    all. Every packet after a seek must be the one a demux from the top reads there, else the
    clip is decoded from the top."""
    y, x = np.mgrid[0:32, 0:32]
    path = tmp_path / "mpeg2_bframes.mpg"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg2video", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.codec_context.gop_size, stream.codec_context.max_b_frames = 24, 2
        stream.options = {"qscale": "2", "sc_threshold": "1000000000"}
        for i in range(150):
            img = np.zeros((32, 32, 3), np.uint8)
            img[..., 0], img[..., 1] = (x * 6 + i * 2) % 256, (y * 6 + i) % 256
            img[-4:, :, 2] = np.repeat(((i >> np.arange(8)) & 1) * 255, 4)  # the index in 8 bits
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())
    monkeypatch.setattr(V, "_SEEK_MIN_START", 10**9)
    reference = read_video(path)
    assert len(reference) == 150
    monkeypatch.setattr(V, "_SEEK_MIN_START", 1)
    for start in range(150):
        got = read_video(path, max_frames=8, start=start)
        assert np.array_equal(got, reference[start : start + 8]), start


class _Frames(torch.utils.data.Dataset):
    def __init__(self, path):
        self.path = path

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return torch.from_numpy(read_video(self.path))


def test_a_forked_dataloader_worker_reads_video_after_the_parent_did(tmp_path):
    """PyAV's shared frame converter keeps swscale threads that a forked worker does not have: a
    worker decoding after its parent decoded used to hang. It reads the parent's frames."""
    path = write_video(tmp_path / "v.mp4", smooth_video(6, 32, 32))
    frames = _Frames(path)[0]  # the parent converts frames first
    loader = torch.utils.data.DataLoader(_Frames(path), batch_size=None, num_workers=1, timeout=60)
    for got in loader:
        assert torch.equal(got, frames)
