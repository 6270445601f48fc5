"""C3D and the UCF-101 Inception Score (TGAN / TGANv2 / StyleGAN-V protocol).

The classifier is C3D (Tran et al. 2015) fine-tuned on UCF-101, the chainer checkpoint of
TGANv2 (`tgan2/models/c3d/c3d_ucf101.py`) that StyleGAN-V re-exports as TorchScript. **No
offline source of these trained weights exists** (they are not on any package registry), so
this module ships the architecture and the pipeline only: `load_c3d(path)` reads weights
the user has (safetensors, a torch state dict, or the chainer `.npz`) and the pipeline is
tested with random weights. An IS computed with anything else is not comparable to papers.

Protocol of that checkpoint: 16 frames; frames resized to 112x112 (bilinear, corners aligned
as chainer's `resize_images`); RGB -> BGR; [-1, 1] -> [0, 256] minus the per-pixel mean clip
of C3D's training set (a (3, 16, 112, 112) buffer loaded with the weights); 101-way softmax;
IS = exp(E_x KL(p(y|x) || p(y))) over 10 splits, reported as mean and std. `crop=True` instead
follows the original C3D evaluation (resize to 128x171, centre crop 112x112).
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

NUM_FRAMES = 16
CLIP_SIZE = 112
NUM_CLASSES = 101
# Per-channel (BGR) means of the C3D training clips, from the TGANv2 code: fills the mean buffer
# of randomly initialised models only; `load_c3d` insists on the real mean clip.
BGR_MEAN = (90.25164795, 97.65701294, 101.4083252)

_CONVS = (
    ("conv1a", 3, 64),
    ("conv2a", 64, 128),
    ("conv3a", 128, 256),
    ("conv3b", 256, 256),
    ("conv4a", 256, 512),
    ("conv4b", 512, 512),
    ("conv5a", 512, 512),
    ("conv5b", 512, 512),
)


class C3DWeightsError(RuntimeError):
    """The C3D weights file is missing, unreadable or does not fit the architecture."""


class C3D(nn.Module):
    """C3D for UCF-101: (B, 3, 16, 112, 112) preprocessed clips -> (B, 101) logits."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        for name, c_in, c_out in _CONVS:
            setattr(self, name, nn.Conv3d(c_in, c_out, 3, padding=1))
        self.fc6 = nn.Linear(512 * 4 * 4, 4096)  # pool5 output (512, 1, 4, 4), flattened C-T-H-W
        self.fc7 = nn.Linear(4096, 4096)
        self.fc8 = nn.Linear(4096, num_classes)
        # Mean clip subtracted from the input, BGR in [0, 255]; part of the checkpoint.
        self.register_buffer(
            "mean", torch.tensor(BGR_MEAN).view(3, 1, 1, 1).expand(3, NUM_FRAMES, 112, 112).clone()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Chainer's max_pooling_nd defaults to cover_all=True, i.e. ceil mode: pool5 maps 7 -> 4.
        x = F.max_pool3d(F.relu(self.conv1a(x)), (1, 2, 2), (1, 2, 2), ceil_mode=True)
        x = F.max_pool3d(F.relu(self.conv2a(x)), 2, 2, ceil_mode=True)
        x = F.max_pool3d(F.relu(self.conv3b(F.relu(self.conv3a(x)))), 2, 2, ceil_mode=True)
        x = F.max_pool3d(F.relu(self.conv4b(F.relu(self.conv4a(x)))), 2, 2, ceil_mode=True)
        x = F.max_pool3d(F.relu(self.conv5b(F.relu(self.conv5a(x)))), 2, 2, ceil_mode=True)
        x = F.relu(self.fc6(x.flatten(1)))  # dropout is the identity at inference
        x = F.relu(self.fc7(x))
        return self.fc8(x)


def preprocess(videos: torch.Tensor, mean: torch.Tensor, crop: bool = False) -> torch.Tensor:
    """(B, 3, F>=16, H, W) RGB in [-1, 1] -> (B, 3, 16, 112, 112) C3D input (BGR minus mean)."""
    if videos.ndim != 5 or videos.shape[1] != 3:
        raise ValueError(f"expected videos of shape (B, 3, F, H, W), got {tuple(videos.shape)}")
    if videos.shape[2] < NUM_FRAMES:
        raise ValueError(
            f"the C3D Inception Score needs clips of at least {NUM_FRAMES} frames, got {videos.shape[2]}"
        )
    x = videos[:, :, :NUM_FRAMES].float().clamp(-1, 1)
    b, c, f, h, w = x.shape
    frames = x.transpose(1, 2).reshape(b * f, c, h, w)
    if crop:
        frames = F.interpolate(frames, size=(128, 171), mode="bilinear", align_corners=False)
        top, left = (128 - CLIP_SIZE) // 2, (171 - CLIP_SIZE) // 2
        frames = frames[:, :, top : top + CLIP_SIZE, left : left + CLIP_SIZE]
    else:
        frames = F.interpolate(frames, size=(CLIP_SIZE, CLIP_SIZE), mode="bilinear", align_corners=True)
    x = frames.reshape(b, f, c, CLIP_SIZE, CLIP_SIZE).transpose(1, 2)
    return (x.flip(1) + 1) * 128 - mean.to(x)  # RGB -> BGR, then the [0, 256] scale of TGANv2


def _normalise_key(key: str) -> str | None:
    """Map chainer (`conv1a/W`) and wrapped (`module.`) names onto C3D's; None drops the key."""
    key = key.replace("/", ".").removeprefix("module.").removeprefix("predictors.")
    if key.startswith("pre."):  # TGANv2's fixed RGB->BGR x128 1x1 conv, done in `preprocess`
        return None
    if key.endswith(".W"):
        return key[:-2] + ".weight"
    if key.endswith(".b"):
        return key[:-2] + ".bias"
    return key


def _fit_mean(mean: torch.Tensor) -> torch.Tensor:
    """The (3, 16, 112, 112) mean clip from itself, a larger clip or a per-channel (3,) mean."""
    mean = mean.float()
    if mean.numel() == 3:
        return mean.view(3, 1, 1, 1).expand(3, NUM_FRAMES, CLIP_SIZE, CLIP_SIZE).clone()
    mean = mean.reshape(3, *mean.shape[-3:])  # TGAN's mean2.npz may carry a leading axis
    if tuple(mean.shape[1:]) == (NUM_FRAMES, CLIP_SIZE, CLIP_SIZE):
        return mean.contiguous()
    if mean.shape[1] < NUM_FRAMES or min(mean.shape[2:]) < CLIP_SIZE + 8:
        raise C3DWeightsError(f"mean clip of shape {tuple(mean.shape)}: expected (3, 16, 112, 112) or larger")
    # TGANv2 takes mean[:, :, 8:120, 8:120] of the training mean clip (128 x 128 or 128 x 171).
    return mean[:, :NUM_FRAMES, 8 : 8 + CLIP_SIZE, 8 : 8 + CLIP_SIZE].contiguous()


def _read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: torch.from_numpy(data[k]) for k in data.files}
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise C3DWeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def load_c3d(
    path: str | Path, mean_path: str | Path | None = None, device: str | torch.device = "cpu"
) -> C3D:
    """C3D with user-supplied UCF-101 weights, in eval mode with gradients off.

    path: `.safetensors`, `.npz` (chainer `conv1a/W` ... names) or a torch state dict (read with
    weights_only=True). The mean clip (BGR on the 0..255 scale; not TGANv2's `128 - mean` bias)
    is the file's `mean` tensor or `mean` of mean_path (an `.npz`, e.g. TGAN's `mean2.npz`).
    """
    path = Path(path)
    hint = (
        "C3D UCF-101 weights are not distributed through any package registry: obtain the TGANv2 / "
        "StyleGAN-V checkpoint yourself and pass its path; for StyleGAN-V's TorchScript c3d_ucf101.pt "
        "save its state dict first (see docs/evaluation.md)"
    )
    if not path.is_file():
        raise C3DWeightsError(f"C3D weights file '{path}' not found. {hint}")
    try:
        raw = _read(path)
        if mean_path is not None:
            with np.load(mean_path, allow_pickle=False) as data:
                raw["mean"] = torch.from_numpy(data["mean"])
    except C3DWeightsError:
        raise
    except Exception as e:  # corrupt file: many exception types, one message
        raise C3DWeightsError(
            f"could not read C3D weights from '{path}': {type(e).__name__}: {e}. {hint}"
        ) from e
    state = {}
    for key, value in raw.items():
        name = _normalise_key(key)
        if name is not None:
            state[name] = torch.as_tensor(value)
    if "mean" not in state:  # TGANv2 kept it outside the chainer checkpoint
        raise C3DWeightsError(
            f"'{path}' has no mean clip ('mean'): pass mean_path= an .npz holding the C3D training mean"
        )
    state["mean"] = _fit_mean(state["mean"])
    model = C3D()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise C3DWeightsError(f"'{path}' does not fit the C3D UCF-101 architecture: {e}") from e
    return model.to(device).eval().requires_grad_(False)


class C3DClassifier:
    """(B, 3, F, H, W) videos in [-1, 1] -> (B, 101) UCF-101 class probabilities (float64)."""

    def __init__(
        self,
        weights_path: str | Path | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        crop: bool = False,
        model: C3D | None = None,
    ) -> None:
        if model is None:
            if weights_path is None:
                raise C3DWeightsError(
                    "C3DClassifier needs weights_path= (C3D UCF-101 weights are not shipped; see "
                    "docs/evaluation.md) or model= a C3D instance"
                )
            model = load_c3d(weights_path)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.batch_size, self.crop = batch_size, crop

    @torch.inference_mode()
    def __call__(self, videos: torch.Tensor | np.ndarray) -> np.ndarray:
        x = torch.as_tensor(videos)
        out = []
        for chunk in x.split(self.batch_size):
            logits = self.model(preprocess(chunk.to(self.device), self.model.mean, self.crop))
            out.append(torch.softmax(logits.double(), dim=1).cpu().numpy())
        return np.concatenate(out)


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """IS = exp(mean_x KL(p(y|x) || p(y))) per split; returns (mean, std) over the splits.

    Splits are contiguous as in TGANv2 / StyleGAN-V; 0 log 0 counts as 0, so exact one-hot rows
    are fine (no epsilon).
    """
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or len(p) < splits:
        raise ValueError(f"need (N, C) probabilities with N >= splits={splits}, got shape {p.shape}")
    n = len(p)
    scores = []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        marginal = part.mean(axis=0, keepdims=True)
        safe = np.where(part > 0, part, 1.0)  # log(1) = 0 where p = 0
        kl = (part * (np.log(safe) - np.log(np.where(part > 0, marginal, 1.0)))).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))
