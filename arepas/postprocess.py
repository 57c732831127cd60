"""Post-processing of anomaly maps, the same for every method.

Reconstruction-based anomaly segmentation is reported after a median filter and, usually, the
removal of small connected components (Baur et al., "Autoencoders for unsupervised anomaly
segmentation in brain MR images: a comparative study", MedIA 2021; Behrendt et al.'s pDDPM and
cDDPM papers). Every method is therefore evaluated twice, raw and post-processed, under the names
`method` and `method+pp`, so that no method is compared against another's unfiltered maps.

Component removal acts on a binary segmentation, but the evaluation sweeps thresholds over a
continuous map. It is applied here as a grey-level *area opening* of the map: the opened map at a
voxel is the highest threshold at which that voxel still lies in a component of at least
`min_component_voxels` voxels. By threshold decomposition (the binary filter is increasing, so its
results at falling thresholds are nested), "opened >= t" is exactly the map thresholded at t with
its small components removed, for every t at once. The best-threshold sweep, the PR curve and the
validation threshold therefore all see the component-filtered mask of their own threshold, without
thresholding first or filtering only at one chosen operating point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# Name of a method's post-processed variant: `residual` -> `residual+pp`.
SUFFIX = "+pp"


@dataclass(frozen=True)
class PostprocessSettings:
    """`median_size`: side of the 2-D median filter applied per slice (0 or 1: none).
    `min_component_voxels`: 3-D connected components (26-connectivity, as lesions are counted in
    `arepas.metrics`) smaller than this many voxels are removed at every threshold (0: none)."""

    median_size: int = 5
    min_component_voxels: int = 0

    def __post_init__(self) -> None:
        for name in ("median_size", "min_component_voxels"):
            if getattr(self, name) < 0:
                raise ValueError(f"postprocess {name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> PostprocessSettings:
        """Settings from a config mapping; unknown keys are an error, missing keys keep defaults."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown postprocess setting(s) {unknown}; allowed keys are {sorted(known)}"
            )
        return cls(**values)

    @property
    def active(self) -> bool:
        """Whether the settings change anything (otherwise no `+pp` variants are made)."""
        return self.median_size > 1 or self.min_component_voxels > 1


def variant_name(method: str) -> str:
    """`residual` -> `residual+pp`."""
    return method + SUFFIX


def base_method(name: str) -> str:
    """The method a map comes from: `residual+pp` -> `residual`, `residual` -> `residual`."""
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


def evaluated_methods(methods: list[str], settings: PostprocessSettings) -> list[str]:
    """Every method raw, then every method post-processed (when the settings do anything)."""
    return list(methods) + ([variant_name(m) for m in methods] if settings.active else [])


def median_per_slice(maps: np.ndarray, roi: np.ndarray, size: int) -> np.ndarray:
    """2-D median filter of side `size` on each slice of (n, S, S) maps; zero outside the ROI.

    Pixels outside the ROI (0) take part in the median, as with the filter applied to the final
    map image; so values at the ROI border are pulled down, never lifted by the outside.
    """
    maps = np.asarray(maps, dtype=np.float32)
    roi = np.asarray(roi, dtype=bool)
    if maps.shape != roi.shape or maps.ndim != 3:
        raise ValueError(
            f"maps and roi must share one (n, S, S) shape, got {maps.shape}, {roi.shape}"
        )
    if size < 0:
        raise ValueError(f"median size must be >= 0, got {size}")
    inside = np.where(roi, maps, 0.0).astype(np.float32)
    if size > 1:
        from scipy import ndimage  # here, not at the top: every job's parse imports this module

        inside = ndimage.median_filter(inside, size=(1, size, size))
    return np.where(roi, inside, 0.0).astype(np.float32)


def remove_small_components(volume: np.ndarray, min_voxels: int) -> np.ndarray:
    """Grey-level area opening of a non-negative 3-D map (see the module docstring).

    For every threshold t, `result >= t` equals `volume >= t` without its 26-connected components
    of fewer than `min_voxels` voxels; `result <= volume` everywhere. 0 or 1 returns a copy.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if min_voxels < 0:
        raise ValueError(f"min_voxels must be >= 0, got {min_voxels}")
    if min_voxels <= 1:
        return volume.copy()
    # connectivity=ndim is full connectivity (26 neighbours in 3-D).
    from skimage.morphology import area_opening  # as above: only jobs that filter need it

    return area_opening(volume, area_threshold=min_voxels, connectivity=volume.ndim).astype(
        np.float32
    )
