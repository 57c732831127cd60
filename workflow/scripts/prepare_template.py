import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

from arepas import io
from arepas import registration as reg
from arepas.preprocessing import resample_mask

settings = snakemake.params.registration
data, affine, mask = reg.load_template(settings["template"], settings.get("template_mask"))
template, t_affine = reg.template_on_grid(data, affine, snakemake.params.spacing)
mask_w = resample_mask(mask, affine, template.shape, t_affine)
print(
    f"template {settings['template']}: {data.shape} -> {template.shape} "
    f"at {snakemake.params.spacing} mm"
)
io.save_volume(snakemake.output.template, template, t_affine)
io.save_volume(snakemake.output.mask, mask_w, t_affine, dtype="uint8")
