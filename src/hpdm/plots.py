"""Small line plots with Pillow (no plotting library needed): points with error bars per series."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # fmt: skip


def _fmt(v: float, span: float) -> str:
    """Enough digits to tell ticks `span` apart."""
    import math

    digits = 3 if span <= 0 or v == 0 else max(3, math.ceil(math.log10(abs(v) / span)) + 2)
    return f"{v:.{digits}g}"


def line_plot(
    series: dict[str, list[tuple[float, float, float]]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    size: tuple[int, int] = (720, 440),
) -> Path:
    """One line per series through its (x, y) points, with ±err bars; a legend of the names.
    Writes a PNG at `path` and returns it."""
    W, H = size
    left, right, top, bottom = 70, 180, 20, 50
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    pts = [p for s in series.values() for p in s]
    if not pts:
        raise ValueError("nothing to plot: every series is empty")
    xs = [p[0] for p in pts]
    lo = [p[1] - p[2] for p in pts]
    hi = [p[1] + p[2] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(lo), max(hi)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def px(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x0) / (x1 - x0) * (W - left - right),
            H - bottom - (y - y0) / (y1 - y0) * (H - top - bottom),
        )

    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for k in range(5):  # ticks and grid
        fx, fy = x0 + (x1 - x0) * k / 4, y0 + (y1 - y0) * k / 4
        gx, _ = px(fx, y0)
        _, gy = px(x0, fy)
        d.line([gx, top, gx, H - bottom], fill=(230, 230, 230))
        d.line([left, gy, W - right, gy], fill=(230, 230, 230))
        d.text((gx - 12, H - bottom + 5), _fmt(fx, (x1 - x0) / 4), fill="black")
        d.text((5, gy - 6), _fmt(fy, (y1 - y0) / 4), fill="black")
    d.text(((W - right + left) / 2 - 40, H - 20), xlabel, fill="black")
    d.text((5, 2), ylabel, fill="black")
    for i, (name, s) in enumerate(series.items()):
        c = COLOURS[i % len(COLOURS)]
        s = sorted(s)
        line = [px(x, y) for x, y, _ in s]
        if len(line) > 1:
            d.line(line, fill=c, width=2)
        for (x, y, e), (u, v) in zip(s, line):
            if e > 0:
                _, a = px(x, y - e)
                _, b = px(x, y + e)
                d.line([u, a, u, b], fill=c, width=1)
                d.line([u - 4, a, u + 4, a], fill=c)
                d.line([u - 4, b, u + 4, b], fill=c)
            d.ellipse([u - 3, v - 3, u + 3, v + 3], fill=c)
        d.rectangle([W - right + 10, top + 16 * i + 4, W - right + 20, top + 16 * i + 14], fill=c)
        d.text((W - right + 25, top + 16 * i + 2), name[:24], fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
