"""Figures shown in the README, made from a finished default run (`make demo`).

Usage: python docs/readme_figures.py [results-dir] [output-dir]
"""

import sys
from pathlib import Path

import matplotlib
import nibabel as nib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from arepas import io
from arepas.figures import display_plane, save_figure

matplotlib.use("Agg")


def cohort_slices(results: Path) -> Figure:
    """One axial slice of a lesioned subject of each demo cohort, native grid, with the mask."""
    sheet = pd.read_csv(results / "demo" / "subjects.tsv", sep="\t", keep_default_na=False)
    fig = Figure(figsize=(8, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    windows = {"lung_ct": (-1000, 200), "brain_t1": (None, None)}
    for ax, dataset in zip(axes, ("lung_ct", "brain_t1"), strict=True):
        row = sheet[(sheet["dataset"] == dataset) & (sheet["split"] == "test")].iloc[0]
        img = nib.as_closest_canonical(nib.load(results / "demo" / row.image))
        lesion = nib.as_closest_canonical(nib.load(results / "demo" / row.lesion))
        data, mask = np.asarray(img.dataobj), np.asarray(lesion.dataobj)
        k = int(np.argmax(mask.sum(axis=(0, 1))))
        vmin, vmax = windows[dataset]
        # Canonical (RAS) arrays, shown the radiological way as every figure of the workflow.
        ax.imshow(display_plane(data[:, :, k]), cmap="gray", vmin=vmin, vmax=vmax)
        ax.contour(display_plane(mask[:, :, k]), [0.5], colors="red", linewidths=0.8)
        ax.set_title(f"{dataset}: {row.subject}, axial slice {k} (lesion in red)", fontsize=9)
        ax.set_axis_off()
    return fig


def reconstructions(results: Path) -> Figure:
    """Input, edges and reconstruction of a healthy and a lesioned network slice per dataset."""
    fig = Figure(figsize=(9, 12), layout="constrained")
    axes = fig.subplots(4, 3)
    row = 0
    for dataset in ("lung_ct", "brain_t1"):
        files = sorted((results / dataset / "maps").glob("*_slices.npz"))
        stacks = {f.name.split("_slices")[0]: io.load_arrays(f) for f in files}
        healthy = next(s for s in stacks.values() if not s["lesion"].any())
        lesioned = max(stacks.values(), key=lambda s: s["lesion"].sum(axis=(1, 2)).max())
        for label, stack in (("healthy", healthy), ("lesioned", lesioned)):
            per_slice = stack["lesion"].sum(axis=(1, 2))
            k = int(np.argmax(per_slice)) if per_slice.any() else len(per_slice) // 2
            for col, (name, image) in enumerate(
                (
                    ("input", stack["input"][k]),
                    ("Canny edges", stack["edges"][k]),
                    ("reconstruction", stack["recon"][k]),
                )
            ):
                ax = axes[row, col]
                ax.imshow(display_plane(image), cmap="gray", vmin=-1, vmax=1)
                if label == "lesioned" and col != 1:
                    lesion = display_plane(stack["lesion"][k].astype(float))
                    ax.contour(lesion, [0.5], colors="red", linewidths=0.8)
                ax.set_title(f"{dataset}, {label}: {name}", fontsize=9)
                ax.set_axis_off()
            row += 1
    return fig


def main() -> None:
    results = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/img")
    save_figure(cohort_slices(results), out / "demo_cohorts.png")
    save_figure(reconstructions(results), out / "reconstructions.png")


if __name__ == "__main__":
    main()
