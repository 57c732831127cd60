import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import pandas as pd

from arepas import io, metrics
from arepas.postprocess import variant_name

table = pd.concat([pd.read_csv(p, sep="\t") for p in snakemake.input], ignore_index=True)
io.save_table(snakemake.output.table, table)
markdown = metrics.summary_markdown(table)
# The reference method, and the earlier variant where it ran, raw and post-processed, each
# against the best of all other methods, raw or post-processed.
compared = [m for base in ("arepas", "arepas_clean") for m in (base, variant_name(base))]
for method in [m for m in compared if m in set(table["method"])]:
    for column, label in (("best_dice", "best threshold"), ("honest_dice", "val threshold")):
        change = metrics.relative_dice_change(table, method, column)
        lines = [
            f"- {row.dataset}: {method} {getattr(row, column):.3f} vs {row.best_other} "
            f"{getattr(row, 'best_other_' + column):.3f}, "
            f"relative change {row.relative_change:+.1%}"
            for row in change.itertuples()
        ]
        if lines:
            markdown += (
                f"\nRelative Dice change of {method} over the best other method ({label}):\n\n"
            )
            markdown += "\n".join(lines) + "\n"
with io.atomic_path(snakemake.output.markdown) as tmp:
    tmp.write_text(markdown)
print(markdown)
