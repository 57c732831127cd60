"""Binary lesion masks for `test` and `predict` subjects: each method's continuous map cut at the
dataset's label-free threshold, the one chosen on the healthy `val` subjects
(`arepas.metrics.healthy_threshold`), so that a scan without labels gets a segmentation and the
`test` masks are the evaluation's "val_thr" segmentations.
"""

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from arepas.metrics import segment
from arepas.preprocessing import DEFAULT_CT_MAPPING

THRESHOLD_COLUMNS = ["method", "threshold", "threshold_mode", "threshold_value", "n_val_subjects"]


def thresholds_of(table: pd.DataFrame, methods: Sequence[str], source: str) -> dict[str, float]:
    """Each method's threshold from a table of `THRESHOLD_COLUMNS` (rule mask_thresholds), or a
    ValueError naming `source` and what is missing or not a number."""
    missing = set(THRESHOLD_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"threshold table '{source}' lacks columns {sorted(missing)}")
    found = dict(zip(table["method"].astype(str), table["threshold"], strict=True))
    out = {}
    for method in methods:
        if method not in found:
            raise ValueError(
                f"threshold table '{source}' has no row for method '{method}' "
                f"(rows: {sorted(found)})"
            )
        value = float(found[method])
        if not np.isfinite(value) or value < 0:
            raise ValueError(
                f"threshold table '{source}', method '{method}': threshold {value} is not a "
                "finite score >= 0"
            )
        out[method] = value
    return out


def lesion_mask(scores: np.ndarray, roi: np.ndarray, threshold: float) -> np.ndarray:
    """The binary mask of one map: voxels of the ROI scoring at least `threshold`, the same
    voxels the evaluation counts as segmented (`arepas.metrics.segment`)."""
    scores = np.asarray(scores)
    if np.shape(roi) != scores.shape:
        raise ValueError(f"map shape {scores.shape} and ROI shape {np.shape(roi)} differ")
    return segment(scores, roi, threshold)


def mask_facts(mask: np.ndarray, zooms: Sequence[float]) -> dict[str, float]:
    """Voxel count, volume in mL and number of 26-connected components (lesions counted as the
    evaluation counts them, `arepas.metrics.subject_metrics`) of a binary mask on a grid of
    voxel size `zooms` (mm)."""
    mask = np.asarray(mask, dtype=bool)
    _, n_components = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    n_voxels = int(np.count_nonzero(mask))
    return {
        "n_voxels": n_voxels,
        "volume_ml": n_voxels * float(np.prod(np.asarray(zooms, dtype=np.float64))) / 1000.0,
        "n_components": int(n_components),
    }


def display_window(
    image: np.ndarray, roi: np.ndarray, modality: str, intensity: Mapping
) -> tuple[float, float]:
    """Grey range for showing a native scan: a CT's HU window from the dataset's `intensity`
    settings, as the networks saw it; for MRI the ROI's intensity percentiles that normalisation
    maps to [-1, 1] (whole scan where the ROI is empty)."""
    if modality == "ct":
        low, high = intensity.get("window", (-1000.0, 200.0))
        if intensity.get("ct_mapping", DEFAULT_CT_MAPPING) == "lower_half":
            high = (low + high) / 2.0
        return float(low), float(high)
    image = np.asarray(image, dtype=np.float32)
    roi = np.asarray(roi, dtype=bool)
    values = image[roi] if roi.any() else image.ravel()
    low, high = np.percentile(values, tuple(intensity.get("percentiles", (1.0, 99.0))))
    return float(low), float(high) if high > low else float(low) + 1.0
