import json
import sys
from pathlib import Path

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import numpy as np

from arepas import io, pipeline

subject = snakemake.wildcards.subject
paths = dict(snakemake.input.items())
image, affine = io.load_volume(paths["image"], subject, "image")
lesion = (
    io.load_mask(paths["lesion"], subject, "lesion", image.shape, affine)
    if "lesion" in paths
    else None
)
roi = io.load_mask(paths["roi"], subject, "roi", image.shape, affine) if "roi" in paths else None
template = None
if "template" in paths:
    t_image, t_affine = io.load_volume(paths["template"], "template", "template")
    t_mask, _ = io.load_volume(paths["template_mask"], "template", "template_mask")
    template = (t_image, t_affine, t_mask > 0)

transform_dir = Path(snakemake.output.transforms)
# Declared even without registration, so the rules that read transforms have one to name.
transform_dir.mkdir(parents=True, exist_ok=True)
result = pipeline.preprocess_subject(
    subject,
    paths,
    image,
    affine,
    lesion,
    roi,
    snakemake.params.settings,
    template=template,
    transform_dir=transform_dir,
    seed=snakemake.params.seed,
    dataset=snakemake.wildcards.dataset,
)
w_affine = result["working_affine"]
io.save_volume(snakemake.output.working, result["working"], w_affine)
io.save_volume(snakemake.output.roi, result["roi"], w_affine, dtype=np.uint8)
io.save_volume(snakemake.output.lesion, result["lesion"], w_affine, dtype=np.uint8)
io.save_volume(snakemake.output.roi_native, result["roi_native"], affine, dtype=np.uint8)
io.save_arrays(snakemake.output.slices, **result["stack"])
stack = result["stack"]
print(
    f"{subject}: native {image.shape}, working {result['working'].shape}, "
    f"{len(stack['indices'])} slices of {stack['slices'].shape[1]}^2, "
    f"ROI {int(result['roi'].sum())} voxels"
)
print(f"{subject}: bias-field correction {result['mapping']['bias_correction']}")
with io.atomic_path(snakemake.output.mapping) as tmp:
    tmp.write_text(
        json.dumps(
            {
                **result["mapping"],
                "native_shape": list(image.shape),
                "native_affine": affine.tolist(),
            },
            indent=1,
        )
    )
