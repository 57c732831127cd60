"""Peak memory and speed of each training rule against the number of training subjects.

Synthetic cohorts of 10, 40 and 160 subjects, each subject a slice stack of the demo's shape
(37 slices of 64², written as the preprocess rule writes them), are trained on for a few steps,
each measurement in a fresh process so that its peak RSS is its own. Every rule is measured
twice in the same run: as its job runs now (slices copied uncompressed to disk and read a batch
at a time) and as it ran before (`BASELINE`, every subject's slices joined in memory, the
translator's augmented set built whole), the latter with that commit's `arepas` package
extracted by `git archive`. The patch scorer's rows are its pair mining (the translator
reconstructs the mined samples, patches are cut from them) followed by training steps on the
pairs. One further row trains the translator on 256² slices.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np

from bench import tables

REPO = Path(__file__).resolve().parents[1]
# The last commit before training read its slices from disk.
BASELINE = "dc75eae"
COHORTS = (10, 40, 160)
# The demo's slice stacks: 37 slices of 64² (results/lung_ct/preprocessed/*/slices.npz).
DEMO_SLICES, DEMO_SIZE = 37, 64
LARGE_SIZE = 256
# The demo config's lung_ct translator (config/config.yaml), and the other rules' defaults.
TRANSLATOR = {
    "base_channels": 16,
    "n_blocks": 4,
    "disc_channels": 32,
    "lr": 0.001,
    "dropout": 0.0,
    "augment_keep_unaugmented": True,
    "augment_swaps": 5,
}
# The demo config's scorer: its 6-px patches (config/config.yaml); the restart bar at 0 so that
# every measurement times the same kind of steps.
SCORER = {"patch_size": 6, "warmup_accuracy": 0.0}
RULES = ("translator", "autoencoder", "dae", "scorer")
# Training steps timed per measurement (after one untimed step), per rule.
STEPS = {"translator": 12, "autoencoder": 20, "dae": 20, "scorer": 20}
LARGE_STEPS = 4
# Optimiser steps per training step: the translator updates generator and discriminator.
OPTIMISER_STEPS = {"translator": 2, "autoencoder": 1, "dae": 1, "scorer": 1}
# Steps per second of the two versions differ by less than single short measurements scatter,
# so each rule is also timed in pairs (before, now), again and again, with longer timings.
SPEED_REPEATS = 5
SPEED_SUBJECTS = 40
SPEED_STEP_FACTOR = 3
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
            io.save_arrays(
                path,
                slices=slices,
                roi=slices > -0.5,
                lesion=np.zeros(slices.shape, dtype=bool),
                indices=np.arange(DEMO_SLICES, dtype=np.int64),
            )
        paths.append(path)
    return paths


class _Enough(Exception):
    """Raised from the optimiser once the timed steps are done."""


def _count_steps(rule: str, steps: int, times: list[float]) -> None:
    import torch

    optimiser = torch.optim.RMSprop if rule == "scorer" else torch.optim.Adam
    step = optimiser.step
    per_step = OPTIMISER_STEPS[rule]
    calls = [0]

    def counted(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] % per_step == 0:
            times.append(time.perf_counter())
            if len(times) > steps:
                raise _Enough
        return result

    optimiser.step = counted


def child(rule: str, mode: str, paths: list[str], steps: int, work: str) -> dict:
    """One measurement, run in its own process: the rule's data handling as its job does it
    ("stream" now, "memory" before), then `steps` timed training steps."""
    import torch

    from arepas import io

    torch.set_num_threads(1)
    if mode == "stream":
        # As the training jobs do now (the code before had no such call).
        from arepas import devices

        devices.keep_freed_memory_for_reuse()
    work_dir = Path(work)
    times: list[float] = []
    started = time.perf_counter()
    val = [paths[0]]
    _count_steps(rule, steps, times)
    try:
        if rule == "scorer":
            _scorer(paths, work_dir, mode)
        else:
            _train(rule, mode, paths, val, work_dir)
    except _Enough:
        pass
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    timed = np.diff(times)
    return {
        "peak_mb": peak_kib / 1024,
        "steps_per_s": float(len(timed) / timed.sum()) if len(timed) else None,
        "wall_s": time.perf_counter() - started,
        "slices": len(paths) * DEMO_SLICES,
        "io": io.__file__,
    }


def _train(rule: str, mode: str, paths: list[str], val_paths: list[str], work: Path) -> None:
    from arepas import io

    setup = {"seed": 0}
    if mode == "stream":
        from arepas import stacks

        cached = stacks.build_stack_cache(paths, work / "checkpoints" / io.STACK_CACHE)
        train, train_roi = cached.slices, cached.roi
    else:
        train, train_roi = io.concat_arrays(paths, "slices", "roi")
    val, val_roi = io.concat_arrays(val_paths, "slices", "roi")
    folder = io.checkpoint_folder(work / "checkpoints", setup, train, val)
    if rule == "translator":
        from arepas import translator

        settings = translator.TranslatorSettings.from_dict({**TRANSLATOR, "num_threads": 1})
        translator.train_translator(train, val, settings, folder, seed=0, progress=lambda _: None)
    elif rule == "autoencoder":
        from arepas import autoencoder

        settings = autoencoder.AutoencoderSettings()
        autoencoder.train_autoencoder(
            train, val, settings, seed=0, checkpoint_dir=folder, progress=lambda _: None
        )
    else:
        from arepas import dae

        settings = dae.DaeSettings()
        dae.train_dae(
            train, train_roi, val, val_roi, settings, 0, checkpoint_dir=folder,
            progress=lambda _: None,
        )


def _scorer(paths: list[str], work: Path, mode: str) -> None:
    # train_scorer.py: now the mined samples are reconstructed, and the pairs cut and trained on,
    # a chunk or batch at a time from disk; before, all slices were joined in memory, the
    # translator's whole augmented set was built and the mined pairs were held in memory.
    from arepas import io, scorer, translator

    settings = scorer.ScorerSettings.from_dict(SCORER)
    model_path = work / "translator.pt"
    translator_settings = translator.TranslatorSettings.from_dict(TRANSLATOR)
    translator.save_translator(
        model_path, translator.build_generator(translator_settings), translator_settings, {}
    )
    generator, translator_settings, _ = translator.load_translator(model_path)
    rng = np.random.default_rng(0)
    if mode == "stream":
        from arepas import stacks

        real = stacks.build_stack_cache(paths, work / "stacks").slices
        picked, slice_of = scorer.mining_plan(
            len(real), settings, len(real) * translator.pairs_per_slice(translator_settings)
        )
        make_inputs = scorer.mining_samples(
            real,
            settings,
            augmented=lambda numbers: translator.training_pair_batch(
                real, numbers, translator_settings, 0
            ),
            clean=lambda slices: translator.edges_for(translator_settings, slices),
        )
        targets, recon, _ = scorer.reconstruct_for_mining(
            picked, slice_of, make_inputs,
            lambda inputs: translator.translate(generator, inputs), work / "mining",
        )
        pairs = scorer.mine_hard_pairs(targets, recon, settings, rng, folder=work / "pairs")
        scorer.keep_mined_pairs(work / "pairs", pairs)
        checkpoint = work / "scorer_checkpoint"
    else:
        real, _ = io.concat_arrays(paths, "slices", "roi")
        edges, targets, _ = scorer.mining_inputs(
            real,
            settings,
            augmented=lambda: translator.training_pairs(real, translator_settings, 0),
            clean=lambda slices: translator.edges_for(translator_settings, slices),
        )
        recon = translator.translate(generator, edges)
        pairs = scorer.mine_hard_pairs(targets, recon, settings, rng)
        checkpoint = None
    kwargs = {"checkpoint_dir": checkpoint} if checkpoint is not None else {}
    scorer.train_scorer(
        pairs["patches_a"], pairs["patches_b"], pairs["labels"], settings, 0,
        progress=lambda _: None, **kwargs,
    )


def _baseline_package(folder: Path) -> Path:
    """BASELINE's `arepas` package, extracted under folder (no worktree, no checkout)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", BASELINE, "arepas"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def _run_child(rule, mode, paths, steps, pythonpath: Path, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    request = json.dumps([rule, mode, [str(p) for p in paths], steps, str(work)])
    env = {**os.environ, "PYTHONPATH": f"{pythonpath}{os.pathsep}{REPO}"}
    done = subprocess.run(
        [sys.executable, "-m", "bench.training_memory", request],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        # `python -m` puts the working folder first on sys.path: it decides which `arepas`
        # the child imports.
        cwd=pythonpath,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(threads: int = 1, scratch: Path | None = None) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        tmp = Path(tmp)
        packages = {"stream": REPO, "memory": _baseline_package(tmp / "baseline")}
        cohort = write_cohort(tmp / "cohort", max(COHORTS), DEMO_SIZE)
        plan = [(rule, n, DEMO_SIZE, STEPS[rule]) for rule in RULES for n in COHORTS]
        plan.append(("translator", min(COHORTS), LARGE_SIZE, LARGE_STEPS))
        for number, (rule, n, size, steps) in enumerate(plan):
            paths = cohort[:n] if size == DEMO_SIZE else write_cohort(tmp / "large", n, size)
            for mode in ("memory", "stream"):
                work = tmp / f"run{number}_{mode}"
                print(f"bench: {rule} {n} subjects {size}² {mode}", flush=True)
                result = _run_child(rule, mode, paths, steps, packages[mode], work)
                rows.append({"rule": rule, "subjects": n, "size": size, "mode": mode, **result})
        speed_rows = measure_speed(tmp, cohort[:SPEED_SUBJECTS], packages, SPEED_REPEATS)
    data = {"baseline": BASELINE, "threads": 1, "rows": rows, "speed_rows": speed_rows}
    draw_figure(data, REPO / FIGURE)
    return data


def measure_speed(tmp: Path, paths: list[Path], packages: dict, repeats: int) -> list[dict]:
    """Steps per second of every rule, before and now, timed `repeats` times in pairs on one
    cohort, with SPEED_STEP_FACTOR times the steps of the memory rows."""
    rows = []
    for rule in RULES:
        steps = STEPS[rule] * SPEED_STEP_FACTOR
        for repeat in range(repeats):
            # Which version runs first alternates, so a drift of the machine's speed within a
            # pair favours neither.
            order = ("memory", "stream") if repeat % 2 == 0 else ("stream", "memory")
            for mode in order:
                work = tmp / f"speed_{rule}_{repeat}_{mode}"
                print(f"bench: speed {rule} repeat {repeat + 1}/{repeats} {mode}", flush=True)
                result = _run_child(rule, mode, paths, steps, packages[mode], work)
                rows.append({"rule": rule, "repeat": repeat, "mode": mode,
                             "subjects": len(paths), "steps": steps,
                             "steps_per_s": result["steps_per_s"]})
    return rows


def speed_verdicts(speed_rows: list[dict]) -> dict[str, dict]:
    """Per rule: median steps/s before and now, the per-pair ratios now/before and a verdict:
    pass when the median ratio is at least 1, FAIL when every pair was slower now (a one-sided
    sign test, p = 0.5^pairs), otherwise "inconclusive" (slower in some pairs only)."""
    found = {}
    for rule in RULES:
        pairs: dict[int, dict[str, float]] = {}
        for r in speed_rows:
            if r["rule"] == rule and r["steps_per_s"]:
                pairs.setdefault(r["repeat"], {})[r["mode"]] = r["steps_per_s"]
        complete = [p for p in pairs.values() if {"memory", "stream"} <= set(p)]
        if not complete:
            continue
        ratios = np.array([p["stream"] / p["memory"] for p in complete])
        median = float(np.median(ratios))
        if median >= 1.0:
            verdict = "pass"
        elif (ratios < 1.0).all():
            verdict = (
                f"FAIL (slower in {len(ratios)} of {len(ratios)} pairs, "
                f"p = {0.5 ** len(ratios):.2f})"
            )
        else:
            slower = int((ratios < 1.0).sum())
            verdict = f"inconclusive (slower in {slower} of {len(ratios)} pairs)"
        found[rule] = {
            "before": float(np.median([p["memory"] for p in complete])),
            "now": float(np.median([p["stream"] for p in complete])),
            "ratio": median,
            "low": float(ratios.min()),
            "high": float(ratios.max()),
            "pairs": len(ratios),
            "verdict": verdict,
        }
    return found


def draw_figure(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from arepas.io import atomic_path

    fig, axes = plt.subplots(1, len(RULES), figsize=(3.2 * len(RULES), 3.0), sharey=False)
    for ax, rule in zip(axes, RULES, strict=True):
        for mode, style, label in (("memory", "o--", "before"), ("stream", "s-", "now")):
            points = [
                (r["subjects"], r["peak_mb"])
                for r in data["rows"]
                if r["rule"] == rule and r["mode"] == mode and r["size"] == DEMO_SIZE
            ]
            if points:
                x, y = zip(*sorted(points), strict=True)
                ax.plot(x, y, style, label=label)
        ax.set_xscale("log")
        ax.set_xticks(COHORTS, [str(n) for n in COHORTS])
        ax.set_title(rule if rule != "scorer" else "scorer (mining + training)")
        ax.set_xlabel("training subjects")
        ax.set_ylim(bottom=0)
    axes[0].set_ylabel("peak RSS (MB)")
    axes[0].legend()
    fig.suptitle(f"Peak memory of training against cohort size (64², before: {data['baseline']})")
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
    rows = data["rows"]
    repeated = speed_verdicts(data.get("speed_rows", []))
    lines = [
        f"Synthetic cohorts of {', '.join(str(n) for n in COHORTS)} subjects ({DEMO_SLICES} "
        f"slices of {DEMO_SIZE}² each, the demo's stack shape), {data['threads']} torch thread, "
        "no data-loader workers (as the demo's one-thread jobs), each measurement in a fresh "
        "process. *now*: this code (slices copied uncompressed to disk, read a batch at a "
        "time; memory a step frees kept for the next, as the training jobs set glibc's malloc, "
        "`arepas.devices.keep_freed_memory_for_reuse`); "
        f"*before*: commit {data['baseline']} (all slices joined in memory, the "
        "translator's augmented set built whole). Steps per second over a few training steps "
        "after the first (translator: generator and discriminator update). The scorer rows are its "
        "pair mining and then training steps on the pairs (batch 1,024, the demo's 6-px "
        "patches): now the mined samples are reconstructed and cut into pairs a chunk of 256 "
        "slices at a time, and the pairs are written to disk and read a batch at a time; "
        "before, the translator's whole augmented set, its reconstructions and the pairs were "
        "in memory. "
        f"Target: peak RSS grows by less than {TARGET_GROWTH:.0%} from {min(COHORTS)} to "
        f"{max(COHORTS)} subjects, and steps per second at {DEMO_SIZE}² are not lower than "
        f"before. Figure: [{FIGURE.name}]({FIGURE.as_posix()}).\n",
    ]
    table = []
    for rule in RULES:
        for size in sorted({r["size"] for r in rows if r["rule"] == rule}):
            subset = [r for r in rows if r["rule"] == rule and r["size"] == size]
            for n in sorted({r["subjects"] for r in subset}):
                pair = {r["mode"]: r for r in subset if r["subjects"] == n}
                before, now = pair.get("memory"), pair.get("stream")
                table.append(
                    [
                        rule,
                        f"{size}²",
                        n,
                        tables.number(before and before["peak_mb"], "{:.0f}"),
                        tables.number(now and now["peak_mb"], "{:.0f}"),
                        tables.number(before and before["steps_per_s"], "{:.2f}"),
                        tables.number(now and now["steps_per_s"], "{:.2f}"),
                    ]
                )
    lines.append(
        tables.markdown_table(
            [
                "rule",
                "slices",
                "subjects",
                "peak RSS MB before",
                "peak RSS MB now",
                "steps/s before",
                "steps/s now",
            ],
            table,
        )
    )
    verdicts = []
    for rule in RULES:
        demo = [r for r in rows if r["rule"] == rule and r["size"] == DEMO_SIZE]
        growth = {
            mode: _growth([r for r in demo if r["mode"] == mode]) for mode in ("memory", "stream")
        }
        speeds = {
            mode: [r["steps_per_s"] for r in demo if r["mode"] == mode and r["steps_per_s"]]
            for mode in ("memory", "stream")
        }
        ratio = (
            float(np.mean(speeds["stream"]) / np.mean(speeds["memory"]))
            if speeds["stream"] and speeds["memory"]
            else None
        )
        if rule in repeated:
            ratio = repeated[rule]["ratio"]
            speed_verdict = repeated[rule]["verdict"].split(" (")[0]
        else:
            speed_verdict = (
                tables.verdict(ratio, 1.0, at_most=False) if ratio is not None else "n/a"
            )
        verdicts.append(
            [
                rule,
                "n/a" if growth["memory"] is None else f"{growth['memory']:+.1%}",
                "n/a" if growth["stream"] is None else f"{growth['stream']:+.1%}",
                tables.verdict(growth["stream"], TARGET_GROWTH),
                "n/a" if ratio is None else f"{ratio:.2f}",
                speed_verdict,
            ]
        )
    if repeated:
        first = data["speed_rows"][0]
        lines.append(
            f"Steps per second timed again in pairs (before, now; which runs first alternates), "
            f"{max(v['pairs'] for v in repeated.values())} pairs per rule on the "
            f"{first['subjects']}-subject cohort, {first['steps'] // STEPS[first['rule']]}x "
            "the steps above. Verdict: pass when the median of the pairs' ratios now/before is "
            "at least 1; FAIL when now was slower in every pair (one-sided sign test); "
            "otherwise inconclusive:\n"
        )
        lines.append(
            tables.markdown_table(
                ["rule", "steps/s before (median)", "steps/s now (median)",
                 "now/before, median of pairs", "range", "verdict"],
                [
                    [rule, f"{v['before']:.2f}", f"{v['now']:.2f}", f"{v['ratio']:.2f}",
                     f"{v['low']:.2f}–{v['high']:.2f}", v["verdict"]]
                    for rule, v in repeated.items()
                ],
            )
        )
    basis = "median of the timed pairs" if repeated else f"mean over the {DEMO_SIZE}² cohorts"
    lines.append(
        f"Peak RSS growth from {min(COHORTS)} to {max(COHORTS)} subjects, and steps per second "
        f"now over before ({basis}):\n"
    )
    lines.append(
        tables.markdown_table(
            ["rule", "growth before", "growth now", "verdict", "speed now/before", "verdict"],
            verdicts,
        )
    )
    lines.append(f"![Peak RSS against cohort size]({FIGURE.as_posix()})\n")
    return "\n".join(lines)


if __name__ == "__main__":
    rule, mode, paths, steps, work = json.loads(sys.argv[1])
    print(json.dumps(child(rule, mode, paths, steps, work)))
