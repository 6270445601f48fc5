"""Real-video datasets on tiny synthetic folders, and the pre-decoded clip cache."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from hpdm.data.cache import CachedDataset, CacheError, prepare_cache
from hpdm.data.folder import CaptionDataset, UCF101Dataset, VideoFolderDataset
from hpdm.data.video import write_video

F, H, W = 4, 16, 16  # clips; the source videos are 24 x 32, so every clip is resized and cropped


def coded(num: int, h: int = 24, w: int = 32) -> np.ndarray:
    """(F, h, w, 3) uint8 flat frames; frame i has brightness 16 + 9 i, so clips can be decoded."""
    codes = (16 + 9 * np.arange(num)).astype(np.uint8)
    return np.broadcast_to(codes[:, None, None, None], (num, h, w, 3)).copy()


def frame_ids(video: torch.Tensor) -> list[int]:
    """Source frame index of every frame of a (3, F, H, W) clip made from `coded` frames."""
    level = ((video + 1) * 127.5).mean(dim=(0, 2, 3))
    return ((level - 16) / 9).round().int().tolist()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """root/cats/{long,short}.mp4, root/dogs/{long.mp4, still.png, corrupt.mp4, truncated.mp4}."""
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "cats" / "long.mp4", coded(24))
    write_video(root / "cats" / "short.mp4", coded(5))
    write_video(root / "dogs" / "long.mp4", coded(24))
    write_video(root / "dogs" / "still.png", coded(1)[:1])
    (root / "dogs" / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    data = (root / "cats" / "long.mp4").read_bytes()
    (root / "dogs" / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "cats" / "._long.mp4").write_bytes(b"macOS resource fork")  # hidden: never listed
    (root / "notes.txt").write_text("not a video")
    return root


def make(root, **kw) -> VideoFolderDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return VideoFolderDataset(root, kw.pop("num_frames", F), H, W, **kw)


def test_folder_skips_unreadable_files_and_names_them(folder):
    with pytest.warns(UserWarning, match="skipped 2 of 6 files") as rec:
        ds = VideoFolderDataset(folder, F, H, W)
    message = str(rec[0].message)
    assert "corrupt.mp4" in message and "truncated.mp4" in message
    assert sorted(p.split("/")[-1] for p in ds.bad_files) == ["corrupt.mp4", "truncated.mp4"]
    assert ds.classes == ["cats", "dogs"] and ds.num_classes == 2
    assert len(ds) == 4
    items = [ds[i] for i in range(len(ds))]
    names = [e.path.relative_to(folder).as_posix() for e in ds.entries]
    assert names == ["cats/long.mp4", "cats/short.mp4", "dogs/long.mp4", "dogs/still.png"]
    assert [it["label"] for it in items] == [0, 0, 1, 1]
    for i, it in enumerate(items):
        assert set(it) == {"video", "label", "caption", "index"}
        assert it["video"].shape == (3, F, H, W) and it["video"].dtype == torch.float32
        assert -1 <= it["video"].min() and it["video"].max() <= 1
        assert it["caption"] == "" and it["index"] == i


def test_frame_stride_and_per_epoch_clip_starts(folder):
    ds = make(folder, frame_stride=3, seed=1)
    ids = frame_ids(ds[0]["video"])
    assert np.diff(ids).tolist() == [3, 3, 3] and 0 <= ids[0] <= 24 - 10
    starts = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        a, b = frame_ids(ds[0]["video"]), frame_ids(ds[0]["video"])
        assert a == b  # deterministic for (seed, index, epoch)
        starts.add(a[0])
    assert len(starts) > 1


def test_short_video_rules(folder):
    # cats/short.mp4 has 5 frames; an 8-frame clip does not fit
    loop = make(folder, num_frames=8)
    assert frame_ids(loop[1]["video"]) == [0, 1, 2, 3, 4, 0, 1, 2]
    pad = make(folder, num_frames=8, short_video="pad")
    assert frame_ids(pad[1]["video"]) == [0, 1, 2, 3, 4, 4, 4, 4]
    strided = make(folder, num_frames=4, frame_stride=2)
    assert frame_ids(strided[1]["video"]) == [0, 2, 4, 1]  # loop at the stride
    skip = make(folder, num_frames=8, short_video="skip")
    assert [e.path.name for e in skip.entries] == ["long.mp4", "long.mp4", "still.png"]
    assert skip.short_files[0].endswith("short.mp4")
    with pytest.raises(ValueError, match="short_video"):
        make(folder, short_video="stretch")


def test_images_are_still_videos(folder):
    ds = make(folder, num_frames=6)
    video = ds[3]["video"]
    assert video.shape == (3, 6, H, W)
    assert torch.equal(video, video[:, :1].expand_as(video))
    assert frame_ids(video) == [0] * 6


def test_read_time_failure_returns_the_next_item(tmp_path, folder):
    for name in ("a", "b", "c"):
        shutil.copy(folder / "cats" / "long.mp4", tmp_path / f"{name}.mp4")
    ds = VideoFolderDataset(tmp_path, F, H, W)
    assert [it["label"] for it in (ds[0], ds[1])] == [-1, -1]  # no class folder
    (tmp_path / "b.mp4").write_bytes(b"\0" * 100)  # breaks after the scan
    with pytest.warns(UserWarning, match="b.mp4"):
        item = ds[1]
    assert item["index"] == 2 and ds.bad_files[-1].endswith("b.mp4")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known-bad: no second warning
        assert ds[1]["index"] == 2
    # the cache leaves the stand-in out and lists the file
    cached = CachedDataset(prepare_cache(ds, tmp_path / "cache", shard_size=2, progress=False))
    assert cached.video_index.tolist() == [0, 2] and cached.skipped_files[-1].endswith("b.mp4")


def test_ucf101_split_files(tmp_path, folder):
    split = tmp_path / "ucfTrainTestlist"
    split.mkdir()
    (split / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n3 HandstandPushups\n")
    train = [
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1",
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 3",
    ]
    (split / "trainlist01.txt").write_text("\r\n".join(train) + "\r\n")  # the release uses CRLF
    (split / "testlist01.txt").write_text(
        "Archery/v_Archery_g01_c01.avi\nHandstandPushups/v_HandStandPushups_g01_c01.avi\n"
    )
    root = tmp_path / "UCF-101"
    for rel in [t.split()[0] for t in train] + ["Archery/v_Archery_g01_c01.avi"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / "cats" / "long.mp4", root / rel)  # mp4 data in .avi names: FFmpeg probes content
    tr = UCF101Dataset(root, split, fold=1, train=True, num_frames=F, height=H, width=W)
    assert tr.classes == ["ApplyEyeMakeup", "Archery", "HandstandPushups"]
    assert [e.label for e in tr.entries] == [0, 2]
    with pytest.warns(UserWarning, match="v_HandStandPushups_g01_c01.avi"):  # listed but missing
        te = UCF101Dataset(root, split, train=False, num_frames=F, height=H, width=W)
    assert [e.label for e in te.entries] == [1]
    assert te[0]["label"] == 1 and te[0]["video"].shape == (3, F, H, W)
    with pytest.raises(FileNotFoundError, match="testlist02.txt"):
        UCF101Dataset(root, split, fold=2, train=False, num_frames=F, height=H, width=W)


def test_caption_csv_and_jsonl(tmp_path, folder):
    shutil.copytree(folder / "cats", tmp_path / "clips")
    shutil.copy(folder / "dogs" / "still.png", tmp_path / "clips" / "still.png")
    (tmp_path / "captions.csv").write_text(
        'path,caption\nclips/long.mp4,"a cat, walking"\nclips/still.png,a still photo\n'
    )
    rows = [{"path": "clips/short.mp4", "caption": "a short clip"}, {"path": "clips/long.mp4", "caption": ""}]
    (tmp_path / "list.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    csv_ds = CaptionDataset(tmp_path, num_frames=F, height=H, width=W)  # a folder: finds captions.csv
    assert [csv_ds[i]["caption"] for i in range(2)] == ["a cat, walking", "a still photo"]
    assert csv_ds[0]["label"] == -1 and csv_ds[1]["video"].shape == (3, F, H, W)
    jl = CaptionDataset(tmp_path / "list.jsonl", num_frames=F, height=H, width=W)
    assert [jl[i]["caption"] for i in range(2)] == ["a short clip", ""]
    (tmp_path / "bad.csv").write_text("file,text\nx.mp4,y\n")
    with pytest.raises(ValueError, match="path,caption"):
        CaptionDataset(tmp_path / "bad.csv", num_frames=F, height=H, width=W)


def test_prepare_cache_round_trip(tmp_path, folder):
    ds = make(folder, seed=3)
    out = prepare_cache(ds, tmp_path / "cache", shard_size=3, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "shard_00000.npy", "shard_00001.npy"]
    cached = CachedDataset(out)
    assert len(cached) == len(ds) and cached.classes == ds.classes
    assert sorted(cached.skipped_files) == sorted(ds.bad_files)
    for i in range(len(ds)):
        want, got = ds[i], cached[i]
        assert set(got) == set(want)
        assert got["label"] == want["label"] and got["caption"] == want["caption"] and got["index"] == i
        assert got["video"].shape == want["video"].shape and got["video"].dtype == torch.float32
        assert (got["video"] - want["video"]).abs().max() <= 0.5 / 127.5 + 1e-6  # uint8 rounding
    batch = cached.get_batch([3, 0, 2, 0])
    assert batch["video"].shape == (4, 3, F, H, W)
    assert torch.equal(batch["video"][0], cached[3]["video"])
    assert torch.equal(batch["video"][3], cached[0]["video"])
    assert batch["label"].tolist() == [1, 0, 1, 0] and batch["index"].tolist() == [3, 0, 2, 0]
    raw = cached.get_batch(torch.tensor([1]), as_uint8=True)["video"]
    assert raw.dtype == torch.uint8 and torch.equal(raw[0].float() / 127.5 - 1, cached[1]["video"])

    # two clips per video: pass k is epoch k; a DataLoader worker gives the same bytes
    two = CachedDataset(prepare_cache(ds, tmp_path / "two", clips_per_video=2, num_workers=1, progress=False))
    assert len(two) == 2 * len(ds) and two.video_index.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    ds.set_epoch(1)
    assert (two[4]["video"] - ds[0]["video"]).abs().max() <= 0.5 / 127.5 + 1e-6
    assert ds.epoch == 1


def test_incomplete_or_missing_cache_has_a_clear_error(tmp_path, folder):
    out = prepare_cache(make(folder), tmp_path / "cache", progress=False)
    (out / "index.json").unlink()
    with pytest.raises(CacheError, match="incomplete.*hpdm prepare"):
        CachedDataset(out)
    with pytest.raises(CacheError, match="hpdm prepare"):
        CachedDataset(tmp_path / "nowhere")


def test_a_file_shorter_than_its_header_is_read_for_what_it_has(tmp_path):
    """A truncated AVI says 120 frames and about 60 decode: clips come from those, the true length
    replaces the header's in the index (with one warning), and the file is never called unreadable."""
    import av

    full, path = tmp_path / "full.avi", tmp_path / "v" / "cls" / "truncated.avi"
    with av.open(str(full), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for f in coded(120, 24, 32) // 2 + np.arange(120)[:, None, None, None].astype(np.uint8):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    path.parent.mkdir(parents=True)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 5])
    from hpdm.data.video import count_frames, probe_num_frames

    real = count_frames(path)
    assert probe_num_frames(path) == 120 and 10 < real < 100
    ds = VideoFolderDataset(tmp_path / "v", F, H, W, frame_stride=2)
    assert ds.entries[0].num_frames == 120  # the header's word, until a read says otherwise
    with pytest.warns(UserWarning, match=f"header says 120 frames but {real} decode"):
        clips = []
        for epoch in range(12):  # some starts fall past the real end
            ds.set_epoch(epoch)
            clips.append(ds[0])
    assert ds.entries[0].num_frames == real and ds.short_headers == [str(path)]
    assert ds.bad_files == [] and all(c["index"] == 0 for c in clips)
    # the clips are those an index with the true length gives: starts within [0, real - span]
    for epoch, clip in enumerate(clips):
        ds.set_epoch(epoch)
        assert 0 <= ds.clip_start(0) <= real - ds.span
        assert torch.equal(clip["video"], ds.load_clip(0))


def test_a_class_without_a_usable_file_is_dropped(tmp_path):
    root = tmp_path / "v"
    write_video(root / "apples" / "a.mp4", coded(8))
    (root / "bananas").mkdir(parents=True)
    (root / "bananas" / "broken.mp4").write_bytes(b"not a video at all" * 20)
    write_video(root / "cherries" / "c.mp4", coded(8))
    with pytest.warns(UserWarning, match="dropped 1 class folder.*bananas"):
        ds = VideoFolderDataset(root, F, H, W)
    assert ds.classes == ["apples", "cherries"] and ds.num_classes == 2
    assert sorted(e.label for e in ds.entries) == [0, 1]
    assert ds.dropped_classes == ["bananas"]
    (root / "apples" / "a.mp4").write_bytes(b"broken too" * 20)
    (root / "cherries" / "c.mp4").write_bytes(b"broken too" * 20)
    write_video(root / "loose.mp4", coded(8))  # a file in the root has no class
    with pytest.raises(ValueError, match="no class folder under .* has a usable file"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            VideoFolderDataset(root, F, H, W)
