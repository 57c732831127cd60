"""Which translator settings make the demo translators follow their edges: one knob at a time on
the seed-0 demo cohorts, each variant trained from scratch on the train subjects and checked on
the healthy val subjects (the edge-reliance check of issue "rebuild each scan's own anatomy").

Each variant trains for as long as the demo does (the same epochs, so variants with more training
pairs per slice take more steps), on one thread; about 15 to 30 minutes each on the 2-core
machine, which is why this section is not in the default `make bench` run's list of sections to
measure unless asked for (`--only translator_knobs`).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench import tables

# The demo's network sizes before this study (config/config.yaml at commit b6d7bf1).
DEMO_SIZES = {"base_channels": 16, "n_blocks": 4, "disc_channels": 32, "lr": 0.001}
EPOCHS = {"brain_t1": 12, "lung_ct": 16}
# name, datasets, settings beyond DEMO_SIZES and the dataset's epochs, what it tests.
VARIANTS = [
    ("reference", ("brain_t1",), {}, "the reference's augmentation and dropout"),
    ("lr 2e-4", ("brain_t1",), {"lr": 2e-4}, "the published learning rate"),
    (
        "no augmentation, 3x epochs",
        ("brain_t1",),
        {"augment_clean": True, "augment_copies": 0, "epochs_factor": 3},
        "clean edges only, as many steps",
    ),
    (
        "dropout 0, clean copy, 5 swaps",
        ("brain_t1", "lung_ct"),
        {"dropout": 0.0, "augment_clean": True, "augment_swaps": 5},
        "a milder augmentation and no dropout",
    ),
    (
        "as above, 32² crops, 4x epochs",
        ("brain_t1", "lung_ct"),
        {"dropout": 0.0, "augment_clean": True, "augment_swaps": 5, "crop_size": 32,
         "epochs_factor": 4},
        "local edges only (no outline to recognise), same time",
    ),
    (
        "as above, no crops, 1 downsampling",
        ("brain_t1",),
        {"dropout": 0.0, "augment_clean": True, "augment_swaps": 5, "n_downsampling": 1},
        "a 32x32 bottleneck that keeps edge positions",
    ),
]


def _subjects(run_dir: Path, dataset: str, split: str) -> list[dict]:
    sheet = pd.read_csv(run_dir / "results" / "demo" / "subjects.tsv", sep="\t")
    rows = sheet[(sheet["dataset"] == dataset) & (sheet["split"] == split)]
    out = []
    for subject in rows["subject"]:
        stack = np.load(run_dir / "results" / dataset / "preprocessed" / subject / "slices.npz")
        out.append({"slices": stack["slices"], "roi": stack["roi"].astype(bool),
                    "indices": stack["indices"]})
    return out


def reliance(generator, settings, train: list[dict], val: list[dict]) -> dict:
    """Mean ROI L1 on val slices of reconstructions from own edges, from the next val subject's
    edges at the same slice index, of the train subjects' mean image at that index, of the
    slice's ROI mean, and of the slice's own 1-pixel Gaussian blur (a floor for smooth output)."""
    from scipy import ndimage

    from arepas import translator

    by_index: dict[int, list] = {}
    for subject in train:
        for k, index in enumerate(subject["indices"]):
            by_index.setdefault(int(index), []).append(subject["slices"][k])
    means = {i: np.mean(v, axis=0) for i, v in by_index.items()}
    found: dict[str, list] = {k: [] for k in ("own", "other", "mean", "roimean", "blur1")}
    for j, subject in enumerate(val):
        partner = val[(j + 1) % len(val)]
        where = {int(i): k for k, i in enumerate(partner["indices"])}
        slices = subject["slices"]
        own = translator.translate(generator, translator.edges_for(settings, slices))
        for k, index in enumerate(subject["indices"]):
            roi = subject["roi"][k]
            if roi.sum() < 20:
                continue
            found["own"].append(np.abs(own[k] - slices[k])[roi].mean())
            found["roimean"].append(np.abs(slices[k][roi].mean() - slices[k])[roi].mean())
            found["blur1"].append(
                np.abs(ndimage.gaussian_filter(slices[k], 1) - slices[k])[roi].mean()
            )
            if int(index) in where:
                edges = translator.edges_for(settings, partner["slices"][where[int(index)]][None])
                other = translator.translate(generator, edges)[0]
                found["other"].append(np.abs(other - slices[k])[roi].mean())
            if int(index) in means:
                found["mean"].append(np.abs(means[int(index)] - slices[k])[roi].mean())
    result = {key: float(np.mean(values)) for key, values in found.items()}
    result["own_over_other"] = result["own"] / result["other"]
    result["own_over_mean"] = result["own"] / result["mean"]
    return result


def measure(run_dir: Path, seed: int = 0, only: list[str] | None = None) -> dict:
    from arepas import translator

    torch.set_num_threads(1)
    rows = []
    for name, datasets, extra, why in VARIANTS:
        if only and name not in only:
            continue
        for dataset in datasets:
            values = {**DEMO_SIZES, **extra}
            factor = values.pop("epochs_factor", 1)
            values["epochs"] = EPOCHS[dataset] * factor
            settings = translator.TranslatorSettings.from_dict(values)
            train = _subjects(run_dir, dataset, "train")
            val = _subjects(run_dir, dataset, "val")
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as checkpoints:
                generator, history = translator.train_translator(
                    np.concatenate([s["slices"] for s in train]),
                    np.concatenate([s["slices"] for s in val]),
                    settings,
                    Path(checkpoints),
                    seed=seed,
                    progress=lambda _: None,
                )
            rows.append({
                "variant": name,
                "dataset": dataset,
                "why": why,
                "settings": values,
                "steps": int(history["step"].iloc[-1]),
                "seconds": time.perf_counter() - started,
                **reliance(generator, settings, train, val),
            })
    return {"run_dir": str(run_dir), "seed": seed, "rows": rows}


def render(data: dict) -> str:
    text = (
        "The demo translators' settings, one change at a time, on the seed-"
        f"{data['seed']} demo cohorts (`{data['run_dir']}`): each variant trained on the 4 train "
        "subjects and checked on the 2 healthy val subjects inside the ROI. *own*, *other*: L1 "
        "of the reconstruction from the slice's own edges and from the other val subject's "
        "edges at the same slice index; *mean*: L1 of the train subjects' mean image at that "
        "index; *blur*: L1 of the slice's own 1-pixel Gaussian blur (what a slightly smooth "
        "perfect reconstruction would score). Target: own ≤ 0.7 × other and, on the registered "
        "brain cohort, own ≤ 0.7 × mean. Sizes not listed: 16 base channels, 4 residual blocks, "
        "32-channel discriminator, lr 0.001.\n"
    )
    if data.get("origin"):
        text += f"\n{data['origin']}\n"
    rows = [
        [
            r["dataset"], r["variant"], r["why"], f"{r['steps']:,}",
            f"{r['own']:.3f}", f"{r['other']:.3f}", f"{r['mean']:.3f}", f"{r['blur1']:.3f}",
            f"{r['own_over_other']:.2f}", f"{r['own_over_mean']:.2f}",
        ]
        for r in sorted(data["rows"], key=lambda r: r["dataset"])
    ]
    header = ["dataset", "variant", "tests", "steps", "own", "other", "mean", "blur",
              "own/other", "own/mean"]
    return text + "\n" + tables.markdown_table(header, rows, left=3) + "\n"
