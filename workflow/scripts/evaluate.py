import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import numpy as np
import pandas as pd

from arepas import io, metrics
from arepas.postprocess import base_method

dataset = snakemake.wildcards.dataset
options = snakemake.params.evaluation
prefix = f"results/{dataset}"


def roi(subject):
    return (
        io.load_volume(f"{prefix}/preprocessed/{subject}/roi_native.nii.gz", subject, "roi")[0] > 0
    )


def scores(method, subject):
    return io.load_volume(f"{prefix}/maps/{method}/{subject}_native.nii.gz", subject, "map")[0]


# Methods whose maps depend on each scorer, flagged when that scorer stalled.
stalled = {}
for key, dependent in (("scorer", ("arepas", "patch")), ("clean_scorer", ("arepas_clean",))):
    if key in snakemake.input.keys():
        from arepas.scorer import load_scorer

        reason = load_scorer(snakemake.input[key])[2].get("stalled", "")
        if reason:
            print(f"WARNING: the {key} stalled ({reason}); {', '.join(dependent)} rows are flagged")
            stalled.update(dict.fromkeys(dependent, reason))

summaries, tables, curves = [], [], {}
for method in snakemake.params.methods:

    def test_cases(method=method):
        for row in snakemake.params.test:
            lesion = io.load_volume(row["lesion"], row["subject"], "lesion")[0] > 0
            yield row["subject"], scores(method, row["subject"]), lesion, roi(row["subject"])

    def healthy_cases(method=method):
        for row in snakemake.params.val:
            yield row["subject"], scores(method, row["subject"]), roi(row["subject"])

    summary, table, hist = metrics.evaluate_cohort(
        test_cases,
        healthy_cases,
        options["threshold_mode"],
        options["threshold_value"],
        n_bins=options["bins"],
        return_histogram=True,
    )
    precision, recall, _ = metrics.pr_curve(hist)
    curves[f"{method}_precision"], curves[f"{method}_recall"] = precision, recall
    flag = "scorer stalled" if base_method(method) in stalled else ""
    summaries.append({"dataset": dataset, "method": method, **summary, "flag": flag})
    tables.append(table.assign(dataset=dataset, method=method))
    print(
        f"{method}: best Dice {summary['best_dice']:.3f}, "
        f"honest Dice {summary['honest_dice']:.3f}, "
        f"AUPRC {summary['auprc']:.3f}, AUROC {summary['auroc']:.3f}"
    )

per_subject = pd.concat(tables, ignore_index=True)
first = ["dataset", "method", "subject", "threshold_kind"]
io.save_table(
    snakemake.output.per_subject, per_subject[first + [c for c in per_subject if c not in first]]
)
io.save_table(snakemake.output.summary, pd.DataFrame(summaries))
io.save_arrays(snakemake.output.curves, **{k: np.asarray(v) for k, v in curves.items()})
