"""How much training a run asks for, known before it starts: the number of training slices of a
dataset (from its preprocessed stacks where they exist, else bounded from the image headers) and
each network's planned optimiser steps, for the start-up message."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Mapping

import nibabel as nib
import numpy as np

from arepas.preprocessing import SLICE_AXES, working_grid


def slice_count_bound(
    shape: Iterable[int], affine: np.ndarray, spacing: Iterable[float], slice_axis: str
) -> int:
    """Slices of the working grid that covers a scan's field of view along `slice_axis`: an upper
    bound on the slices preprocessing keeps (only those holding the organ are kept)."""
    grid, _ = working_grid(tuple(shape), np.asarray(affine, dtype=float), list(spacing))
    return int(grid[SLICE_AXES[slice_axis]])


def header_slice_bound(path: str | os.PathLike, spacing, slice_axis: str) -> int:
    """slice_count_bound from a NIfTI file's header only."""
    header = nib.load(os.fspath(path))
    return slice_count_bound(header.shape[:3], header.affine, spacing, slice_axis)


def stored_slice_count(path: str | os.PathLike) -> int:
    """Slices in a preprocessed stack (slices.npz), read from the array's header, not its data."""
    with zipfile.ZipFile(path) as archive, archive.open("slices.npy") as member:
        major, _ = np.lib.format.read_magic(member)
        read_header = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        shape = read_header(member)[0]
    return int(shape[0])


def training_slices(
    images: Iterable[str],
    stacks: Iterable[str],
    settings: Mapping,
    grids: Mapping[str, tuple] | None = None,
) -> tuple[int, bool]:
    """(slices, exact) of a dataset's training subjects: the stored stacks' counts where every
    subject has been preprocessed (exact), else the bound from the image headers; `grids` holds
    (shape, affine) of images whose headers were read already (arepas.cohort.check_sheet)."""
    stacks = list(stacks)
    if stacks and all(os.path.exists(p) for p in stacks):
        return sum(stored_slice_count(p) for p in stacks), True
    spacing, axis = settings["spacing"], settings.get("slice_axis", "axial")
    grids = grids or {}
    return sum(
        slice_count_bound(*grids[p], spacing, axis)
        if p in grids
        else header_slice_bound(p, spacing, axis)
        for p in images
    ), False


def planned_training_steps(
    settings: Mapping, n_slices: int, networks: Iterable[str]
) -> dict[str, int]:
    """Each named network's optimiser steps on n_slices training slices of a dataset with
    these settings (its config block): translator and autoencoders exactly, the scorer as
    estimated before its pairs are mined (arepas.scorer.planned_steps)."""
    from arepas import autoencoder, dae, scorer, translator

    translator_settings = translator.TranslatorSettings.from_dict(settings.get("translator"))
    steps = {}
    for network in networks:
        if network == "translator":
            steps[network] = translator.planned_steps(translator_settings, n_slices)
        elif network == "scorer":
            steps[network] = scorer.planned_steps(
                scorer.ScorerSettings.from_dict(settings.get("scorer")),
                n_slices,
                translator.pairs_per_slice(translator_settings),
                settings["slice_size"],
            )
        elif network == "autoencoder":
            ae = autoencoder.AutoencoderSettings.from_dict(settings.get("autoencoder"))
            steps[network] = autoencoder.planned_steps(ae, n_slices)
        elif network == "dae":
            steps[network] = dae.planned_steps(
                dae.DaeSettings.from_dict(settings.get("dae")), n_slices
            )
        else:
            raise ValueError(f"unknown network {network!r}")
    return steps


def describe_training_steps(
    dataset: str, n_slices: int, exact: bool, steps: Mapping[str, int]
) -> str:
    """The start-up line of one dataset's training jobs."""
    source = "preprocessed" if exact else "at most, from the image headers"
    jobs = ", ".join(f"{network} {count:,}" for network, count in steps.items())
    return (
        f"dataset '{dataset}': training steps on {n_slices:,} train slices ({source}): {jobs}"
        " (scorer: if its first warm-up passes; `max_steps` in a network's section caps it)"
    )
