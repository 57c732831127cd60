import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import pandas as pd

from arepas import io, metrics
from arepas.masks import THRESHOLD_COLUMNS

options = snakemake.params.evaluation
subjects = [row["subject"] for row in snakemake.params.val]
# Files come from the rule's input in the order of the val rows; strict zips refuse another length.
roi_files = dict(zip(subjects, snakemake.input.roi, strict=True))

rows = []
for method in snakemake.params.methods:
    map_files = dict(zip(subjects, snakemake.input[f"maps_{method}"], strict=True))

    def healthy_cases(map_files=map_files):
        for subject in subjects:
            scores = io.load_volume(map_files[subject], subject, "map")[0]
            roi = io.load_volume(roi_files[subject], subject, "roi")[0] > 0
            yield subject, scores, roi

    # The same function and settings as rule evaluate's "val_thr" threshold, so a test subject's
    # mask is the segmentation evaluated there.
    threshold = metrics.healthy_threshold(
        healthy_cases, options["threshold_mode"], options["threshold_value"], options["bins"]
    )
    print(f"{method}: threshold {threshold:.6g} from {len(subjects)} healthy val subjects")
    rows.append(
        {
            "method": method,
            "threshold": threshold,
            "threshold_mode": options["threshold_mode"],
            "threshold_value": options["threshold_value"],
            "n_val_subjects": len(subjects),
        }
    )
io.save_table(snakemake.output[0], pd.DataFrame(rows, columns=THRESHOLD_COLUMNS))
