import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import pandas as pd  # noqa: E402

from arepas import io, metrics  # noqa: E402

table = pd.concat([pd.read_csv(p, sep="\t") for p in snakemake.input], ignore_index=True)
io.save_table(snakemake.output.table, table)
markdown = metrics.summary_markdown(table)
with io.atomic_path(snakemake.output.markdown) as tmp:
    tmp.write_text(markdown)
print(markdown)
