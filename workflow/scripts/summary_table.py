import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import pandas as pd

from arepas import io, metrics


def read_all(paths):
    return pd.concat([pd.read_csv(p, sep="\t") for p in paths], ignore_index=True)


def percent(value):
    # Undefined when the other method's Dice is 0 (e.g. nothing found at the val threshold).
    return "n/a" if pd.isna(value) else f"{value:+.1%}"


table = read_all(snakemake.input.summaries)
io.save_table(snakemake.output.table, table)
markdown = metrics.summary_markdown(table)
# The reference method, and the earlier variant where it ran, raw and post-processed, each
# against the best of all other methods, raw or post-processed, as the evaluation measured it.
changes = read_all(snakemake.input.changes)
io.save_table(snakemake.output.changes, changes)
for method in metrics.compared_methods(table["method"]):
    for kind, label in (("best", "best threshold"), ("val_thr", "val threshold")):
        rows = changes[(changes["method"] == method) & (changes["threshold_kind"] == kind)]
        lines = [
            f"- {row.dataset}: {method} {row.own_dice:.3f} vs {row.best_other} "
            f"{row.other_dice:.3f}, relative change {percent(row.relative_change)} "
            f"(95 % CI {percent(row.ci_low)} to {percent(row.ci_high)}, "
            f"{row.n_subjects} subjects)"
            for row in rows.itertuples()
        ]
        if lines:
            markdown += (
                f"\nRelative Dice change of {method} over the best other method ({label}), "
                "with a paired bootstrap interval over test subjects:\n\n"
            )
            markdown += "\n".join(lines) + "\n"
with io.atomic_path(snakemake.output.markdown) as tmp:
    tmp.write_text(markdown)
print(markdown)
