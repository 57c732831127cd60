"""Anomaly maps of every method from slices, reconstructions and patch scores.

AREPAS map (Mitic & Langs, MLMI 2025, arXiv 2509.12905; /work/shared/method/AREPAS.md): each patch's
dissimilarity spread over its patch, overlaps averaged, min-max normalised per slice, multiplied
pixel-wise by |reconstruction - input|.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from arepas.scorer import (
    SiameseScorer,
    dense_patch_scores_batch,
    sampled_patch_scores,
)

# Methods whose map is |reconstruction - input| of the translator; other residual methods come
# through `extra_recons`.
TRANSLATOR_METHODS = ("residual", "patch", "arepas")


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


NORMALISATIONS = ("slice", "volume", "none")


def normalise_patch_map(maps: np.ndarray, roi: np.ndarray, mode: str = "slice") -> np.ndarray:
    """Scale a patch map (n, S, S) of one subject: 'slice' min-max per slice (published), 'volume'
    min-max over the subject's whole ROI, 'none' the scorer's own [0, 1] probabilities. Per-slice
    scaling lifts the most dissimilar patch of every slice to 1, lesion or not."""
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
    normalise: str = "slice",
) -> dict[str, np.ndarray]:
    """Maps (n, S, S) per method; all zero outside the ROI.

    'residual' = |recon - real|; 'patch' = normalised patch map; 'arepas' = normalised patch map
    x residual; any method named in `extra_recons` (e.g. 'ae') = |that reconstruction - real|.
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

    needs_patch = {"patch", "arepas"} & set(methods)
    patch = None
    if needs_patch:
        if patch_map is None:
            raise ValueError(f"methods {sorted(needs_patch)} need a patch map")
        patch = normalise_patch_map(patch_map, roi, normalise)
    residual = _residual(real, recon, roi)

    maps: dict[str, np.ndarray] = {}
    for method in methods:
        if method == "residual":
            result = residual
        elif method == "patch":
            result = patch
        elif method == "arepas":
            result = patch * residual
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
    normalise: str = "slice",
) -> np.ndarray:
    """Patch map (n, S, S) from dense scoring of every patch on the `stride` grid, scaled by
    :func:`normalise_patch_map`."""
    grid = dense_patch_scores_batch(model, real, recon, stride)
    spread = spread_patch_scores(grid, int(stride), model.patch_size, real.shape[1:])
    return normalise_patch_map(spread, roi, normalise)


def patch_map_sampled(
    model: SiameseScorer,
    real: np.ndarray,
    recon: np.ndarray,
    roi: np.ndarray,
    n_patches: int = 10000,
    rng: np.random.Generator | None = None,
    normalise: str = "slice",
) -> np.ndarray:
    """Patch map (n, S, S) from the published random sampling of patch positions, scaled by
    :func:`normalise_patch_map`."""
    rng = np.random.default_rng(0) if rng is None else rng
    real = np.asarray(real, dtype=np.float32)
    spread = np.zeros(real.shape, dtype=np.float32)
    for k in range(len(real)):
        positions, scores = sampled_patch_scores(model, real[k], recon[k], n_patches, rng)
        spread[k] = spread_patch_scores(scores, positions, model.patch_size, real.shape[1:])
    return normalise_patch_map(spread, roi, normalise)
