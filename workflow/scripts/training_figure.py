import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import pandas as pd

from arepas import figures

history = pd.read_csv(snakemake.input[0], sep="\t")
title = f"{snakemake.wildcards.dataset}: {snakemake.params.title}"
figure = figures.training_curves(history, "epoch", list(snakemake.params.columns), title)
figures.save_figure(figure, snakemake.output[0])
