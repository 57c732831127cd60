import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

from arepas import io
from arepas import registration as reg

settings = snakemake.params.registration
template, t_affine, mask_w = reg.template_for_grid(
    settings["template"], settings.get("template_mask"), snakemake.params.spacing
)
print(f"template {settings['template']}: {template.shape} at {snakemake.params.spacing} mm")
io.save_volume(snakemake.output.template, template, t_affine)
io.save_volume(snakemake.output.mask, mask_w, t_affine, dtype="uint8")
