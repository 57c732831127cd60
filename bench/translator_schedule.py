"""Learning-rate schedule and mirrored copies for the demo translators, on every quality seed.

Each variant is the demo's translator settings before this study (BASE) with a few changed,
trained from scratch with the run's own seed on its cohorts' train subjects and checked by the
workflow's own edge-reliance check (arepas.diagnostics.edge_reliance) on its healthy val
subjects, so that a row's "base" numbers equal the run's translator_edge_reliance.tsv. One
training is about 7 minutes on one thread of the 2-core machine: this section is measured only
when asked for (`--only translator_schedule`).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from bench import quality, tables

# config/config.yaml's translators at commit 947e739, before this study.
BASE = {
    "brain_t1": {
        "base_channels": 16, "n_downsampling": 1, "n_blocks": 4, "disc_channels": 32,
        "lr": 0.001, "epochs": 12, "dropout": 0.0, "augment_clean": True, "augment_swaps": 5,
        "gan_step": "discriminator_first", "gp_every": 16,
    },
    "lung_ct": {
        "base_channels": 16, "n_blocks": 4, "disc_channels": 32, "lr": 0.001, "epochs": 16,
        "dropout": 0.0, "augment_clean": True, "augment_swaps": 5,
        "gan_step": "discriminator_first", "gp_every": 16,
    },
}
# name, datasets, changes to BASE, what it tests.
VARIANTS = [
    ("base", ("brain_t1", "lung_ct"), {}, "the demo settings before this study"),
    ("decay 6", ("brain_t1",), {"lr_decay_epochs": 6},
     "pix2pixHD's linear decay, over the last 6 of 12 epochs"),
    ("decay 12", ("brain_t1",), {"lr_decay_epochs": 12}, "linear decay over all 12 epochs"),
    ("lr 2e-3, decay 6", ("brain_t1",), {"lr": 0.002, "lr_decay_epochs": 6},
     "twice the step size first, then the decay"),
    ("lr 2e-3, decay 6, mirror", ("brain_t1",),
     {"lr": 0.002, "lr_decay_epochs": 6, "augment_mirror": True},
     "as above, half the augmented copies mirrored left-right"),
    ("lr 2e-3, decay 8", ("lung_ct",), {"lr": 0.002, "lr_decay_epochs": 8},
     "the same schedule on the lung cohort (decay over the last 8 of 16 epochs)"),
]
KEYS = ("l1_own_edges", "l1_other_edges", "l1_mean_image", "own_over_other",
        "own_over_mean_image")


def _paths(run_dir: Path, dataset: str, split: str) -> list[Path]:
    sheet = pd.read_csv(run_dir / "results" / "demo" / "subjects.tsv", sep="\t")
    rows = sheet[(sheet["dataset"] == dataset) & (sheet["split"] == split)]
    return [run_dir / "results" / dataset / "preprocessed" / s / "slices.npz"
            for s in rows["subject"]]


def train_and_check(run_dir: Path, dataset: str, values: dict, seed: int) -> dict:
    """Train one translator on a finished run's train subjects; its edge reliance on the val."""
    from arepas import diagnostics, translator

    settings = translator.TranslatorSettings.from_dict(values)
    check = diagnostics.load_check_slices(_paths(run_dir, dataset, "train"),
                                          _paths(run_dir, dataset, "val"))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as checkpoints:
        generator, history = translator.train_translator(
            check["train_slices"], check["val_slices"], settings, Path(checkpoints),
            seed=seed, progress=lambda _: None,
        )
    found = diagnostics.edge_reliance(generator, settings, **check)
    return {"steps": int(history["step"].iloc[-1]), "seconds": time.perf_counter() - started,
            **{key: float(found[key]) for key in KEYS}}


def measure(runs: list[tuple[Path, str]], progress=print) -> dict:
    torch.set_num_threads(1)
    rows = []
    for run_dir, label in runs:
        seed, _ = quality.run_seeds(run_dir)
        for name, datasets, changes, why in VARIANTS:
            for dataset in datasets:
                progress(f"translator_schedule: {label} {dataset} {name}")
                rows.append({
                    "run": label, "dir": str(run_dir), "seed": seed, "dataset": dataset,
                    "variant": name, "why": why, "changes": changes,
                    **train_and_check(run_dir, dataset, {**BASE[dataset], **changes}, seed),
                })
    return {"rows": rows}


def render(data: dict) -> str:
    text = (
        "The demo translators' learning-rate schedule and mirrored training copies, on the "
        "cohorts of every quality seed (section 1): each variant is trained from scratch with "
        "the run's seed on its 4 train subjects, on one thread, and checked by the workflow's "
        "own edge-reliance check on its 2 healthy val subjects (the numbers of section 1's "
        "\"Does the translator use its edges?\"; the base rows repeat the runs' own). Target: "
        "own ≤ 0.7 × other and, on the registered brain cohort, own ≤ 0.7 × mean image. "
        "*decay k*: the learning rate falls linearly over the last k epochs (pix2pixHD); "
        "*mirror*: each augmented copy mirrored left-right with probability 1/2.\n"
    )
    if data.get("origin"):
        text += f"\n{data['origin']}\n"
    frame = pd.DataFrame(data["rows"])
    table = []
    for (dataset, variant), group in frame.groupby(["dataset", "variant"], sort=False):
        by_run = ", ".join(f"{r['own_over_mean_image']:.3f}" if dataset == "brain_t1"
                           else f"{r['own_over_other']:.3f}" for _, r in group.iterrows())
        meets = sum(quality.meets_edge_target(r) for _, r in group.iterrows())
        table.append([
            dataset, variant, group["why"].iloc[0], str(len(group)),
            f"{group['l1_own_edges'].mean():.4f}", f"{group['own_over_other'].mean():.3f}",
            f"{group['own_over_mean_image'].mean():.3f}", by_run,
            f"{meets} of {len(group)}",
        ])
    header = ["dataset", "variant", "tests", "seeds", "L1 own edges", "own / other",
              "own / mean image", "per seed (brain: own / mean image; lung: own / other)",
              "seeds meeting the target"]
    return text + "\n" + tables.markdown_table(header, table, left=3) + "\n"
