"""Behaviour preserved: today's code reproduces the recorded demo samples and `tiny` losses
(tests/behaviour.py says how they were recorded). A refactor that changes them is not one."""

from __future__ import annotations

import behaviour
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def recorded() -> dict[str, np.ndarray]:
    with np.load(behaviour.FIXTURE, allow_pickle=False) as f:
        return dict(f)


def test_the_shipped_demo_samples_as_recorded(recorded):
    torch.set_num_threads(1)
    now = behaviour.demo_samples()
    for key, value in now.items():
        assert value.shape == recorded[key].shape, key
        diff = float(np.abs(value - recorded[key]).max())
        assert diff <= 1e-5, f"{key}: max |difference| {diff:.2e} in [-1, 1]"


def test_tiny_training_losses_as_recorded(recorded):
    now = behaviour.tiny_losses()
    for key, value in now.items():
        np.testing.assert_allclose(value, recorded[key], rtol=1e-6, atol=0, err_msg=key)
