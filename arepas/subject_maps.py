"""One subject through the trained networks, as the workflow's `reconstruct` and `anomaly_maps`
rules run it: the reconstruction of its slices, every method's maps, their post-processed
variants, and the volumes on the working and the native grid. The rule scripts and the benchmarks
call these functions, so that what a benchmark times is what the workflow does."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from arepas import pipeline
from arepas.maps import anomaly_maps, raw_patch_map, reference_scores_for
from arepas.methods import CALIBRATED_METHOD, PATCH_METHODS, V0_METHOD
from arepas.postprocess import (
    PostprocessSettings,
    evaluated_methods,
    median_per_slice,
    remove_small_components,
    variant_name,
)
from arepas.preprocessing import SliceGeometry, assemble_volume


def reconstruct(
    stack: Mapping[str, np.ndarray], generator, settings, device: str = "cpu"
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(the stack with its edge maps and reconstruction, the reconstruction as a working-grid
    volume): the translator run on a subject's network slices."""
    from arepas import translator

    # The detector the model was trained with (older model files say "skimage").
    edge_maps = translator.edges_for(settings, stack["slices"])
    recon = translator.translate(generator, edge_maps, device=device)
    arrays = {**stack, "edges": edge_maps, "recon": recon}
    geometry = SliceGeometry.from_array(stack["geometry"])
    return arrays, assemble_volume(recon, stack["indices"], geometry, fill=-1.0)


def method_maps(
    rec: Mapping[str, np.ndarray],
    methods: Sequence[str],
    options: Mapping[str, Any],
    *,
    scorer=None,
    autoencoder_model=None,
    dae_model=None,
    calibration: Mapping[str, np.ndarray] | None = None,
    subject: str = "",
    v0: Mapping[str, Any] | None = None,
    device: str = "cpu",
    progress: Callable[[str], None] = print,
    lap: Callable[[str], None] = lambda part: None,
) -> dict[str, np.ndarray]:
    """Every method's maps on a subject's network slices (rec: the reconstruct step's arrays).

    scorer: (model, meta) of the patch scorer, for the patch methods; autoencoder_model and
    dae_model for `ae` and `dae`; calibration: the val subjects' patch scores
    (`arepas_calibrated`, the subject's own left out); v0: `arepas_v0`'s reconstruction
    (`recon`), scorer (`scorer`) and map options (`options`). lap(part) is called after each
    part (patch scores, autoencoder, dae, combine), for benchmarks that time them.
    """
    patch = None
    if set(PATCH_METHODS) & set(methods):
        patch = _patch_map(scorer, rec["slices"], rec["recon"], rec["roi"], options, progress)
        lap("patch scores")
    healthy = None
    if CALIBRATED_METHOD in methods:
        subjects = [str(s) for s in calibration["subjects"]]
        split = np.cumsum(calibration["counts"])[:-1]
        healthy = reference_scores_for(subject, subjects, np.split(calibration["scores"], split))
    extra = {}
    if "ae" in methods:
        from arepas import autoencoder

        extra["ae"] = autoencoder.reconstruct_autoencoder(autoencoder_model, rec["slices"])
        lap("autoencoder")
    if "dae" in methods:
        from arepas import dae

        # The unchanged slices go in; the map is |restoration - input|.
        extra["dae"] = dae.restore(dae_model, rec["slices"], device=device)
        lap("dae")
    maps = anomaly_maps(
        rec["slices"],
        rec["recon"],
        rec["roi"],
        patch,
        [m for m in methods if m != V0_METHOD],
        median_size=options["median_size"],
        normalise=options["normalise"],
        extra_recons=extra,
        healthy_scores=healthy,
    )
    lap("combine")
    if V0_METHOD in methods:
        # Its own translator's reconstruction of the same slices, its own scorer and options.
        v0_patch = _patch_map(
            v0["scorer"], rec["slices"], v0["recon"], rec["roi"], v0["options"], progress
        )
        maps[V0_METHOD] = anomaly_maps(
            rec["slices"],
            v0["recon"],
            rec["roi"],
            v0_patch,
            ["arepas"],
            median_size=v0["options"]["median_size"],
            normalise=v0["options"]["normalise"],
        )["arepas"]
    return maps


def _patch_map(scorer, slices, recon, roi, options, progress) -> np.ndarray:
    model, meta = scorer
    if meta.get("stalled"):
        progress(f"WARNING: patch maps come from a stalled scorer: {meta['stalled']}")
    return raw_patch_map(model, slices, recon, roi, options)


def working_volumes(
    maps: Mapping[str, np.ndarray],
    rec: Mapping[str, np.ndarray],
    methods: Sequence[str],
    postprocess: PostprocessSettings,
) -> dict[str, np.ndarray]:
    """Each method's map as a working-grid volume, and its post-processed variant (`+pp`),
    in the order of evaluated_methods."""
    geometry = SliceGeometry.from_array(rec["geometry"])
    volumes = {}
    for method in methods:
        volumes[method] = np.maximum(assemble_volume(maps[method], rec["indices"], geometry), 0.0)
        if postprocess.active:
            # The median works on the network slices, as `maps.median_size` does; the component
            # removal on the assembled volume, where the slices' 3-D neighbours are.
            filtered = median_per_slice(maps[method], rec["roi"], postprocess.median_size)
            filtered = np.maximum(assemble_volume(filtered, rec["indices"], geometry), 0.0)
            volumes[variant_name(method)] = remove_small_components(
                filtered, postprocess.min_component_voxels
            )
    return {m: volumes[m] for m in evaluated_methods(methods, postprocess)}


def native_volume(
    volume: np.ndarray,
    mapping: Mapping[str, Any],
    roi_native: np.ndarray,
    transform_dir,
) -> np.ndarray:
    """A working-grid map on the subject's native grid, non-negative and 0 outside its ROI."""
    native = pipeline.to_native(
        volume,
        mapping,
        mapping["native_shape"],
        np.asarray(mapping["native_affine"]),
        transform_dir,
    )
    return np.where(roi_native > 0, np.maximum(native, 0.0), 0.0)
