"""The label-free threshold: how close Dice at a threshold chosen without lesion labels comes to
the best Dice, for every method and rule, recomputed from finished runs' native maps (no training).

A rule sees the healthy `val` subjects' maps and, for the per-volume normalisations, each
volume's own ROI scores; only the evaluation looks at the test subjects' lesion masks. Dice is
pooled over the test cohort as in the workflow (`arepas.metrics`), lesion voxels outside the ROI
counted as misses, and every ratio divides by the best Dice of the method's own (unnormalised)
map: a normalisation is part of the rule, and the map a user looks at stays the same.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import yaml

from arepas import metrics
from bench import tables

# Percentiles of the pooled healthy val ROI scores: the workflow's default (99) and around it.
PERCENTILES = (97.0, 98.0, 98.5, 99.0, 99.5, 99.9, 99.95)
# The same voxels counted the other way: a target false-positive rate on the healthy voxels.
FALSE_POSITIVE_RATES = (0.02, 0.01, 0.001)
# Per-volume scalings of a map's ROI scores before the val threshold is taken and applied.
VOLUME_NORMALISATIONS = ("none", "zscore", "robust")
# Issue 13's target for val-threshold Dice / best Dice.
TARGET = 0.8


def normalise_volume(values: np.ndarray, kind: str) -> np.ndarray:
    """One volume's ROI scores rescaled by its own statistics: 'none' as they are, 'zscore'
    (x - mean) / sd, 'robust' (x - median) / IQR. A volume with zero spread maps to 0 (no
    voxel stands out from it)."""
    values = np.asarray(values, dtype=np.float64)
    if kind == "none":
        return values
    if values.size == 0:
        return values
    if kind == "zscore":
        centre, spread = float(values.mean()), float(values.std())
    elif kind == "robust":
        q1, centre, q3 = np.percentile(values, [25, 50, 75])
        spread = float(q3 - q1)
    else:
        raise ValueError(f"unknown volume normalisation {kind!r}; choose from "
                         f"{VOLUME_NORMALISATIONS}")
    if not spread > 0:
        return np.zeros_like(values)
    return (values - centre) / spread


def pooled_dice_at(
    test: Sequence[np.ndarray], lesion: Sequence[np.ndarray], n_outside: int, threshold: float
) -> float:
    """Pooled Dice of "score >= threshold" over the test subjects' ROI scores, with `n_outside`
    lesion voxels outside the ROI counted as misses (as `arepas.metrics.subject_metrics`)."""
    tp = fp = positives = 0
    for values, is_lesion in zip(test, lesion, strict=True):
        selected = values >= threshold
        hits = int(np.count_nonzero(selected & is_lesion))
        tp += hits
        fp += int(np.count_nonzero(selected)) - hits
        positives += int(np.count_nonzero(is_lesion))
    positives += n_outside
    return 2.0 * tp / (tp + fp + positives) if positives else float("nan")


def best_pooled_dice(test: Sequence[np.ndarray], lesion: Sequence[np.ndarray],
                     n_outside: int) -> float:
    """Largest pooled Dice over every threshold, exact (no bins)."""
    values = np.concatenate(test)
    is_lesion = np.concatenate(lesion)
    positives = int(is_lesion.sum()) + n_outside
    if positives == 0:
        return float("nan")
    order = np.argsort(-values, kind="stable")
    ranked, hits = values[order], is_lesion[order]
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    # A threshold selects every voxel of a score or none: cut only where the score changes.
    cut = np.r_[ranked[1:] != ranked[:-1], True]
    return float(np.max(2.0 * tp[cut] / (tp[cut] + fp[cut] + positives)))


def excess_threshold(healthy: np.ndarray, test: np.ndarray, n_candidates: int = 2000) -> float:
    """Threshold that maximises an estimated Dice, from unlabelled test scores and healthy ones:
    at each candidate t, the expected false positives are the test voxels times the healthy
    fraction >= t, the rest of the test voxels >= t are taken as lesion, and the lesion volume
    is the largest such excess over all t."""
    healthy = np.sort(np.asarray(healthy, dtype=np.float64))
    test = np.sort(np.asarray(test, dtype=np.float64))
    candidates = np.quantile(test, np.linspace(0.5, 1.0, n_candidates, endpoint=False))
    above_test = test.size - np.searchsorted(test, candidates, side="left")
    above_healthy = healthy.size - np.searchsorted(healthy, candidates, side="left")
    above_healthy = above_healthy / healthy.size
    lesion_estimate = np.maximum(above_test - test.size * above_healthy, 0.0)
    volume = lesion_estimate.max()
    if volume <= 0:
        return float(test[-1]) if test.size else float("nan")
    return float(candidates[np.argmax(2.0 * lesion_estimate / (above_test + volume))])


def rules() -> list[dict]:
    """Every label-free rule studied: (kind, value, volume normalisation) with a label."""
    found = []
    for norm in VOLUME_NORMALISATIONS:
        prefix = "" if norm == "none" else f"{norm}, "
        for p in PERCENTILES:
            found.append({"rule": f"{prefix}percentile {p:g}", "kind": "percentile", "value": p,
                          "normalisation": norm})
        found.append({"rule": f"{prefix}excess estimate", "kind": "excess", "value": None,
                      "normalisation": norm})
    for rate in FALSE_POSITIVE_RATES:
        found.append({"rule": f"fpr {rate:g}", "kind": "fpr", "value": rate,
                      "normalisation": "none"})
    return found


def study_method(
    val: Sequence[np.ndarray],
    test: Sequence[np.ndarray],
    lesion: Sequence[np.ndarray],
    n_outside: int,
    n_bins: int = metrics.DEFAULT_BINS,
) -> list[dict]:
    """Dice of every rule and its ratio to the best Dice, for one method's ROI scores (val
    subjects' and test subjects', with the test subjects' lesion flags inside the ROI)."""
    best = best_pooled_dice(test, lesion, n_outside)
    rows = []
    scaled = {}
    for rule in rules():
        norm = rule["normalisation"]
        if norm not in scaled:
            scaled[norm] = (
                [normalise_volume(v, norm) for v in val],
                [normalise_volume(v, norm) for v in test],
            )
        healthy_parts, test_scaled = scaled[norm]
        healthy = np.concatenate(healthy_parts)
        if rule["kind"] == "percentile":
            threshold = float(np.percentile(healthy, rule["value"], method="inverted_cdf"))
        elif rule["kind"] == "fpr":
            # The workflow's own code path: the healthy histogram of `evaluation.bins` bins.
            hist = metrics.ScoreHistogram(max(float(healthy.max()), 1e-12), n_bins)
            hist.add(healthy, None, np.ones(healthy.shape, dtype=bool))
            threshold = metrics.threshold_from_healthy(hist, "fpr", rule["value"])
        else:
            threshold = excess_threshold(healthy, np.concatenate(test_scaled))
        dice = pooled_dice_at(test_scaled, lesion, n_outside, threshold)
        rows.append({**{k: rule[k] for k in ("rule", "kind", "value", "normalisation")},
                     "threshold": threshold, "dice": dice, "best_dice": best,
                     "ratio": dice / best if best > 0 else float("nan")})
    return rows


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def run_config(run_dir: Path) -> dict:
    path = run_dir / "config" / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def study_run(run_dir: Path, progress=print) -> list[dict]:
    """Every rule for every evaluated dataset and method (raw and +pp) of one finished run."""
    sheet_path = run_dir / "results" / "demo" / "subjects.tsv"
    config = run_config(run_dir)
    if config.get("subjects"):
        sheet_path = run_dir / config["subjects"]
    sheet = pd.read_csv(sheet_path, sep="\t", keep_default_na=False)
    summary = pd.read_csv(run_dir / "results" / "summary.tsv", sep="\t")
    rows = []
    for dataset in sorted(summary["dataset"].unique()):
        subjects = sheet[sheet["dataset"] == dataset].set_index("subject")
        val = sorted(subjects.index[subjects["split"] == "val"])
        test = sorted(subjects.index[subjects["split"] == "test"])
        rois = {s: _load(run_dir / "results" / dataset / "preprocessed" / s / "roi_native.nii.gz")
                > 0 for s in val + test}
        lesions = {}
        for s in test:
            path = Path(subjects.loc[s, "lesion"])
            lesions[s] = _load(path if path.is_absolute() else sheet_path.parent / path) > 0
            if lesions[s].shape != rois[s].shape:
                raise ValueError(f"{run_dir}: subject {s}: lesion mask {path} has shape "
                                 f"{lesions[s].shape}, its ROI {rois[s].shape}")
        inside = [lesions[s][rois[s]] for s in test]
        n_outside = sum(int(np.count_nonzero(lesions[s] & ~rois[s])) for s in test)
        for method in summary.loc[summary["dataset"] == dataset, "method"]:
            folder = run_dir / "results" / dataset / "maps" / method
            maps = {s: _load(folder / f"{s}_native.nii.gz") for s in val + test}
            for row in study_method([maps[s][rois[s]] for s in val],
                                    [maps[s][rois[s]] for s in test], inside, n_outside):
                rows.append({"dataset": dataset, "method": method, **row})
        progress(f"threshold: {run_dir.name} {dataset} done")
    return rows


def study_runs(results_dir: Path, fallback: Path) -> list[tuple[Path, str]]:
    """(directory, label) of the finished runs of the stored quality section (its seeds), else
    of `fallback`."""
    path = results_dir / "quality.json"
    if path.exists():
        runs = json.loads(path.read_text())["data"]["runs"]
        found = [(Path(r["dir"]), r["label"]) for r in runs if r["status"] == "finished"]
        if found:
            return found
    return [(fallback, fallback.name)]


def measure(run_dirs: Sequence[tuple[Path, str]], progress=print) -> dict:
    runs = []
    for run_dir, label in run_dirs:
        summary = pd.read_csv(run_dir / "results" / "summary.tsv", sep="\t")
        evaluation = run_config(run_dir).get("evaluation", {}) or {}
        runs.append({
            "dir": str(run_dir),
            "label": label,
            "evaluation": {"threshold_mode": evaluation.get("threshold_mode", "percentile"),
                           "threshold_value": evaluation.get("threshold_value", 99.0)},
            "rows": study_run(run_dir, progress),
            # The workflow's own numbers, to check that the study reproduces them.
            "summary": summary[["dataset", "method", "best_dice", "honest_dice"]]
            .to_dict("records"),
        })
    return {"runs": runs, "target": TARGET}


# ------------------------------------------------------------------------------------------


def _frame(data: dict) -> pd.DataFrame:
    return pd.DataFrame([
        {**row, "run": run["label"]} for run in data["runs"] for row in run["rows"]
    ])


def default_rule(data: dict) -> str:
    evaluation = data["runs"][0]["evaluation"]
    value = float(evaluation["threshold_value"])
    if evaluation["threshold_mode"] == "fpr":
        return f"fpr {value:g}"
    return f"percentile {value:g}"


def rank_rules(frame: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per rule: how many (run, dataset, method) cases reach the target, mean and lowest ratio,
    and the mean ratio per dataset; best first."""
    rows = []
    for rule, group in frame.groupby("rule", sort=False):
        ratios = group["ratio"].astype(float)
        row = {"rule": rule, "reached": int((ratios >= target).sum()), "cases": len(group),
               "mean": float(ratios.mean()), "lowest": float(ratios.min())}
        for dataset, part in group.groupby("dataset"):
            row[dataset] = float(part["ratio"].mean())
        rows.append(row)
    ranked = pd.DataFrame(rows)
    # Means equal to the third decimal tie, and the stable sort keeps the rules' own order
    # (percentiles before the false-positive rates that select the same voxels).
    ranked["key"] = ranked["mean"].round(3)
    ranked = ranked.sort_values(["reached", "key"], ascending=False, kind="stable",
                                ignore_index=True)
    return ranked.drop(columns="key")


def reproduction_gap(data: dict, rule: str) -> float:
    """Largest |Dice at the default rule here - the workflow's val-threshold Dice| over every
    run, dataset and method: how exactly the study repeats the evaluation."""
    gaps = []
    for run in data["runs"]:
        mine = {(r["dataset"], r["method"]): r["dice"] for r in run["rows"] if r["rule"] == rule}
        for r in run["summary"]:
            key = (r["dataset"], r["method"])
            if key in mine:
                gaps.append(abs(mine[key] - float(r["honest_dice"])))
    return max(gaps) if gaps else float("nan")


def render(data: dict) -> str:
    frame = _frame(data)
    target = data["target"]
    if frame.empty:
        return "No finished run to study.\n"
    default = default_rule(data)
    ranked = rank_rules(frame, target)
    datasets = sorted(frame["dataset"].unique())
    runs = ", ".join(r["label"] for r in data["runs"])
    n_cases = int(ranked["cases"].iloc[0])
    lines = [
        f"Dice at a threshold chosen without lesion labels, divided by the best Dice, for every "
        f"method raw and post-processed (`+pp`), on the native maps of the finished runs ({runs}); "
        "computed from the stored maps, nothing trained. A percentile or false-positive rate is "
        "taken on the pooled ROI scores of the healthy `val` subjects (the workflow's "
        "`evaluation.threshold_mode` and `threshold_value`; its default is "
        f"{default}); `zscore` and `robust` first rescale every volume, val and test alike, by "
        "its own ROI mean and sd, or median and interquartile range; the excess estimate "
        "takes, from the unlabelled test maps, the threshold whose estimated Dice is largest "
        "(false positives expected from the healthy fraction above it, the lesion volume as the "
        "largest excess of test over healthy voxels). Dividing every map by one healthy-val "
        "statistic is not in the table: a common factor moves the threshold and the scores "
        "together and selects the same voxels. Pooled Dice, lesion voxels outside the ROI "
        f"counted as misses; target ratio ≥ {target:g} (issue 13).",
        "",
        f"The study repeats the workflow's val-threshold Dice within "
        f"{tables.number(reproduction_gap(data, default), '{:.4f}')} (its histogram bins).",
        "",
    ]
    header = ["rule", f"cases ≥ {target:g}", "mean ratio", "lowest ratio",
              *(f"mean, {d}" for d in datasets)]
    rows = []
    for row in ranked.itertuples(index=False):
        label = f"**{row.rule}** (default)" if row.rule == default else row.rule
        rows.append([label, f"{row.reached} of {row.cases}", f"{row.mean:.3f}",
                     f"{row.lowest:.3f}", *(tables.number(getattr(row, d), "{:.3f}")
                                            for d in datasets)])
    lines.append(tables.markdown_table(header, rows, left=1))
    best_rule = ranked["rule"].iloc[0]
    lines.append(
        f"Cases: {n_cases} (runs × datasets × methods). Every method per rule, mean over the "
        f"runs, for the default ({default}) and the rule with the most cases at the target "
        f"({best_rule}):\n"
    )
    per_method = []
    picked = frame[frame["rule"].isin([default, best_rule])]
    for (dataset, method), group in picked.groupby(["dataset", "method"], sort=True):
        at = {rule: part for rule, part in group.groupby("rule")}
        cells = [dataset, method,
                 tables.mean_sd(*tables.mean_and_sd(group["best_dice"].drop_duplicates()))]
        for rule in dict.fromkeys([default, best_rule]):
            part = at.get(rule)
            if part is None:
                cells += ["n/a", "n/a"]
                continue
            cells += [tables.mean_sd(*tables.mean_and_sd(part["dice"])),
                      tables.mean_sd(*tables.mean_and_sd(part["ratio"]))]
        per_method.append(cells)
    header = ["dataset", "method", "best Dice", f"Dice, {default}", f"ratio, {default}"]
    if best_rule != default:
        header += [f"Dice, {best_rule}", f"ratio, {best_rule}"]
    lines.append(tables.markdown_table(header, per_method, left=2))
    reached_all = ranked[ranked["reached"] == ranked["cases"]]
    default_row = ranked[ranked["rule"] == default].iloc[0]
    best_row = ranked.iloc[0]
    verdict = (
        f"{len(reached_all)} rule(s) reach the target in every case. "
        f"The default reaches it in {default_row.reached} of {default_row.cases} cases "
        f"(mean ratio {default_row['mean']:.3f}); the best rule here, {best_row.rule}, in "
        f"{best_row.reached} (mean {best_row['mean']:.3f}). "
    )
    # Rounded, so that rules equal to the third decimal go to the one ranked first.
    by_dataset = {d: ranked.set_index("rule")[d].round(3).idxmax() for d in datasets}
    verdict += (
        "The rule with the highest mean ratio per dataset (picked with the test labels, so an "
        "upper bound rather than a label-free choice): "
        + ", ".join(f"{d} {rule}" for d, rule in by_dataset.items())
        + ". Where these differ, the healthy val scans cannot tell how many lesion voxels a "
        "cohort holds: the best threshold keeps a share of healthy voxels that depends on the "
        "lesion burden and on how far the test maps' healthy voxels drift from the val maps'."
    )
    better = better_rules(ranked, default, datasets)
    if better:
        verdict += (f" Rules that reach the target in more cases than the default without "
                    f"lowering any dataset's mean ratio: {', '.join(better)}.")
    else:
        verdict += (" No rule reaches the target in more cases than the default without lowering "
                    f"one dataset's mean ratio, so the workflow keeps {default}.")
    lines.append(verdict + "\n")
    return "\n".join(lines)


def better_rules(ranked: pd.DataFrame, default: str, datasets: Sequence[str]) -> list[str]:
    """Rules that would be clearly better defaults: the target in more cases than the default,
    and no dataset's mean ratio below the default's."""
    table = ranked.set_index("rule")
    base = table.loc[default]
    found = []
    for rule, row in table.iterrows():
        if rule == default or row["reached"] <= base["reached"]:
            continue
        if all(row[d] >= base[d] for d in datasets):
            found.append(rule)
    return found
