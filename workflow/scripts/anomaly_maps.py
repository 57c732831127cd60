import json
import sys
import time

sys.stderr = sys.stdout = open(snakemake.log[0], "w")

import numpy as np
import torch

from arepas import io
from arepas.methods import CALIBRATED_METHOD, PATCH_METHODS, V0_METHOD
from arepas.postprocess import PostprocessSettings
from arepas.subject_maps import method_maps, native_volume, working_volumes

torch.set_num_threads(snakemake.threads)
# Scoring runs on a GPU where one is visible; this rule asks for none, so mostly on the CPU.
device = "cuda" if torch.cuda.is_available() else "cpu"
start = time.perf_counter()
subject = snakemake.wildcards.subject
methods = snakemake.params.methods
rec = io.load_arrays(snakemake.input.reconstruction)
mapping = json.loads(open(snakemake.input.mapping).read())
roi_native, _ = io.load_volume(snakemake.input.roi_native, subject, "roi_native")


def load_scorer(path):
    from arepas import scorer

    model, _, meta = scorer.load_scorer(path, device=device)
    return model, meta


models = {}
if set(PATCH_METHODS) & set(methods):
    models["scorer"] = load_scorer(snakemake.input.scorer)
if "ae" in methods:
    from arepas import autoencoder

    models["autoencoder_model"] = autoencoder.load_autoencoder(
        snakemake.input.autoencoder, device=device
    )[0]
if "dae" in methods:
    from arepas import dae

    models["dae_model"] = dae.load_dae(snakemake.input.dae)[0]
if CALIBRATED_METHOD in methods:
    models["calibration"] = io.load_arrays(snakemake.input.calibration)
if V0_METHOD in methods:
    models["v0"] = {
        "recon": io.load_arrays(snakemake.input.v0_reconstruction)["recon"],
        "scorer": load_scorer(snakemake.input.v0_scorer),
        "options": snakemake.params.v0_maps,
    }
maps = method_maps(rec, methods, snakemake.params.maps, subject=subject, device=device, **models)
post = PostprocessSettings.from_dict(snakemake.params.postprocess)
volumes = working_volumes(maps, rec, methods, post)
w_affine = np.asarray(mapping["working_affine"])
# The outputs list the maps in the order of evaluated_methods, as working_volumes does.
for volume, working_path, native_path in zip(
    volumes.values(), snakemake.output.working, snakemake.output.native, strict=True
):
    io.save_volume(working_path, volume, w_affine)
    native = native_volume(volume, mapping, roi_native, snakemake.input.transforms)
    io.save_volume(native_path, native, np.asarray(mapping["native_affine"]))
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
