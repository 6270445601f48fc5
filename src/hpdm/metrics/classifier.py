"""A small 3-D CNN that classifies `shapes` videos, to score class accuracy of generated videos.

Trained by `hpdm eval train-classifier` on freshly rendered `shapes` clips (every step a new
batch, so it never overfits). Two kinds ship in `assets/`:

* `classifier/` (kind "class"): trained on the clips as they are. A class has one colour, so
  this one may read the colour alone: it says whether a video is of the right class.
* `shape_classifier/` (kind "shape"): trained with every clip's shape painted in the colour of
  a random class, so the colour carries no information and only the outline does: it says
  whether the *shape* of a generated object is recognisable.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from hpdm.data.shapes import CLASS_COLOURS, NUM_CLASSES, SIZE_RANGE, render, render_shapes, sample_params

INPUT_SIZE = (8, 32, 32)
# A generated video is area-downsampled to INPUT_SIZE, whose object edges differ slightly from a
# clip rendered at INPUT_SIZE directly (a classifier trained on the latter alone scores 99% on
# such clips but 92-94% on downsampled ones), so training alternates the two.
TRAIN_SIZES = ((16, 64, 64), INPUT_SIZE)
KINDS = {"class": "classifier", "shape": "shape_classifier"}  # kind → folder in assets/


class ShapesClassifier(nn.Module):
    """A 3-D CNN on (8, 32, 32) clips; both kinds share it.

    Two convolutions (each with GroupNorm) per scale (32, 16 and 8 px), so the last features
    see about 30 px: a whole object at level-0 resolution. Features are max-pooled over space
    (the object is small and anywhere in the frame, so averaging would drown its outline in the
    background) and averaged over time.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 16):
        super().__init__()
        w = width

        def stage(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv3d(cin, cout, 3, padding=1),
                nn.GroupNorm(8, cout),
                nn.GELU(),
                nn.Conv3d(cout, cout, 3, padding=1),
                nn.GroupNorm(8, cout),
                nn.GELU(),
            ]

        self.net = nn.Sequential(
            *stage(3, w),
            nn.AvgPool3d((1, 2, 2)),
            *stage(w, 2 * w),
            nn.AvgPool3d(2),
            *stage(2 * w, 4 * w),
        )
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, 3, F, H, W) in [-1, 1], any size → logits (B, classes)."""
        if all(s >= t for s, t in zip(video.shape[-3:], INPUT_SIZE)):
            x = F.adaptive_avg_pool3d(video, INPUT_SIZE)  # area averaging, like the level pyramid
        else:
            x = F.interpolate(video, size=INPUT_SIZE, mode="trilinear", align_corners=False)
        return self.head(self.net(x).amax(dim=(3, 4)).mean(dim=2))


def default_weights(kind: str = "class") -> Path:
    if kind not in KINDS:
        raise ValueError(f"classifier kind '{kind}' is not one of {', '.join(KINDS)}")
    return Path(str(resources.files("hpdm") / "assets" / KINDS[kind] / "model.safetensors"))


def load_classifier(path: str | Path | None = None, device="cpu", kind: str = "class") -> ShapesClassifier:
    p = Path(path) if path else default_weights(kind)
    if not p.exists():
        raise FileNotFoundError(
            f"classifier weights not found at {p}; train them with `hpdm eval train-classifier"
            f"{' --kind shape' if kind == 'shape' else ''}`"
        )
    model = ShapesClassifier()
    model.load_state_dict(load_file(str(p)))
    return model.to(device).eval()


def train_classifier(
    out: str | Path,
    steps: int = 600,
    batch: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    sizes: tuple[tuple[int, int, int], ...] = TRAIN_SIZES,
    progress: bool = True,
    kind: str = "class",
    size_range: tuple[float, float] = SIZE_RANGE,
) -> dict:
    """Train on rendered `shapes` clips (seeds disjoint from the generator's training set).

    kind "class": the clips as they are; "shape": every shape in the colour of a random class.
    Steps cycle through `sizes`; the held-out accuracy is reported at each of them. `size_range`:
    the objects' bounding radius (`data.shape_size` of the models it will score).
    """
    size_range = tuple(float(v) for v in size_range)
    if kind not in KINDS:
        raise ValueError(f"classifier kind '{kind}' is not one of {', '.join(KINDS)}")
    torch.manual_seed(seed)
    model = ShapesClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    base = 10_000_000 + seed * steps * batch  # indices far from the training set's
    t0 = time.perf_counter()
    for step in tqdm(range(steps), desc="classifier", disable=not progress):
        size = sizes[step % len(sizes)]
        video, labels = _clips(
            range(base + step * batch, base + (step + 1) * batch), size, seed, kind, size_range
        )
        loss = F.cross_entropy(model(video), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    acc = {
        "x".join(map(str, sz)): evaluate(model, size=sz, seed=seed + 1, kind=kind, size_range=size_range)
        for sz in sizes
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(out / "model.safetensors"))
    info = {
        "kind": kind,
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "sizes": [list(sz) for sz in sizes],
        "shape_size": list(size_range),
        "held_out_accuracy": acc,
        "seconds": round(time.perf_counter() - t0, 1),
        "command": f"hpdm eval train-classifier --kind {kind} --out {out} --steps {steps}"
        + ("" if size_range == SIZE_RANGE else f" --shape-size {size_range[0]} {size_range[1]}"),
    }
    (out / "info.json").write_text(json.dumps(info, indent=2))
    return info


def _clips(
    indices, size, seed: int, kind: str, size_range: tuple[float, float] = SIZE_RANGE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendered clips and labels; kind "shape" repaints each shape in a random class's colour."""
    if kind == "class":
        video, labels, _ = render_shapes(list(indices), *size, seed=seed, size_range=size_range)
        return video, labels
    params = sample_params(list(indices), seed, size_range=size_range)
    palette = torch.tensor(CLASS_COLOURS)
    g = torch.Generator().manual_seed(seed * 1_000_003 + int(params["index"][0]))
    params["shape_color"] = palette[torch.randint(len(palette), (len(params["class_id"]),), generator=g)]
    return render(params, *size), params["class_id"].clone()


@torch.no_grad()
def evaluate(
    model: ShapesClassifier,
    num: int = 256,
    size=INPUT_SIZE,
    seed: int = 1,
    kind: str = "class",
    size_range: tuple[float, float] = SIZE_RANGE,
) -> float:
    video, labels = _clips(range(20_000_000, 20_000_000 + num), size, seed, kind, size_range)
    return float((model.eval()(video).argmax(-1) == labels).float().mean())


@torch.no_grad()
def class_accuracy(model: ShapesClassifier, videos: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model(videos).argmax(-1) == labels.to(videos.device)).float().mean())
