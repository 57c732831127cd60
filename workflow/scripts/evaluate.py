import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import numpy as np
import pandas as pd

from arepas import io, metrics
from arepas.methods import PATCH_METHODS
from arepas.postprocess import base_method

dataset = snakemake.wildcards.dataset
options = snakemake.params.evaluation
test_rows, val_rows = snakemake.params.test, snakemake.params.val
# Every file comes from the rule's input, listed in the order of the test rows, then the val
# rows (rule evaluate's input function); strict zips refuse a list of another length.
subjects = [row["subject"] for row in test_rows + val_rows]
roi_files = dict(zip(subjects, snakemake.input.roi, strict=True))
lesion_files = dict(zip(subjects[: len(test_rows)], snakemake.input.lesion, strict=True))
map_files = {
    method: dict(zip(subjects, snakemake.input[f"maps_{method}"], strict=True))
    for method in snakemake.params.methods
}


def roi(subject):
    return io.load_volume(roi_files[subject], subject, "roi")[0] > 0


def scores(method, subject):
    return io.load_volume(map_files[method][subject], subject, "map")[0]


# Methods whose maps depend on each scorer, flagged when that scorer stalled.
stalled = {}
for key, dependent in (("scorer", PATCH_METHODS), ("clean_scorer", ("arepas_clean",))):
    if key in snakemake.input.keys():
        from arepas.scorer import load_scorer

        reason = load_scorer(snakemake.input[key])[2].get("stalled", "")
        if reason:
            print(f"WARNING: the {key} stalled ({reason}); {', '.join(dependent)} rows are flagged")
            stalled.update(dict.fromkeys(dependent, reason))

summaries, tables, curves = [], [], {}
# Per method, each test subject's histogram and its counts at the val threshold, in sheet order,
# for the paired bootstrap over subjects.
subject_hists, honest_counts = {}, {}
for method in snakemake.params.methods:

    def test_cases(method=method):
        for row in test_rows:
            lesion = io.load_volume(lesion_files[row["subject"]], row["subject"], "lesion")[0] > 0
            yield row["subject"], scores(method, row["subject"]), lesion, roi(row["subject"])

    def healthy_cases(method=method):
        for row in val_rows:
            yield row["subject"], scores(method, row["subject"]), roi(row["subject"])

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
    honest_counts[method] = table[table["threshold_kind"] == "honest"].to_dict("records")
    precision, recall, _ = metrics.pr_curve(hist)
    curves[f"{method}_precision"], curves[f"{method}_recall"] = precision, recall
    flag = "scorer stalled" if base_method(method) in stalled else ""
    summaries.append({"dataset": dataset, "method": method, **summary, "flag": flag})
    tables.append(table.assign(dataset=dataset, method=method))
    print(
        f"{method}: best Dice {summary['best_dice']:.3f}, "
        f"honest Dice {summary['honest_dice']:.3f} "
        f"({summary['honest_over_best']:.2f} of best), "
        f"AUPRC {summary['auprc']:.3f}, AUROC {summary['auroc']:.3f}"
    )

per_subject = pd.concat(tables, ignore_index=True)
first = ["dataset", "method", "subject", "threshold_kind"]
io.save_table(
    snakemake.output.per_subject, per_subject[first + [c for c in per_subject if c not in first]]
)
summary_table = pd.DataFrame(summaries)
io.save_table(snakemake.output.summary, summary_table)

# Relative Dice change of each compared method over the best other method (chosen on the whole
# test cohort, as in the summary), with a paired bootstrap interval over test subjects: the best
# threshold chosen anew in every resample from the subjects' histograms; the val threshold fixed,
# since it comes from healthy val scans, not from the test subjects.
changes = []
for method in metrics.compared_methods(snakemake.params.methods):
    for column, kind, per_subject_data in (
        ("best_dice", "best", subject_hists),
        ("honest_dice", "honest", honest_counts),
    ):
        picked = metrics.relative_dice_change(summary_table, method, column)
        if picked.empty:
            continue
        other = picked["best_other"].iloc[0]
        result = metrics.paired_bootstrap_change(
            per_subject_data[method],
            per_subject_data[other],
            n_resamples=options["bootstrap_resamples"],
            seed=snakemake.params.seed,
        )
        changes.append(
            {"dataset": dataset, "method": method, "threshold_kind": kind, "best_other": other}
            | result
        )
        print(
            f"{method} vs {other} ({kind} threshold): relative change "
            f"{result['relative_change']:+.3f}, 95 % CI [{result['ci_low']:+.3f}, "
            f"{result['ci_high']:+.3f}]"
        )
change_columns = ["dataset", "method", "threshold_kind", "best_other", "own_dice", "other_dice"]
change_columns += ["relative_change", "ci_low", "ci_high", "n_subjects", "n_resamples"]
io.save_table(snakemake.output.changes, pd.DataFrame(changes, columns=change_columns))
io.save_arrays(snakemake.output.curves, **{k: np.asarray(v) for k, v in curves.items()})
