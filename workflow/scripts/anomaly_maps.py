import json
import sys
import time

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import numpy as np
import torch

from arepas import io, pipeline
from arepas.maps import anomaly_maps, raw_patch_map, reference_scores_for
from arepas.methods import CALIBRATED_METHOD, CLEAN_METHOD, PATCH_METHODS
from arepas.postprocess import (
    PostprocessSettings,
    evaluated_methods,
    median_per_slice,
    remove_small_components,
    variant_name,
)
from arepas.preprocessing import SliceGeometry, assemble_volume

torch.set_num_threads(snakemake.threads)
# Scoring runs on a GPU where one is visible; this rule asks for none, so mostly on the CPU.
device = "cuda" if torch.cuda.is_available() else "cpu"
start = time.perf_counter()
subject = snakemake.wildcards.subject
methods, options = snakemake.params.methods, snakemake.params.maps
rec = io.load_arrays(snakemake.input.reconstruction)
mapping = json.loads(open(snakemake.input.mapping).read())
native_shape, native_affine = mapping["native_shape"], np.asarray(mapping["native_affine"])
roi_native, _ = io.load_volume(snakemake.input.roi_native, subject, "roi_native")


def scorer_patch_map(scorer_file, recon, options):
    from arepas import scorer

    model, _, meta = scorer.load_scorer(scorer_file, device=device)
    if meta.get("stalled"):
        print(f"WARNING: patch maps come from a stalled scorer ({scorer_file}): {meta['stalled']}")
    return raw_patch_map(model, rec["slices"], recon, rec["roi"], options)


reference_methods = [m for m in methods if m != CLEAN_METHOD]
patch = None
if set(PATCH_METHODS) & set(methods):
    patch = scorer_patch_map(snakemake.input.scorer, rec["recon"], options)
healthy = None
if CALIBRATED_METHOD in methods:
    # The val subjects' patch scores but this subject's own (when it is one of them).
    calibration = io.load_arrays(snakemake.input.calibration)
    subjects = [str(s) for s in calibration["subjects"]]
    split = np.cumsum(calibration["counts"])[:-1]
    healthy = reference_scores_for(subject, subjects, np.split(calibration["scores"], split))
extra = {}
if "ae" in methods:
    from arepas import autoencoder

    ae, _, _ = autoencoder.load_autoencoder(snakemake.input.autoencoder, device=device)
    extra["ae"] = autoencoder.reconstruct_autoencoder(ae, rec["slices"])
if "dae" in methods:
    from arepas import dae

    # The unchanged slices go in; the map is |restoration - input|.
    extra["dae"] = dae.restore(dae.load_dae(snakemake.input.dae)[0], rec["slices"])

maps = anomaly_maps(
    rec["slices"],
    rec["recon"],
    rec["roi"],
    patch,
    reference_methods,
    median_size=options["median_size"],
    normalise=options["normalise"],
    extra_recons=extra,
    healthy_scores=healthy,
)
if CLEAN_METHOD in methods:
    # Its own translator's reconstruction of the same slices, its own scorer and map options.
    clean_options = snakemake.params.clean_maps
    clean_recon = io.load_arrays(snakemake.input.clean_reconstruction)["recon"]
    clean_patch = scorer_patch_map(snakemake.input.clean_scorer, clean_recon, clean_options)
    maps[CLEAN_METHOD] = anomaly_maps(
        rec["slices"],
        clean_recon,
        rec["roi"],
        clean_patch,
        ["arepas"],
        median_size=clean_options["median_size"],
        normalise=clean_options["normalise"],
    )["arepas"]
geometry = SliceGeometry.from_array(rec["geometry"])
post = PostprocessSettings.from_dict(snakemake.params.postprocess)
volumes = {}
for method in methods:
    volumes[method] = np.maximum(assemble_volume(maps[method], rec["indices"], geometry), 0.0)
    if post.active:
        # The median works on the network slices, as the filter of `maps.median_size` does; the
        # component removal on the assembled working volume, where the slices' 3-D neighbours are.
        filtered = median_per_slice(maps[method], rec["roi"], post.median_size)
        filtered = np.maximum(assemble_volume(filtered, rec["indices"], geometry), 0.0)
        volumes[variant_name(method)] = remove_small_components(filtered, post.min_component_voxels)
w_affine = np.asarray(mapping["working_affine"])
transform_dir = snakemake.input.transforms
for method, working_path, native_path in zip(
    evaluated_methods(methods, post),
    snakemake.output.working,
    snakemake.output.native,
    strict=True,
):
    volume = volumes[method]
    io.save_volume(working_path, volume, w_affine)
    native = pipeline.to_native(volume, mapping, native_shape, native_affine, transform_dir)
    native = np.where(roi_native > 0, np.maximum(native, 0.0), 0.0)
    io.save_volume(native_path, native, native_affine)
print(f"{subject}: maps {list(volumes)} in {time.perf_counter() - start:.1f} s")
# The 2D slices of every method, raw, for figures that show what the networks saw.
io.save_arrays(
    snakemake.output.slices,
    input=rec["slices"],
    edges=rec["edges"],
    recon=rec["recon"],
    roi=rec["roi"],
    lesion=rec["lesion"],
    **{f"map_{m}": maps[m] for m in methods},
)
