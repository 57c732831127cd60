"""Patch map scaling (`maps.normalise`) × median filter (`maps.median_size`), on the trained
models of one finished run: the unscaled patch maps are scored again from the stored
reconstructions (minutes on a CPU, nothing trained), then every setting goes through the
workflow's own map and evaluation code (`arepas.maps.anomaly_maps`,
`arepas.metrics.evaluate_cohort`) on the working grid."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
import yaml

from arepas import io, metrics
from arepas.maps import NORMALISATIONS, anomaly_maps, raw_patch_map
from arepas.preprocessing import SliceGeometry, assemble_volume
from bench import tables

MEDIAN_SIZES = (0, 5)
METHODS = ("arepas", "patch", "residual")
# The schema's defaults (workflow/schemas/config.schema.yaml, `maps`) where a run's config is
# silent.
MAP_DEFAULTS = {"scoring": "sampled", "stride": 1, "n_patches": 10000, "positions": "fixed",
                "sampling_seed": 42}


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def map_options(run_dir: Path) -> tuple[dict, dict]:
    """The run's `maps` options (defaults filled in) and its `evaluation` options."""
    config = yaml.safe_load((run_dir / "config" / "config.yaml").read_text()) or {}
    return {**MAP_DEFAULTS, **(config.get("maps") or {})}, config.get("evaluation") or {}


def subject_maps(model, rec: dict, options: dict) -> dict[tuple[str, str, int], np.ndarray]:
    """Working-grid maps of one subject for every (method, normalisation, median size)."""
    raw = raw_patch_map(model, rec["slices"], rec["recon"], rec["roi"], options)
    geometry = SliceGeometry.from_array(rec["geometry"])
    out = {}
    for normalise in NORMALISATIONS:
        for size in MEDIAN_SIZES:
            methods = METHODS if normalise == NORMALISATIONS[0] else ("arepas", "patch")
            maps = anomaly_maps(rec["slices"], rec["recon"], rec["roi"], raw, list(methods),
                                median_size=size, normalise=normalise)
            for method, slices in maps.items():
                volume = assemble_volume(slices, rec["indices"], geometry)
                out[(method, normalise, size)] = np.maximum(volume, 0.0).astype(np.float32)
    return out


def evaluate_setting(
    maps: dict, rois: dict, lesions: dict, val: list[str], test: list[str], key: tuple,
    mode: str, value: float, evaluation: dict,
) -> dict:
    """The workflow's summary row for one (method, normalisation, median size) of the cohort."""

    def test_cases():
        for s in test:
            yield s, maps[s][key], lesions[s], rois[s]

    def healthy_cases():
        for s in val:
            yield s, maps[s][key], rois[s]

    summary, _ = metrics.evaluate_cohort(
        test_cases, healthy_cases, mode, value,
        n_bins=int(evaluation.get("bins", metrics.DEFAULT_BINS)),
        outside_roi=evaluation.get("lesions_outside_roi", "miss"),
    )
    return summary


def measure(run_dir: Path, threads: int = 1, progress=print) -> dict:
    from arepas.scorer import load_scorer

    torch.set_num_threads(threads)
    options, evaluation = map_options(run_dir)
    mode = evaluation.get("threshold_mode", "percentile")
    value = float(evaluation.get("threshold_value", 99.0))
    sheet = pd.read_csv(run_dir / "results" / "demo" / "subjects.tsv", sep="\t",
                        keep_default_na=False)
    rows = []
    seconds = {}
    for dataset in sorted(sheet["dataset"].unique()):
        results = run_dir / "results" / dataset
        scorer_file = results / "models" / "scorer.pt"
        if not scorer_file.exists():
            continue
        model = load_scorer(scorer_file)[0]
        subjects = sheet[sheet["dataset"] == dataset]
        val = sorted(subjects.loc[subjects["split"] == "val", "subject"])
        test = sorted(subjects.loc[subjects["split"] == "test", "subject"])
        started = time.perf_counter()
        maps, rois, lesions = {}, {}, {}
        for subject in val + test:
            rec = io.load_arrays(results / "reconstruction" / f"{subject}.npz")
            maps[subject] = subject_maps(model, rec, options)
            folder = results / "preprocessed" / subject
            rois[subject] = _load(folder / "roi.nii.gz") > 0
            if subject in test:
                lesions[subject] = _load(folder / "lesion.nii.gz") > 0
        seconds[dataset] = time.perf_counter() - started
        progress(f"ablation: {dataset} maps in {seconds[dataset]:.0f} s")
        for key in maps[val[0]]:
            summary = evaluate_setting(maps, rois, lesions, val, test, key, mode, value,
                                       evaluation)
            method, normalise, size = key
            rows.append({"dataset": dataset, "method": method, "normalise": normalise,
                         "median_size": size, "best_dice": summary["best_dice"],
                         "honest_dice": summary["honest_dice"], "auprc": summary["auprc"],
                         "n_subjects": summary["n_subjects"]})
    return {"run_dir": str(run_dir), "maps": options, "threshold": [mode, value],
            "rows": rows, "seconds": seconds, "threads": threads}


def render(data: dict) -> str:
    frame = pd.DataFrame(data["rows"])
    if frame.empty:
        return "No run with a patch scorer to study.\n"
    options = data["maps"]
    mode, value = data["threshold"]
    datasets = sorted(frame["dataset"].unique())
    text = (
        f"On the trained models of `{data['run_dir']}` (one seed): the patch maps scored again "
        f"from its stored reconstructions (`maps.scoring: {options['scoring']}`), then each "
        "patch map scaling (`maps.normalise`) with and without a median filter of the final map "
        "(`maps.median_size`, per slice), through the workflow's map and evaluation code. The "
        "residual does not depend on the scaling. Evaluated on the working grid (the workflow "
        "evaluates on the native grid after resampling, so these numbers differ from section 1 "
        "by that step); pooled Dice, lesion voxels outside the ROI counted as misses; val "
        f"threshold: {mode} {value:g} of the healthy val subjects' scores. Re-scoring took "
        + ", ".join(f"{d} {s:.0f} s" for d, s in data["seconds"].items())
        + f" on {data['threads']} thread(s).\n"
    )
    header = ["method", "patch map scaling", "median filter"]
    for d in datasets:
        header += [f"{d} best Dice", f"{d} val-thr. Dice"]
    rows = []
    order = {m: i for i, m in enumerate(METHODS)}
    keys = frame[["method", "normalise", "median_size"]].drop_duplicates()
    keys = keys.assign(o=keys["method"].map(order)).sort_values(["o", "median_size"], kind="stable")
    indexed = frame.set_index(["dataset", "method", "normalise", "median_size"])
    for key in keys.itertuples(index=False):
        size = int(key.median_size)
        cells = [key.method, key.normalise if key.method != "residual" else "—",
                 f"{size} × {size}" if size > 1 else "off"]
        for d in datasets:
            at = (d, key.method, key.normalise, key.median_size)
            if at in indexed.index:
                cells += [f"{indexed.loc[at, 'best_dice']:.3f}",
                          f"{indexed.loc[at, 'honest_dice']:.3f}"]
            else:
                cells += ["n/a", "n/a"]
        rows.append(cells)
    best = []
    for d in datasets:
        part = frame[(frame["dataset"] == d) & (frame["method"] == "arepas")]
        top = part.loc[part["best_dice"].idxmax()]
        residual = frame[(frame["dataset"] == d) & (frame["method"] == "residual")]
        other = residual.loc[residual["best_dice"].idxmax()]
        size = int(top["median_size"])
        best.append(
            f"{d}: `arepas` is best with `normalise: {top['normalise']}`, median "
            f"{'off' if size < 2 else f'{size} × {size}'} ({top['best_dice']:.3f}; the residual "
            f"at its best {other['best_dice']:.3f})"
        )
    return text + "\n" + tables.markdown_table(header, rows, left=3) + "\n" + "; ".join(best) \
        + ". One seed and 10 test subjects per cohort: differences of a few hundredths are " \
        "within the spread of section 1.\n"
