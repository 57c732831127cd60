"""Patch scoring variants beyond the paper, on the trained models of finished runs (no training):
how the Siamese patch dissimilarity is scaled and combined with a residual.

The reference scales each slice's patch map by its maximum, so every slice's most dissimilar
patch weighs 1, lesion or not. The variants ask instead how unusual a patch score is for healthy
tissue: the healthy `val` subjects' patch scores (inside the ROI) give an empirical distribution,
and a score becomes its quantile in it (`calibrated`). The residual can be calibrated the same
way against the val residuals at the same input intensity (bright and dark tissue have different
normal errors). And the patch dissimilarity can weigh another reconstruction's residual (the
denoising autoencoder's), since it says where the translator's errors are abnormal, which is also
where anything that rebuilds a healthy slice should be doubted.

Every variant and baseline is evaluated raw and after the workflow's post-processing (5 × 5
median per slice) with the workflow's evaluation code, on the working grid; the variant with the
highest mean best Dice over runs and datasets is compared with the best other method of each run
by a paired bootstrap over test subjects.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from arepas import io, metrics
from arepas.maps import (
    calibrated_patch_map,
    healthy_patch_scores,
    normalise_patch_map,
    raw_patch_map,
    reference_scores_for,
)
from arepas.postprocess import median_per_slice
from arepas.preprocessing import SliceGeometry, assemble_volume
from bench import ablation, tables

MEDIAN = 5
BASELINES = ("residual", "dae")
VARIANTS = ("arepas", "arepas_volume", "arepas_calibrated", "arepas_calibrated_both",
            "arepas_dae")
INTENSITY_BINS = 32


def intensity_scale(real: np.ndarray, residual: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """Mean healthy residual per input-intensity bin (intensities in [-1, 1]); empty bins get the
    overall mean."""
    bins = np.clip(((real[roi] + 1.0) / 2.0 * INTENSITY_BINS).astype(int), 0, INTENSITY_BINS - 1)
    total = np.bincount(bins, weights=residual[roi], minlength=INTENSITY_BINS)
    count = np.bincount(bins, minlength=INTENSITY_BINS)
    overall = float(residual[roi].mean()) if roi.any() else 1.0
    scale = np.where(count > 0, total / np.maximum(count, 1), overall)
    return np.maximum(scale, 1e-3 * max(overall, 1e-6)).astype(np.float32)


def _by_intensity(real: np.ndarray, scale: np.ndarray) -> np.ndarray:
    bins = np.clip(((real + 1.0) / 2.0 * INTENSITY_BINS).astype(int), 0, INTENSITY_BINS - 1)
    return scale[bins]


def subject_slices(run_dir: Path, dataset: str, subject: str, model, options: dict) -> dict:
    """Network slices of one subject: input, ROI, translator and DAE residuals, raw patch map."""
    results = run_dir / "results" / dataset
    rec = io.load_arrays(results / "reconstruction" / f"{subject}.npz")
    stored = io.load_arrays(results / "maps" / f"{subject}_slices.npz")
    roi = rec["roi"].astype(bool)
    real = rec["slices"].astype(np.float32)
    residual = np.where(roi, np.abs(rec["recon"] - real), 0.0).astype(np.float32)
    return {
        "real": real,
        "roi": roi,
        "residual": residual,
        "recon": rec["recon"],
        "dae": np.asarray(stored["map_dae"], dtype=np.float32),
        "raw_patch": raw_patch_map(model, real, rec["recon"], roi, options),
        "geometry": rec["geometry"],
        "indices": rec["indices"],
    }


def variant_slices(s: dict, healthy_patch: np.ndarray, scale: np.ndarray) -> dict[str, np.ndarray]:
    """Every baseline and variant map (network slices) of one subject, zero outside the ROI."""
    roi = s["roi"]
    reference = normalise_patch_map(s["raw_patch"], roi, "reference")
    volume = normalise_patch_map(s["raw_patch"], roi, "volume")
    # The workflow's method arepas_calibrated, computed by its own function.
    calibrated = calibrated_patch_map(s["raw_patch"], roi, healthy_patch)
    residual_cal = np.where(roi, s["residual"] / _by_intensity(s["real"], scale), 0.0)
    maps = {
        "residual": s["residual"],
        "dae": s["dae"],
        "arepas": reference * s["residual"],
        "arepas_volume": volume * s["residual"],
        "arepas_calibrated": calibrated * s["residual"],
        "arepas_calibrated_both": calibrated * residual_cal,
        "arepas_dae": calibrated * s["dae"],
    }
    return with_postprocessed(maps, roi)


def with_postprocessed(maps: dict[str, np.ndarray], roi: np.ndarray) -> dict[str, np.ndarray]:
    """Each map (network slices) zero outside the ROI, as float32, and after it `<name>+pp`:
    the same map after the MEDIAN × MEDIAN median per slice."""
    out = {}
    for name, m in maps.items():
        m = np.where(roi, m, 0.0).astype(np.float32)
        out[name] = m
        out[f"{name}+pp"] = median_per_slice(m, roi, MEDIAN)
    return out


def assemble_maps(maps: dict[str, np.ndarray], s: dict) -> dict[str, np.ndarray]:
    """Network-slice maps of one subject (subject_slices' `s`) on its working grid, negative
    values cut to 0."""
    geometry = SliceGeometry.from_array(s["geometry"])
    return {
        name: np.maximum(assemble_volume(m, s["indices"], geometry), 0.0)
        for name, m in maps.items()
    }


def subjects_in(run_dir: Path, dataset: str, split: str) -> list[str]:
    """The run's subjects of one dataset and split (train, val, test), sorted."""
    sheet = pd.read_csv(run_dir / "results" / "demo" / "subjects.tsv", sep="\t",
                        keep_default_na=False)
    return sorted(sheet.loc[(sheet["dataset"] == dataset) & (sheet["split"] == split), "subject"])


def val_and_test(run_dir: Path, dataset: str) -> tuple[list[str], list[str]]:
    """The run's healthy val subjects and its test subjects of one dataset, sorted."""
    return subjects_in(run_dir, dataset, "val"), subjects_in(run_dir, dataset, "test")


def load_masks(results: Path, subject: str, test: bool, rois: dict, lesions: dict) -> None:
    """The subject's working-grid ROI into rois, and its lesion mask into lesions if a test
    subject."""
    folder = results / "preprocessed" / subject
    rois[subject] = ablation._load(folder / "roi.nii.gz") > 0
    if test:
        lesions[subject] = ablation._load(folder / "lesion.nii.gz") > 0


def method_table(frame: pd.DataFrame) -> str:
    """Best Dice and val-threshold Dice per method (rows, in order of appearance) and dataset,
    mean ± sd over runs."""
    datasets = sorted(frame["dataset"].unique())
    rows = []
    for method in dict.fromkeys(frame["method"]):
        cells = [method]
        for dataset in datasets:
            part = frame[(frame["dataset"] == dataset) & (frame["method"] == method)]
            for column in ("best_dice", "honest_dice"):
                cells.append(tables.mean_sd(*tables.mean_and_sd(part[column].astype(float))))
        rows.append(cells)
    header = ["method"]
    for dataset in datasets:
        header += [f"{dataset} best Dice", f"{dataset} val-thr. Dice"]
    return tables.markdown_table(header, rows, left=1)


def dataset_rows(run_dir: Path, dataset: str, progress=print) -> tuple[list[dict], float]:
    from arepas.scorer import load_scorer

    options, evaluation = ablation.map_options(run_dir)
    val, test = val_and_test(run_dir, dataset)
    results = run_dir / "results" / dataset
    model = load_scorer(results / "models" / "scorer.pt")[0]
    started = time.perf_counter()
    slices = {s: subject_slices(run_dir, dataset, s, model, options) for s in val + test}
    # Healthy references from the val subjects only (each val subject's own scores left out of
    # its reference, as the workflow does): no lesion label is used.
    val_scores = [healthy_patch_scores(slices[s]["raw_patch"], slices[s]["roi"]) for s in val]
    scale = intensity_scale(np.concatenate([slices[s]["real"] for s in val]),
                            np.concatenate([slices[s]["residual"] for s in val]),
                            np.concatenate([slices[s]["roi"] for s in val]))
    volumes, rois, lesions = {}, {}, {}
    for subject, s in slices.items():
        volumes[subject] = assemble_maps(
            variant_slices(s, reference_scores_for(subject, val, val_scores), scale), s
        )
        load_masks(results, subject, subject in test, rois, lesions)
    seconds = time.perf_counter() - started
    rows = evaluate_volumes(run_dir, dataset, volumes, rois, lesions, val, test, evaluation)
    progress(f"variants: {run_dir.name} {dataset} in {seconds:.0f} s")
    return rows, seconds


def evaluate_volumes(
    run_dir: Path, dataset: str, volumes: dict, rois: dict, lesions: dict, val: list[str],
    test: list[str], evaluation: dict,
) -> list[dict]:
    """Best Dice and Dice at the label-free threshold (from the val subjects' maps) of every map
    in volumes[subject] (working grid), with the workflow's evaluation code; each row keeps its
    per-subject histograms for paired bootstraps."""
    mode = evaluation.get("threshold_mode", "percentile")
    value = float(evaluation.get("threshold_value", 99.0))
    rows = []
    for name in volumes[val[0]]:
        histograms: list = []

        def test_cases(name=name):
            for s in test:
                yield s, volumes[s][name], lesions[s], rois[s]

        def healthy_cases(name=name):
            for s in val:
                yield s, volumes[s][name], rois[s]

        summary, _ = metrics.evaluate_cohort(
            test_cases, healthy_cases, mode, value,
            n_bins=int(evaluation.get("bins", metrics.DEFAULT_BINS)),
            subject_histograms=histograms,
            outside_roi=evaluation.get("lesions_outside_roi", "miss"),
        )
        rows.append({"run": str(run_dir), "dataset": dataset, "method": name,
                     "best_dice": summary["best_dice"], "honest_dice": summary["honest_dice"],
                     "histograms": histograms})
    return rows


def measure(run_dirs: list[Path], threads: int = 1, progress=print) -> dict:
    torch.set_num_threads(threads)
    rows, seconds = [], {}
    for run_dir in run_dirs:
        for dataset in ("brain_t1", "lung_ct"):
            if not (run_dir / "results" / dataset / "models" / "scorer.pt").exists():
                continue
            found, took = dataset_rows(run_dir, dataset, progress)
            rows += found
            seconds[f"{run_dir.name} {dataset}"] = took
    frame = pd.DataFrame(rows)
    others = [m for m in frame["method"].unique()
              if m.split("+")[0] in BASELINES or m.split("+")[0] == "arepas"]
    candidates = [m for m in frame["method"].unique() if m not in others]
    best_variant = frame[frame["method"].isin(candidates)].groupby("method")["best_dice"] \
        .mean().idxmax()
    changes = []
    for (run, dataset), group in frame.groupby(["run", "dataset"]):
        indexed = group.set_index("method")
        other = indexed.loc[others, "best_dice"].idxmax()
        change = metrics.paired_bootstrap_change(indexed.loc[best_variant, "histograms"],
                                                 indexed.loc[other, "histograms"])
        changes.append({"run": run, "dataset": dataset, "variant": best_variant,
                        "other": other, **{k: float(v) for k, v in change.items()}})
    return {
        "rows": [{k: v for k, v in r.items() if k != "histograms"} for r in rows],
        "changes": changes,
        "seconds": seconds,
        "threads": threads,
    }


def render(data: dict) -> str:
    frame = pd.DataFrame(data["rows"])
    if frame.empty:
        return "No finished run to study.\n"
    runs = frame["run"].nunique()
    text = (
        f"On the trained models of {runs} finished run(s) (their seeds' demo cohorts), maps "
        "computed again from the stored reconstructions and the DAE's stored residuals: "
        "`arepas` (reference: patch map / its slice maximum × translator residual), "
        "`arepas_volume` (patch map scaled over the subject's ROI), `arepas_calibrated` (each "
        "patch score replaced by its quantile among the healthy val subjects' patch scores), "
        "`arepas_calibrated_both` (as before × the residual divided by the healthy val "
        "residual's mean at the same input intensity), `arepas_dae` (the calibrated patch "
        "score × the denoising autoencoder's residual); `+pp`: 5 × 5 median per slice. "
        "Working grid, pooled Dice, lesion voxels outside the ROI counted as misses. Mean ± sd "
        "over runs.\n\n"
    )
    text += method_table(frame) + "\n"
    change_rows = [
        [Path(c["run"]).name, c["dataset"], c["variant"], c["other"],
         f"{c['own_dice']:.3f} vs {c['other_dice']:.3f}", f"{100 * c['relative_change']:+.1f}%",
         f"{100 * c['ci_low']:+.1f}% to {100 * c['ci_high']:+.1f}%"]
        for c in data["changes"]
    ]
    text += (
        "\nThe variant with the highest mean best Dice over runs and datasets against each "
        "run's best other method (raw or post-processed residual or DAE, or the reference "
        "`arepas`), paired bootstrap over test subjects (95 % interval):\n\n"
    )
    return text + tables.markdown_table(
        ["run", "dataset", "variant", "best other", "best Dice", "change", "95 % interval"],
        change_rows, left=4,
    )
