"""`hpdm data preview`: look at a dataset and at the pyramid's nested training boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from hpdm.config import load_config
from hpdm.data import build_dataset
from hpdm.data.video import contact_sheet, to_uint8, write_video
from hpdm.pyramid import Boxes, PyramidGeometry, sample_boxes

LEVEL_COLOURS = [(255, 255, 255), (255, 220, 0), (0, 230, 255), (255, 60, 200), (120, 255, 80)]


def draw_boxes(video: torch.Tensor, boxes: Boxes, b: int = 0, max_frames: int = 8) -> Image.Image:
    """Frames of one (3, F, H, W) video side by side with every level's box drawn where it is active."""
    frames = to_uint8(video)  # (F, H, W, 3)
    F, H, W, _ = frames.shape
    cols = np.linspace(0, F - 1, min(F, max_frames)).round().astype(int)
    pad = 2
    sheet = Image.new("RGB", (pad + len(cols) * (W + pad), H + 2 * pad), (0, 0, 0))
    for c, f in enumerate(cols):
        img = Image.fromarray(frames[f])
        draw = ImageDraw.Draw(img)
        for lvl in range(boxes.offset.shape[1]):
            off, size = boxes.offset[b, lvl].tolist(), boxes.size[b, lvl].tolist()
            t = (f + 0.5) / F
            if not off[0] <= t < off[0] + size[0]:
                continue  # the level's patch does not cover this frame
            x0, y0 = off[2] * W, off[1] * H
            x1, y1 = (off[2] + size[2]) * W - 1, (off[1] + size[1]) * H - 1
            draw.rectangle(
                [x0, y0, x1, y1], outline=LEVEL_COLOURS[lvl % len(LEVEL_COLOURS)], width=max(1, W // 128)
            )
        sheet.paste(img, (pad + c * (W + pad), pad))
    return sheet


def data_preview(
    dataset: str = "shapes",
    out: Path = Path("preview"),
    num: int = 8,
    config: str = "demo",
    path: str | None = None,
    seed: int = 0,
) -> dict:
    """Write `samples.mp4` (a grid of clips), `samples.png`, `pyramid_boxes.png`; print captions."""
    if num < 1:
        raise ValueError(f"num={num}: give the number of clips to preview, a whole number >= 1")
    overrides = [f"data.dataset={dataset}", f"data.seed={seed}"] + ([f"data.path={path}"] if path else [])
    cfg = load_config(config, overrides)
    ds = build_dataset(cfg)
    idx = list(range(min(num, len(ds))))
    if hasattr(ds, "get_batch"):
        batch = ds.get_batch(idx)
        videos, captions = batch["video"], list(batch["caption"])
    else:
        items = [ds[i] for i in idx]
        videos, captions = torch.stack([it["video"] for it in items]), [it["caption"] for it in items]
    out.mkdir(parents=True, exist_ok=True)
    # One mp4 showing the clips as a grid (2 rows) so they play side by side.
    rows = 2 if len(videos) > 1 else 1
    per_row = -(-len(videos) // rows)
    pad_n = rows * per_row - len(videos)
    grid = torch.cat([videos, -torch.ones(pad_n, *videos.shape[1:])]) if pad_n else videos
    grid = grid.view(rows, per_row, *videos.shape[1:]).permute(2, 3, 0, 4, 1, 5)  # C F rows H cols W
    grid = grid.reshape(3, videos.shape[2], rows * videos.shape[3], per_row * videos.shape[4])
    mp4 = write_video(out / "samples.mp4", grid, fps=cfg.sample.fps)
    contact_sheet(list(videos), out / "samples.png")
    geo = PyramidGeometry(cfg.pyramid.patch, cfg.pyramid.target, cfg.pyramid.num_levels)
    boxes = sample_boxes(geo, 1, torch.Generator().manual_seed(seed))
    draw_boxes(videos[0], boxes).save(out / "pyramid_boxes.png")
    print(f"{len(videos)} clips of {'x'.join(map(str, videos.shape[2:]))} from '{dataset}'")
    for i, c in enumerate(captions):
        print(f"  {i}: {c}")
    print(
        f"wrote {mp4}, {out / 'samples.png'} and {out / 'pyramid_boxes.png'} "
        f"(levels: {', '.join('x'.join(map(str, s)) for s in geo.level_sizes)}; "
        "box colours white, yellow, cyan, ... = level 0, 1, 2, ...)"
    )
    return {
        "captions": captions,
        "files": [str(mp4), str(out / "samples.png"), str(out / "pyramid_boxes.png")],
    }
