"""Fine anatomy in the demo translators' reconstructions, against the weight of their L1 loss.

The reference weighs the translator's L1 term 100 times the adversarial term (pix2pix's
lambda 100; shared/method/AREPAS.md). A pixel loss that strong rewards the conditional
mean, which is smooth wherever the edges leave the exact place of a vessel or sulcus uncertain;
a smaller weight leaves more of the picture to the PatchGAN discriminator, which punishes
smoothness. Whether the detail it then draws is the slice's own or merely plausible is what the
edge-reliance check's fine-detail numbers tell apart (arepas.diagnostics: own edges against
another subject's edges and the training mean image). Each variant is the run's own translator
settings with `lambda_l1` changed, trained from scratch with the run's seed on its train
subjects (two trainings side by side, one thread each) and checked on its healthy val subjects;
the reference row is the run's own translator, checked again. About 7 minutes per training on
the 2-core machine: measured only when asked for (`--only translator_detail`).
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pandas as pd

from bench import quality, tables

DATASETS = ("brain_t1", "lung_ct")
# The demo's weight (the reference's), a third of it, a tenth of it.
LAMBDAS = (100.0, 30.0, 10.0)
L1 = ("l1_own_edges", "own_over_other", "own_over_mean_image")


def train_and_check(run_dir: Path, dataset: str, changes: dict) -> dict:
    """The run's translator settings with `changes`, trained from scratch with the run's seed
    on its train subjects, and the edge-reliance check on its val subjects. Where the changes
    leave the run's settings as they are, its stored translator is checked instead of training
    it again."""
    import torch

    from arepas import diagnostics, translator

    torch.set_num_threads(1)
    model = run_dir / "results" / dataset / "models" / "translator.pt"
    generator, settings, _ = translator.load_translator(model)
    check = quality.run_check_slices(run_dir, dataset)
    started = time.perf_counter()
    changed = translator.TranslatorSettings.from_dict({**settings.to_dict(), **changes})
    trained = changed != settings
    if trained:
        settings = changed
        seed, _ = quality.run_seeds(run_dir)
        with tempfile.TemporaryDirectory() as checkpoints:
            generator, _ = translator.train_translator(
                check["train_slices"], check["val_slices"], settings, Path(checkpoints),
                seed=seed, progress=lambda _: None,
            )
    found = diagnostics.edge_reliance(generator, settings, **check)
    return {"dataset": dataset, **changes, "trained": trained,
            "seconds": time.perf_counter() - started,
            **{key: float(found[key]) for key in (*L1, *quality.DETAIL_KEYS)}}


def _job(args: tuple[Path, str, dict]) -> dict:
    return train_and_check(*args)


def checked_rows(
    jobs: list[tuple[Path, str, dict]], labels: dict[str, str], workers: int, section: str,
    progress=print,
) -> list[dict]:
    """train_and_check of every (run directory, dataset, changes) job, `workers` at a time in
    spawned processes; each row with its run's label (`labels` by directory) and directory."""
    rows = []
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        for (run_dir, dataset, changes), row in zip(jobs, pool.map(_job, jobs), strict=True):
            label = labels[str(run_dir)]
            progress(f"{section}: {label} {dataset} {changes} done")
            rows.append({"run": label, "dir": str(run_dir), **row})
    return rows


def measure(runs: list[tuple[Path, str]], workers: int = 2, progress=print) -> dict:
    """Every weight of LAMBDAS on both datasets of the first run (one seed: a training takes
    minutes and there are several per row)."""
    run_dir, label = runs[0]
    jobs = [(run_dir, dataset, {"lambda_l1": value}) for dataset in DATASETS for value in LAMBDAS]
    rows = checked_rows(jobs, {str(run_dir): label}, workers, "translator_detail", progress)
    return {"rows": rows, "workers": workers}


def render(data: dict) -> str:
    frame = pd.DataFrame(data["rows"])
    if frame.empty:
        return "No run to study.\n"
    runs = ", ".join(sorted(frame["run"].unique()))
    text = (
        f"The demo translators with the L1 term weighted 100 (the demo's and the reference's), "
        f"30 and 10 against the adversarial term, on the cohorts of {runs}: each trained from "
        "scratch with the run's seed and settings, only `lambda_l1` changed (the 100 row is "
        "the run's own translator), and checked by the workflow's edge-reliance check on the "
        "healthy val subjects. *detail*: correlation of the slice's fine detail with the "
        "prediction's (section 1, \"Does the translator use its edges?\"); *ceiling*: the "
        "slice's own 1 px blur. Target of the L1 numbers: own / other ≤ 0.7 and, on the "
        "registered brain cohort, own / mean image ≤ 0.7. One seed; trainings of a row pair "
        f"ran side by side ({data.get('workers', 2)} at a time), so their seconds are not "
        "comparable with section 2's.\n\n"
    )
    rows = [
        [r["dataset"], f"{r['lambda_l1']:g}", f"{r['l1_own_edges']:.4f}",
         f"{r['own_over_other']:.3f}", f"{r['own_over_mean_image']:.3f}",
         f"{r['detail_own']:.3f}", f"{r['detail_other_edges']:.3f}",
         f"{r['detail_mean_image']:.3f}", f"{r['detail_blurred_input']:.3f}",
         f"{r['seconds'] / 60:.1f}" if r["trained"] else "stored"]
        for _, r in frame.iterrows()
    ]
    text += tables.markdown_table(
        ["dataset", "L1 weight", "L1 own edges", "own / other", "own / mean image",
         "detail own edges", "detail other edges", "detail mean image", "ceiling",
         "training min"],
        rows, left=2,
    )
    return text
