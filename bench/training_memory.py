"""Peak memory and speed of each training rule against the number of training subjects.

Synthetic cohorts of 10, 40 and 160 subjects, each subject a slice stack of the demo's shape
(37 slices of 64², written as the preprocess rule writes them), are trained on for a few steps
as the training jobs do it (slices copied uncompressed to disk and read a batch at a time), each
measurement in a fresh process so that its peak RSS is its own. The patch scorer's rows are its
pair mining (arepas.mining, as the train_scorer job mines) followed by training steps on the
pairs. One further row trains the translator on 256² slices. The comparison with the code that
joined every subject's slices in memory is archived in docs/studies.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import machine, tables

REPO = Path(__file__).resolve().parents[1]
COHORTS = (10, 40, 160)
# The demo's slice stacks: 37 slices of 64² (results/lung_ct/preprocessed/*/slices.npz).
DEMO_SLICES, DEMO_SIZE = 37, 64
LARGE_SIZE = 256
# The demo config's lung_ct translator (config/config.yaml), and the other rules' defaults.
TRANSLATOR = {"base_channels": 16, "n_blocks": 4, "disc_channels": 32, "lr": 0.001,
              "dropout": 0.0, "augment_keep_unaugmented": True, "augment_swaps": 5}
# The demo config's scorer: its 6-px patches (config/config.yaml); the restart bar at 0 so that
# every measurement times the same kind of steps.
SCORER = {"patch_size": 6, "warmup_accuracy": 0.0}
RULES = ("translator", "autoencoder", "dae", "scorer")
# Training steps timed per measurement (after one untimed step), per rule.
STEPS = {"translator": 12, "autoencoder": 20, "dae": 20, "scorer": 20}
LARGE_STEPS = 4
# Optimiser steps per training step: the translator updates generator and discriminator.
OPTIMISER_STEPS = {"translator": 2, "autoencoder": 1, "dae": 1, "scorer": 1}
# Issue 17's target: peak RSS grows by less than this from the smallest to the largest cohort.
TARGET_GROWTH = 0.10
FIGURE = Path("docs") / "img" / "training_memory.png"


def write_cohort(folder: Path, subjects: int, size: int, seed: int = 0) -> list[Path]:
    """`subjects` preprocessed-style stacks (folder/<subject>/slices.npz) of random slices."""
    from arepas import io

    rng = np.random.default_rng([seed, subjects, size])
    paths = []
    for number in range(subjects):
        path = folder / f"synthetic{number:03d}" / "slices.npz"
        if not path.exists():
            slices = rng.uniform(-1, 1, (DEMO_SLICES, size, size)).astype(np.float32)
            io.save_arrays(path, slices=slices, roi=slices > -0.5,
                           lesion=np.zeros(slices.shape, dtype=bool),
                           indices=np.arange(DEMO_SLICES, dtype=np.int64))
        paths.append(path)
    return paths


class _Enough(Exception):
    """Raised from the optimiser once the timed steps are done."""


def _count_steps(rule: str, steps: int, times: list[float]) -> None:
    import torch

    optimiser = torch.optim.RMSprop if rule == "scorer" else torch.optim.Adam
    step, calls = optimiser.step, [0]

    def counted(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] % OPTIMISER_STEPS[rule] == 0:
            times.append(time.perf_counter())
            if len(times) > steps:
                raise _Enough
        return result

    optimiser.step = counted


def child(rule: str, paths: list[str], steps: int, work: str) -> dict:
    """One measurement, run in its own process: the rule's data handling as its job does it, then
    `steps` timed training steps."""
    import torch

    from arepas import devices

    torch.set_num_threads(1)
    devices.keep_freed_memory_for_reuse()  # as the training jobs do
    work_dir = Path(work)
    times: list[float] = []
    started = time.perf_counter()
    _count_steps(rule, steps, times)
    try:
        if rule == "scorer":
            _scorer(paths, work_dir)
        else:
            _train(rule, paths, [paths[0]], work_dir)
    except _Enough:
        pass
    timed = np.diff(times)
    return {"peak_mb": machine.peak_rss_mb(),  # VmHWM: ru_maxrss would carry the parent's
            "steps_per_s": float(len(timed) / timed.sum()) if len(timed) else None,
            "wall_s": time.perf_counter() - started, "slices": len(paths) * DEMO_SLICES}


def _train(rule: str, paths: list[str], val_paths: list[str], work: Path) -> None:
    from arepas import io, stacks

    cached = stacks.build_stack_cache(paths, work / "checkpoints" / io.STACK_CACHE)
    train, train_roi = cached.slices, cached.roi
    val, val_roi = io.concat_arrays(val_paths, "slices", "roi")
    folder = io.checkpoint_folder(work / "checkpoints", {"seed": 0}, train, val)
    quiet = {"progress": lambda _: None}
    if rule == "translator":
        from arepas import translator

        settings = translator.TranslatorSettings.from_dict({**TRANSLATOR, "num_threads": 1})
        translator.train_translator(train, val, settings, folder, seed=0, **quiet)
    elif rule == "autoencoder":
        from arepas import autoencoder

        autoencoder.train_autoencoder(train, val, autoencoder.AutoencoderSettings(), seed=0,
                                      checkpoint_dir=folder, **quiet)
    else:
        from arepas import dae

        dae.train_dae(train, train_roi, val, val_roi, dae.DaeSettings(), 0,
                      checkpoint_dir=folder, **quiet)


def _scorer(paths: list[str], work: Path) -> None:
    """train_scorer.py's steps: pairs mined from an untrained translator's reconstructions a
    chunk at a time on disk (arepas.mining), then training on them a batch at a time."""
    from arepas import mining, scorer, stacks, translator

    settings = scorer.ScorerSettings.from_dict(SCORER)
    translator_settings = translator.TranslatorSettings.from_dict(TRANSLATOR)
    generator = translator.build_generator(translator_settings).eval()
    cached = stacks.build_stack_cache(paths, work / "stacks")
    pairs, _ = mining.mine_translator_pairs(cached.slices, cached.roi, generator,
                                            translator_settings, settings, 0, work / "pairs")
    scorer.train_scorer(pairs["patches_a"], pairs["patches_b"], pairs["labels"], settings, 0,
                        progress=lambda _: None, checkpoint_dir=work / "scorer_checkpoint")


def _run_child(rule, paths, steps, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    request = json.dumps([rule, [str(p) for p in paths], steps, str(work)])
    done = subprocess.run([sys.executable, "-m", "bench.training_memory", request], check=True,
                          capture_output=True, text=True, cwd=REPO)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(scratch: Path | None = None) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        tmp = Path(tmp)
        cohort = write_cohort(tmp / "cohort", max(COHORTS), DEMO_SIZE)
        plan = [(rule, n, DEMO_SIZE, STEPS[rule]) for rule in RULES for n in COHORTS]
        plan.append(("translator", min(COHORTS), LARGE_SIZE, LARGE_STEPS))
        for number, (rule, n, size, steps) in enumerate(plan):
            paths = cohort[:n] if size == DEMO_SIZE else write_cohort(tmp / "large", n, size)
            print(f"bench: {rule} {n} subjects {size}²", flush=True)
            result = _run_child(rule, paths, steps, tmp / f"run{number}")
            rows.append({"rule": rule, "subjects": n, "size": size, "mode": "stream", **result})
    data = {"threads": 1, "rows": rows}
    draw_figure(data, REPO / FIGURE)
    return data


def _now(rows: list[dict]) -> list[dict]:
    """The rows of the code as it is (stored records before the archived comparison also hold
    the in-memory code's, mode "memory")."""
    return [r for r in rows if r.get("mode", "stream") == "stream"]


def draw_figure(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from arepas.io import atomic_path

    fig, axes = plt.subplots(1, len(RULES), figsize=(3.2 * len(RULES), 3.0))
    rows = _now(data["rows"])
    for ax, rule in zip(axes, RULES, strict=True):
        points = [(r["subjects"], r["peak_mb"]) for r in rows
                  if r["rule"] == rule and r["size"] == DEMO_SIZE]
        if points:
            ax.plot(*zip(*sorted(points), strict=True), "s-")
        ax.set_xscale("log")
        ax.set_xticks(COHORTS, [str(n) for n in COHORTS])
        ax.set_title(rule if rule != "scorer" else "scorer (mining + training)")
        ax.set_xlabel("training subjects")
        ax.set_ylim(bottom=0)
    axes[0].set_ylabel("peak RSS (MB)")
    fig.suptitle(f"Peak memory of training against cohort size ({DEMO_SIZE}²)")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
        tmp.chmod(0o644)
    plt.close(fig)


def _growth(rows: list[dict]) -> float | None:
    by_n = {r["subjects"]: r["peak_mb"] for r in rows}
    if min(COHORTS) not in by_n or max(COHORTS) not in by_n:
        return None
    return by_n[max(COHORTS)] / by_n[min(COHORTS)] - 1.0


def render(data: dict) -> str:
    rows = _now(data["rows"])
    lines = [
        f"Synthetic cohorts of {', '.join(str(n) for n in COHORTS)} subjects ({DEMO_SLICES} "
        f"slices of {DEMO_SIZE}² each, the demo's stack shape), {data['threads']} torch thread, "
        "no data-loader workers (as the demo's one-thread jobs), each measurement in a fresh "
        "process, the data handled as the training jobs handle it: slices copied uncompressed "
        "to disk and read a batch at a time; memory a step frees kept for the next, as the "
        "training jobs set glibc's malloc (`arepas.devices.keep_freed_memory_for_reuse`). "
        "Steps per second over a few training steps after the first (translator: generator "
        "and discriminator update). The scorer rows are its pair mining and then training "
        "steps on the pairs (batch 1,024, the demo's 6-px patches): the mined samples are "
        "reconstructed and cut into pairs a chunk of 256 slices at a time, and the pairs are "
        "written to disk and read a batch at a time. "
        f"Target: peak RSS grows by less than {TARGET_GROWTH:.0%} from {min(COHORTS)} to "
        f"{max(COHORTS)} subjects. The comparison with the code that held every slice in "
        "memory: docs/studies.md, \"Training memory: slices from disk against slices in "
        f"memory\". Figure: [{FIGURE.name}]({FIGURE.as_posix()}).\n",
    ]
    table = [
        [r["rule"], f"{r['size']}²", r["subjects"], tables.number(r["peak_mb"], "{:.0f}"),
         tables.number(r["steps_per_s"], "{:.2f}")]
        for rule in RULES
        for r in sorted((r for r in rows if r["rule"] == rule),
                        key=lambda r: (r["size"], r["subjects"]))
    ]
    lines.append(tables.markdown_table(["rule", "slices", "subjects", "peak RSS MB", "steps/s"],
                                       table))
    verdicts = []
    for rule in RULES:
        growth = _growth([r for r in rows if r["rule"] == rule and r["size"] == DEMO_SIZE])
        verdicts.append([rule, "n/a" if growth is None else f"{growth:+.1%}",
                         tables.verdict(growth, TARGET_GROWTH)])
    lines.append(f"Peak RSS growth from {min(COHORTS)} to {max(COHORTS)} subjects:\n")
    lines.append(tables.markdown_table(["rule", "growth", "verdict"], verdicts))
    lines.append(f"![Peak RSS against cohort size]({FIGURE.as_posix()})\n")
    return "\n".join(lines)


if __name__ == "__main__":
    rule, paths, steps, work = json.loads(sys.argv[1])
    print(json.dumps(child(rule, paths, steps, work)))
