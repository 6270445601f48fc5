"""Reading a 16-frame clip from the middle of a long video: `read_video`'s seek against a decode
from the top, on generated files with B-frames (H.264 in mp4 at x264's default GOP of 250 frames,
MPEG-4 part 2 in AVI at FFmpeg's default GOP of 12).

Per start, three ways to read the same clip (checked byte for byte against each other):
  sequential   decode from frame 0, convert only the clip (what `read_video` does below
               `_SEEK_MIN_START`)
  seek, cold   the packet table is built first (one demux of the whole file, no decoding), as on a
               file's first read in a process
  seek         the table is cached: seek to the key packet before the clip, decode from there
  read_video   what `read_video` picks: sequential below `_SEEK_MIN_START` or when the clip's
               key packet is the file's first, else the seek (table cached)
The two seek columns are forced for every start, to show where seeking starts to pay.

    python benchmarks/bench_video_read.py [--frames 900] [--size 256] [--starts 0 48 96 300 600 880]
    python benchmarks/bench_video_read.py --smoke        # seconds: checks that it runs
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import common as bc
import numpy as np

from hpdm.data import video as V

CLIP = 16


def write_file(path: Path, codec: str, frames: int, size: int) -> None:
    """A drifting gradient with B-frames: x264 at its defaults (keyint 250, 3 B-frames), MPEG-4 at
    FFmpeg's (GOP 12) with 2 B-frames."""
    y, x = np.mgrid[0:size, 0:size]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "23", "preset": "medium", "bframes": "3"}
        else:
            stream.codec_context.max_b_frames = 2
            stream.options = {"qscale": "4"}
        for i in range(frames):
            img = np.empty((size, size, 3), np.uint8)
            img[..., 0] = (x * 2 + i) % 256
            img[..., 1] = (y * 2 + 2 * i) % 256
            img[..., 2] = ((x + y) + 3 * i) % 256
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())


def sequential(path: Path, start: int) -> np.ndarray:
    return np.stack(V._read_sequential(path, CLIP, start, 1))


def seek(path: Path, start: int, cold: bool) -> np.ndarray:
    if cold:
        V._TABLES.clear()
    table = V._frame_table(path)
    out = V._read_after_seek(path, table, CLIP, start, 1) if table is not None else None
    if out is None:
        raise SystemExit(f"{path.name}: the seek path refused start {start}; it should not on this file")
    return np.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=900, help="frames per generated file")
    ap.add_argument("--size", type=int, default=256, help="frame height and width")
    ap.add_argument("--starts", type=int, nargs="+", default=[0, 48, 96, 300, 600, 880])
    ap.add_argument("--rounds", type=int, default=9, help="timed rounds (the best is shown)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--note", default="", help="free text stored with the results (e.g. other load)")
    ap.add_argument(
        "--out", default=None, help="JSON path (default: benchmarks/results/bench_video_read.json)"
    )
    ap.add_argument(
        "--smoke", action="store_true", help="check that it runs: tiny files, one round, nothing written"
    )
    args = ap.parse_args()
    if args.smoke:
        args.frames, args.size, args.starts, args.rounds, args.threads = 48, 32, [0, 20, 30], 1, 1
    args.device = "cpu"
    starts = [s for s in args.starts if s + CLIP <= args.frames]
    if not starts:
        raise SystemExit(
            f"no start in {args.starts} leaves room for a {CLIP}-frame clip in {args.frames} frames"
        )
    info = bc.machine(bc.setup(args))
    print(bc.machine_line(info))

    rows, records = [], []
    with tempfile.TemporaryDirectory(prefix="hpdm_bench_video_") as tmp:
        for name, codec in (("h264-bframes.mp4", "libx264"), ("mpeg4-bframes.avi", "mpeg4")):
            path = Path(tmp) / name
            t0 = time.perf_counter()
            write_file(path, codec, args.frames, args.size)
            print(
                f"{name}: {args.frames} frames of {args.size}x{args.size} written in {time.perf_counter() - t0:.1f} s"
            )
            for start in starts:
                ways = {
                    "sequential": lambda p=path, s=start: sequential(p, s),
                    "seek, cold": lambda p=path, s=start: seek(p, s, cold=True),
                    "seek": lambda p=path, s=start: seek(p, s, cold=False),
                    "read_video": lambda p=path, s=start: V.read_video(p, CLIP, s),
                }
                clips = {k: fn() for k, fn in ways.items()}  # also the warm-up
                exact = all(np.array_equal(c, clips["sequential"]) for c in clips.values())
                if not exact:
                    raise SystemExit(
                        f"{name}, start {start}: the seek read differs from the sequential decode"
                    )
                times = {k: [] for k in ways}
                for _ in range(args.rounds):  # interleaved, so load changes hit every way alike
                    for k, fn in ways.items():
                        t0 = time.perf_counter()
                        fn()
                        times[k].append(time.perf_counter() - t0)
                ms = {k: 1000 * min(v) for k, v in times.items()}  # best: other load only adds time
                rows.append(
                    [
                        name,
                        start,
                        ms["sequential"],
                        ms["seek, cold"],
                        ms["seek"],
                        ms["read_video"],
                        ms["sequential"] / ms["read_video"],
                    ]
                )
                records.append(
                    {"file": name, "start": start, "exact": exact, "best_ms": ms, "rounds_s": times}
                )

    headers = [
        "file",
        "start",
        "sequential ms",
        "seek, cold table ms",
        "seek ms",
        "read_video ms",
        "speed-up",
    ]
    print(
        f"\n{CLIP}-frame clips; best of {args.rounds} round(s); every seek read equals the sequential one\n"
    )
    print(bc.table(headers, rows))
    print(f"\n`read_video` seeks from start {V._SEEK_MIN_START} on (`_SEEK_MIN_START`).")
    if args.smoke and not args.out:
        print("smoke run: nothing written")
        return
    payload = {
        "machine": info,
        "note": args.note,
        "settings": {"frames": args.frames, "size": args.size, "clip": CLIP, "rounds": args.rounds},
        "seek_min_start": V._SEEK_MIN_START,
        "results": records,
    }
    bc.write_result("bench_video_read", payload, args.out)


if __name__ == "__main__":
    main()
