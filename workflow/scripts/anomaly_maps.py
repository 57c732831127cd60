import json
import sys
import time

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import numpy as np
import torch

from arepas import io, pipeline
from arepas.maps import anomaly_maps, patch_map_dense, patch_map_sampled
from arepas.preprocessing import SliceGeometry, assemble_volume

torch.set_num_threads(snakemake.threads)
start = time.perf_counter()
subject = snakemake.wildcards.subject
methods, options = snakemake.params.methods, snakemake.params.maps
rec = io.load_arrays(snakemake.input.reconstruction)
mapping = json.loads(open(snakemake.input.mapping).read())
native_shape, native_affine = mapping["native_shape"], np.asarray(mapping["native_affine"])
roi_native, _ = io.load_volume(snakemake.input.roi_native, subject, "roi_native")

patch = None
if {"arepas", "patch"} & set(methods):
    from arepas import scorer

    model, _, meta = scorer.load_scorer(snakemake.input.scorer)
    if meta.get("stalled"):
        print(f"WARNING: patch maps come from a stalled scorer: {meta['stalled']}")
    if options["scoring"] == "dense":
        patch = patch_map_dense(
            model, rec["slices"], rec["recon"], rec["roi"], options["stride"], normalise=None
        )
    else:
        patch = patch_map_sampled(
            model,
            rec["slices"],
            rec["recon"],
            rec["roi"],
            options["n_patches"],
            np.random.default_rng(options["sampling_seed"]),
            positions=options["positions"],
            normalise=None,
        )
    # Uncovered pixels stay 0 and the scaling runs in anomaly_maps, over the whole slice for
    # `reference`; the map is zero outside the ROI only after that.
extra = {}
if "ae" in methods:
    from arepas import autoencoder

    ae, _, _ = autoencoder.load_autoencoder(snakemake.input.autoencoder)
    extra["ae"] = autoencoder.reconstruct_autoencoder(ae, rec["slices"])

maps = anomaly_maps(
    rec["slices"],
    rec["recon"],
    rec["roi"],
    patch,
    methods,
    median_size=options["median_size"],
    normalise=options["normalise"],
    extra_recons=extra,
)
geometry = SliceGeometry.from_array(rec["geometry"])
w_affine = np.asarray(mapping["working_affine"])
transform_dir = snakemake.input.mapping.rsplit("/", 1)[0]
for method, working_path, native_path in zip(
    methods, snakemake.output.working, snakemake.output.native, strict=True
):
    volume = assemble_volume(maps[method], rec["indices"], geometry, fill=0.0)
    volume = np.maximum(volume, 0.0)
    io.save_volume(working_path, volume, w_affine)
    native = pipeline.to_native(volume, mapping, native_shape, native_affine, transform_dir)
    native = np.where(roi_native > 0, np.maximum(native, 0.0), 0.0)
    io.save_volume(native_path, native, native_affine)
print(f"{subject}: maps {methods} in {time.perf_counter() - start:.1f} s")
# The 2D slices of every method, for figures that show what the networks saw.
io.save_arrays(
    snakemake.output.slices,
    input=rec["slices"],
    edges=rec["edges"],
    recon=rec["recon"],
    roi=rec["roi"],
    lesion=rec["lesion"],
    **{f"map_{m}": maps[m] for m in methods},
)
