import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

from arepas import figures, io

subject = snakemake.wildcards.subject
s = io.load_arrays(snakemake.input.slices)
k = figures.most_lesioned_slice(s["lesion"], axis=0)
residual = s.get("map_residual", abs(s["recon"] - s["input"]) * s["roi"])
fig = figures.subject_panel(
    s["input"][k],
    s["edges"][k],
    s["recon"][k],
    residual[k],
    s["map_patch"][k] if "map_patch" in s else residual[k] * 0,
    s["map_arepas"][k] if "map_arepas" in s else residual[k] * 0,
    s["lesion"][k],
    title=f"{snakemake.wildcards.dataset} / {subject}, network slice {k}",
)
figures.save_figure(fig, snakemake.output[0])
