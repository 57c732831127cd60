import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import pandas as pd

from arepas import io, metrics

table = pd.concat([pd.read_csv(p, sep="\t") for p in snakemake.input], ignore_index=True)
io.save_table(snakemake.output.table, table)
markdown = metrics.summary_markdown(table)
with io.atomic_path(snakemake.output.markdown) as tmp:
    tmp.write_text(markdown)
print(markdown)
