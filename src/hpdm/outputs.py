"""What the commands write for a person to look at: one mp4 per video, contact sheets, settings."""

from __future__ import annotations

import json
from pathlib import Path


def save_outputs(
    gen,
    out: Path,
    fps: int,
    prefix: str = "video",
    save_levels: bool = False,
    labels: list[str] | None = None,
) -> list[Path]:
    """One mp4 per video, a contact-sheet PNG and settings JSON (and coarse levels on request)."""
    from hpdm.data.video import contact_sheet, write_video

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, v in enumerate(gen.video):
        paths.append(write_video(out / f"{prefix}_{i:03d}.mp4", v, fps=fps))
        if save_levels:
            for lvl, lv in enumerate(gen.levels[:-1]):
                write_video(out / f"{prefix}_{i:03d}_level{lvl}.mp4", lv[i], fps=fps)
    contact_sheet(list(gen.video), out / "contact_sheet.png", labels=labels)
    if save_levels:
        rows = [lv[i] for i in range(len(gen.video)) for lv in gen.levels]
        contact_sheet(
            rows,
            out / "levels_sheet.png",
            labels=[f"{i}: level {lvl}" for i in range(len(gen.video)) for lvl in range(len(gen.levels))],
        )
    (out / "settings.json").write_text(json.dumps(gen.settings, indent=2))
    return paths
