"""Hard pair mining: the samples mining reconstructs, the patch pairs kept above the error
percentile, written to disk a chunk at a time, and the pair files a rerun reuses."""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from arepas.io import atomic_path
from arepas.scorer.settings import ScorerSettings
from arepas.stacks import RowFile, StackArray

# Slices reconstructed and cut into patches per step of the on-disk mining; a multiple of the
# translator's inference batch (16).
MINING_CHUNK = 256


def _patch_index(
    slice_idx: np.ndarray, ys: np.ndarray, xs: np.ndarray, patch_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    offsets = np.arange(patch_size)
    return (
        slice_idx[:, None, None],
        ys[:, None, None] + offsets[None, :, None],
        xs[:, None, None] + offsets[None, None, :],
    )


def _single_cycle_permutation(n: int, rng: np.random.Generator) -> np.ndarray:
    # A random permutation walked as one cycle has no fixed point, so every negative pairs a real
    # patch from a different place with the reconstruction.
    order = rng.permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[order] = np.roll(order, -1)
    return partner


def mining_inputs(
    slices: np.ndarray,
    settings: ScorerSettings,
    augmented: Callable[..., tuple[np.ndarray, np.ndarray]],
    clean: Callable[[np.ndarray], np.ndarray],
    pair_count: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edge maps to reconstruct for mining, their target slices and each one's slice index.

    mining_source='augmented' (reference): every slice_step-th sample of the translator's own
    augmented training set (with 3 copies per slice and no unaugmented copy that is each
    training slice once, from a blob-swapped edge map). Without pair_count, `augmented()` returns
    that whole set; with pair_count (its size), `augmented(numbers)` returns only the numbered
    pairs, so only the mined ones are ever in memory. 'unaugmented_edges': every slice_step-th
    slice with its unaugmented edge map, `clean(slices)`. slices may be an array or a StackArray
    on disk (only the picked slices are read). All picked samples are returned in memory: for
    cohorts of any size, reconstruct_for_mining writes them to disk a chunk at a time instead.
    """
    if not isinstance(slices, StackArray):
        slices = np.asarray(slices, dtype=np.float32)
    if settings.mining_source == "augmented" and pair_count is None:
        inputs, targets = augmented()
        per_slice = len(inputs) // max(len(slices), 1)
        picked = np.arange(0, len(inputs), settings.slice_step)
        return inputs[picked], targets[picked], picked // max(per_slice, 1)
    picked, slice_of = mining_plan(len(slices), settings, pair_count)
    inputs, targets = mining_samples(slices, settings, augmented, clean)(picked)
    return inputs, targets, slice_of


def mining_plan(
    n_slices: int, settings: ScorerSettings, pair_count: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(sample numbers, slice of each) that mining reconstructs: every slice_step-th of the
    translator's `pair_count` training pairs (mining_source='augmented'), or of the slices
    themselves ('unaugmented_edges'). Small arrays: the slices are read later, a chunk at a time."""
    if settings.mining_source == "augmented":
        if pair_count is None:
            raise ValueError("mining from the augmented training set needs its pair count")
        picked = np.arange(0, pair_count, settings.slice_step)
        return picked, picked // max(pair_count // max(n_slices, 1), 1)
    picked = np.arange(0, n_slices, settings.slice_step)
    return picked, picked


def mining_samples(
    slices,
    settings: ScorerSettings,
    augmented: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    clean: Callable[[np.ndarray], np.ndarray],
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """numbers -> (edge inputs, target slices) of the samples mining_plan numbered: the
    translator's training pairs `augmented(numbers)`, or slices with their unaugmented edge maps
    `clean(slices)`. slices may be a StackArray; only the numbered ones are read."""
    if settings.mining_source == "augmented":
        return augmented

    def clean_samples(numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        chosen = np.asarray(slices[numbers], dtype=np.float32)
        return clean(chosen), chosen

    return clean_samples


def reconstruct_for_mining(
    picked: np.ndarray,
    slice_of: np.ndarray,
    make_inputs: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    translate: Callable[[np.ndarray], np.ndarray],
    folder: str | os.PathLike,
    roi=None,
    chunk: int = MINING_CHUNK,
    mirrored: np.ndarray | None = None,
) -> tuple[StackArray, StackArray, StackArray | None]:
    """Targets, reconstructions (and ROIs of their slices, when `roi` is given) of the picked
    samples, written to .npy files under `folder` a chunk at a time: (targets, recon, roi) on
    disk. make_inputs(numbers) -> (edge inputs, target slices); translate(inputs) -> recon.

    `mirrored` (bool per picked sample) marks samples that make_inputs returns mirrored across
    the slice's first axis (translator.mirrored_pairs); their ROIs are mirrored the same way.

    Memory holds one chunk, whatever the number of training slices. `chunk` is a multiple of
    the translator's inference batch (16), so every reconstruction is computed in the same batch
    as when all samples are translated at once.
    """
    folder = Path(folder)
    files = None
    for first in range(0, len(picked), chunk):
        numbers = picked[first : first + chunk]
        inputs, targets = make_inputs(numbers)
        recon = translate(inputs)
        if files is None:
            shape = (len(picked), *np.shape(targets)[1:])
            files = [RowFile(folder / "targets.npy", shape, np.float32),
                     RowFile(folder / "recon.npy", shape, np.float32)]
            if roi is not None:
                files.append(RowFile(folder / "roi.npy", shape, bool))
        files[0].write(first, targets)
        files[1].write(first, recon)
        if roi is not None:
            rows = np.asarray(roi[slice_of[first : first + chunk]], dtype=bool)
            if mirrored is not None:
                flip = np.asarray(mirrored[first : first + chunk], dtype=bool)
                rows[flip] = rows[flip][:, ::-1]
            files[2].write(first, rows)
    if files is None:
        raise ValueError("no training sample to mine from")
    readers = [f.reader() for f in files]
    return readers[0], readers[1], readers[2] if roi is not None else None


def mining_disk_bytes(n_samples: int, slice_shape, settings: ScorerSettings) -> int:
    """Disk bytes mining writes at most: targets, reconstructions and ROIs of the samples, and
    the pairs cut from them (kept patches at most 1 - percentile of the candidates, as two
    arrays of twice that many patches)."""
    pixels = int(np.prod(slice_shape))
    samples = n_samples * pixels * (4 + 4 + 1)
    candidates = n_samples * settings.patches_per_slice
    kept = math.ceil(candidates * (1.0 - settings.percentile / 100.0)) + 1
    return samples + 2 * 2 * kept * settings.patch_size**2 * 4


def _as_rows(array):
    # Row-indexable arrays stay as they are (a StackArray is read a chunk at a time).
    return array if isinstance(array, StackArray) else np.asarray(array)


def mine_hard_pairs(
    real,
    recon,
    settings: ScorerSettings,
    rng: np.random.Generator,
    roi=None,
    folder: str | os.PathLike | None = None,
    chunk: int = MINING_CHUNK,
) -> dict[str, np.ndarray]:
    """Hard positive/negative patch pairs from real slices and their reconstructions.

    Every slice is sampled (the caller picks every slice_step-th one, see mining_plan); patch
    centres anywhere in the slice, or inside `roi` when given (mining_region='roi', ours).
    Positions are drawn without replacement within a slice (the reference draws with
    replacement; a repeated position would only duplicate a pair). Negatives pair each real
    patch with the reconstruction of another place: the reference shuffles, which can leave a
    patch with its own reconstruction under the label "dissimilar"; a single-cycle permutation
    cannot.

    real, recon and roi are (n, S, S) arrays or StackArrays on disk; they are read `chunk`
    slices at a time, twice (patch errors, then the kept patches). With `folder`, the pair
    patches are written there and returned as StackArrays, so memory holds one chunk and a few
    numbers per candidate patch (its place and error), not the pairs; without, they are
    arrays. Both give the same pairs (with a folder, the patches and positions as StackArrays).

    Returns patches_a (real), patches_b (reconstruction), labels (0 similar, 1 dissimilar),
    positions_a / positions_b as (slice, y, x) of each patch's top-left corner, the MSE of every
    mined patch (mined_mse) and the percentile threshold used.
    """
    real, recon = _as_rows(real), _as_rows(recon)
    roi = None if roi is None else _as_rows(roi)
    if len(real.shape) != 3 or tuple(real.shape) != tuple(recon.shape):
        raise ValueError(
            f"real and recon must both be (n, S, S); got {tuple(real.shape)}, {tuple(recon.shape)}"
        )
    if roi is not None and tuple(roi.shape) != tuple(real.shape):
        raise ValueError(f"roi shape {tuple(roi.shape)} does not match slices {tuple(real.shape)}")
    p = settings.patch_size
    n, height, width = real.shape
    if height < p or width < p:
        raise ValueError(f"slices {height}x{width} are smaller than the patch size {p}")

    corners_y, corners_x = np.meshgrid(
        np.arange(height - p + 1), np.arange(width - p + 1), indexing="ij"
    )
    corners = (corners_y.ravel(), corners_x.ravel())
    # The places are drawn twice from the same stream: once to measure every candidate's error,
    # once to cut the kept ones. Only the errors (4 bytes per candidate) are held in between.
    replay = copy.deepcopy(rng)
    errors = []
    for rows, places in _candidate_places(roi, n, corners, p, settings, rng, chunk):
        real_patches, recon_patches = _cut_patches(real, recon, rows, places, p)
        errors.append(np.mean((real_patches - recon_patches) ** 2, axis=(1, 2)))
    if not errors:
        raise ValueError("no patch position available (empty ROI on every sampled slice?)")
    mse = np.concatenate(errors)
    del errors
    threshold = np.percentile(mse, settings.percentile)
    n_kept = int(np.count_nonzero(mse > threshold))
    if n_kept < 2:
        raise ValueError(
            f"only {n_kept} patch(es) above the {settings.percentile}th MSE percentile; "
            "need at least 2 to form negative pairs"
        )
    partner = _single_cycle_permutation(n_kept, rng)

    shapes = {"patches_a": (2 * n_kept, p, p), "patches_b": (2 * n_kept, p, p),
              "positions_a": (2 * n_kept, 3), "positions_b": (2 * n_kept, 3)}
    dtypes = {"patches_a": np.float32, "patches_b": np.float32,
              "positions_a": np.int64, "positions_b": np.int64}
    if folder is None:
        out = {key: np.empty(shape, dtype=dtypes[key]) for key, shape in shapes.items()}

        def write(key: str, first: int, block: np.ndarray) -> None:
            out[key][first : first + len(block)] = block
    else:
        files = {
            key: RowFile(Path(folder) / f"{key}.npy", shape, dtypes[key])
            for key, shape in shapes.items()
        }

        def write(key: str, first: int, block: np.ndarray) -> None:
            files[key].write(first, block)

    # Positives: each kept patch with its own reconstruction, in the order they were drawn.
    seen = done = 0
    for rows, places in _candidate_places(roi, n, corners, p, settings, replay, chunk):
        kept = places[mse[seen : seen + len(places)] > threshold].astype(np.int64)
        seen += len(places)
        if not len(kept):
            continue
        real_kept, recon_kept = _cut_patches(real, recon, rows, kept, p)
        for key, block in (("patches_a", real_kept), ("patches_b", recon_kept),
                           ("positions_a", kept), ("positions_b", kept)):
            write(key, done, block)
        # Negatives reuse the kept reconstructions at the same places.
        write("patches_b", n_kept + done, recon_kept)
        write("positions_b", n_kept + done, kept)
        done += len(kept)
    readers = out if folder is None else {key: f.reader() for key, f in files.items()}
    # Negatives: the kept real patches, each moved to another kept reconstruction's place.
    step = chunk * settings.patches_per_slice
    for first in range(0, n_kept, step):
        moved = partner[first : first + step]
        write("patches_a", n_kept + first, readers["patches_a"][moved])
        write("positions_a", n_kept + first, readers["positions_a"][moved])
    # With a folder, the positions stay on disk too (training does not read them).
    return {
        "patches_a": readers["patches_a"],
        "patches_b": readers["patches_b"],
        "labels": _pair_labels(n_kept),
        "positions_a": readers["positions_a"],
        "positions_b": readers["positions_b"],
        "mined_mse": mse,
        "threshold": np.asarray(threshold, dtype=np.float64),
    }


def _pair_labels(n_kept: int) -> np.ndarray:
    """Labels of mine_hard_pairs' order: n_kept positives (0, similar), then as many negatives."""
    return np.concatenate([np.zeros(n_kept), np.ones(n_kept)]).astype(np.float32)


# Written beside the pair files once they are complete: a rerun of the job (after a kill) reuses
# them instead of mining again.
PAIRS_MANIFEST = "pairs.json"
_PAIRS_FORMAT = "arepas-mined-pairs-1"
_PAIR_FILES = ("patches_a", "patches_b", "positions_a", "positions_b")


def keep_mined_pairs(folder: str | os.PathLike, pairs: dict) -> None:
    """Mark the pair files that mine_hard_pairs wrote under `folder` as complete: flushed to
    disk, then a small manifest written atomically, so load_mined_pairs can trust them."""
    folder = Path(folder)
    for name in _PAIR_FILES:
        with open(folder / f"{name}.npy", "rb+") as handle:
            os.fsync(handle.fileno())
    manifest = {
        "format": _PAIRS_FORMAT,
        "n_pairs": int(len(pairs["labels"])),
        "threshold": float(pairs["threshold"]),
    }
    with atomic_path(folder / PAIRS_MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest))


def load_mined_pairs(folder: str | os.PathLike) -> dict | None:
    """The pairs a finished mining left under `folder` (keep_mined_pairs), as StackArrays and
    labels; None where mining did not finish there. Positives come first, then as many
    negatives, as mine_hard_pairs orders them."""
    folder = Path(folder)
    manifest_path = folder / PAIRS_MANIFEST
    if not manifest_path.exists():
        return None
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != _PAIRS_FORMAT:
        return None
    n_pairs = int(manifest["n_pairs"])
    loaded = {
        name: StackArray(folder / f"{name}.npy", ["mined pairs"], [n_pairs])
        for name in _PAIR_FILES
    }
    return {
        **loaded,
        "labels": _pair_labels(n_pairs // 2),
        "threshold": np.asarray(manifest["threshold"]),
    }


def _candidate_places(roi, n: int, corners, p: int, settings: ScorerSettings, rng, chunk: int):
    """(rows, places) per chunk of `chunk` slices: the chunk's slice numbers and the patch
    places (slice, y, x) drawn in it, slice by slice from rng, as int32."""
    corners_y, corners_x = corners
    for first in range(0, n, chunk):
        rows = np.arange(first, min(first + chunk, n))
        roi_block = None if roi is None else np.asarray(roi[rows], dtype=bool)
        block = []
        for k, s in enumerate(rows):
            if roi_block is None:
                candidates = np.arange(corners_y.size)
            else:
                candidates = np.flatnonzero(roi_block[k, corners_y + p // 2, corners_x + p // 2])
            if candidates.size == 0:
                continue
            # Without replacement, so two mined patches of one slice never share a place.
            chosen = rng.choice(
                candidates, size=min(settings.patches_per_slice, candidates.size), replace=False
            )
            block.append(
                np.stack([np.full(chosen.size, s), corners_y[chosen], corners_x[chosen]], axis=1)
            )
        if block:
            yield rows, np.concatenate(block).astype(np.int32)


def _cut_patches(
    real, recon, rows: np.ndarray, places: np.ndarray, patch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The real and reconstructed patches at places (slice, y, x), all of whose slices are in
    the consecutive `rows` (read once here)."""
    real_block = np.asarray(real[rows], dtype=np.float32)
    recon_block = np.asarray(recon[rows], dtype=np.float32)
    index = _patch_index(
        places[:, 0].astype(np.int64) - int(rows[0]), places[:, 1], places[:, 2], patch_size
    )
    return real_block[index], recon_block[index]
