"""Shared fixtures: tiny configs that write into a per-test temporary directory."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

from hpdm.config import Config, load_config

# The CI machine has 2 cores. Under pytest-xdist (`-n`, as pyproject's addopts) each worker runs
# on one thread: two single-thread workers keep both cores busy, and no worker's OpenMP threads
# wait on cores the other holds (a tiny model's matmuls gain nothing from a second thread).
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


@pytest.fixture(scope="session", autouse=True)
def _fresh_home(tmp_path_factory):
    """No test reads or writes the user's caches (~/.cache/hpdm: FVD statistics, converted I3D
    weights): each test session (each xdist worker) has a home folder of its own."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.setenv("XDG_CACHE_HOME", str(home / ".cache"))
        yield home


@pytest.fixture
def single_thread():
    """Run a test on one intra-op thread: the tiny models' matmuls gain nothing from a second
    thread, and on a busy 2-core machine OpenMP wake-ups make them up to 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_config(tmp_path) -> Callable[..., Config]:
    """`tiny_config("model.fusion=none", ...)`: the `tiny` preset with overrides, writing to tmp_path/run."""

    def make(*overrides: str) -> Config:
        return load_config("tiny", [f"train.out_dir={tmp_path / 'run'}", *overrides])

    return make


def perturb(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Add noise to every parameter: the detokenizer and the fusion layers start at zero / identity,
    which would hide dependencies between levels."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.fixture
def perturbed() -> Callable[..., torch.nn.Module]:
    return perturb


class StandInI3D(torch.nn.Module):
    """A cheap, deterministic stand-in for I3D: a fixed random projection of pooled pixels to
    I3D's 400 features. For the command-line plumbing tests (reports, studies), which check what
    is computed and stored, not the detector; the real I3D is tested on its own against the Flax
    reference (test_metrics.py). On 2 CPU cores it saves ~1.5 s per clip."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(3 * 4**3, 400, generator=g) / 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool3d(x, 4).flatten(1) @ self.proj


@pytest.fixture
def stand_in_i3d(monkeypatch, tmp_path_factory):
    """FVD in this test uses `StandInI3D` in place of the real detector, and a home folder of its
    own: real statistics cached in ~/.cache/hpdm by other tests belong to the real detector."""
    import hpdm.metrics.fvd as fvd

    monkeypatch.setattr(fvd, "load_i3d", lambda *a, **k: StandInI3D())
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
