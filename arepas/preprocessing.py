"""From a scan on its native grid to normalised 2D slices on a working grid, and back.

The working grid is aligned with the RAS world axes at the dataset's spacing, so any native
orientation (RAS, LPS, oblique) lands in the same frame and slices along one axis mean the same
plane for every subject: axis 0 sagittal, 1 coronal, 2 axial.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from skimage.transform import resize

SLICE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}


def working_grid(
    native_shape, native_affine: np.ndarray, spacing
) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of a RAS-aligned grid at ``spacing`` (mm) covering the native FOV."""
    spacing = np.asarray(spacing, dtype=float)
    corners = np.array(
        [
            [i, j, k, 1.0]
            for i in (-0.5, native_shape[0] - 0.5)
            for j in (-0.5, native_shape[1] - 0.5)
            for k in (-0.5, native_shape[2] - 0.5)
        ]
    )
    world = (native_affine @ corners.T)[:3].T
    lo, hi = world.min(axis=0), world.max(axis=0)
    shape = tuple(int(n) for n in np.maximum(np.ceil((hi - lo) / spacing - 1e-6), 1))
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    # Centre the grid on the field of view so the round trip is symmetric.
    centre = (lo + hi) / 2
    affine[:3, 3] = centre - spacing * (np.array(shape) - 1) / 2
    return shape, affine


def resample(
    volume: np.ndarray,
    src_affine: np.ndarray,
    dst_shape,
    dst_affine: np.ndarray,
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Resample ``volume`` from its grid onto another grid (world coordinates in mm)."""
    vox = np.linalg.inv(src_affine) @ dst_affine
    return ndimage.affine_transform(
        np.asarray(volume, dtype=np.float32),
        vox[:3, :3],
        offset=vox[:3, 3],
        output_shape=tuple(dst_shape),
        order=order,
        mode="constant",
        cval=cval,
        prefilter=order > 1,
    ).astype(np.float32)


def resample_mask(mask: np.ndarray, src_affine, dst_shape, dst_affine) -> np.ndarray:
    """Resample a binary mask: linear interpolation of its indicator, kept above 0.5."""
    return resample(mask.astype(np.float32), src_affine, dst_shape, dst_affine, order=1) > 0.5


def closest_voxel_axis(affine: np.ndarray, world_axis: int = 2) -> int:
    """The voxel axis of a grid that points most nearly along a world (RAS) axis."""
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return int(np.argmax(np.abs(directions[world_axis])))


def outside_air(hu: np.ndarray, slice_axis: int, threshold_hu: float = -400.0) -> np.ndarray:
    """Air connected to the scan's in-plane border: outside the body, never lung.

    Meant for the native grid, whose in-plane faces are the scanner's field of view; the faces
    across the slices are left out because a chest CT often cuts the lung apices or bases."""
    labels, _ = ndimage.label(hu < threshold_hu)
    border = set()
    for a in (a for a in range(3) if a != slice_axis):
        for idx in (0, -1):
            border.update(np.unique(np.take(labels, idx, axis=a)).tolist())
    border.discard(0)
    return np.isin(labels, sorted(border))


def lung_mask(
    hu: np.ndarray,
    spacing,
    threshold_hu: float = -400.0,
    closing_mm: float = 20.0,
    axis: int = 2,
    outside: np.ndarray | None = None,
) -> np.ndarray:
    """Lungs from a CT in HU: air below ``threshold_hu`` that is not ``outside`` the body (by
    default: connected to the in-plane border), the two largest components, closed and
    hole-filled slice by slice so that vessels and lesions inside or at the edge of a lung stay
    inside its mask."""
    if outside is None:
        outside = outside_air(hu, axis, threshold_hu)
    labels, n = ndimage.label((hu < threshold_hu) & ~outside)
    if n == 0:
        return np.zeros(hu.shape, bool)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    order = np.argsort(sizes)[::-1]
    largest = sizes[order[0]]
    # The second lung counts only if it is not a speck (e.g. gas in the bowel).
    kept = [int(i) + 1 for i in order[:2] if sizes[i] >= 0.05 * largest]
    inplane = [a for a in range(3) if a != axis]
    radius = [closing_mm / float(spacing[a]) for a in inplane]
    mask = np.zeros(hu.shape, bool)
    for lab in kept:
        mask |= _close_and_fill(labels == lab, radius, axis)
    return mask


def _close_and_fill(component: np.ndarray, radius, axis: int) -> np.ndarray:
    # Slice by slice and one 2D piece at a time: the airways join both lungs into one 3D
    # component, and closing them together would swallow the mediastinum between them.
    r0, r1 = (max(int(round(r)), 1) for r in radius)
    yy, xx = np.ogrid[-r0 : r0 + 1, -r1 : r1 + 1]
    disk = (yy / r0) ** 2 + (xx / r1) ** 2 <= 1.0
    out = np.zeros_like(component)
    for k in np.flatnonzero(component.any(axis=tuple(a for a in range(3) if a != axis))):
        sl = [slice(None)] * 3
        sl[axis] = k
        plane = component[tuple(sl)]
        pieces, n = ndimage.label(plane)
        filled = np.zeros_like(plane)
        for piece in range(1, n + 1):
            padded = np.pad(pieces == piece, ((r0, r0), (r1, r1)))
            closed = ndimage.binary_closing(padded, structure=disk)[r0:-r0, r1:-r1]
            filled |= ndimage.binary_fill_holes(closed | (pieces == piece))
        out[tuple(sl)] = filled
    return out


CT_MAPPINGS = ("linear", "lower_half")
# The reference notebook's stretch of its CT slices (README, "Fidelity to the reference
# implementation"); on the demo lung cohort it also gave every method a higher Dice at the same
# edge reliance (docs/studies.md, "CT intensities: the window, or the reference's darker half of
# it").
DEFAULT_CT_MAPPING = "lower_half"


def normalise_ct(
    hu: np.ndarray, window: tuple[float, float], mapping: str = "linear"
) -> np.ndarray:
    """Clip to the HU window and map it linearly to [-1, 1].

    `lower_half` then does what the reference notebook does to its CT slices after reading them
    to [-1, 1]: values above 0 set to 0 and the rest stretched, x -> 2x + 1. That spends the
    whole range on the window's darker half (of [-1000, 200] HU: [-1000, -400] HU, where
    parenchyma, vessels and ground glass lie) and makes everything denser one flat white.
    """
    if mapping not in CT_MAPPINGS:
        raise ValueError(f"CT mapping must be one of {CT_MAPPINGS}, got {mapping!r}")
    lo, hi = window
    if mapping == "lower_half":
        hi = (lo + hi) / 2.0
    return (np.clip((hu - lo) / (hi - lo), 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)


def normalise_mri(
    image: np.ndarray, roi: np.ndarray, percentiles: tuple[float, float]
) -> np.ndarray:
    """Map the ROI's intensity percentiles to [-1, 1], clipping outside; bias-free scanners
    differ mostly by gain and offset, which this removes."""
    if not roi.any():
        raise ValueError("cannot normalise intensities: the ROI is empty")
    lo, hi = np.percentile(image[roi], percentiles)
    if hi <= lo:
        raise ValueError(f"cannot normalise intensities: ROI percentiles are equal ({lo:g})")
    return (np.clip((image - lo) / (hi - lo), 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)


BIAS_CORRECTIONS = ("n4", "none")
# ANTsPy's own default (`ants.n4_bias_field_correction(shrink_factor=4)`): the field is smooth, so
# fitting it on a 4x coarser copy loses nothing and keeps N4 to seconds.
N4_SHRINK_FACTOR = 4


def bias_correction_settings(modality: str, intensity: dict, dataset: str = "?") -> dict:
    """A dataset's bias-field correction with its defaults filled: N4 for MRI, none for CT.

    Raises ``ValueError`` naming ``datasets.<dataset>.intensity.<key>`` for a value it cannot run,
    and for N4 on CT: Hounsfield units are calibrated, a field estimated on them would only bend
    them."""
    key = f"config datasets.{dataset}.intensity"
    if modality != "ct" and "ct_mapping" in intensity:
        raise ValueError(
            f"{key}.ct_mapping: maps a CT window in HU; dataset '{dataset}' is "
            f"{modality.upper()}. Remove it."
        )
    method = intensity.get("bias_correction", "n4" if modality == "mri" else "none")
    if method not in BIAS_CORRECTIONS:
        raise ValueError(
            f"{key}.bias_correction: unknown value {method!r}, choose from {list(BIAS_CORRECTIONS)}"
        )
    if modality != "mri" and method != "none":
        raise ValueError(
            f"{key}.bias_correction: {method!r} is for MRI only; dataset '{dataset}' is "
            f"{modality.upper()}, whose calibrated intensities carry no bias field. "
            "Set it to 'none' or remove it."
        )
    if method == "none":
        return {"method": "none"}
    shrink = intensity.get("n4_shrink_factor", N4_SHRINK_FACTOR)
    if isinstance(shrink, bool) or not isinstance(shrink, int) or shrink < 1:
        raise ValueError(f"{key}.n4_shrink_factor: {shrink!r} is not a positive integer")
    return {"method": "n4", "shrink_factor": shrink}


def n4_bias_field(
    image: np.ndarray, affine: np.ndarray, mask: np.ndarray, shrink_factor: int = N4_SHRINK_FACTOR
) -> np.ndarray:
    """The smooth multiplicative bias field of ``image`` by N4 (Tustison et al., IEEE TMI 2010),
    fitted to the positive voxels of ``mask`` and evaluated on the whole grid, scaled to a
    geometric mean of 1 inside the mask so that dividing by it keeps the intensity scale."""
    import os

    # ITK splits N4's sums across threads, so the field moves with the thread count (about 1e-4
    # relative): one thread makes it repeatable on any machine, and costs nothing at these sizes.
    # ITK reads this once, at the process's first ANTs image; registration.register sets it too.
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    import ants

    from arepas.registration import to_ants

    # N4 works on log intensities: zero or negative voxels (background, noise floor) carry none.
    fit = mask & np.isfinite(image) & (image > 0)
    if not fit.any():
        raise ValueError("N4 bias correction: no positive voxel inside the mask")
    field = ants.n4_bias_field_correction(
        to_ants(image, affine),
        mask=to_ants(fit.astype(np.float32), affine),
        shrink_factor=int(shrink_factor),
        return_bias_field=True,
    ).numpy()
    return (field / np.exp(np.log(field[fit]).mean())).astype(np.float32)


def correct_bias(
    image: np.ndarray, affine: np.ndarray, mask: np.ndarray, bias: dict
) -> tuple[np.ndarray, dict]:
    """``image`` divided by its N4 bias field, or untouched for ``none``; with the facts to record
    (``bias`` as :func:`bias_correction_settings` gives it)."""
    if bias["method"] == "none":
        return image, {"method": "none"}
    field = n4_bias_field(image, affine, mask, bias["shrink_factor"])
    inside = field[mask]
    facts = {
        **bias,
        "field_range_in_mask": [round(float(inside.min()), 4), round(float(inside.max()), 4)],
    }
    return (image / field).astype(np.float32), facts


@dataclass(frozen=True)
class SliceGeometry:
    """Where the network slices sit in the working volume: crop box, square side, size."""

    axis: int
    box: tuple[int, int, int, int]  # row0, row1, col0, col1 in the in-plane axes
    side: int
    size: int
    volume_shape: tuple[int, int, int]

    def as_array(self) -> np.ndarray:
        d = asdict(self)
        return np.array(
            [d["axis"], *d["box"], d["side"], d["size"], *d["volume_shape"]], dtype=np.int64
        )

    @classmethod
    def from_array(cls, a: np.ndarray) -> SliceGeometry:
        a = [int(v) for v in a]
        return cls(axis=a[0], box=tuple(a[1:5]), side=a[5], size=a[6], volume_shape=tuple(a[7:10]))


def slice_geometry(roi: np.ndarray, axis: int, size: int, margin: int = 2) -> SliceGeometry:
    """One crop box for the whole volume: the ROI's in-plane bounding box plus a margin."""
    if not roi.any():
        raise ValueError("the ROI is empty: no slices to extract")
    plane = roi.any(axis=axis)
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    r0, r1 = max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, plane.shape[0])
    c0, c1 = max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, plane.shape[1])
    side = max(r1 - r0, c1 - c0)
    return SliceGeometry(
        axis,
        (int(r0), int(r1), int(c0), int(c1)),
        int(side),
        int(size),
        tuple(int(s) for s in roi.shape),
    )


def _planes(volume: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(volume, axis, 0)


def extract_slices(
    volume: np.ndarray, geometry: SliceGeometry, indices, order: int = 1, fill: float = -1.0
) -> np.ndarray:
    """Crop, pad to a centred square and resize the chosen slices to ``size`` x ``size``."""
    r0, r1, c0, c1 = geometry.box
    h, w = r1 - r0, c1 - c0
    pr, pc = (geometry.side - h) // 2, (geometry.side - w) // 2
    planes = _planes(volume, geometry.axis)
    out = np.empty((len(indices), geometry.size, geometry.size), np.float32)
    for n, k in enumerate(indices):
        square = np.full((geometry.side, geometry.side), fill, np.float32)
        square[pr : pr + h, pc : pc + w] = planes[k, r0:r1, c0:c1]
        out[n] = resize(
            square,
            (geometry.size, geometry.size),
            order=order,
            mode="edge",
            anti_aliasing=order > 0 and geometry.side > geometry.size,
            preserve_range=True,
        )
    return out


def assemble_volume(
    slices: np.ndarray, indices, geometry: SliceGeometry, fill: float = 0.0, order: int = 1
) -> np.ndarray:
    """Inverse of :func:`extract_slices`: put slice maps back into a working-grid volume."""
    r0, r1, c0, c1 = geometry.box
    h, w = r1 - r0, c1 - c0
    pr, pc = (geometry.side - h) // 2, (geometry.side - w) // 2
    volume = np.full(geometry.volume_shape, fill, np.float32)
    planes = _planes(volume, geometry.axis)  # a view: writing it fills the volume
    for n, k in enumerate(indices):
        square = resize(
            slices[n].astype(np.float32),
            (geometry.side, geometry.side),
            order=order,
            mode="edge",
            anti_aliasing=False,
            preserve_range=True,
        )
        planes[k, r0:r1, c0:c1] = square[pr : pr + h, pc : pc + w]
    return volume


def roi_slice_indices(roi: np.ndarray, axis: int, min_voxels: int = 1) -> np.ndarray:
    """Indices of the slices along ``axis`` that hold at least ``min_voxels`` ROI voxels."""
    counts = _planes(roi, axis).reshape(roi.shape[axis], -1).sum(axis=1)
    return np.flatnonzero(counts >= min_voxels)


def preprocess_ct_roi(
    hu_working: np.ndarray, spacing, roi_settings: dict, axis: int, outside: np.ndarray | None
) -> np.ndarray:
    return lung_mask(
        hu_working,
        spacing,
        threshold_hu=roi_settings.get("threshold_hu", -400.0),
        closing_mm=roi_settings.get("closing_mm", 20.0),
        axis=axis,
        outside=outside,
    )


def normalise(image: np.ndarray, roi: np.ndarray, modality: str, intensity: dict) -> np.ndarray:
    """Intensities to [-1, 1] as the dataset's config says; outside the ROI set to -1 (background),
    since the networks see the organ only (the published CT slices were lung-masked too)."""
    if modality == "ct":
        out = normalise_ct(
            image,
            tuple(intensity.get("window", (-1000.0, 200.0))),
            intensity.get("ct_mapping", DEFAULT_CT_MAPPING),
        )
    else:
        out = normalise_mri(image, roi, tuple(intensity.get("percentiles", (1.0, 99.0))))
    out[~roi] = -1.0
    return out


def slice_stack(
    normalised: np.ndarray, roi: np.ndarray, lesion: np.ndarray, axis: int, size: int
) -> dict[str, np.ndarray]:
    """The network slices of one working volume (image, ROI, lesion) and where they lie."""
    geometry = slice_geometry(roi, axis, size)
    indices = roi_slice_indices(roi, axis)
    roi_slices = extract_slices(roi.astype(np.float32), geometry, indices, fill=0.0) > 0.5
    images = extract_slices(normalised, geometry, indices, fill=-1.0)
    images[~roi_slices] = -1.0
    lesion_slices = extract_slices(lesion.astype(np.float32), geometry, indices, fill=0.0) > 0.5
    return {
        "slices": np.clip(images, -1.0, 1.0),
        "roi": roi_slices,
        "lesion": lesion_slices,
        "indices": indices,
        "geometry": geometry.as_array(),
    }
