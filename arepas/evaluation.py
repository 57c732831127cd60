"""A dataset's evaluation, as the workflow's `evaluate` rule runs it: every method's maps of the
test subjects against their lesion masks, the threshold chosen on the healthy val subjects, and
each compared method's relative Dice change over the best other method with a paired bootstrap
interval. Maps, ROIs and lesions come through loader functions, so that the rule (files) and the
benchmarks (files or arrays) share this code."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from arepas import metrics
from arepas.postprocess import base_method

CHANGE_COLUMNS = [
    "dataset",
    "method",
    "threshold_kind",
    "best_other",
    "own_dice",
    "other_dice",
    "relative_change",
    "ci_low",
    "ci_high",
    "n_subjects",
    "n_resamples",
]


def evaluate_dataset(
    dataset: str,
    methods: Sequence[str],
    test_subjects: Sequence[str],
    val_subjects: Sequence[str],
    load_map: Callable[[str, str], np.ndarray],
    load_roi: Callable[[str], np.ndarray],
    load_lesion: Callable[[str], np.ndarray],
    options: Mapping[str, Any],
    seed: int,
    stalled: Mapping[str, str] | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """{"per_subject", "summary", "changes": DataFrames, "curves": arrays} of one dataset.

    load_map(method, subject) gives a map, load_roi(subject) a boolean ROI, load_lesion(subject)
    a boolean lesion mask, each on one grid per subject; options: the config's `evaluation`;
    stalled: methods whose scorer stalled, with the reason (their rows are flagged).
    """
    stalled = stalled or {}
    summaries, tables, curves = [], [], {}
    # Per method, each test subject's histogram and its counts at the val threshold, in the
    # order of test_subjects, for the paired bootstrap over subjects.
    subject_hists, val_thr_counts = {}, {}
    for method in methods:

        def test_cases(method=method):
            for subject in test_subjects:
                yield subject, load_map(method, subject), load_lesion(subject), load_roi(subject)

        def healthy_cases(method=method):
            for subject in val_subjects:
                yield subject, load_map(method, subject), load_roi(subject)

        summary, table, hist = metrics.evaluate_cohort(
            test_cases,
            healthy_cases,
            options["threshold_mode"],
            options["threshold_value"],
            n_bins=options["bins"],
            return_histogram=True,
            subject_histograms=subject_hists.setdefault(method, []),
            outside_roi=options["lesions_outside_roi"],
        )
        # Stacked without thresholds: a third of the memory, for cohorts of many test subjects.
        subject_hists[method] = metrics.stack_histograms(subject_hists[method])
        val_thr_counts[method] = table[table["threshold_kind"] == "val_thr"].to_dict("records")
        precision, recall, _ = metrics.pr_curve(hist)
        curves[f"{method}_precision"], curves[f"{method}_recall"] = precision, recall
        flag = "scorer stalled" if base_method(method) in stalled else ""
        summaries.append({"dataset": dataset, "method": method, **summary, "flag": flag})
        tables.append(table.assign(dataset=dataset, method=method))
        progress(
            f"{method}: best Dice {summary['best_dice']:.3f}, "
            f"Dice at the val threshold {summary['dice_val_thr']:.3f} "
            f"({summary['val_thr_over_best']:.2f} of best), "
            f"AUPRC {summary['auprc']:.3f}, AUROC {summary['auroc']:.3f}"
        )
    per_subject = pd.concat(tables, ignore_index=True)
    first = ["dataset", "method", "subject", "threshold_kind"]
    per_subject = per_subject[first + [c for c in per_subject if c not in first]]
    summary_table = pd.DataFrame(summaries)
    changes = relative_changes(
        dataset, methods, summary_table, subject_hists, val_thr_counts, options, seed, progress
    )
    return {
        "per_subject": per_subject,
        "summary": summary_table,
        "changes": changes,
        "curves": {k: np.asarray(v) for k, v in curves.items()},
    }


def relative_changes(
    dataset: str,
    methods: Sequence[str],
    summary_table: pd.DataFrame,
    subject_hists: Mapping[str, Any],
    val_thr_counts: Mapping[str, Any],
    options: Mapping[str, Any],
    seed: int,
    progress: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Relative Dice change of each compared method over the best other method (chosen on the
    whole test cohort, as in the summary), with a paired bootstrap interval over test subjects:
    the best threshold chosen anew in every resample from the subjects' histograms; the val
    threshold fixed, since it comes from healthy val scans, not from the test subjects."""
    changes = []
    for method in metrics.compared_methods(methods):
        for column, kind, per_subject_data in (
            ("best_dice", "best", subject_hists),
            ("dice_val_thr", "val_thr", val_thr_counts),
        ):
            picked = metrics.relative_dice_change(summary_table, method, column)
            if picked.empty:
                continue
            other = picked["best_other"].iloc[0]
            result = metrics.paired_bootstrap_change(
                per_subject_data[method],
                per_subject_data[other],
                n_resamples=options["bootstrap_resamples"],
                seed=seed,
            )
            changes.append(
                {"dataset": dataset, "method": method, "threshold_kind": kind, "best_other": other}
                | result
            )
            progress(
                f"{method} vs {other} ({kind} threshold): relative change "
                f"{result['relative_change']:+.3f}, 95 % CI [{result['ci_low']:+.3f}, "
                f"{result['ci_high']:+.3f}]"
            )
    return pd.DataFrame(changes, columns=CHANGE_COLUMNS)
