"""Figures for the report: per-subject panels, PR curves, Dice per subject, training logs,
the translator's edge-reliance check.

Figures are built with matplotlib's object API (no pyplot state), so they render with the Agg
canvas whatever backend the caller has and are freed as soon as they go out of scope.
"""

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from arepas.io import atomic_path

# Slices are normalised to [-1, 1] in preprocessing (AREPAS reference defaults), so one fixed
# grey window shows input and reconstruction on the same footing.
INTENSITY_WINDOW = (-1.0, 1.0)
MAP_COLOURMAP = "inferno"
OUTLINE_COLOUR = "#00e5ff"  # cyan reads against both grey anatomy and hot maps


def most_lesioned_slice(lesion: np.ndarray, axis: int) -> int:
    """Index along `axis` of the slice with the most lesion voxels (middle slice if none)."""
    lesion = np.asarray(lesion, dtype=bool)
    other_axes = tuple(a for a in range(lesion.ndim) if a != axis % lesion.ndim)
    per_slice = lesion.sum(axis=other_axes)
    if per_slice.max() == 0:
        return lesion.shape[axis] // 2
    return int(np.argmax(per_slice))


def display_plane(plane: np.ndarray) -> np.ndarray:
    """A 2D slice of a RAS-ordered voxel array (axes in the order x, y, z, each index increasing
    towards the patient's right, anterior, superior; the working grid of
    `arepas.preprocessing`, and the network slices cut from it) as radiologists view it:

    - axial (x, y): anterior up, the patient's right on the image's left;
    - coronal (x, z): superior up, the patient's right on the image's left;
    - sagittal (y, z): superior up, anterior on the image's left.

    One rule does all three: the second in-plane axis runs up the rows, the first runs leftwards
    along the columns. Every slice a figure here draws goes through this function.
    """
    plane = np.asarray(plane)
    if plane.ndim != 2:
        raise ValueError(f"expected a 2D slice, got shape {plane.shape}")
    return plane[::-1, ::-1].T


def slice_for_display(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Slice `index` along `axis` of a RAS-ordered voxel array, oriented by `display_plane`."""
    return display_plane(np.take(np.asarray(volume), index, axis=axis))


def display_aspect(zooms: Sequence[float], axis: int) -> float:
    """imshow's `aspect` (row spacing over column spacing) for a `slice_for_display` of a grid
    with voxel sizes `zooms` (x, y, z), so that anisotropic voxels keep their shape."""
    first, second = (float(zooms[a]) for a in range(3) if a != axis % 3)
    return second / first


def ras_ordered(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`volume` with its voxel axes flipped and permuted to the closest RAS order (no resampling:
    an oblique grid is shown along its nearest anatomical axes), and its voxel sizes in that
    order. A native scan stored LPS, PIR or any other way then displays like the working grid."""
    from nibabel import orientations

    ornt = orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    zooms = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    ras = orientations.apply_orientation(np.asarray(volume), ornt)
    # Output axis ornt[i, 0] receives input axis i.
    ordered = np.empty(3)
    ordered[ornt[:, 0].astype(int)] = zooms
    return ras, ordered


def subject_panel(
    input: np.ndarray,
    edges: np.ndarray,
    recon: np.ndarray,
    residual: np.ndarray,
    patch: np.ndarray,
    arepas: np.ndarray,
    lesion: np.ndarray,
    title: str,
) -> Figure:
    """One row of seven 2D panels: input, edges, reconstruction, residual, patch map, AREPAS map,
    and the ground-truth outline over the input. The 2D arrays are network slices, RAS-ordered
    like the working grid they come from, and are shown the radiological way (`display_plane`)."""
    images = [input, edges, recon, residual, patch, arepas, lesion]
    shapes = {np.shape(a) for a in images}
    if len(shapes) != 1 or len(shapes.pop()) != 2:
        raise ValueError("all panels must be 2D arrays of one shape")
    lesion = np.asarray(lesion, dtype=bool)

    fig = Figure(figsize=(21, 3.6), layout="constrained")
    axes = fig.subplots(1, 7)
    grey = {"cmap": "gray", "vmin": INTENSITY_WINDOW[0], "vmax": INTENSITY_WINDOW[1]}
    # The AREPAS map is the residual weighted by a patch score in [0, 1], so both are intensity
    # differences and share one scale; the patch map is a dissimilarity in [0, 1] of its own.
    difference_max = _positive_max(residual, arepas)
    patch_max = max(1.0, _positive_max(patch))
    hot = {"cmap": MAP_COLOURMAP, "vmin": 0.0}

    _image(fig, axes[0], input, "input", colourbar=True, **grey)
    _image(fig, axes[1], edges, "edge map", colourbar=False, cmap="gray")
    _image(fig, axes[2], recon, "reconstruction", colourbar=True, **grey)
    _image(fig, axes[3], residual, "|recon - input|", colourbar=True, vmax=difference_max, **hot)
    _image(fig, axes[4], patch, "patch dissimilarity", colourbar=True, vmax=patch_max, **hot)
    _image(fig, axes[5], arepas, "AREPAS map", colourbar=True, vmax=difference_max, **hot)
    _image(fig, axes[6], input, "ground truth", colourbar=False, **grey)
    if lesion.any():
        _outline(axes[6], lesion)
    else:
        axes[6].set_title("ground truth (no lesion here)")
    fig.suptitle(title)
    return fig


VIEWS = ("sagittal", "coronal", "axial")  # slicing axis 0, 1, 2 of a RAS-ordered array


def overlay_slices(mask: np.ndarray, scores: np.ndarray) -> tuple[int, int, int]:
    """Per slicing axis (sagittal, coronal, axial), the slice to show: the one with the most mask
    voxels; without a mask voxel, the one through the highest score; on a blank map the middle."""
    mask = np.asarray(mask, dtype=bool)
    if mask.any():
        return tuple(most_lesioned_slice(mask, axis) for axis in range(3))
    scores = np.asarray(scores)
    if scores.size and np.nanmax(scores) > 0:
        return tuple(int(i) for i in np.unravel_index(np.nanargmax(scores), scores.shape))
    return tuple(n // 2 for n in scores.shape)


def mask_overlay(
    image: np.ndarray,
    zooms: Sequence[float],
    layers: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
    window: tuple[float, float],
    title: str,
    notes: Mapping[str, str] | None = None,
) -> Figure:
    """A subject's binary masks over its scan: per method two rows (the scan with the mask
    outlined; the continuous map, 0 to its maximum, with the same outline) of three views
    (sagittal, coronal, axial) through the slices `overlay_slices` picks.

    Volumes are RAS-ordered (`ras_ordered`) with voxel sizes `zooms`; `layers[method]` is
    (continuous map, binary mask, threshold); `window` the grey range of the scan; `notes[method]`
    an optional line under the method's name (e.g. the mask volume).
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"expected a 3D scan, got shape {image.shape}")
    if not layers:
        raise ValueError("no mask to draw")
    for method, (scores, mask, _) in layers.items():
        if np.shape(scores) != image.shape or np.shape(mask) != image.shape:
            raise ValueError(
                f"method {method}: map {np.shape(scores)} and mask {np.shape(mask)} must have "
                f"the scan's shape {image.shape}"
            )
    notes = notes or {}
    fig = Figure(figsize=(11, 0.8 + 3.4 * len(layers)), layout="constrained")
    axes = fig.subplots(2 * len(layers), 3, squeeze=False)
    grey = {"cmap": "gray", "vmin": window[0], "vmax": window[1]}
    for row, (method, (scores, mask, threshold)) in enumerate(layers.items()):
        scores = np.asarray(scores, dtype=np.float32)
        mask = np.asarray(mask, dtype=bool)
        hot = {"cmap": MAP_COLOURMAP, "vmin": 0.0, "vmax": _positive_max(scores)}
        picked = overlay_slices(mask, scores)
        for axis, (view, index) in enumerate(zip(VIEWS, picked, strict=True)):
            aspect = display_aspect(zooms, axis)
            top, bottom = axes[2 * row, axis], axes[2 * row + 1, axis]
            scan = np.take(image, index, axis=axis)
            _image(fig, top, scan, f"{view} {index}", colourbar=False, aspect=aspect, **grey)
            amap = np.take(scores, index, axis=axis)
            shown = _image(fig, bottom, amap, "map", colourbar=False, aspect=aspect, **hot)
            plane = np.take(mask, index, axis=axis)
            if plane.any():
                _outline(top, plane)
                _outline(bottom, plane)
        # The map's colour bar beside both of the method's rows, so that its six panels keep one
        # size and stay in columns.
        fig.colorbar(shown, ax=list(axes[2 * row : 2 * row + 2].ravel()), fraction=0.02, pad=0.01)
        label = f"{method}\nmask: map >= {threshold:.4g}"
        if notes.get(method):
            label += f"\n{notes[method]}"
        axes[2 * row, 0].set_ylabel(label, fontsize="small")
        axes[2 * row + 1, 0].set_ylabel(f"{method}\ncontinuous map", fontsize="small")
    fig.suptitle(
        f"{title}\nradiological view: anterior (axial) or superior up, the patient's right on "
        "the left (sagittal: anterior on the left)"
    )
    return fig


def pr_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    ap: Mapping[str, float],
    prevalence: float | None = None,
) -> Figure:
    """Precision-recall curves, one per method, with AUPRC in the legend.

    `curves[method] = (precision, recall)`; `prevalence` (lesion fraction of ROI voxels) draws
    the precision of a random map, the floor AUPRC should be read against.
    """
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    for method, (precision, recall) in curves.items():
        # Step drawing matches the non-interpolated AP used for the number in the legend.
        label = f"{method} (AP {ap[method]:.3f})" if method in ap else method
        # Recall ascending; at equal recall the higher precision (higher threshold) comes first, as
        # it is the one the AP step counts.
        order = np.lexsort((-np.asarray(precision), np.asarray(recall)))
        ax.plot(
            np.asarray(recall)[order],
            np.asarray(precision)[order],
            drawstyle="steps-pre",
            label=label,
        )
    if prevalence is not None:
        ax.axhline(prevalence, color="grey", linestyle=":", label=f"random ({prevalence:.3f})")
    ax.set(
        xlabel="recall",
        ylabel="precision",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title="Voxel-level precision-recall",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    return fig


def dice_strip(per_subject: pd.DataFrame) -> Figure:
    """Per-subject Dice by method: box plot with every subject as a dot.

    Subjects with undefined Dice (no lesion) are left out and counted in the axis label.
    """
    missing = {"subject", "method", "dice"} - set(per_subject.columns)
    if missing:
        raise ValueError(f"per_subject lacks columns {sorted(missing)}")
    methods = list(dict.fromkeys(per_subject["method"]))
    fig = Figure(figsize=(1.2 + 1.3 * max(len(methods), 1), 4.5), layout="constrained")
    ax = fig.subplots()
    values = [per_subject.loc[per_subject["method"] == m, "dice"].to_numpy(float) for m in methods]
    defined = [v[~np.isnan(v)] for v in values]
    positions = np.arange(1, len(methods) + 1)
    ax.boxplot(defined, positions=positions, widths=0.5, showfliers=False)
    # Fixed seed: the jitter is only for legibility and must not change between runs.
    rng = np.random.default_rng(0)
    for position, dice in zip(positions, defined, strict=True):
        ax.scatter(
            position + rng.uniform(-0.15, 0.15, dice.size),
            dice,
            s=14,
            alpha=0.7,
            color="tab:blue",
            zorder=3,
        )
    labels = [
        f"{m}\n(n={d.size}" + (f", {v.size - d.size} n/a)" if v.size > d.size else ")")
        for m, v, d in zip(methods, values, defined, strict=True)
    ]
    ax.set_xticks(positions, labels, fontsize="small")
    ax.set(ylabel="Dice per subject", ylim=(-0.02, 1.02), title="Dice per subject")
    ax.grid(axis="y", alpha=0.3)
    return fig


def training_curves(history: pd.DataFrame, x: str, ys: Sequence[str], title: str) -> Figure:
    """One stacked panel per logged quantity (losses and accuracies have different scales)."""
    if not ys:
        raise ValueError("ys must name at least one column")
    fig = Figure(figsize=(6.5, 1.2 + 1.8 * len(ys)), layout="constrained")
    axes = fig.subplots(len(ys), 1, sharex=True, squeeze=False)[:, 0]
    for ax, column in zip(axes, ys, strict=True):
        ax.plot(history[x], history[column], linewidth=1.2)
        ax.set_ylabel(column)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel(x)
    fig.suptitle(title)
    return fig


def edge_reliance_panel(examples: Mapping[str, np.ndarray], title: str) -> Figure:
    """Does the translator use its edges? One healthy val slice per row; columns: input, its
    edges, reconstruction from those edges, reconstruction from another subject's edges at the
    same slice index, and the training mean image there. L1 inside the ROI is in the titles.

    `examples` holds what `arepas.diagnostics.edge_reliance_examples` returns.
    """
    rows = len(examples["input"])
    if rows == 0:
        raise ValueError("examples holds no slice")
    grey = {"cmap": "gray", "vmin": INTENSITY_WINDOW[0], "vmax": INTENSITY_WINDOW[1]}
    fig = Figure(figsize=(11, 0.6 + 2.2 * rows), layout="constrained")
    axes = fig.subplots(rows, 5, squeeze=False)
    for row in range(rows):
        target = np.asarray(examples["input"][row], dtype=np.float32)
        roi = np.asarray(examples["roi"][row], dtype=bool)
        own, other, mean = (examples[k][row] for k in ("recon_own", "recon_other", "mean_image"))
        mean_title = "training mean image" + _roi_l1(mean, target, roi)
        if not examples["has_mean_image"][row]:
            mean_title = "no training slice\nat this index"
        panels = [
            (target, f"input\nslice index {int(examples['slice_index'][row])}", grey),
            (examples["edges"][row], "its edges", {"cmap": "gray"}),
            (own, f"recon, its edges{_roi_l1(own, target, roi)}", grey),
            (other, f"recon, other subject's edges{_roi_l1(other, target, roi)}", grey),
            (mean, mean_title, grey),
        ]
        for ax, (image, label, style) in zip(axes[row], panels, strict=True):
            _image(fig, ax, image, label, colourbar=False, **style)
            ax.title.set_fontsize("small")
    fig.suptitle(title)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> None:
    """Write the figure atomically (temporary file, then rename) and release it."""
    try:
        with atomic_path(path) as temporary:
            fig.savefig(temporary, dpi=dpi)
    finally:
        # Figures made through pyplot stay registered there until closed; the module is only
        # consulted when the caller already imported it.
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None:
            pyplot.close(fig)
        fig.clear()


def _image(
    fig: Figure, ax: Axes, image: np.ndarray, title: str, colourbar: bool, **style
) -> AxesImage:
    # `image` is a slice as stored (RAS-ordered axes); it is oriented for display here.
    shown = ax.imshow(
        display_plane(np.asarray(image, dtype=np.float32)), interpolation="nearest", **style
    )
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if colourbar:
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    return shown


def _outline(ax: Axes, mask: np.ndarray, colour: str = OUTLINE_COLOUR, width: float = 1.2) -> None:
    # The mask's boundary over a slice drawn by `_image` (same orientation).
    ax.contour(
        display_plane(np.asarray(mask, dtype=np.float32)),
        levels=[0.5],
        colors=colour,
        linewidths=width,
    )


def _roi_l1(image: np.ndarray, target: np.ndarray, roi: np.ndarray) -> str:
    # Panel-title suffix: the image's L1 against the input inside the ROI.
    if not roi.any():
        return ""
    return f"\nL1 in ROI {np.abs(np.asarray(image, dtype=np.float32) - target)[roi].mean():.3f}"


def _positive_max(*maps: np.ndarray) -> float:
    largest = max(float(np.nanmax(m)) if np.size(m) else 0.0 for m in maps)
    # A blank map still needs a non-empty colour range.
    return largest if largest > 0 else 1.0
