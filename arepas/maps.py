"""Anomaly maps of every method from slices, reconstructions and patch scores.

AREPAS map as the reference implementation, the authors' code, builds it (Mitic & Langs, MLMI
2025, arXiv 2509.12905; github.com/cirmuw/arepas, inference.py and utils.py): 10,000 random patch
positions per slice (one draw from seed 42, the same on every slice), each patch's dissimilarity
spread over its patch, overlaps averaged, uncovered pixels 0, then (h - min) / (max - min) over the
whole slice, multiplied pixel-wise by |reconstruction - input|. Since some pixels are never
covered, min is 0 in practice and the map is divided by the slice maximum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from arepas.methods import CALIBRATED_METHOD, PATCH_METHODS
from arepas.scorer import (
    SiameseScorer,
    dense_patch_scores_batch,
    patch_scores_at,
    random_positions,
)

# The reference draws its patch positions from numpy's default_rng(42) (utils.py).
REFERENCE_SAMPLING_SEED = 42

# Methods whose map is |reconstruction - input| of the translator; other residual methods come
# through `extra_recons`.
TRANSLATOR_METHODS = ("residual", "patch", "arepas", CALIBRATED_METHOD)


def _box_accumulate(
    values: np.ndarray, ys: np.ndarray, xs: np.ndarray, patch_size: int, shape: tuple[int, int]
) -> np.ndarray:
    """Sum of `values` over each patch footprint via a 2-D difference array and cumulative sums."""
    height, width = shape
    diff = np.zeros((height + 1, width + 1), dtype=np.float64)
    y1 = ys + patch_size
    x1 = xs + patch_size
    np.add.at(diff, (ys, xs), values)
    np.add.at(diff, (y1, xs), -values)
    np.add.at(diff, (ys, x1), -values)
    np.add.at(diff, (y1, x1), values)
    return diff.cumsum(axis=0).cumsum(axis=1)[:height, :width]


def _grid_accumulate(
    grid: np.ndarray, stride: int, patch_size: int, shape: tuple[int, int]
) -> np.ndarray:
    """Box sums for scores on a regular grid of top-left corners: (n, Gy, Gx) -> (n, H, W)."""
    n, gy, gx = grid.shape
    height, width = shape
    diff = np.zeros((n, height + 1, width + 1), dtype=np.float64)
    rows = slice(0, (gy - 1) * stride + 1, stride)
    cols = slice(0, (gx - 1) * stride + 1, stride)
    rows_end = slice(patch_size, patch_size + (gy - 1) * stride + 1, stride)
    cols_end = slice(patch_size, patch_size + (gx - 1) * stride + 1, stride)
    # Corners of one grid never coincide, so plain slice assignment adds each score once.
    diff[:, rows, cols] += grid
    diff[:, rows_end, cols] -= grid
    diff[:, rows, cols_end] -= grid
    diff[:, rows_end, cols_end] += grid
    return diff.cumsum(axis=1).cumsum(axis=2)[:, :height, :width]


def spread_patch_scores(
    scores: np.ndarray,
    positions: np.ndarray | int,
    patch_size: int,
    shape: tuple[int, int],
) -> np.ndarray:
    """Spread patch scores over their footprints, averaging overlaps; uncovered pixels are 0.

    Either `scores` (k,) with `positions` (k, 2) top-left (y, x) corners, or a dense grid `scores`
    (Gy, Gx) or (n, Gy, Gx) with `positions` the integer grid stride (corner [i, j] at
    (i*stride, j*stride)). Returns (H, W), or (n, H, W) for a batch of grids.
    """
    height, width = shape
    scores = np.asarray(scores, dtype=np.float64)
    if isinstance(positions, int | np.integer):
        stride = int(positions)
        if stride < 1:
            raise ValueError(f"grid stride must be >= 1, got {stride}")
        single = scores.ndim == 2
        grid = scores[None] if single else scores
        if grid.ndim != 3:
            raise ValueError(f"grid scores must be (Gy, Gx) or (n, Gy, Gx), got {scores.shape}")
        gy, gx = grid.shape[1:]
        if (gy - 1) * stride + patch_size > height or (gx - 1) * stride + patch_size > width:
            raise ValueError(f"grid {gy}x{gx} at stride {stride} does not fit in {shape}")
        total = _grid_accumulate(grid, stride, patch_size, shape)
        count = _grid_accumulate(np.ones((1, gy, gx)), stride, patch_size, shape)
    else:
        positions = np.asarray(positions, dtype=np.int64)
        if positions.ndim != 2 or positions.shape[1] != 2 or len(positions) != scores.size:
            raise ValueError(
                f"positions must be (k, 2) for k={scores.size} scores, got {positions.shape}"
            )
        ys, xs = positions[:, 0], positions[:, 1]
        if len(ys) and (
            ys.min() < 0
            or xs.min() < 0
            or ys.max() + patch_size > height
            or xs.max() + patch_size > width
        ):
            raise ValueError("a patch position lies (partly) outside the slice")
        single = True
        total = _box_accumulate(scores.ravel(), ys, xs, patch_size, shape)[None]
        count = _box_accumulate(np.ones(len(ys)), ys, xs, patch_size, shape)[None]
    # Counts are whole numbers; the rounding removes cumulative-sum drift before the division.
    count = np.rint(count)
    spread = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    spread = spread.astype(np.float32)
    return spread[0] if single else spread


def normalise_per_slice(maps: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] within the ROI of each slice, 0 outside; a flat slice becomes 0."""
    maps = np.asarray(maps, dtype=np.float32)
    roi = np.asarray(roi, dtype=bool)
    if maps.shape != roi.shape:
        raise ValueError(f"map shape {maps.shape} does not match ROI shape {roi.shape}")
    single = maps.ndim == 2
    m = maps[None] if single else maps
    r = roi[None] if single else roi
    axes = (1, 2)
    low = np.where(r, m, np.inf).min(axis=axes, keepdims=True)
    high = np.where(r, m, -np.inf).max(axis=axes, keepdims=True)
    span = high - low
    valid = np.isfinite(span) & (span > 0)
    scaled = np.divide(m - low, span, out=np.zeros_like(m), where=valid & r)
    out = np.where(r, np.clip(scaled, 0.0, 1.0), 0.0).astype(np.float32)
    return out[0] if single else out


def normalise_whole_slice(maps: np.ndarray) -> np.ndarray:
    """Reference scaling: (h - min) / (max - min + 1e-8) over every pixel of each slice, ROI or
    not, uncovered pixels (0) included."""
    maps = np.asarray(maps, dtype=np.float32)
    single = maps.ndim == 2
    m = (maps[None] if single else maps).astype(np.float64)
    low = m.min(axis=(1, 2), keepdims=True)
    high = m.max(axis=(1, 2), keepdims=True)
    out = ((m - low) / (high - low + 1e-8)).astype(np.float32)
    return out[0] if single else out


NORMALISATIONS = ("reference", "slice", "volume", "none")


def normalise_patch_map(maps: np.ndarray, roi: np.ndarray, mode: str = "reference") -> np.ndarray:
    """Scale a patch map (n, S, S) of one subject: 'reference' min-max over each whole slice (the
    reference implementation; in practice a division by the slice maximum), 'slice' min-max
    inside the ROI of each slice, 'volume' min-max over the subject's whole ROI, 'none' the
    scorer's own [0, 1] probabilities. Per-slice scaling lifts the most dissimilar patch of every
    slice to 1, lesion or not. Zero outside the ROI in every mode."""
    if mode == "reference":
        return np.where(roi, normalise_whole_slice(maps), 0.0).astype(np.float32)
    if mode == "slice":
        return normalise_per_slice(maps, roi)
    roi = np.asarray(roi, dtype=bool)
    maps = np.asarray(maps, dtype=np.float32)
    if mode == "none":
        return np.where(roi, maps, 0.0).astype(np.float32)
    if mode != "volume":
        raise ValueError(f"unknown patch map normalisation '{mode}', choose from {NORMALISATIONS}")
    if not roi.any():
        return np.zeros_like(maps)
    low, high = float(maps[roi].min()), float(maps[roi].max())
    if high <= low:
        return np.zeros_like(maps)
    return np.where(roi, (maps - low) / (high - low), 0.0).astype(np.float32)


def healthy_patch_scores(raw_patch: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """Sorted unscaled patch scores inside the ROI of one healthy subject (float32): a sample of
    what the scorer says about normal tissue, for :func:`calibrated_patch_map`."""
    raw_patch = np.asarray(raw_patch, dtype=np.float32)
    roi = np.asarray(roi, dtype=bool)
    if raw_patch.shape != roi.shape:
        raise ValueError(f"patch map {raw_patch.shape} and ROI {roi.shape} differ in shape")
    return np.sort(raw_patch[roi])


def calibrated_patch_map(
    raw_patch: np.ndarray, roi: np.ndarray, healthy_scores: np.ndarray
) -> np.ndarray:
    """Each unscaled patch score as its quantile among sorted healthy scores (the fraction of
    healthy scores at or below it), in [0, 1], zero outside the ROI.

    Instead of the reference's division by each slice's maximum, which lifts the most dissimilar
    patch of every slice to 1 whether or not anything is abnormal there, the score says how
    unusual this dissimilarity is for healthy tissue; no lesion label is used.
    """
    healthy_scores = np.asarray(healthy_scores, dtype=np.float32)
    if healthy_scores.ndim != 1 or healthy_scores.size == 0:
        raise ValueError("healthy_scores must be a non-empty 1-D array of sorted scores")
    if np.any(np.diff(healthy_scores) < 0):
        raise ValueError("healthy_scores must be sorted in ascending order")
    raw_patch = np.asarray(raw_patch, dtype=np.float32)
    quantile = np.searchsorted(healthy_scores, raw_patch, side="right") / healthy_scores.size
    return np.where(np.asarray(roi, dtype=bool), quantile, 0.0).astype(np.float32)


def reference_scores_for(
    subject: str, subjects: Sequence[str], scores: Sequence[np.ndarray]
) -> np.ndarray:
    """The healthy reference of one subject: the sorted scores of every healthy subject but
    itself, so that a val subject's own map (from which the threshold is chosen) is not
    calibrated on its own scores."""
    others = [s for name, s in zip(subjects, scores, strict=True) if name != subject]
    if not others or not sum(len(s) for s in others):
        raise ValueError(
            f"no healthy patch scores to calibrate subject '{subject}' on: the calibration "
            f"holds only {list(subjects)}"
        )
    return np.sort(np.concatenate(others))


def _residual(real: np.ndarray, recon: np.ndarray, roi: np.ndarray) -> np.ndarray:
    return np.where(roi, np.abs(np.asarray(recon, np.float32) - real), 0.0).astype(np.float32)


def anomaly_maps(
    real: np.ndarray,
    recon: np.ndarray,
    roi: np.ndarray,
    patch_map: np.ndarray | None,
    methods: Sequence[str],
    median_size: int = 0,
    extra_recons: Mapping[str, np.ndarray] | None = None,
    normalise: str = "reference",
    healthy_scores: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Maps (n, S, S) per method; all zero outside the ROI.

    'residual' = |recon - real|; 'patch' = normalised patch map; 'arepas' = normalised patch map
    x residual; 'arepas_calibrated' = the unscaled patch map calibrated on `healthy_scores`
    (:func:`calibrated_patch_map`) x residual; any method named in `extra_recons` (e.g. 'ae') =
    |that reconstruction - real|.
    A 2-D median filter of `median_size` (0 = off) is applied to every final map, per slice.
    The patch map is scaled by :func:`normalise_patch_map` with `normalise`.
    """
    real = np.asarray(real, dtype=np.float32)
    roi = np.asarray(roi, dtype=bool)
    if real.ndim != 3 or np.shape(recon) != real.shape or roi.shape != real.shape:
        raise ValueError(
            f"real, recon and roi must share one (n, S, S) shape; got {real.shape}, "
            f"{np.shape(recon)}, {roi.shape}"
        )
    extra_recons = dict(extra_recons or {})
    for name, other in extra_recons.items():
        if name in TRANSLATOR_METHODS:
            raise ValueError(f"'{name}' is a translator method, not an extra reconstruction")
        if np.shape(other) != real.shape:
            raise ValueError(
                f"reconstruction '{name}' has shape {np.shape(other)}, not {real.shape}"
            )
    available = set(TRANSLATOR_METHODS) | set(extra_recons)
    unknown = [m for m in methods if m not in available]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; available: {sorted(available)}")
    if median_size < 0:
        raise ValueError(f"median_size must be >= 0, got {median_size}")

    needs_patch = set(PATCH_METHODS) & set(methods)
    patch = None
    if needs_patch:
        if patch_map is None:
            raise ValueError(f"methods {sorted(needs_patch)} need a patch map")
        patch = normalise_patch_map(patch_map, roi, normalise)
    if CALIBRATED_METHOD in methods and healthy_scores is None:
        raise ValueError(f"method {CALIBRATED_METHOD} needs healthy patch scores")
    residual = _residual(real, recon, roi)

    maps: dict[str, np.ndarray] = {}
    for method in methods:
        if method == "residual":
            result = residual
        elif method == "patch":
            result = patch
        elif method == "arepas":
            result = patch * residual
        elif method == CALIBRATED_METHOD:
            result = calibrated_patch_map(patch_map, roi, healthy_scores) * residual
        else:
            result = _residual(real, extra_recons[method], roi)
        if median_size > 1:
            result = ndimage.median_filter(result, size=(1, median_size, median_size))
        maps[method] = np.where(roi, result, 0.0).astype(np.float32)
    return maps


def patch_map_dense(
    model: SiameseScorer,
    real: np.ndarray,
    recon: np.ndarray,
    roi: np.ndarray,
    stride: int = 1,
    normalise: str | None = "reference",
) -> np.ndarray:
    """Patch map (n, S, S) from scoring every patch on the `stride` grid, scaled by
    :func:`normalise_patch_map` (None: the raw spread scores over the whole slice)."""
    grid = dense_patch_scores_batch(model, real, recon, stride)
    spread = spread_patch_scores(grid, int(stride), model.patch_size, real.shape[1:])
    return spread if normalise is None else normalise_patch_map(spread, roi, normalise)


SAMPLE_POSITIONS = ("fixed", "per_slice")


def patch_map_sampled(
    model: SiameseScorer,
    real: np.ndarray,
    recon: np.ndarray,
    roi: np.ndarray,
    n_patches: int = 10000,
    rng: np.random.Generator | None = None,
    normalise: str | None = "reference",
    positions: str = "fixed",
) -> np.ndarray:
    """Patch map (n, S, S) from random patch positions, scaled by :func:`normalise_patch_map`.

    positions='fixed' (reference): one draw of n_patches positions used on every slice;
    'per_slice': a new draw for each slice. `rng` defaults to default_rng(42), the reference's.
    normalise=None returns the raw spread scores over the whole slice.
    """
    if positions not in SAMPLE_POSITIONS:
        raise ValueError(f"positions must be one of {SAMPLE_POSITIONS}, got {positions!r}")
    rng = np.random.default_rng(REFERENCE_SAMPLING_SEED) if rng is None else rng
    real = np.asarray(real, dtype=np.float32)
    shape = real.shape[1:]
    spread = np.zeros(real.shape, dtype=np.float32)
    drawn = random_positions(n_patches, shape, model.patch_size, rng)
    for k in range(len(real)):
        if positions == "per_slice" and k > 0:
            drawn = random_positions(n_patches, shape, model.patch_size, rng)
        scores = patch_scores_at(model, real[k], recon[k], drawn)
        spread[k] = spread_patch_scores(scores, drawn, model.patch_size, shape)
    return spread if normalise is None else normalise_patch_map(spread, roi, normalise)


def raw_patch_map(
    model: SiameseScorer,
    real: np.ndarray,
    recon: np.ndarray,
    roi: np.ndarray,
    options: Mapping,
) -> np.ndarray:
    """Unscaled patch map (n, S, S) as the `maps` config asks: `scoring` dense (at `stride`) or
    sampled (`n_patches`, `positions`, `sampling_seed`). The scaling happens in
    :func:`anomaly_maps`, where `reference` scales over the whole slice before the ROI cut."""
    if options["scoring"] == "dense":
        return patch_map_dense(model, real, recon, roi, options["stride"], normalise=None)
    return patch_map_sampled(
        model,
        real,
        recon,
        roi,
        options["n_patches"],
        np.random.default_rng(options["sampling_seed"]),
        positions=options["positions"],
        normalise=None,
    )
