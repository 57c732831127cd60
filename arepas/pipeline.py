"""Steps that chain the library's pieces: what the workflow rules run."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from arepas import preprocessing as prep
from arepas.io import InputError


def check_subject_data(
    subject: str,
    paths: dict,
    image: np.ndarray,
    lesion: np.ndarray | None,
    roi: np.ndarray | None,
    modality: str,
) -> None:
    """Voxel-level checks that need the data; header checks ran when the workflow started."""
    if modality == "ct":
        lo, hi = float(image.min()), float(image.max())
        # CT in HU has air near -1000; raw scanner values (0..4095) or 8-bit exports do not.
        if lo >= -200:
            warnings.warn(
                f"subject '{subject}', column 'image', file '{paths['image']}': values "
                f"range {lo:g}..{hi:g}, which does not look like Hounsfield units "
                "(no air near -1000); check RescaleSlope/Intercept",
                stacklevel=2,
            )
    if lesion is not None and not lesion.any():
        warnings.warn(
            f"subject '{subject}', column 'lesion', file '{paths['lesion']}': the lesion "
            "mask is empty; its Dice is undefined and reported as such",
            stacklevel=2,
        )
    if roi is not None and not roi.any():
        raise InputError(subject, "roi", paths["roi"], "the ROI mask is empty")


def preprocess_subject(
    subject: str,
    paths: dict,
    image: np.ndarray,
    affine: np.ndarray,
    lesion: np.ndarray | None,
    roi: np.ndarray | None,
    settings: dict,
    template: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    transform_dir: str | Path | None = None,
    seed: int = 0,
    dataset: str = "?",
) -> dict:
    """Native scan -> working grid (RAS-aligned or template space), ROI, intensities, slices.

    Returns arrays for the outputs and a JSON-able ``mapping`` that tells how to go back to the
    native grid and which bias-field correction the intensities had. With registration, the
    transforms go to ``transform_dir``, a folder of their own: its earlier content is replaced.
    """
    modality = settings["modality"]
    # Before any work: a CT dataset asking for N4 is a config error, whatever the subject.
    bias = prep.bias_correction_settings(modality, settings["intensity"], dataset)
    check_subject_data(subject, paths, image, lesion, roi, modality)
    axis = prep.SLICE_AXES[settings.get("slice_axis", "axial")]
    transform = settings.get("registration", {}).get("transform", "none")
    outside = -1024.0 if modality == "ct" else 0.0
    if transform == "none":
        shape, w_affine = prep.working_grid(image.shape, affine, settings["spacing"])

        def forward(volume, order=1, cval=0.0):
            return prep.resample(volume, affine, shape, w_affine, order=order, cval=cval)

        def inverse_mask(mask):
            return prep.resample_mask(mask, w_affine, image.shape, affine)

        mapping = {
            "kind": "resample",
            "working_shape": list(shape),
            "working_affine": w_affine.tolist(),
        }
    else:
        from arepas import registration as reg  # ANTs only where registration is asked for

        t_image, w_affine, t_mask = template
        shape = t_image.shape
        description = reg.register(image, affine, t_image, w_affine, transform, transform_dir, seed)

        def forward(volume, order=1, cval=0.0):
            interp = "nearestNeighbor" if order == 0 else "linear"
            out = reg.apply_forward(
                volume, affine, shape, w_affine, description, transform_dir, interp
            )
            return out

        def inverse_mask(mask):
            back = reg.apply_inverse(
                mask.astype(np.float32), w_affine, image.shape, affine, description, transform_dir
            )
            return back > 0.5

        mapping = {
            "kind": "ants",
            "working_shape": list(shape),
            "working_affine": w_affine.tolist(),
            **description,
        }

    # CT finds its lung mask on the working image; MRI's working image waits for N4, below.
    working = forward(image, cval=outside) if modality == "ct" else None
    if roi is not None:
        roi_w = forward(roi.astype(np.float32)) > 0.5
        roi_native = roi
    else:
        if modality == "ct":
            threshold = settings.get("roi", {}).get("threshold_hu", -400.0)
            outside = prep.outside_air(image, prep.closest_voxel_axis(affine), threshold)
            # Outside the native field of view nothing is known: never lung, never body air.
            beyond = forward(np.ones(image.shape, np.float32)) < 0.5
            excluded = (forward(outside.astype(np.float32)) > 0.5) | beyond
            roi_w = prep.preprocess_ct_roi(
                working, settings["spacing"], settings.get("roi", {}), axis, excluded
            )
        else:
            if template is None:
                raise InputError(
                    subject,
                    "roi",
                    paths.get("image", ""),
                    "an MRI dataset without registration needs an ROI mask",
                )
            roi_w = template[2].astype(bool)
        if not roi_w.any():
            raise InputError(
                subject,
                "image",
                paths["image"],
                "the computed ROI is empty; check the intensities or give an ROI mask",
            )
        roi_native = inverse_mask(roi_w)
    if modality == "ct":
        mapping["bias_correction"] = bias  # always none: refused above otherwise
    else:
        # N4 on the native grid, before any interpolation and before the percentiles, fitted
        # inside the brain only (scalp, fat and air would mislead its histogram sharpening). The
        # brain mask is the given ROI or, after registration, the template's mapped back here;
        # registration itself saw the uncorrected scan, which its Mattes mutual-information
        # metric tolerates for a smooth field. The working image is the corrected scan moved
        # with the same transforms.
        corrected, facts = prep.correct_bias(image, affine, roi_native, bias)
        if facts["method"] == "n4":
            facts["mask"] = "roi" if roi is not None else "template"
        mapping["bias_correction"] = facts
        working = forward(corrected, cval=0.0)
    lesion_w = (
        forward(lesion.astype(np.float32)) > 0.5 if lesion is not None else np.zeros(shape, bool)
    )
    if lesion is not None and lesion.any():
        inside = (lesion & roi_native).sum() / lesion.sum()
        if inside == 0:
            raise InputError(
                subject,
                "roi",
                paths.get("roi") or paths["image"],
                "the ROI misses the lesion entirely",
            )
        if inside < 0.5:
            warnings.warn(
                f"subject '{subject}': only {inside:.0%} of the lesion lies inside the ROI; "
                "voxels outside the ROI are not scored",
                stacklevel=2,
            )
    normalised = prep.normalise(working, roi_w, modality, settings["intensity"])
    stack = prep.slice_stack(normalised, roi_w, lesion_w, axis, int(settings["slice_size"]))
    return {
        "working": normalised,
        "working_affine": w_affine,
        "roi": roi_w,
        "lesion": lesion_w,
        "roi_native": roi_native,
        "stack": stack,
        "mapping": mapping,
    }


def to_native(
    volume: np.ndarray,
    mapping: dict,
    native_shape,
    native_affine: np.ndarray,
    transform_dir: str | Path | None = None,
) -> np.ndarray:
    """Map a working-grid volume (e.g. an anomaly map) onto the subject's native grid."""
    w_affine = np.asarray(mapping["working_affine"])
    if mapping["kind"] == "resample":
        return prep.resample(volume, w_affine, native_shape, native_affine, order=1, cval=0.0)
    from arepas import registration as reg

    return reg.apply_inverse(volume, w_affine, native_shape, native_affine, mapping, transform_dir)
