import sys

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import numpy as np
import pandas as pd

from arepas import figures, io, masks

subject, dataset = snakemake.wildcards.subject, snakemake.wildcards.dataset
methods = snakemake.params.methods
settings = snakemake.params.dataset
thresholds = masks.thresholds_of(
    pd.read_csv(snakemake.input.thresholds, sep="\t"), methods, snakemake.input.thresholds
)
native = io.open_nifti(snakemake.input.image, subject, "image")
image, affine = io.load_volume(snakemake.input.image, subject, "image")
roi = io.load_mask(snakemake.input.roi, subject, "roi_native", image.shape, affine)

layers, notes = {}, {}
image_ras, zooms = figures.ras_ordered(image, affine)
for method, map_path, mask_path in zip(
    methods, snakemake.input.maps, snakemake.output.masks, strict=True
):
    scores, map_affine = io.load_volume(map_path, subject, f"map {method}")
    if scores.shape != image.shape or not np.allclose(map_affine, affine, atol=1e-3):
        raise io.InputError(
            subject, f"map {method}", map_path, "not on the grid of the subject's image"
        )
    mask = masks.lesion_mask(scores, roi, thresholds[method])
    io.save_mask(mask_path, mask, affine, native.header)
    facts = masks.mask_facts(mask, native.header.get_zooms()[:3])
    print(f"{subject} {method}: threshold {thresholds[method]:.6g}, {facts}")
    notes[method] = f"{facts['volume_ml']:.2f} mL, {facts['n_components']} component(s)"
    layers[method] = (
        figures.ras_ordered(scores, affine)[0],
        figures.ras_ordered(mask, affine)[0],
        thresholds[method],
    )

window = masks.display_window(image, roi, settings["modality"], settings["intensity"])
fig = figures.mask_overlay(
    image_ras,
    zooms,
    layers,
    window,
    title=f"{dataset} / {subject} ({snakemake.params.split}): lesion masks at the val threshold",
    notes=notes,
)
figures.save_figure(fig, snakemake.output.figure)
