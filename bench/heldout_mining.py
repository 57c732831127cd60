"""A patch scorer mined from healthy subjects the translator never trained on.

The reference mines its hard pairs from the translator's own training slices. There the
translator has seen every slice (and, in the augmented set, every copy's edges), so the errors
the scorer learns to call normal are those of memorised anatomy, smaller and more regular than
on a new scan. This study mines them instead from the healthy `val` subjects' stored
reconstructions (every slice, since there are fewer of them), trains the scorer on those pairs
with the run's own scorer settings and seed, and uses it where the reference scorer was:
`arepas_heldout` = its patch map / the slice maximum × the translator residual.

The label-free threshold is taken on the val subjects' maps, so those must not come from a
scorer trained on them: each val subject's map comes from a scorer mined from the other val
subjects only (cross-fitting over the val subjects); the test subjects' maps come from the scorer
mined from all of them. Nothing about the translator changes, so the residual, the DAE and the
reference `arepas` are the run's own and are computed as in section 13.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from arepas import io, metrics
from arepas.maps import normalise_patch_map, raw_patch_map
from bench import ablation, quality, tables, variants

VARIANT = "arepas_heldout"
OTHERS = ("residual", "dae", "arepas")


def run_seed(run_dir: Path) -> int:
    """The training seed of a run made by the bench (its seed file), else its config's."""
    for path in (run_dir / quality.SEED_CONFIG, run_dir / "config" / "config.yaml"):
        if path.exists():
            config = yaml.safe_load(path.read_text()) or {}
            if "seed" in config:
                return int(config["seed"])
    return 0


def scorer_from_reconstructions(recs: list[dict], settings, seed: int) -> tuple[object, dict]:
    """A scorer trained on hard pairs mined from the given subjects' stored reconstructions
    (every slice), with `settings` and `seed`; and what its training did."""
    from arepas import scorer

    real = np.concatenate([r["slices"] for r in recs]).astype(np.float32)
    recon = np.concatenate([r["recon"] for r in recs]).astype(np.float32)
    roi = np.concatenate([r["roi"] for r in recs]).astype(bool)
    started = time.perf_counter()
    pairs = scorer.mine_hard_pairs(
        real, recon, settings, np.random.default_rng(seed),
        roi=roi if settings.mining_region == "roi" else None,
    )
    model, info = train_on_pairs(pairs, settings, seed)
    return model, {"slices": len(real), **info, "seconds": time.perf_counter() - started}


def train_on_pairs(pairs: dict, settings, seed: int) -> tuple[object, dict]:
    """The scorer trained on mined pairs as the workflow trains it (a stalled one kept, with its
    message), in eval mode; and its pair count, tries, best held-out accuracy and stall."""
    from arepas import scorer

    stalled = ""
    try:
        model, history = scorer.train_scorer(
            pairs["patches_a"], pairs["patches_b"], pairs["labels"], settings, seed=seed,
            progress=lambda _: None,
        )
    except scorer.StalledScorerError as stall:
        if stall.model is None:
            raise
        model, history, stalled = stall.model, stall.history, str(stall)
    model.eval()
    return model, {
        "pairs": len(pairs["labels"]),
        "tries": int(history["try"].max()) + 1 if "try" in history else 1,
        "heldout_acc": float(history["heldout_acc"].max()),
        "stalled": stalled,
    }


def dataset_rows(run_dir: Path, dataset: str) -> dict:
    from arepas.scorer import load_scorer

    torch.set_num_threads(1)
    options, evaluation = ablation.map_options(run_dir)
    val, test = variants.val_and_test(run_dir, dataset)
    results = run_dir / "results" / dataset
    reference, settings, _ = load_scorer(results / "models" / "scorer.pt")
    # Every slice of the few held-out subjects, not every third of the training set's samples.
    settings = dataclasses.replace(settings, slice_step=1)
    seed = run_seed(run_dir)
    recs = {s: io.load_arrays(results / "reconstruction" / f"{s}.npz") for s in val}
    models, training = {}, {}
    models["all"], training["all"] = scorer_from_reconstructions(
        [recs[s] for s in val], settings, seed
    )
    for held in val:
        models[held], training[held] = scorer_from_reconstructions(
            [recs[s] for s in val if s != held], settings, seed
        )
    volumes, rois, lesions = {}, {}, {}
    for subject in val + test:
        s = variants.subject_slices(run_dir, dataset, subject, reference, options)
        model = models[subject] if subject in val else models["all"]
        own = raw_patch_map(model, s["real"], s["recon"], s["roi"], options)
        maps = {
            "residual": s["residual"],
            "dae": s["dae"],
            "arepas": normalise_patch_map(s["raw_patch"], s["roi"], "reference") * s["residual"],
            VARIANT: normalise_patch_map(own, s["roi"], "reference") * s["residual"],
        }
        volumes[subject] = variants.assemble_maps(variants.with_postprocessed(maps, s["roi"]), s)
        variants.load_masks(results, subject, subject in test, rois, lesions)
    rows = variants.evaluate_volumes(run_dir, dataset, volumes, rois, lesions, val, test,
                                     evaluation)
    return {"rows": rows, "training": training, "val": val, "test": test}


def changes_against(frame: pd.DataFrame, variant: str, others: tuple[str, ...]) -> list[dict]:
    """Per run and dataset, paired bootstrap changes of `variant` against `arepas` (raw and
    post-processed alike) and of `variant+pp` against the run's best method among `others`
    (raw or post-processed) where that is not already `arepas+pp`."""
    changes = []
    for (run, dataset), group in frame.groupby(["run", "dataset"], sort=False):
        indexed = group.set_index("method")
        candidates = [m for m in indexed.index if m.split("+")[0] in others]
        best_other = indexed.loc[candidates, "best_dice"].idxmax()
        compared = [(variant, "arepas"), (f"{variant}+pp", "arepas+pp")]
        if best_other != "arepas+pp":
            compared.append((f"{variant}+pp", best_other))
        for own, against in compared:
            change = metrics.paired_bootstrap_change(indexed.loc[own, "histograms"],
                                                     indexed.loc[against, "histograms"])
            changes.append({"run": run, "dataset": dataset, "method": own, "other": against,
                            "best_other": against == best_other,
                            **{k: float(v) for k, v in change.items()}})
    return changes


def per_dataset(run_dirs: list[Path], job, label: str, workers: int, progress=print):
    """The (run, dataset) pairs that have a trained scorer, and job((run, dataset)) of each, run
    in `workers` spawned processes (job must be a module-level function)."""
    jobs = [(run_dir, dataset) for run_dir in run_dirs for dataset in ("brain_t1", "lung_ct")
            if (run_dir / "results" / dataset / "models" / "scorer.pt").exists()]
    found = []
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        for (run_dir, dataset), result in zip(jobs, pool.map(job, jobs), strict=True):
            progress(f"{label}: {run_dir.name} {dataset} done")
            found.append(result)
    return jobs, found


def _job(args: tuple[Path, str]) -> dict:
    return dataset_rows(*args)


def measure(run_dirs: list[Path], workers: int = 2, progress=print) -> dict:
    started = time.perf_counter()
    jobs, found = per_dataset(run_dirs, _job, "heldout_mining", workers, progress)
    rows = [row for result in found for row in result["rows"]]
    changes = changes_against(pd.DataFrame(rows), VARIANT, OTHERS)
    training = [
        {"run": str(run_dir), "dataset": dataset, "scorer": name, **info}
        for (run_dir, dataset), result in zip(jobs, found, strict=True)
        for name, info in result["training"].items()
    ]
    return {
        "rows": [{k: v for k, v in r.items() if k != "histograms"} for r in rows],
        "changes": changes,
        "training": training,
        "seconds": time.perf_counter() - started,
        "workers": workers,
    }


def change_table(changes: list[dict], variant: str, alone: str) -> str:
    """The per-run comparisons of changes_against as a table, and the mean change of the raw
    variant against raw `arepas` over runs, introduced as `alone` (what it isolates)."""
    # One row per comparison (the best other method may be the reference's own map).
    unique = {(c["run"], c["dataset"], c["method"], c["other"]): c for c in changes}
    change_rows = [
        [Path(c["run"]).name, c["dataset"], c["method"],
         c["other"] + (" (best other)" if c["best_other"] else ""),
         f"{c['own_dice']:.3f} vs {c['other_dice']:.3f}", f"{100 * c['relative_change']:+.1f}%",
         f"{100 * c['ci_low']:+.1f}% to {100 * c['ci_high']:+.1f}%"]
        for c in unique.values()
    ]
    text = tables.markdown_table(
        ["run", "dataset", "method", "against", "best Dice", "change", "95 % interval"],
        change_rows, left=4,
    )
    raw = pd.DataFrame([c for c in unique.values()
                        if c["method"] == variant and c["other"] == "arepas"])
    if not raw.empty:
        parts = []
        for dataset, group in raw.groupby("dataset"):
            above = int((group["ci_low"] > 0).sum())
            below = int((group["ci_high"] < 0).sum())
            change = tables.mean_and_sd(group["relative_change"])
            parts.append(
                f"{dataset} {tables.mean_sd(*change, percent=True)} (interval above 0 in "
                f"{above}, below 0 in {below} of {len(group)} runs)"
            )
        text += (f"\n{alone} (raw `{variant}` against raw `arepas`), mean ± sd of the relative "
                 "best-Dice change over runs: " + "; ".join(parts) + ".\n")
    return text


def render(data: dict) -> str:
    frame = pd.DataFrame(data["rows"])
    if frame.empty:
        return "No finished run to study.\n"
    runs = frame["run"].nunique()
    text = (
        f"On {runs} finished quality run(s) (their seeds' demo cohorts and trained translators; "
        "no translator is retrained): the reference `arepas` mines its scorer's hard pairs from "
        "the translator's own augmented training slices; `arepas_heldout` mines them from the "
        "stored reconstructions of the healthy val subjects, which the translator never saw, "
        "with the run's scorer settings and seed (every slice mined: slice_step 1), and is "
        "otherwise the reference map (patch map / slice maximum × residual). The val subjects' "
        "own maps, which set the label-free threshold, come from scorers mined from the other "
        "val subject(s) only (cross-fitting); the test maps from the scorer mined from all val "
        "subjects. `+pp`: 5 × 5 median per slice. Working grid, pooled Dice, lesion voxels "
        "outside the ROI counted as misses. Mean ± sd over runs.\n\n"
    )
    text += variants.method_table(frame) + "\n"
    text += (
        "\nPer run, paired bootstrap over test subjects (95 % interval): the mining source alone "
        "(`arepas_heldout` against `arepas`, raw and post-processed), and the post-processed "
        "variant against the run's best other method (residual, DAE or reference `arepas`, raw "
        "or post-processed):\n\n"
    )
    text += change_table(data["changes"], VARIANT, "The mining source alone")
    training = pd.DataFrame(data["training"])
    stalled = int((training["stalled"] != "").sum())
    everyone = training["scorer"] == "all"

    def spread(values, digits=3):
        return tables.mean_sd(*tables.mean_and_sd(values), digits=digits)

    text += (
        f"\nScorers trained: {len(training)} ({stalled} stalled, kept flagged); hard pairs per "
        f"scorer mined from all val subjects: {spread(training.loc[everyone, 'pairs'], 0)}, "
        f"from one subject fewer: {spread(training.loc[~everyone, 'pairs'], 0)}; best "
        f"held-out pair accuracy {spread(training['heldout_acc'])}; "
        f"{data['seconds'] / 60:.1f} min for the whole study with {data['workers']} worker "
        "processes.\n"
    )
    return text
