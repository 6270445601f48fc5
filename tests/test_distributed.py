"""Distributed training: DDP / FSDP2 under torchrun (2 CPU processes, gloo) on the tiny config.

The torchrun jobs run this file as their worker script (`python -m torch.distributed.run ...
tests/test_distributed.py <scenario> <out>`); the tests compare what they wrote with one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hpdm.data as data_mod
from hpdm import distributed as dist
from hpdm.config import load_config
from hpdm.data import StepBatchSampler, batch_stream
from hpdm.train import Trainer, TrainingDiverged

# One optimizer step = 2 micro-batches; global batch 4 = 2 ranks x 2 videos (or 1 process x 4).
COMMON = [
    "train.steps=3",
    "train.grad_accum=2",
    "train.optimizer=lamb",
    "train.log_every=2",
    "train.ckpt_every=100",
    "train.warmup=2",
]
RANKS, PER_RANK = 2, 2

pytestmark = pytest.mark.usefixtures("single_thread")


def _cfg(out: Path, *overrides: str):
    return load_config("tiny", [f"train.out_dir={out}", *COMMON, *overrides])


# ---------------------------------------------------------------------------------------------
# The worker (run by torchrun)


def _worker(scenario: str, out: Path, single: Path | None = None) -> int:
    torch.set_num_threads(1)
    b = f"train.batch_size={PER_RANK}"
    if scenario in ("ddp", "fsdp"):
        mode, ac = f"train.distributed={scenario}", "train.activation_checkpointing=true"
        Trainer(_cfg(out / "straight", b, mode, ac), progress=False).train()
        # a checkpoint written by one process resumes on 2 ranks
        ck = single / "checkpoints" / "step_0000002"
        Trainer(_cfg(out / "from_single", b, mode), resume=str(ck), progress=False).train()
        if scenario == "ddp":
            return 0
        # every EMA tensor moves in a step, by exactly the EMA rule (from step 2 on: the zero-initialised
        # detokenizer stops the first step's gradient from reaching the rest of the network)
        fast = "train.optimizer=adamw"  # LAMB's per-tensor norms are a collective each under FSDP
        tr = Trainer(_cfg(out / "ema", b, mode, fast), progress=False)
        tr.train(until=1)
        before = dist.model_state(None, tr.ema, tr.ctx)
        tr.train(until=2)
        after = dist.model_state(None, tr.ema, tr.ctx)
        model = dist.model_state(tr.net, tr.model, tr.ctx)
        decay = tr.cfg.train.ema_decay
        report = {
            "ema_unchanged": [k for k in before if torch.equal(before[k], after[k])],
            "ema_rule_error": max(
                float((after[k] - (decay * before[k] + (1 - decay) * model[k])).abs().max()) for k in after
            ),
            "num_tensors": len(after),
        }
        # save at step 2, resume in a new Trainer, continue to step 4
        cfg = _cfg(out / "resumed", b, mode, ac)
        Trainer(cfg, progress=False).train(until=2)
        Trainer(cfg, resume="auto", progress=False).train()
        # a NaN on rank 1 alone stops both ranks with the same message
        tr = Trainer(_cfg(out / "nan", b, mode, fast), progress=False)
        if tr.ctx.rank == 1:
            real = tr._micro_step

            def poisoned(batch):
                loss, per, sigma = real(batch)
                if tr.step == 1:
                    per = per.clone().index_fill_(1, torch.tensor([2]), float("nan"))
                    loss = loss * float("nan")
                return loss, per, sigma

            tr._micro_step = poisoned
        try:
            tr.train()
            report["nan"] = None
        except TrainingDiverged as e:
            report["nan"] = str(e)
        report["nan_step"] = tr.step
        (out / f"report_{tr.ctx.rank}.json").write_text(json.dumps(report))
        return 0
    # through the command line: a clean run, or a rank that crashes or hangs at step 2
    from hpdm import cli

    if scenario != "cli" and os.environ["RANK"] == "1":
        real = Trainer._micro_step

        def failing(self, batch):
            if self.step == 1:
                if scenario == "crash":
                    raise RuntimeError("simulated crash of rank 1")
                time.sleep(120)
            return real(self, batch)

        Trainer._micro_step = failing
    return cli.main(["train", "tiny", f"train.out_dir={out / scenario}", b, *COMMON])


# ---------------------------------------------------------------------------------------------
# Helpers


def _torchrun(scenario: str, out: Path, *args: str, timeout: float = 120, **env) -> tuple[int, str, float]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={RANKS}",
        __file__,
        scenario,
        str(out),
        *args,
    ]
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **env}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=environ)
    return p.returncode, p.stdout + p.stderr, time.perf_counter() - t0


def _weights(run: Path, name: str) -> dict[str, torch.Tensor]:
    ck = sorted((run / "checkpoints").glob("step_*"))[-1]
    return load_file(str(ck / f"{name}.safetensors"))


def _close(a: dict, b: dict, atol: float = 1e-5) -> float:
    assert a.keys() == b.keys()
    err = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert err < atol, err
    return err


def _losses(run: Path) -> list[float]:
    return [json.loads(s)["loss"] for s in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """One process with the global batch (4; saved at step 2 and resumed), then the DDP and FSDP
    torchrun jobs (2 ranks x 2 videos), which also resume from its step-2 checkpoint."""
    root = tmp_path_factory.mktemp("dist")
    out = {"single": root / "single"}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = _cfg(out["single"], f"train.batch_size={RANKS * PER_RANK}")
    Trainer(cfg, progress=False).train(until=2)
    Trainer(cfg, resume="auto", progress=False).train()
    torch.set_num_threads(before)
    for scenario in ("ddp", "fsdp"):
        rc, log, _ = _torchrun(scenario, root / scenario, str(out["single"]))
        assert rc == 0, "\n".join(line for line in log.splitlines() if "Warning" not in line)[-6000:]
        out[scenario] = root / scenario
    return out


# ---------------------------------------------------------------------------------------------
# Multi-process


def test_ddp_equals_one_process_with_the_same_global_batch(jobs):
    """2 ranks x 2 videos (activation checkpointing, grad accumulation, no_sync) train exactly like
    1 process x 4 videos: the same clips, boxes, σ and noise, averaged gradients."""
    single, ddp = jobs["single"], jobs["ddp"] / "straight"
    _close(_weights(ddp, "model"), _weights(single, "model"))
    _close(_weights(ddp, "ema"), _weights(single, "ema"))
    assert _losses(ddp) == pytest.approx(_losses(single), rel=1e-5)  # logs hold the global batch's loss


def test_fsdp_equals_one_process_and_resumes_exactly(jobs):
    single, fsdp = jobs["single"], jobs["fsdp"]
    _close(_weights(fsdp / "straight", "model"), _weights(single, "model"))
    _close(_weights(fsdp / "straight", "ema"), _weights(single, "ema"))
    for name in ("model", "ema"):  # save at 2 -> resume -> 3 equals 3 straight steps, bit for bit
        a, b = _weights(fsdp / "resumed", name), _weights(fsdp / "straight", name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    opt = [
        torch.load(sorted((fsdp / d / "checkpoints").glob("step_*"))[-1] / "training.pt", weights_only=True)
        for d in ("straight", "resumed")
    ]
    a, b = (o["optimizer"]["state"] for o in opt)
    assert a.keys() == b.keys() and len(a) > 0  # the single-process optimizer format, full tensors
    for i in a:
        for k in a[i]:
            assert torch.equal(a[i][k], b[i][k]), (i, k)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_one_process_checkpoint_resumes_on_two_ranks(jobs, mode):
    """Checkpoints hold full tensors and the draws are keyed by sample position, so changing the
    world size (same global batch) continues the run as if nothing had changed."""
    for name in ("model", "ema"):
        _close(_weights(jobs[mode] / "from_single", name), _weights(jobs["single"], name))


def test_fsdp_moves_every_ema_tensor(jobs):
    for rank in range(RANKS):
        r = json.loads((jobs["fsdp"] / f"report_{rank}.json").read_text())
        assert r["num_tensors"] > 50 and r["ema_unchanged"] == []
        assert r["ema_rule_error"] < 1e-6


def test_a_nan_on_one_rank_stops_every_rank(jobs):
    reports = [json.loads((jobs["fsdp"] / f"report_{r}.json").read_text()) for r in range(RANKS)]
    for r in reports:
        assert r["nan"] is not None and r["nan_step"] == 1
        assert "non-finite loss at step 2 on rank 1 (level 2" in r["nan"]
    assert reports[0]["nan"] == reports[1]["nan"]


@pytest.mark.parametrize("scenario", ["crash", "hang"])
def test_a_failing_rank_fails_the_job_instead_of_hanging(tmp_path, scenario):
    """A crash is torn down by torchrun; a hang is cut by HPDM_DIST_TIMEOUT on the other rank."""
    rc, log, seconds = _torchrun(scenario, tmp_path, timeout=100, HPDM_DIST_TIMEOUT="3")
    assert rc != 0, log[-3000:]
    assert seconds < 60, seconds  # the hanging rank sleeps 120 s
    if scenario == "crash":
        assert "simulated crash of rank 1" in log
    else:
        assert "rank 0/2 lost the other ranks at step 2" in log and "HPDM_DIST_TIMEOUT=3s" in log, log[-3000:]


# ---------------------------------------------------------------------------------------------
# One process


def test_the_command_line_exits_cleanly_under_torchrun(tmp_path):
    """A finished `hpdm train` under torchrun exits 0 on every rank: the wrapped model and the
    process group are released before interpreter shutdown (gloo aborts a rank otherwise)."""
    rc, log, _ = _torchrun("cli", tmp_path, timeout=100)
    assert rc == 0, log[-3000:]
    assert "terminate called" not in log
    assert len(list((tmp_path / "cli" / "checkpoints").glob("step_*"))) == 1


def test_rank_slices_concatenate_to_the_one_process_batch():
    """Step s of rank r is slice r of the global batch of step s, for every world size."""
    n, b, seed = 37, 3, 5  # not a multiple of the batch: steps straddle epochs
    one = iter(StepBatchSampler(n, b * 4, seed))
    ranks = [iter(StepBatchSampler(n, b, seed, rank=r, world=4)) for r in range(4)]
    for _ in range(12):
        assert next(one) == sum((next(it) for it in ranks), [])
    resumed = iter(StepBatchSampler(n, b, seed, start_step=7, rank=2, world=4))
    fresh = iter(StepBatchSampler(n, b, seed, rank=2, world=4))
    assert [next(fresh) for _ in range(8)][-1] == next(resumed)


def test_data_workers_give_the_same_batches(tiny_config):
    ds = data_mod.build_dataset(tiny_config(), train=True)
    a = batch_stream(ds, 2, seed=3, start_step=5, num_workers=0)
    b = batch_stream(ds, 2, seed=3, start_step=5, num_workers=2)
    for _ in range(3):
        x, y = next(a), next(b)
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["video"], y["video"])


def test_shapes_drawn_on_the_training_device_come_from_the_main_process(tiny_config, monkeypatch):
    """data.render=device: the dataset draws on the trainer's device and the stream runs without
    workers (CUDA cannot be used in forked workers), with the batches the workers would give."""
    seen = []
    real = data_mod.batch_stream

    def spy(*args, **kw):
        seen.append(kw["num_workers"])
        return real(*args, **kw)

    monkeypatch.setattr("hpdm.train.batch_stream", spy)
    batches = {}
    for where in ("cpu", "device"):
        tr = Trainer(
            tiny_config("train.batch_size=2", "data.num_workers=2", f"data.render={where}"), progress=False
        )
        assert tr.render_on_device == (where == "device") and tr.dataset.device == tr.device
        stream = tr._batches()
        batches[where] = [next(stream) for _ in range(2)]
    assert seen == [2, 0]
    for x, y in zip(batches["cpu"], batches["device"]):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["video"], y["video"])
    auto = Trainer(tiny_config("data.render=auto"), progress=False)  # auto: only CUDA draws on the device
    assert not auto.render_on_device


def test_grad_accumulation_equals_a_bigger_batch(tiny_config, tmp_path):
    """Per-video draws keyed by stream position: 2 micro-batches of 2 == 1 batch of 4."""
    runs = {}
    for name, over in (
        ("accum", ["train.batch_size=2", "train.grad_accum=2"]),
        ("big", ["train.batch_size=4"]),
    ):
        cfg = tiny_config("train.steps=3", "train.ckpt_every=100", f"train.out_dir={tmp_path / name}", *over)
        Trainer(cfg, progress=False).train()
        runs[name] = tmp_path / name
    _close(_weights(runs["accum"], "model"), _weights(runs["big"], "model"))


def test_activation_checkpointing_gives_identical_gradients(tiny_config, perturbed):
    tr = Trainer(tiny_config("train.batch_size=2"), progress=False)
    perturbed(tr.model)
    batch = next(tr._batches())
    grads = []
    for ac in (False, True):
        tr.model.activation_checkpointing = ac
        tr.model.zero_grad(set_to_none=True)
        loss, _, _ = tr._micro_step(batch)
        loss.backward()
        grads.append([p.grad.clone() for p in tr.model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_data_wait_is_measured_with_workers(tiny_config, monkeypatch):
    """A loader slower than the step shows up as data wait, also when workers do the loading."""
    from hpdm.data.shapes import ShapesDataset

    real = ShapesDataset.get_batch

    def slow(self, indices):
        time.sleep(0.3)
        return real(self, indices)

    monkeypatch.setattr(ShapesDataset, "get_batch", slow)
    cfg = tiny_config(
        "train.steps=6",
        "train.log_every=3",
        "train.batch_size=2",
        "train.ckpt_every=100",
        "data.num_workers=1",
    )
    tr = Trainer(cfg, progress=False)
    tr.train()
    shares = [json.loads(s)["data_wait_share"] for s in (tr.out_dir / "log.jsonl").read_text().splitlines()]
    assert all(0.5 < s <= 1.0 for s in shares), shares  # ~0.3 s per batch vs a few ms of compute


def test_timeout_must_be_a_positive_number(monkeypatch):
    monkeypatch.setenv("HPDM_DIST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="HPDM_DIST_TIMEOUT"):
        dist.timeout_seconds()
    monkeypatch.setenv("HPDM_DIST_TIMEOUT", "2.5")
    assert dist.timeout_seconds() == 2.5


if __name__ == "__main__":
    try:
        code = _worker(sys.argv[1], Path(sys.argv[2]), *map(Path, sys.argv[3:]))
    except BaseException:
        dist.reset()  # tear the process group down before the interpreter exits
        raise
    dist.reset(sync=True)  # every rank finished: leave together
    if sys.argv[1] == "cli":  # the command line's own exit, interpreter teardown included
        sys.exit(code)
    # what these jobs test is on disk by now; skip interpreter teardown, whose gloo thread clean-up
    # has aborted a finished rank on a loaded CI machine (the CLI's own exit path is tested by
    # test_the_command_line_exits_cleanly_under_torchrun)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
