"""Shared fixtures: tiny configs that write into a per-test temporary directory."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from hpdm.config import Config, load_config

torch.set_num_threads(min(2, torch.get_num_threads()))  # the CI machine has 2 cores


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
