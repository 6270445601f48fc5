"""Every benchmark script runs: each `benchmarks/*.py` with a `__main__` block is run with `--smoke`
(seconds, on the CPU, tiny sizes, nothing written) and must exit 0 and print a table. Timings are
the benchmarks' business; nothing here asserts a number."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from hpdm.config import Config, list_presets, load_config

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if 'if __name__ == "__main__"' in p.read_text())


def _results() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (BENCH / "results").glob("*")}


def test_scripts_are_found():
    assert {"bench_train.py", "bench_gpu_hpdm_s.py"} <= {p.name for p in SCRIPTS}
    assert "common.py" not in {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_smoke(script: Path, tmp_path):
    before = _results()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [sys.executable, str(script), "--smoke"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # a guard against a hang: a loaded machine takes over 120 s
    )
    assert run.returncode == 0, f"{script.name} --smoke failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    assert "|---" in run.stdout, f"{script.name} --smoke printed no table:\n{run.stdout[-3000:]}"
    assert _results() == before, f"{script.name} --smoke changed benchmarks/results/"


@pytest.fixture
def common():
    sys.path.insert(0, str(BENCH))
    try:
        import common

        yield common
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize("preset", list_presets())
def test_variants_of_every_preset(common, preset):
    """Every preset gives all three compared models, at its own target and at twice it (more
    levels), with every per-level setting mapped; the full-resolution one has one level."""
    base = load_config(preset)
    for target in (None, tuple(2 * v for v in base.pyramid.target)):
        for variant in common.VARIANTS:
            cfg = common.variant_config(preset, target, None, variant)
            assert cfg.pyramid.target == tuple(target or base.pyramid.target)
            if variant == "full-res":
                assert cfg.pyramid.num_levels == 1 and cfg.pyramid.patch == cfg.pyramid.target
            else:
                assert cfg.pyramid.patch == tuple(base.pyramid.patch)


def test_every_per_level_field_is_mapped(common):
    """A new `float | list[float]` (one value or one per level) config field must be added to
    common.PER_LEVEL_FIELDS, or the benchmarks break on presets that give it as a list."""
    per_axis = {("sample", "tile_stride")}  # one value or [F, H, W]
    found = set()
    for section, cls in typing.get_type_hints(Config).items():
        if not dataclasses.is_dataclass(cls):
            continue
        for name, hint in typing.get_type_hints(cls).items():
            args = typing.get_args(hint)
            scalars = {a for a in args if a in (int, float)}
            lists = {typing.get_args(a)[0] for a in args if typing.get_origin(a) is list}
            if scalars and scalars & lists:
                found.add((section, name))
    assert found - per_axis == set(common.PER_LEVEL_FIELDS)


def test_demo_full_res_has_one_value_per_setting(common):
    """The case of issue 27: demo's per-level lists at 16x128x128 map to the one level, and the
    full-resolution model is the mapping of the benchmark's own pyramid."""
    cfg = common.variant_config("demo", (16, 128, 128), None, "full-res")
    for section, key in common.PER_LEVEL_FIELDS:
        v = getattr(getattr(cfg, section), key)
        assert not isinstance(v, list) or len(v) == 1, f"{section}.{key}={v}"
    pyramid = common.variant_config("demo", (16, 128, 128), None, "hpdm+ac")
    assert pyramid.pyramid.num_levels == 3
    mapped = common.full_res_config(pyramid)
    assert (mapped.diffusion, mapped.sample, mapped.model) == (cfg.diffusion, cfg.sample, cfg.model)
