import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import pandas as pd

from arepas import io, metrics

table = pd.concat([pd.read_csv(p, sep="\t") for p in snakemake.input], ignore_index=True)
io.save_table(snakemake.output.table, table)
markdown = metrics.summary_markdown(table)
for column, label in (("best_dice", "best threshold"), ("honest_dice", "val threshold")):
    change = metrics.relative_dice_change(table, "arepas", column)
    lines = [
        f"- {row.dataset}: arepas {getattr(row, column):.3f} vs {row.best_other} "
        f"{getattr(row, 'best_other_' + column):.3f}, relative change {row.relative_change:+.1%}"
        for row in change.itertuples()
    ]
    if lines:
        markdown += f"\nRelative Dice change of arepas over the best other method ({label}):\n\n"
        markdown += "\n".join(lines) + "\n"
with io.atomic_path(snakemake.output.markdown) as tmp:
    tmp.write_text(markdown)
print(markdown)
