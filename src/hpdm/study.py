"""Studies: a base config, named variants, a training budget each, and the same evaluation for all.

A study is a YAML file:

```yaml
name: tab3-ablation
base: demo                       # a preset or a config YAML
overrides: [train.batch_size=8]  # for every variant
budget: {flops: 2.0e15}          # training FLOPs per variant, or {steps: N}
seeds: [0]                       # training seeds (each variant trains once per seed)
eval:
  at: [0.5, 1.0]                 # evaluate at these fractions of the budget (a curve): the last
                                 # with every sampling seed, the others with the first
  num: 64                        # generated and real clips (FVD per level, accuracies, seams)
  seeds: [0, 1, 2]               # sampling seeds: error bars
  batch_size: 8
  sample: [sample.steps=32]      # sampling settings for every evaluation
variants:
  - {name: default}
  - {name: no-coords, overrides: [model.use_coords=false]}
  - {name: full-res, full_res: true}                        # hpdm.info.full_res_config of it
  - {name: no-overlap, from: default, sample: [sample.overlap=none]}   # inference only
  - {name: wide, from: default, size: [16, 128, 256]}                  # evaluated wider
reuse: {default: studies/results/other/default}  # another study's run of the same config
```

`run_study` trains every variant for its budget (resumable: a killed run continues from its last
checkpoint, and finished evaluations are kept) and evaluates it with `hpdm eval report` (the
real clips' I3D features are computed once per study, in `OUT/.real_i3d`, or once for several
studies in one shared `feature_cache` folder);
`report_study` gathers the results into `results.json`, `results.md` and PNG plots.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import shutil
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hpdm.config import Config, ConfigError, load_config

SMOKE_OVERRIDES = ["train.batch_size=2", "train.log_every=1", "train.ckpt_every=1000"]


@dataclass
class Variant:
    name: str
    overrides: list[str] = field(default_factory=list)
    full_res: bool = False
    source: str | None = None  # `from`: evaluate this variant's checkpoint (inference only)
    sample: list[str] = field(default_factory=list)
    budget: dict | None = None  # its own budget (e.g. no AC at its own, higher, cost)
    size: list[int] | None = None  # evaluate at this (F, H, W), e.g. wider than training
    checkpoint: str | None = None  # a trained model evaluated as it is ("demo": the shipped one)


@dataclass
class Study:
    name: str
    base: str
    overrides: list[str]
    budget: dict
    seeds: list[int]
    variants: list[Variant]
    eval: dict
    reuse: dict = field(default_factory=dict)  # trained variant -> another study's run folder

    @classmethod
    def load(cls, path: str | Path) -> Study:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"study file {path} not found; give the path of a study YAML (see studies/)")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
        known = {"name", "base", "overrides", "budget", "seeds", "variants", "eval", "reuse"}
        if unknown := set(raw) - known:
            raise ConfigError(f"{path}: unknown study keys {sorted(unknown)}; known: {sorted(known)}")
        variants = []
        for v in raw.get("variants") or []:
            extra = set(v) - {
                "name",
                "overrides",
                "full_res",
                "from",
                "sample",
                "budget",
                "size",
                "checkpoint",
            }
            if "name" not in v or extra:
                raise ConfigError(
                    f"{path}: variant {v}: give a name, and only overrides, full_res, from, sample, "
                    "budget, size, checkpoint"
                )
            if v.get("checkpoint") is not None and (v.get("overrides") or v.get("full_res") or v.get("from")):
                raise ConfigError(
                    f"{path}: variant {v['name']}: a `checkpoint` is evaluated as it was trained; "
                    "give it no overrides, full_res or from"
                )
            if v.get("size") is not None and (
                len(v["size"]) != 3 or not all(isinstance(n, int) and n > 0 for n in v["size"])
            ):
                raise ConfigError(
                    f"{path}: variant {v['name']}: size is [frames, height, width], got {v['size']}"
                )
            variants.append(
                Variant(
                    str(v["name"]),
                    list(v.get("overrides") or []),
                    bool(v.get("full_res", False)),
                    v.get("from"),
                    list(v.get("sample") or []),
                    v.get("budget"),
                    v.get("size"),
                    v.get("checkpoint"),
                )
            )
        study = cls(
            raw.get("name") or path.stem,
            raw.get("base", "demo"),
            list(raw.get("overrides") or []),
            raw.get("budget") or {},
            [int(s) for s in raw.get("seeds") or [0]],
            variants,
            {"at": [1.0], "num": 64, "seeds": [0], "batch_size": 8, "sample": [], **(raw.get("eval") or {})},
            {str(k): str(p) for k, p in (raw.get("reuse") or {}).items()},
        )
        study.check(path)
        return study

    def check(self, path) -> None:
        names = [v.name for v in self.variants]
        if not names:
            raise ConfigError(f"{path}: no variants; list at least one under `variants:`")
        if len(set(names)) != len(names):
            raise ConfigError(f"{path}: variant names repeat: {names}")
        for v in self.variants:
            if v.source is not None and v.source not in names:
                raise ConfigError(f"{path}: variant {v.name} is `from: {v.source}`, which is not a variant")
            if v.source is None and v.checkpoint is None:
                _check_budget(v.budget or self.budget, f"{path}: variant {v.name}")
            for s in v.sample + list(self.eval["sample"]):
                if not s.startswith("sample."):
                    raise ConfigError(f"{path}: '{s}': evaluation settings are sample.key=value only")
        for name in self.reuse:
            given = next((v for v in self.variants if v.name == name), None)
            if given is None or given.source is not None or given.checkpoint is not None:
                raise ConfigError(f"{path}: reuse: {name} is not a trained variant of this study")
        if not all(0 < f <= 1 for f in self.eval["at"]):
            raise ConfigError(
                f"{path}: eval.at holds fractions of the budget in (0, 1], got {self.eval['at']}"
            )

    def config(self, variant: Variant, seed: int, smoke: bool = False) -> Config:
        """The training config of a (trained) variant and seed; raises ConfigError for bad overrides."""
        from hpdm.info import full_res_config

        base, over = ("tiny", SMOKE_OVERRIDES) if smoke else (self.base, self.overrides)
        cfg = load_config(base, [*over, *variant.overrides, f"train.seed={seed}"])
        return full_res_config(cfg) if variant.full_res else cfg

    def run_dir(self, out: Path, variant: Variant, seed: int, cfg: Config, smoke: bool = False) -> Path:
        """Where a trained variant's run lives: `OUT/NAME/seed_N`, or the folder `reuse` names
        (another study's run of the same config, e.g. one default model for several studies),
        which must hold that config when it holds a run."""
        if smoke or variant.name not in self.reuse:
            return out / variant.name / f"seed_{seed}"
        run = Path(self.reuse[variant.name]) / f"seed_{seed}"
        saved = run / "config.yaml"
        if saved.exists():
            theirs, ours = load_config(saved).to_dict(), cfg.to_dict()
            for d in (theirs, ours):
                d.pop("name", None)
                d["train"].pop("out_dir", None)
                d["train"].pop("keep_steps", None)
            if theirs != ours:
                diff = sorted(
                    f"{sec}.{k}"
                    for sec in ours
                    if isinstance(ours[sec], dict)
                    for k in ours[sec]
                    if theirs.get(sec, {}).get(k) != ours[sec][k]
                )
                raise ConfigError(
                    f"reuse: {run} was trained with another config ({', '.join(diff)} differ); "
                    f"reuse only a run of the same base, overrides, budget and seed"
                )
        return run

    def steps(self, variant: Variant, cfg: Config, smoke: bool = False) -> tuple[int, float]:
        """Training steps of a variant and the FLOPs per step (one process, `hpdm info`'s count)."""
        from hpdm.info import model_info

        per_step = model_info(cfg, measure_memory=False)["train_step_flops"] * cfg.train.batch_size
        per_step *= cfg.train.grad_accum
        if smoke:
            return 2, per_step
        budget = variant.budget or self.budget
        if "steps" in budget:
            return int(budget["steps"]), per_step
        return max(1, math.ceil(float(budget["flops"]) / per_step)), per_step


def _check_budget(budget: dict, where: str) -> None:
    if set(budget) not in ({"steps"}, {"flops"}):
        raise ConfigError(
            f"{where}: budget must be {{flops: F}} (training FLOPs) or {{steps: N}}, got {budget}"
        )
    value = float(next(iter(budget.values())))
    if not value > 0:
        raise ConfigError(f"{where}: budget {budget} must be positive")


def run_study(
    path: str | Path,
    out: str | Path,
    only: list[str] | None = None,
    smoke: bool = False,
    progress: bool = True,
    eval_seeds: list[int] | None = None,
    feature_cache: str | Path | None = None,
) -> list[dict]:
    """Train and evaluate every variant (or those in `only`); returns the evaluation records.

    Resumable: a variant's training continues from its newest checkpoint, an evaluation whose
    `report.json` exists is read back instead of rerun. `smoke`: the whole study at `tiny` size
    (2 steps, evaluated once on 4 clips with 2 sampling steps, one seed of each), to check it runs.
    `eval_seeds`: evaluate with only these of the study's sampling seeds now, e.g. one seed for
    every variant first and the others in a later pass (finished evaluations are kept).
    `feature_cache`: the folder of the real clips' I3D features (default `OUT/.real_i3d`); files are
    named by the clips' content hash, so one folder can serve several studies safely."""
    from hpdm.checkpoint import checkpoint_label
    from hpdm.metrics.report import run_report
    from hpdm.train import Trainer

    study = Study.load(path)
    out = Path(out)
    cache = Path(feature_cache) if feature_cache is not None else out / ".real_i3d"
    names = [v.name for v in study.variants]
    if only and (bad := [n for n in only if n not in names]):
        raise ConfigError(f"--only {bad}: not variants of {study.name}; its variants are {names}")
    ev = dict(study.eval)
    if eval_seeds is not None:  # a pass with some of the sampling seeds (e.g. one across variants first)
        if bad := [s for s in eval_seeds if s not in ev["seeds"]]:
            raise ConfigError(
                f"--eval-seeds {bad}: not sampling seeds of {study.name}; its eval.seeds are {ev['seeds']}"
            )
        ev["seeds"] = [s for s in ev["seeds"] if s in eval_seeds]
    if smoke:
        ev.update(
            at=[1.0], num=4, batch_size=4, seeds=ev["seeds"][:1], sample=[*ev["sample"], "sample.steps=2"]
        )
    seeds = study.seeds[:1] if smoke else study.seeds
    records = []
    todo = [v for v in study.variants if not only or v.name in only]
    for v in sorted(todo, key=lambda v: v.source is not None):  # trained variants first
        trained = next(t for t in study.variants if t.name == (v.source or v.name))
        if trained.checkpoint is not None:  # a given model: evaluated once, at the final point's seeds
            ck = given_checkpoint(trained.checkpoint)
            step = int(json.loads((ck / "state.json").read_text())["step"])
            size = tuple(v.size) if v.size is not None else None
            for es in _eval_seeds(ev, 1.0):
                rec = _evaluate(run_report, ck, out / trained.name, v, size, ev, es, out, 0, progress, cache)
                rec.update(
                    variant=v.name, seed=0, step=step, steps=step, flops=None, checkpoint=checkpoint_label(ck)
                )
                records.append(rec)
                _append(out / v.name / "results.jsonl", rec)
            continue
        for seed in seeds:
            cfg = study.config(trained, seed, smoke)
            steps, per_step = study.steps(trained, cfg, smoke)
            cfg.train.steps = steps
            # the evaluation points' checkpoints are never pruned (an inference variant reads them later)
            cfg.train.keep_steps = sorted({max(1, round(f * steps)) for f in ev["at"]})
            run_dir = study.run_dir(out, trained, seed, cfg, smoke)
            size = _eval_size(study, trained, v, cfg, smoke)
            for frac in ev["at"]:
                step = max(1, round(frac * steps))
                ck = run_dir / "checkpoints" / f"step_{step:07d}"
                # checkpoints are not committed: evaluations already made are read back, and a
                # model is (re)trained only for an evaluation still to make
                missing = [
                    es
                    for es in _eval_seeds(ev, frac)
                    if not _finished(ck, run_dir, v, size, ev, es, out, seed)
                ]
                if missing and v.source is None:
                    _train_until(Trainer, cfg, run_dir, step, progress)
                elif missing and not ck.is_dir():
                    raise ConfigError(
                        f"variant {v.name} evaluates {v.source}, which has no checkpoint {ck}; "
                        f"run it first (hpdm study run {path} --only {v.source})"
                    )
                for es in _eval_seeds(ev, frac):
                    rec = _evaluate(run_report, ck, run_dir, v, size, ev, es, out, seed, progress, cache)
                    rec.update(variant=v.name, seed=seed, step=step, steps=steps, flops=step * per_step)
                    records.append(rec)
                    _append(out / v.name / "results.jsonl", rec)
    return records


def _eval_size(study: Study, trained: Variant, v: Variant, cfg: Config, smoke: bool):
    """The size a variant is evaluated at: None (the training target) or its `size`; a smoke run
    scales it by the same ratio to the tiny model's target."""
    if v.size is None:
        return None
    if not smoke:
        return tuple(v.size)
    full = study.config(trained, 0).pyramid.target
    return tuple(max(1, round(t * s / f)) for t, s, f in zip(cfg.pyramid.target, v.size, full))


def _eval_seeds(ev: dict, frac: float) -> list[int]:
    """Sampling seeds at a point of the curve: all at the final one (error bars), else the first."""
    return list(ev["seeds"]) if frac == max(ev["at"]) else list(ev["seeds"][:1])


def _train_until(Trainer, cfg: Config, run_dir: Path, step: int, progress: bool) -> None:
    from hpdm.checkpoint import list_checkpoints

    done = [int(p.name.split("_")[-1]) for p in list_checkpoints(run_dir)]
    if done and max(done) >= step:
        return
    t0 = time.perf_counter()
    tr = Trainer(copy.deepcopy(cfg), out_dir=run_dir, resume="auto" if done else None, progress=progress)
    tr.train(until=step)
    _append(run_dir / "train_seconds.jsonl", {"until": step, "seconds": round(time.perf_counter() - t0, 1)})


def given_checkpoint(name: str) -> Path:
    """A `checkpoint` variant's model: `demo` (the shipped class-conditional model), a checkpoint
    folder or a run folder (its newest checkpoint)."""
    from hpdm.checkpoint import resolve_checkpoint
    from hpdm.demo import demo_checkpoint

    return resolve_checkpoint(demo_checkpoint() if name == "demo" else name)


def _evaluate(run_report, ck, index_dir, v, size, ev, eval_seed, out, seed, progress, cache) -> dict:
    """One `hpdm eval report` of checkpoint `ck` into the variant's folder; `index_dir` keeps the
    index of the evaluations of ck's run (see `_indexed_eval`); `cache`: the real I3D features' folder."""
    from hpdm.checkpoint import checkpoint_label

    dest = _eval_dest(ck, v, eval_seed, out, seed)
    over = [*ev["sample"], *v.sample]
    key = _eval_key(ck, index_dir, over, ev, eval_seed, size)
    reused = None
    if not (dest / "report.json").exists() and (same := _indexed_eval(index_dir, key)) is not None:
        # the same checkpoint sampled with the same resolved settings, e.g. another study's
        # variant or a variant whose override repeats the defaults: identical, so copied
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("report.json", "report.md"):
            if (same / name).exists():
                shutil.copyfile(same / name, dest / name)
        reused = checkpoint_label(same)  # relative to the working folder: the same in every clone
    if (dest / "report.json").exists():
        r = json.loads((dest / "report.json").read_text())
    else:
        r = run_report(
            ck,
            dest,
            num=ev["num"],
            batch_size=ev["batch_size"],
            seed=eval_seed,
            progress=progress,
            overrides=over,
            feature_cache=cache,
            size=size,
        )
    _index_eval(index_dir, key, dest)
    return {
        "eval_seed": eval_seed,
        "reused_from": reused,
        "fvd": [lv["fvd"] for lv in r["levels"]],
        "seam_score": [lv["seam_score"] for lv in r["levels"]],
        "class_accuracy": r["class_accuracy_fake"],
        "shape_accuracy": r["shape_accuracy_fake"],
        "generation_seconds": r["generation_seconds"],
        "objects_per_frame": r.get("objects_per_frame_fake"),
        "size": r.get("size"),
        "num": r["num_fake"],
        "machine": r.get("machine"),
    }


def _eval_dest(ck: Path, v: Variant, eval_seed: int, out: Path, seed: int) -> Path:
    """The folder of one evaluation: OUT/VARIANT/seed_N/eval_step_S_seed_E (S: the checkpoint's
    step, or its name's, `step_S`, where the checkpoint is not there)."""
    state = ck / "state.json"
    step = int(json.loads(state.read_text())["step"]) if state.is_file() else int(ck.name.split("_")[-1])
    return out / v.name / f"seed_{seed}" / f"eval_step_{step:07d}_seed_{eval_seed}"


def _finished(
    ck: Path, run_dir: Path, v: Variant, size, ev: dict, eval_seed: int, out: Path, seed: int
) -> bool:
    """Whether this evaluation exists already: its report, or the same one indexed in the run."""
    if (_eval_dest(ck, v, eval_seed, out, seed) / "report.json").exists():
        return True
    if not (ck / "config.yaml").is_file() and not (run_dir / "config.yaml").is_file():
        return False
    key = _eval_key(ck, run_dir, [*ev["sample"], *v.sample], ev, eval_seed, size)
    return _indexed_eval(run_dir, key) is not None


def _eval_key(ck: Path, run_dir: Path, overrides: list[str], ev: dict, eval_seed: int, size) -> str:
    """What an evaluation's result depends on: the checkpoint, the sampling settings as resolved
    (defaults filled in, so `sample.steps=32` and the preset's 32 are the same), the clips and seed.
    The settings come from the checkpoint's config, or the run's where the checkpoint is gone
    (the run writes both from one config)."""
    from hpdm.checkpoint import read_config

    sample = dataclasses.asdict(read_config(ck if ck.is_dir() else run_dir, overrides).sample)
    what = {
        "checkpoint": ck.name,
        "sample": sample,
        "num": ev["num"],
        "batch_size": ev["batch_size"],
        "seed": eval_seed,
        "size": list(size) if size is not None else None,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _indexed_eval(run_dir: Path, key: str) -> Path | None:
    """A finished evaluation of this run with the same key (`eval_index.json`, paths relative to
    the run, so the index holds in any clone)."""
    index = run_dir / "eval_index.json"
    if not index.exists():
        return None
    rel = json.loads(index.read_text()).get(key)
    found = (run_dir / rel).resolve() if rel else None
    return found if found is not None and (found / "report.json").exists() else None


def _index_eval(run_dir: Path, key: str, dest: Path) -> None:
    index = run_dir / "eval_index.json"
    with _locked(run_dir):  # studies sharing a run may run side by side: no entry is lost
        known = json.loads(index.read_text()) if index.exists() else {}
        if key not in known:
            known[key] = os.path.relpath(dest.resolve(), run_dir.resolve())
            tmp = index.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
            tmp.replace(index)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (POSIX `flock` on the folder itself, so nothing is
    written beside the results); where there is no `fcntl` (Windows), no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _append(path: Path, rec: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


# ---------------------------------------------------------------------------------------------
# the report


def report_study(out: str | Path) -> dict:
    """`results.json`, `results.md` and the plots of a study folder from its variants' records."""
    out = Path(out)
    files = sorted(out.glob("*/results.jsonl"))
    if not files:
        raise FileNotFoundError(f"{out}: no results yet; run `hpdm study run STUDY.yaml --out {out}` first")
    records = {}
    for f in files:  # a rerun evaluation appends the same record again: keep the last
        for line in f.read_text().splitlines():
            r = json.loads(line)
            records[(r["variant"], r["seed"], r["step"], r["eval_seed"])] = r
    rows = _summaries(list(records.values()))
    machines = sorted({str(r.get("machine")) for r in records.values()})
    result = {"study": out.name, "machines": machines, "rows": rows, "records": list(records.values())}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(_markdown(rows) + "\nMeasured on: " + "; ".join(machines) + "\n")
    from hpdm.plots import line_plot

    final = {}
    for r in rows:  # a given checkpoint (`checkpoint:`) has no training FLOPs here: not on the curve
        if r["flops"] is not None:
            final.setdefault(r["variant"], []).append((r["flops"], r["fvd_mean"][-1], r["fvd_std"][-1]))
    if final:
        line_plot(final, out / "fvd_vs_flops.png", "training FLOPs", "FVD, finest level")
    last = [r for r in rows if r["step"] == max(x["step"] for x in rows if x["variant"] == r["variant"])]
    per_level = {
        r["variant"]: [(lvl, m, s) for lvl, (m, s) in enumerate(zip(r["fvd_mean"], r["fvd_std"]))]
        for r in last
    }
    line_plot(per_level, out / "fvd_per_level.png", "level", "FVD")
    return result


def _summaries(records: list[dict]) -> list[dict]:
    """Mean and std over sampling and training seeds, per variant and step."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r["variant"], r["step"]), []).append(r)
    rows = []
    for (variant, step), rs in sorted(groups.items()):
        levels = len(rs[0]["fvd"])

        def stats(values):
            return [statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0]

        fvd = [stats([r["fvd"][lvl] for r in rs]) for lvl in range(levels)]
        rows.append(
            {
                "variant": variant,
                "step": step,
                "flops": rs[0]["flops"],
                "evaluations": len(rs),
                "training_seeds": len({r["seed"] for r in rs}),
                "fvd_mean": [m for m, _ in fvd],
                "fvd_std": [s for _, s in fvd],
                "class_accuracy": stats([r["class_accuracy"] for r in rs]),
                "shape_accuracy": stats([r["shape_accuracy"] for r in rs]),
                # None: a model without tiles (full resolution) has no seams to score
                "seam_score": stats(seams)
                if (seams := [r["seam_score"][-1] for r in rs if r["seam_score"][-1] is not None])
                else None,
                "generation_seconds": statistics.fmean(r["generation_seconds"] for r in rs),
                "seconds_per_clip": statistics.fmean(r["generation_seconds"] / r["num"] for r in rs),
                "objects_per_frame": stats([r["objects_per_frame"] for r in rs])
                if all(r.get("objects_per_frame") is not None for r in rs)
                else None,
                "size": rs[0].get("size"),
            }
        )
    return rows


def _markdown(rows: list[dict]) -> str:
    levels = max(len(r["fvd_mean"]) for r in rows)
    head = ["variant", "step", "training FLOPs", *[f"FVD level {lvl}" for lvl in range(levels)]]
    head += ["class acc.", "shape acc.", "seam", "objects / frame", "s / clip", "runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        # a model with fewer levels (full resolution: one) is aligned on the finest level
        fvd = ["—"] * (levels - len(r["fvd_mean"])) + [
            f"{m:.0f} ± {s:.0f}" for m, s in zip(r["fvd_mean"], r["fvd_std"])
        ]
        cells = [r["variant"], str(r["step"]), "—" if r["flops"] is None else f"{r['flops']:.3g}", *fvd]
        cells += [f"{100 * r['class_accuracy'][0]:.1f} %", f"{100 * r['shape_accuracy'][0]:.1f} %"]
        objects = r.get("objects_per_frame")
        seam = "—" if r["seam_score"] is None else f"{r['seam_score'][0]:.2f}"
        cells += [seam, f"{objects[0]:.2f} ± {objects[1]:.2f}" if objects else "—"]
        cells += [f"{r['seconds_per_clip']:.2f}", f"{r['evaluations']} ({r['training_seeds']} trained)"]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "\nMean ± std over sampling seeds and training seeds (`runs`: evaluations, and how many "
        "training seeds they come from). A model with fewer levels is aligned on the finest level; "
        "seam: the finest level's seam score; objects / frame: connected regions of the class "
        "colour (1 in real clips); s / clip: generation seconds per clip (machine below).\n"
    )
    return "\n".join(lines) + "\n" + note
