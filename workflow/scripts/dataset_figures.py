import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import pandas as pd

from arepas import figures, io

per_subject = pd.read_csv(snakemake.input.per_subject, sep="\t")
summary = pd.read_csv(snakemake.input.summary, sep="\t")
curves = io.load_arrays(snakemake.input.curves)
methods = list(dict.fromkeys(per_subject["method"]))
pr = {m: (curves[f"{m}_precision"], curves[f"{m}_recall"]) for m in methods}
ap = dict(zip(summary["method"], summary["auprc"], strict=True))
prevalence = float(summary["lesion_fraction"].iloc[0])
figures.save_figure(figures.pr_curves(pr, ap, prevalence=prevalence), snakemake.output.pr)
best = per_subject[per_subject["threshold_kind"] == "best"]
figures.save_figure(figures.dice_strip(best), snakemake.output.dice)
