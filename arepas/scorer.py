"""Siamese patch scorer: hard pair mining, network, training with restarts, patch scoring.

Defaults are those of the authors' reference implementation (Mitic & Langs, MLMI 2025,
arXiv 2509.12905; GitHub cirmuw/arepas, files model_siamese.py, train_siamese.py, preproc.py,
utils.py; summarised in /work/shared/method/AREPAS.md): 16x16 patches; 256 random patches per
slice from every 3rd sample of the augmented translator training set, anywhere in the slice; pairs
kept above the 90th MSE percentile; embedding with zero-padded 4x4 convolutions (padding 2);
contrastive loss with margin 1 on the sigmoid output p, end to end; RMSprop 1e-3, batch 1024;
restart until the last batch of the warm-up epoch is above 70 % accuracy (up to 100 tries), then
10 epochs with 20 % held out, keeping the best held-out accuracy.

Options of this project (each a named setting, so ablations can compare them):
``architecture="unpadded"`` (valid convolutions), ``loss="detached_head"`` (contrastive loss on the
raw distance plus a separately trained sigmoid head), ``warmup_rule="epoch"`` (epoch-average
accuracy), ``stall_accuracy`` (refuse a scorer whose best held-out accuracy is near chance),
``mining_source="clean"`` and ``mining_region="roi"``; ``max_steps``, a budget of optimiser steps
for the main training (see ScorerSettings and planned_steps).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from arepas.io import atomic_path, load_epoch_checkpoint, save_torch
from arepas.progress import (
    StepProgress,
    batches_per_epoch,
    capped_steps,
    check_max_steps,
    effective_epochs,
)
from arepas.settings import settings_from_dict
from arepas.stacks import RowFile, StackArray, batch_tensor

# Our stall rule (option `stall_accuracy`): a scorer whose best held-out accuracy is at or below
# this is indistinguishable from a coin flip on balanced pairs; its maps would be noise times the
# residual. The reference has no such rule.
STALL_ACCURACY = 0.55

ARCHITECTURES = ("reference", "unpadded")
LOSSES = ("reference", "detached_head")
WARMUP_RULES = ("last_batch", "epoch")
MINING_SOURCES = ("augmented", "clean")
MINING_REGIONS = ("slice", "roi")
# Slices reconstructed and cut into patches per step of the on-disk mining; a multiple of the
# translator's inference batch (16).
MINING_CHUNK = 256
# What scorer files written before these settings existed were trained with.
LEGACY_SETTINGS = {
    "architecture": "unpadded",
    "loss": "detached_head",
    "warmup_rule": "epoch",
    "stall_accuracy": STALL_ACCURACY,
    "mining_source": "clean",
    "mining_region": "roi",
}


@dataclass
class ScorerSettings:
    """Mining, network and training settings; the defaults are the reference's.

    max_steps (ours; None: no cap) caps the optimiser steps of the main training, epochs 1 to
    `epochs` of the try that passed its warm-up: training stops when they are spent, mid-epoch
    if need be, and that epoch is evaluated, logged and checkpointed as any other. Warm-up
    epochs are neither counted nor cut: the restart rule judges whole warm-up epochs, and how
    many tries it takes is not known beforehand. planned_steps counts one warm-up epoch (the
    first try passing) plus the capped main training; every failed try adds one epoch more.
    """

    patch_size: int = 16
    patches_per_slice: int = 256
    percentile: float = 90.0
    slice_step: int = 3
    embedding_dim: int = 10
    margin: float = 1.0
    lr: float = 1e-3
    batch_size: int = 1024
    epochs: int = 10
    holdout: float = 0.2
    warmup_accuracy: float = 0.7
    max_restarts: int = 100
    architecture: str = "reference"
    loss: str = "reference"
    warmup_rule: str = "last_batch"
    # None: no stall rule after warm-up (reference); a number: refuse a best held-out accuracy at
    # or below it (ours: 0.55).
    stall_accuracy: float | None = None
    mining_source: str = "augmented"
    mining_region: str = "slice"
    max_steps: int | None = None

    def __post_init__(self) -> None:
        check_max_steps(self.max_steps)
        for name, choices in (
            ("architecture", ARCHITECTURES),
            ("loss", LOSSES),
            ("warmup_rule", WARMUP_RULES),
            ("mining_source", MINING_SOURCES),
            ("mining_region", MINING_REGIONS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"scorer setting {name}={getattr(self, name)!r} is not one of {choices}"
                )
        if self.patch_size < 1 or _feature_size(self.patch_size, self.padding) < 1:
            raise ValueError(
                f"patch_size={self.patch_size} is too small for the {self.architecture} "
                f"network (two 4x4 conv + 2x2 pool stages with padding {self.padding}); "
                f"the smallest that works is {smallest_patch_size(self.architecture)}"
            )
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"holdout must lie in (0, 1), got {self.holdout}")
        if not 0.0 <= self.percentile < 100.0:
            raise ValueError(f"percentile must lie in [0, 100), got {self.percentile}")
        for name in ("patches_per_slice", "slice_step", "embedding_dim", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_restarts < 1:
            raise ValueError(f"max_restarts must be >= 1, got {self.max_restarts}")

    @property
    def padding(self) -> int:
        return ARCHITECTURE_PADDING[self.architecture]

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> ScorerSettings:
        """Settings from a config mapping; unknown keys are an error, missing keys keep defaults."""
        return settings_from_dict(cls, values, "scorer")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class StalledScorerError(RuntimeError):
    """The Siamese scorer did not learn; carries the training history and the best model seen,
    for callers that choose to keep a flagged model rather than stop."""

    def __init__(
        self, message: str, history: pd.DataFrame, model: SiameseScorer | None = None
    ) -> None:
        super().__init__(message)
        self.history = history
        self.model = model


# ----------------------------------------------------------------------------------------------
# hard pair mining


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
    augmented training set (with 3 copies per slice and no clean copy that is each training
    slice once, from a blob-swapped edge map). Without pair_count, `augmented()` returns that
    whole set; with pair_count (its size), `augmented(numbers)` returns only the numbered pairs,
    so only the mined ones are ever in memory. 'clean': every slice_step-th slice with its clean
    edge map, `clean(slices)`. slices may be an array or a StackArray on disk (only the picked
    slices are read). All picked samples are returned in memory: for cohorts of any size,
    reconstruct_for_mining writes them to disk a chunk at a time instead.
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
    themselves ('clean'). Small arrays: the slices are read later, a chunk at a time."""
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
    translator's training pairs `augmented(numbers)`, or slices with their clean edge maps
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


# ----------------------------------------------------------------------------------------------
# network

# Zero padding of both 4x4 convolutions: the reference pads by 2 (model_siamese.py), so each
# 16x16 patch is embedded from all its pixels (16 -> 17 -> 8 -> 9 -> 4, 64 x 4 x 4 = 1,024
# features); "unpadded" (ours) uses valid convolutions (16 -> 13 -> 6 -> 3 -> 1, 64 features), so
# the embedding sees only the patch's top-left 13x13 pixels.
ARCHITECTURE_PADDING = {"reference": 2, "unpadded": 0}
_KERNEL = 4


def _stage_size(size: int, padding: int) -> int:
    # 4x4 convolution with `padding` on both sides, then 2x2 average pool (floor).
    return (size + 2 * padding - _KERNEL + 1) // 2


def _feature_size(patch_size: int, padding: int = 0) -> int:
    size = patch_size
    for _ in range(2):
        size = _stage_size(size, padding)
    return size


def smallest_patch_size(architecture: str) -> int:
    """Smallest patch side the given architecture can embed."""
    padding = ARCHITECTURE_PADDING[architecture]
    return next(p for p in range(1, 64) if _feature_size(p, padding) >= 1)


def _pair_distance(emb_a: torch.Tensor, emb_b: torch.Tensor, dim: int = 1) -> torch.Tensor:
    # The floor keeps the gradient of sqrt finite when two embeddings coincide exactly.
    return torch.sqrt(torch.clamp(((emb_a - emb_b) ** 2).sum(dim=dim), min=1e-12))


class SiameseScorer(nn.Module):
    """Shared patch embedding; dissimilarity = sigmoid(linear(batchnorm(distance)))."""

    def __init__(
        self,
        patch_size: int = 16,
        embedding_dim: int = 10,
        architecture: str = "reference",
        head_init: str = "default",
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURE_PADDING:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        self.patch_size = patch_size
        self.architecture = architecture
        self.padding = ARCHITECTURE_PADDING[architecture]
        self.feature_size = _feature_size(patch_size, self.padding)
        if self.feature_size < 1:
            raise ValueError(f"patch_size={patch_size} is too small for the {architecture} network")
        if architecture == "reference":
            # torch's default running-average momentum, as in the reference.
            self.input_norm = nn.BatchNorm2d(1)
        else:
            self.input_norm = nn.BatchNorm2d(1, momentum=None)  # cumulative average
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(1, 32, _KERNEL, padding=self.padding),
                nn.Conv2d(32, 64, _KERNEL, padding=self.padding),
            ]
        )
        self.fc = nn.Linear(64 * self.feature_size**2, embedding_dim)
        self.head_norm = nn.BatchNorm1d(1)
        self.head_linear = nn.Linear(1, 1)
        if head_init == "increasing":
            # Ours (with loss="detached_head"): start the head as an increasing map of the
            # standardised distance, so early accuracy is not pinned below 50 % by a random
            # negative slope.
            with torch.no_grad():
                self.head_linear.weight.fill_(1.0)
                self.head_linear.bias.zero_()
        elif head_init != "default":
            raise ValueError(f"head_init must be 'default' or 'increasing', got {head_init!r}")

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(patches)
        for conv in self.convs:
            x = F.avg_pool2d(torch.tanh(conv(x)), 2)
        return torch.tanh(self.fc(x.flatten(1)))

    def distance(self, patches_a: torch.Tensor, patches_b: torch.Tensor) -> torch.Tensor:
        if self.architecture == "reference":
            # Two passes, as in the reference: in training the input batch norm normalises real
            # and reconstructed patches with their own batch statistics.
            return _pair_distance(self.embed(patches_a), self.embed(patches_b))
        # Ours: one batch through the shared embedding, so its batch norm sees both sides.
        emb = self.embed(torch.cat([patches_a, patches_b]))
        return _pair_distance(*emb.split(patches_a.shape[0]))

    def logit_from_distance(self, distance: torch.Tensor) -> torch.Tensor:
        return self.head_linear(self.head_norm(distance.reshape(-1, 1))).reshape(distance.shape)

    def forward(self, patches_a: torch.Tensor, patches_b: torch.Tensor) -> torch.Tensor:
        """Dissimilarity p in (0, 1) of (N, 1, p, p) patch pairs; high = dissimilar."""
        return torch.sigmoid(self.logit_from_distance(self.distance(patches_a, patches_b)))


def build_siamese(settings: ScorerSettings) -> SiameseScorer:
    """A freshly initialised scorer for the settings' patch size and embedding size."""
    return SiameseScorer(
        settings.patch_size,
        settings.embedding_dim,
        settings.architecture,
        head_init="increasing" if settings.loss == "detached_head" else "default",
    )


# ----------------------------------------------------------------------------------------------
# training


def contrastive_loss(distance: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Label 0 (similar): d^2; label 1 (dissimilar): max(0, margin - d)^2; batch mean.

    The reference applies it to the sigmoid output p (d = p); loss="detached_head" to the raw
    embedding distance."""
    return torch.mean(
        (1.0 - labels) * distance**2 + labels * torch.clamp(margin - distance, min=0.0) ** 2
    )


def _device_of(model: nn.Module) -> torch.device:
    # Scoring runs where the model's weights are (load_scorer's `device`).
    return next(model.parameters()).device


def _derived_seed(seed: int, attempt: int) -> int:
    return int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0])


def _predict(model: SiameseScorer, a: torch.Tensor, b: torch.Tensor, batch: int) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        scores = [model(a[i : i + batch], b[i : i + batch]) for i in range(0, len(a), batch)]
    return torch.cat(scores)


def _predict_rows(
    model: SiameseScorer, pairs: Callable[[np.ndarray], tuple], rows: np.ndarray, batch: int
) -> torch.Tensor:
    # As _predict, for pairs gathered a batch at a time.
    model.eval()
    with torch.no_grad():
        scores = []
        for first in range(0, len(rows), batch):
            a, b, _ = pairs(rows[first : first + batch])
            scores.append(model(a, b))
    return torch.cat(scores)


def _is_dissimilar(score: torch.Tensor) -> torch.Tensor:
    # The reference counts p >= 0.5 as "dissimilar".
    return (score >= 0.5).float()


@dataclass
class _EpochResult:
    loss: float
    accuracy: float  # over all pairs of the epoch
    last_batch_accuracy: float


def _batch_loss(
    model: SiameseScorer,
    a: torch.Tensor,
    b: torch.Tensor,
    y: torch.Tensor,
    settings: ScorerSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, dissimilarity score) of one batch under the settings' loss."""
    distance = model.distance(a, b)
    if settings.loss == "reference":
        # End to end: the contrastive loss acts on p = sigmoid(linear(batchnorm(distance))).
        score = torch.sigmoid(model.logit_from_distance(distance))
        return contrastive_loss(score, y, settings.margin), score
    # Ours: the embedding learns only from the contrastive loss on the distance; the head is a
    # 1-D logistic calibration of the detached distance, trained with BCE.
    logit = model.logit_from_distance(distance.detach())
    loss = contrastive_loss(distance, y, settings.margin)
    loss = loss + F.binary_cross_entropy_with_logits(logit, y)
    return loss, torch.sigmoid(logit)


def _train_epoch(
    model: SiameseScorer,
    optimiser: torch.optim.Optimizer,
    pairs: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    rows: np.ndarray,
    settings: ScorerSettings,
    generator: torch.Generator,
    max_batches: int | None = None,
    on_step: Callable[[], None] | None = None,
) -> _EpochResult:
    """One epoch over `rows` in an order drawn from `generator`; only its first max_batches
    batches when given (the order is drawn whole either way). on_step() after every step."""
    model.train()
    # The generator lives on the CPU, so the order is the same whatever the device.
    order = torch.randperm(len(rows), generator=generator).numpy()
    batches = [
        order[start : start + settings.batch_size]
        for start in range(0, len(rows), settings.batch_size)
    ]
    # Batch norm needs two samples for batch statistics.
    batches = [idx for idx in batches if idx.size >= 2][:max_batches]
    total_loss, correct, seen, last = 0.0, 0, 0, float("nan")
    for idx, (a, b, y) in zip(batches, _prefetched(pairs, [rows[i] for i in batches]), strict=True):
        loss, score = _batch_loss(model, a, b, y, settings)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        hits = int((_is_dissimilar(score.detach()) == y).sum())
        total_loss += loss.item() * idx.size
        correct += hits
        seen += idx.size
        last = hits / idx.size
        if on_step is not None:
            on_step()
    return _EpochResult(total_loss / max(seen, 1), correct / max(seen, 1), last)


def _prefetched(pairs: Callable[[np.ndarray], tuple], batches: list[np.ndarray]):
    """pairs(batch) for each batch in turn, the next one read in a background thread while the
    caller trains on the current one: reads from disk release the interpreter, so a GPU does not
    wait for them. The order and the values are those of reading one after the other."""
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(pairs, batches[0])
        for following in [*batches[1:], None]:
            ready = pending.result()
            if following is not None:
                pending = reader.submit(pairs, following)
            yield ready


def _passes_warmup(result: _EpochResult, settings: ScorerSettings) -> tuple[bool, float]:
    if settings.warmup_rule == "last_batch":
        # Reference: the accuracy of the warm-up epoch's last batch must exceed the bar.
        return result.last_batch_accuracy > settings.warmup_accuracy, result.last_batch_accuracy
    return result.accuracy >= settings.warmup_accuracy, result.accuracy


def _new_optimiser(model: SiameseScorer, settings: ScorerSettings) -> torch.optim.Optimizer:
    # torch.optim.RMSprop defaults otherwise (alpha 0.99, eps 1e-8); lr 1e-3 as published.
    return torch.optim.RMSprop(model.parameters(), lr=settings.lr)


# File name of the scorer's per-epoch checkpoint inside its checkpoint folder.
CHECKPOINT_NAME = "scorer_last.pt"


def heldout_count(settings: ScorerSettings, n_pairs: int) -> int:
    """Pairs train_scorer holds out of n_pairs, for the held-out accuracy."""
    return int(round(settings.holdout * n_pairs))


def steps_per_epoch(settings: ScorerSettings, n_pairs: int) -> int:
    """Optimiser steps of one epoch (warm-up or main) on n_pairs mined pairs: a batch of the
    pairs not held out each, a last batch of one pair skipped (batch norm needs two)."""
    n_train = n_pairs - heldout_count(settings, n_pairs)
    return batches_per_epoch(n_train, settings.batch_size, smallest=2)


def planned_steps_for_pairs(settings: ScorerSettings, n_pairs: int) -> int:
    """Optimiser steps train_scorer takes on n_pairs mined pairs when its first try passes
    the warm-up: one warm-up epoch, then epochs x steps_per_epoch, at most max_steps (which
    caps the main training only). Each failed try adds one epoch (steps_per_epoch)."""
    epoch_steps = steps_per_epoch(settings, n_pairs)
    return epoch_steps + capped_steps(settings.epochs, epoch_steps, settings.max_steps)


def expected_pair_count(
    settings: ScorerSettings, n_slices: int, pairs_per_slice: int, slice_side: int | None = None
) -> int:
    """The number of pairs mine_hard_pairs gives, as mined by the workflow from n_slices
    training slices of a translator with pairs_per_slice training pairs per slice
    (translator.pairs_per_slice; only mining_source 'augmented' reads it).

    Mining reconstructs every slice_step-th sample (mining_plan), draws patches_per_slice
    places in each (fewer where a slice of side slice_side has fewer places; side unknown:
    assumed enough), keeps those above the percentile of their errors and pairs each kept patch
    once as positive, once as negative. Exact when the errors have no ties and every sample
    offers its places; with mining_region 'roi', an ROI with fewer places than patches_per_slice
    makes it an upper bound.
    """
    samples = n_slices * pairs_per_slice if settings.mining_source == "augmented" else n_slices
    picked = -(-max(samples, 0) // settings.slice_step)
    per_sample = settings.patches_per_slice
    if slice_side is not None:
        per_sample = min(per_sample, max(slice_side - settings.patch_size + 1, 0) ** 2)
    candidates = picked * per_sample
    if candidates < 1:
        return 0
    # Kept: the errors strictly above np.percentile's linear interpolation between the sorted
    # errors at index q (N - 1) / 100 and the next.
    position = settings.percentile * (candidates - 1) / 100.0
    return 2 * (candidates - 1 - math.floor(position))


def planned_steps(
    settings: ScorerSettings, n_slices: int, pairs_per_slice: int, slice_side: int | None = None
) -> int:
    """Optimiser steps of training the scorer on the pairs mined from n_slices training
    slices (expected_pair_count, whose arguments these are), when its first try passes the
    warm-up: planned_steps_for_pairs of that count. Before mining, so an estimate in the cases
    expected_pair_count names."""
    return planned_steps_for_pairs(
        settings, expected_pair_count(settings, n_slices, pairs_per_slice, slice_side)
    )


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _main_state(
    model: SiameseScorer,
    optimiser: torch.optim.Optimizer,
    generator: torch.Generator,
    best_acc: float,
    best_state: dict | None,
    held_acc: float,
) -> dict:
    """What a resume of the main training needs besides the try and the epoch."""
    return {
        "model": _cpu_state(model),
        "optimiser": optimiser.state_dict(),
        "generator": generator.get_state(),
        "best_acc": best_acc,
        "best_state": best_state,
        "held_acc": held_acc,
    }


def train_scorer(
    patches_a: np.ndarray | StackArray,
    patches_b: np.ndarray | StackArray,
    labels: np.ndarray,
    settings: ScorerSettings,
    seed: int,
    progress: Callable[[str], None] = print,
    device: str = "cpu",
    checkpoint_dir: str | os.PathLike | None = None,
) -> tuple[SiameseScorer, pd.DataFrame]:
    """Train with the restart rule; keep the state with the best held-out accuracy.

    patches_a / patches_b are arrays or StackArrays on disk (mine_hard_pairs with a folder);
    each batch is gathered from them when it is needed. On ``device`` ("cpu", "cuda",
    "cuda:1"): each batch moves there and the model is built there, so CPU and GPU run the same
    steps; batch order and initialisation come from seeded CPU generators either way. The model
    is returned on ``device``.

    With `checkpoint_dir`, the whole training state (try, epoch, weights, optimiser, batch-order
    generator, best states, history) is written atomically after every warm-up and training
    epoch, and a run that finds it resumes after the last finished epoch with the same result
    as an uninterrupted run, given the same pairs. Only `epochs` and `max_steps` may differ on a
    resume. With max_steps (see ScorerSettings), the main training stops when that many steps
    are spent; an epoch cut short is stored with the state it started from, and a later run with
    a larger budget trains it again from there, as an uninterrupted run would have. Progress
    lines with an expected end go to `progress` (arepas.progress.StepProgress).

    History columns: try, epoch (0 = warm-up epoch), train_loss, train_acc, heldout_acc,
    warmup_acc (the accuracy the restart rule judged; warm-up rows only).
    Raises StalledScorerError if no try passes warm-up, or if `stall_accuracy` is set and the
    best held-out accuracy is at or below it.
    """
    torch_device = torch.device(device)
    a_rows, b_rows = _as_rows(patches_a), _as_rows(patches_b)
    y_all = np.asarray(labels, dtype=np.float32)
    if not (len(a_rows) == len(b_rows) == len(y_all)):
        raise ValueError(
            f"pair arrays differ in length: {len(a_rows)}, {len(b_rows)}, {len(y_all)}"
        )
    if tuple(a_rows.shape[-2:]) != (settings.patch_size,) * 2:
        raise ValueError(
            f"patches are {tuple(a_rows.shape[-2:])}, settings say {settings.patch_size}"
        )

    def pairs(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # One batch at a time from wherever the pairs are (memory or disk), so a pair set of a
        # large cohort is never whole in memory, on the host or on the device.
        a, b = batch_tensor(a_rows, rows), batch_tensor(b_rows, rows)
        y = torch.from_numpy(y_all[rows])
        return a.to(torch_device), b.to(torch_device), y.to(torch_device)

    # One split for all tries, so warm-up epochs never see the held-out pairs. (The reference
    # warms up on all pairs and splits afterwards, so its held-out accuracy is measured partly
    # on pairs the network has trained on; we keep them apart.)
    n_pairs = len(y_all)
    order = np.random.default_rng(seed).permutation(n_pairs)
    n_held = heldout_count(settings, n_pairs)
    if n_held < 1 or n_pairs - n_held < 2:
        raise ValueError(f"{n_pairs} pairs are too few for a {settings.holdout} hold-out split")
    held, train = order[:n_held], order[n_held:]
    y_held = torch.from_numpy(y_all[held]).to(torch_device)

    def heldout_accuracy(model: SiameseScorer) -> float:
        scores = _predict_rows(model, pairs, held, settings.batch_size)
        return float((_is_dissimilar(scores) == y_held).float().mean())

    rows: list[dict[str, float]] = []
    best_warmup, best_warmup_state = -1.0, None
    checkpoint = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    # The settings a resume may not change; the pair count stands in for the pairs themselves
    # (the caller's checkpoint folder is keyed on what they were mined from). The budget may
    # change, like `epochs`; left out, it also leaves checkpoints from before it existed valid.
    fixed = {
        **{k: v for k, v in settings.to_dict().items() if k != "max_steps"},
        "n_pairs": n_pairs,
    }
    epoch_steps = steps_per_epoch(settings, n_pairs)
    main_total = capped_steps(settings.epochs, epoch_steps, settings.max_steps)
    epochs = effective_epochs(settings.epochs, epoch_steps, settings.max_steps)
    saved = load_epoch_checkpoint(checkpoint, fixed, seed, torch_device)
    first_try, resume = 0, None
    if saved is not None:
        rows = json.loads(saved["history_json"])
        best_warmup, best_warmup_state = float(saved["best_warmup"]), saved["best_warmup_model"]
        if saved["phase"] == "warmup_failed":
            first_try = int(saved["try"]) + 1
            progress(f"scorer: resuming after the failed warm-up of try {first_try}")
        elif saved.get("before_cut") is not None and saved["main_steps"] < main_total:
            # Its last epoch was cut short by a smaller budget: train it again from its start.
            first_try = int(saved["try"])
            resume = {**saved, **saved["before_cut"], "epoch": int(saved["epoch"]) - 1}
            rows = json.loads(resume["history_json"])
            progress(
                f"scorer: resuming try {first_try + 1} before epoch {int(saved['epoch'])}, "
                f"which max_steps cut short at step {saved['main_steps']}"
            )
        else:
            first_try, resume = int(saved["try"]), saved
            progress(f"scorer: resuming try {first_try + 1} after epoch {int(saved['epoch'])}")
    # Steps so far: one whole warm-up epoch per try before, this try's too when resuming its
    # main training, whose epochs before the first to train are whole.
    done = first_try * epoch_steps
    if resume is not None:
        done += epoch_steps + int(resume["epoch"]) * epoch_steps
    ticker = StepProgress("scorer", 0, progress, done=done)

    def save(phase: str, attempt: int, epoch: int, **state) -> None:
        if checkpoint is None:
            return
        save_torch(
            {
                "phase": phase,
                "try": attempt,
                "epoch": epoch,
                "seed": seed,
                "settings_json": json.dumps(fixed),
                "history_json": json.dumps(rows),
                "best_warmup": best_warmup,
                "best_warmup_model": best_warmup_state,
                **state,
            },
            checkpoint,
        )

    for attempt in range(first_try, settings.max_restarts):
        # The plan as of this try: its warm-up passes.
        ticker.total = (attempt + 1) * epoch_steps + main_total
        try_seed = _derived_seed(seed, attempt)
        torch.manual_seed(try_seed)
        # Built on the CPU, then moved: the initial weights do not depend on the device.
        model = build_siamese(settings).to(torch_device)
        generator = torch.Generator().manual_seed(try_seed)
        # A fresh optimiser for the main training, as in the reference.
        optimiser = _new_optimiser(model, settings)
        if resume is not None:
            model.load_state_dict(resume["model"])
            optimiser.load_state_dict(resume["optimiser"])
            generator.set_state(resume["generator"])
            best_acc, best_state = float(resume["best_acc"]), resume["best_state"]
            held_acc, first_epoch = float(resume["held_acc"]), int(resume["epoch"]) + 1
            resume = None
        else:
            result = _train_epoch(
                model, _new_optimiser(model, settings), pairs, train, settings, generator,
                on_step=ticker.step,
            )
            passed, judged = _passes_warmup(result, settings)
            held_acc = heldout_accuracy(model)
            rows.append(_history_row(attempt, 0, result.loss, result.accuracy, held_acc, judged))
            if judged > best_warmup:
                best_warmup, best_warmup_state = judged, _cpu_state(model)
            if not passed:
                progress(
                    f"scorer try {attempt + 1}/{settings.max_restarts}: warm-up accuracy "
                    f"{judged:.3f} ({settings.warmup_rule}) not above "
                    f"{settings.warmup_accuracy}, restarting"
                )
                ticker.epoch_end()
                save("warmup_failed", attempt, 0)
                continue
            progress(f"scorer try {attempt + 1}: warm-up accuracy {judged:.3f}, training on")
            ticker.epoch_end()
            best_acc, best_state, first_epoch = -1.0, None, 1

        # Epochs before first_epoch are whole: a cut one is the last or trained again.
        main_steps = (first_epoch - 1) * epoch_steps
        if first_epoch == 1 and checkpoint is not None:
            save("main", attempt, 0, main_steps=0, **_main_state(
                model, optimiser, generator, best_acc, best_state, held_acc))
        for epoch in range(first_epoch, epochs + 1):
            batches = before_cut = None
            if main_total - main_steps < epoch_steps:
                batches = main_total - main_steps
                # max_steps ends training within this epoch. What a later run with a larger
                # budget starts this epoch again from:
                before_cut = copy.deepcopy({
                    **_main_state(model, optimiser, generator, best_acc, best_state, held_acc),
                    "history_json": json.dumps(rows),
                })
            result = _train_epoch(
                model, optimiser, pairs, train, settings, generator, batches, ticker.step
            )
            main_steps += epoch_steps if batches is None else batches
            held_acc = heldout_accuracy(model)
            rows.append(_history_row(attempt, epoch, result.loss, result.accuracy, held_acc))
            cut = f" (cut short at step {main_steps} by max_steps)" if batches is not None else ""
            progress(
                f"scorer epoch {epoch}/{epochs}: loss {result.loss:.4f}, "
                f"train acc {result.accuracy:.3f}, held-out acc {held_acc:.3f}{cut}"
            )
            ticker.epoch_end()
            if held_acc > best_acc:
                best_acc, best_state = held_acc, _cpu_state(model)
            if checkpoint is not None:  # the state is copied only to be written
                save("main", attempt, epoch, main_steps=main_steps, before_cut=before_cut,
                     **_main_state(model, optimiser, generator, best_acc, best_state, held_acc))
        history = _history_frame(rows)
        if best_state is not None:
            model.load_state_dict(best_state)
        else:  # epochs == 0: the warm-up model is the result
            best_acc = held_acc
        model.eval()
        if settings.stall_accuracy is not None and best_acc <= settings.stall_accuracy:
            raise StalledScorerError(
                f"Siamese scorer stalled: best held-out accuracy {best_acc:.3f} <= "
                f"{settings.stall_accuracy} after warm-up; its maps would be noise",
                history,
                model,
            )
        return model, history

    history = _history_frame(rows)
    best_warmup_model = None
    if best_warmup_state is not None:
        best_warmup_model = build_siamese(settings).to(torch_device)
        best_warmup_model.load_state_dict(best_warmup_state)
        best_warmup_model.eval()
    raise StalledScorerError(
        f"Siamese scorer stalled: no try of {settings.max_restarts} reached the warm-up "
        f"accuracy {settings.warmup_accuracy} ({settings.warmup_rule}; best seen "
        f"{best_warmup:.3f})",
        history,
        best_warmup_model,
    )


HISTORY_COLUMNS = ["try", "epoch", "train_loss", "train_acc", "heldout_acc", "warmup_acc"]


def _history_row(
    attempt: int, epoch: int, loss: float, acc: float, held: float, warmup: float = float("nan")
) -> dict:
    return dict(zip(HISTORY_COLUMNS, (attempt, epoch, loss, acc, held, warmup), strict=True))


def _history_frame(rows: list[dict[str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


# ----------------------------------------------------------------------------------------------
# scoring


def _pool_pairs(x: torch.Tensor, offset: int, stride: int) -> torch.Tensor:
    # 2x2 average pool whose taps lie `offset` entries apart (a dilated pool), output every
    # `stride` entries; written out because avg_pool2d has no dilation.
    height = (x.shape[-2] - offset - 1) // stride + 1
    width = (x.shape[-1] - offset - 1) // stride + 1
    total = 0
    for dy in (0, offset):
        for dx in (0, offset):
            total = (
                total
                + x[
                    ...,
                    dy : dy + (height - 1) * stride + 1 : stride,
                    dx : dx + (width - 1) * stride + 1 : stride,
                ]
            )
    return total / 4


def _dense_embedding(model: SiameseScorer, images: torch.Tensor, stride: int) -> torch.Tensor:
    """Embeddings of every patch with top-left corner on the `stride` grid, (B, E, Gy, Gx)."""
    p = model.patch_size
    x = model.input_norm(images)
    # `spacing`: image pixels between neighbouring entries of the current map; `step`: pixels
    # between the entries one patch uses at this depth. Pooling doubles `step`; the map keeps
    # only the entries some grid patch needs, so nothing is skipped and nothing wasted.
    spacing, step = 1, 1
    for conv in model.convs:
        x = torch.tanh(F.conv2d(x, conv.weight, conv.bias, dilation=step // spacing))
        new_spacing = math.gcd(stride, 2 * step)
        x = _pool_pairs(x, offset=step // spacing, stride=new_spacing // spacing)
        spacing, step = new_spacing, 2 * step
    f = model.feature_size
    weight = model.fc.weight.reshape(model.fc.out_features, -1, f, f)
    x = torch.tanh(F.conv2d(x, weight, model.fc.bias, dilation=step // spacing))
    grid_y = (images.shape[-2] - p) // stride + 1
    grid_x = (images.shape[-1] - p) // stride + 1
    sub = stride // spacing
    return x[..., : (grid_y - 1) * sub + 1 : sub, : (grid_x - 1) * sub + 1 : sub]


def dense_patch_scores_batch(
    model: SiameseScorer,
    real: np.ndarray,
    recon: np.ndarray,
    stride: int = 1,
    chunk_size: int = 4,
) -> np.ndarray:
    """Dissimilarity of every patch on the `stride` grid for (n, S, S) slices -> (n, Gy, Gx).

    Entry [k, i, j] scores the patch with top-left corner (i*stride, j*stride) and equals the
    network's output on that patch cut out (eval mode).
    """
    real = np.asarray(real, dtype=np.float32)
    recon = np.asarray(recon, dtype=np.float32)
    if real.ndim != 3 or real.shape != recon.shape:
        raise ValueError(f"real and recon must both be (n, S, S); got {real.shape}, {recon.shape}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    p = model.patch_size
    if min(real.shape[1:]) < p:
        raise ValueError(f"slices {real.shape[1:]} are smaller than the patch size {p}")
    model.eval()
    if model.padding:
        # Padded patches have no shared dense form beyond the first stage: score the grid's
        # positions exactly, slice by slice.
        grid_y = (real.shape[1] - p) // stride + 1
        grid_x = (real.shape[2] - p) // stride + 1
        ys, xs = np.meshgrid(np.arange(grid_y) * stride, np.arange(grid_x) * stride, indexing="ij")
        positions = np.stack([ys.ravel(), xs.ravel()], axis=1)
        grids = [patch_scores_at(model, r, c, positions) for r, c in zip(real, recon, strict=True)]
        if not grids:
            return np.zeros((0, grid_y, grid_x), dtype=np.float32)
        return np.stack(grids).reshape(len(real), grid_y, grid_x).astype(np.float32)
    out = []
    device = _device_of(model)
    with torch.no_grad():
        for start in range(0, len(real), chunk_size):
            ra = torch.as_tensor(real[start : start + chunk_size], device=device).unsqueeze(1)
            rb = torch.as_tensor(recon[start : start + chunk_size], device=device).unsqueeze(1)
            emb = _dense_embedding(model, torch.cat([ra, rb]), stride)
            ea, eb = emb.split(len(ra))
            distance = _pair_distance(ea, eb, dim=1)
            out.append(torch.sigmoid(model.logit_from_distance(distance)).cpu().numpy())
    if not out:
        grid = [(size - p) // stride + 1 for size in real.shape[1:]]
        return np.zeros((0, *grid), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)


def dense_patch_scores(
    model: SiameseScorer, real_slice: np.ndarray, recon_slice: np.ndarray, stride: int = 1
) -> np.ndarray:
    """Dissimilarity of every patch on the `stride` grid of one (S, S) slice -> (Gy, Gx)."""
    return dense_patch_scores_batch(model, real_slice[None], recon_slice[None], stride)[0]


def _tap_range(index: int, patch_size: int, padding: int) -> tuple[int, int]:
    # Kernel rows [lo, hi) that a padded convolution's output `index` (patch coordinates) reads
    # from inside the patch; the rest read the zero padding.
    return max(0, padding - index), min(_KERNEL, patch_size + padding - index)


def _visible_mask(rows: tuple[int, int], cols: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    # On the device and in the dtype of `like` (the kernel it masks).
    mask = torch.zeros(_KERNEL, _KERNEL, dtype=like.dtype, device=like.device)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = 1.0
    return mask


def _first_stage_plan(model: SiameseScorer) -> tuple[list[tuple], list[tuple], list[tuple]]:
    """(key of each pooled row / column position, pooled keys computed densely, pooled keys
    computed per patch). A pooled key pairs the visible kernel parts of the two convolution
    outputs a pooled entry averages. Keys that occur at one pooled row and one pooled column only
    (the patch's corners) are cheaper per patch than as maps over the whole image."""
    p, pad = model.patch_size, model.padding
    size = _stage_size(p, pad)
    keys = [(_tap_range(2 * u, p, pad), _tap_range(2 * u + 1, p, pad)) for u in range(size)]
    single = {k for k in keys if keys.count(k) == 1}
    unique = sorted(set(keys))
    pairs = [(r, c) for r in unique for c in unique]
    dense = [k for k in pairs if not (k[0] in single and k[1] in single)]
    per_patch = [k for k in pairs if k[0] in single and k[1] in single]
    return keys, dense, per_patch


def _masked_first_stage(
    model: SiameseScorer, x: torch.Tensor, dense_keys: list[tuple]
) -> torch.Tensor:
    """First stage (conv1, tanh, 2x2 pool) of every patch of the normalised, zero-padded images
    x (B, 1, H, W), for the pooled keys in `dense_keys`, shared by all patches.

    A patch's zero padding hides the image around it, so the first convolution's border outputs
    see only part of the kernel. Each visible part of the kernel (a class) that a dense key needs
    is run once over the whole image; a pooled map averages the classes its key mixes. Returns
    the pooled maps channels-last (B, K, Hm, Wm, 32), the layout the gather reads.
    """
    conv = model.convs[0]
    height, width = x.shape[-2] - _KERNEL, x.shape[-1] - _KERNEL
    if not dense_keys:
        # Small patches: every pooled entry is computed per patch; one placeholder map.
        return torch.zeros((x.shape[0], 1, height, width, conv.weight.shape[0]), device=x.device)
    classes = sorted({(r[di], c[dj]) for r, c in dense_keys for di in (0, 1) for dj in (0, 1)})
    activation: dict[tuple, torch.Tensor] = {}
    channels = conv.weight.shape[0]
    # All classes in one convolution, stacked as output channels.
    weight = torch.cat([conv.weight * _visible_mask(r, c, conv.weight) for r, c in classes])
    stacked = F.conv2d(x, weight, conv.bias.repeat(len(classes))).tanh_()
    for n, key in enumerate(classes):
        activation[key] = stacked[:, n * channels : (n + 1) * channels]
    pooled = torch.empty((x.shape[0], len(dense_keys), height, width, channels), device=x.device)
    for k, (row_key, col_key) in enumerate(dense_keys):
        if row_key[0] == row_key[1] and col_key[0] == col_key[1]:
            total = F.avg_pool2d(activation[row_key[0], col_key[0]], 2, stride=1)
        else:
            total = 0
            for di in (0, 1):
                for dj in (0, 1):
                    t = activation[row_key[di], col_key[dj]]
                    total = total + t[..., di : di + height, dj : dj + width]
            total = total * 0.25
        pooled[:, k].copy_(total.permute(0, 2, 3, 1))
    return pooled


def _pooled_entry_per_patch(
    model: SiameseScorer, x: torch.Tensor, positions: torch.Tensor, u: int, v: int, key: tuple
) -> torch.Tensor:
    """Pooled first-stage entry (u, v) of the patches at `positions` (k, 2) in the normalised,
    zero-padded images x (B, 1, H, W): (B, k, 32)."""
    conv = model.convs[0]
    row_key, col_key = key
    width = x.shape[-1]
    flat = x.reshape(x.shape[0], -1)
    kernel = torch.arange(_KERNEL, device=x.device)
    taps = (kernel[:, None] * width + kernel[None, :]).reshape(-1)
    total = 0
    for di in (0, 1):
        for dj in (0, 1):
            weight = conv.weight * _visible_mask(row_key[di], col_key[dj], conv.weight)
            top = (positions[:, 0] + 2 * u + di) * width + positions[:, 1] + 2 * v + dj
            windows = flat[:, top[:, None] + taps[None, :]]  # (B, k, 16)
            total = total + torch.tanh(windows @ weight.reshape(weight.shape[0], -1).T + conv.bias)
    return total * 0.25


def _second_stage_matrix(
    conv: nn.Conv2d, size: int, channels: int, pad: int, pad_after: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The second convolution on a zero-padded size x size pooled map as one matrix (weight
    (size² C_in, C_out K²) for channels-last rows, bias (C_out K²,)), or None where the
    convolution is cheaper. On a small map most of each 4x4 window lies in the zero padding:
    with size < 4 the matrix needs fewer multiplications, and one large matrix product runs
    faster on the CPU than many tiny convolutions."""
    if size >= _KERNEL:
        return None
    # The image of each channels-last basis vector under the (bias-free) convolution.
    basis = torch.eye(size * size * channels, device=conv.weight.device)
    basis = basis.reshape(-1, size, size, channels).permute(0, 3, 1, 2)
    columns = F.conv2d(F.pad(basis, (pad, pad_after, pad, pad_after)), conv.weight)
    outputs = columns.shape[-1] * columns.shape[-2]
    return columns.flatten(1), conv.bias.repeat_interleave(outputs)


def _padded_embeddings(
    model: SiameseScorer, images: np.ndarray, positions: np.ndarray, chunk_size: int
) -> torch.Tensor:
    """Embeddings (B, k, E) of the patches with top-left corners `positions` (k, 2) in each of
    the (B, H, W) images, equal to model.embed on the cut-out patches (eval mode)."""
    pad = model.padding
    device = _device_of(model)
    images = torch.as_tensor(images, device=device)
    x = F.pad(model.input_norm(images[:, None]), (pad, pad, pad, pad))
    keys, dense_keys, per_patch_keys = _first_stage_plan(model)
    maps = _masked_first_stage(model, x, dense_keys)
    n_images, n_maps, height, width, channels = maps.shape
    rows = maps.reshape(-1, channels)
    size = len(keys)
    offsets = 2 * torch.arange(size, device=device)
    pos = torch.as_tensor(positions, dtype=torch.int64, device=device)
    # Row of pooled entry (u, v) of a patch at (y, x) in `rows`: its key's map, pixel
    # (y + 2u, x + 2v); images follow one another. Entries computed per patch point at map 0
    # and are overwritten.
    map_of = torch.tensor(
        [[dense_keys.index((r, c)) if (r, c) in dense_keys else 0 for c in keys] for r in keys],
        device=device,
    )
    entry = map_of * (height * width) + offsets[:, None] * width + offsets[None, :]
    image_start = torch.arange(n_images, device=device) * (n_maps * height * width)
    corners = [
        (u, v, _pooled_entry_per_patch(model, x, pos, u, v, (keys[u], keys[v])))
        for u in range(size)
        for v in range(size)
        if (keys[u], keys[v]) in per_patch_keys
    ]
    second_size = _stage_size(size, pad)
    pad_after = 2 * second_size - size + _KERNEL - 1 - pad
    conv2 = model.convs[1]
    second_stage = _second_stage_matrix(conv2, size, channels, pad, pad_after)
    # The 2x2 average pool and the linear layer after it are both linear: one matrix on the
    # tanh of the second convolution's (2s x 2s) outputs.
    fc_weight = model.fc.weight.reshape(-1, conv2.out_channels, second_size, second_size)
    fc_weight = 0.25 * fc_weight.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    fc_weight = fc_weight.flatten(1).T
    out = torch.empty((n_images, len(pos), model.fc.out_features), device=device)
    for start in range(0, len(pos), chunk_size):
        chunk = pos[start : start + chunk_size]
        corner = chunk[:, 0] * width + chunk[:, 1]
        index = image_start[:, None, None, None] + corner[None, :, None, None] + entry[None, None]
        pooled = rows.index_select(0, index.reshape(-1)).reshape(n_images, -1, size, size, channels)
        for u, v, values in corners:
            pooled[:, :, u, v] = values[:, start : start + len(chunk)]
        if second_stage is not None:
            weight, bias = second_stage
            y = torch.addmm(bias, pooled.reshape(-1, size * size * channels), weight)
            y = y.reshape(-1, conv2.out_channels, 2 * second_size, 2 * second_size)
        else:
            # Channels-last view: oneDNN's fastest layout for this small convolution.
            pooled = pooled.reshape(-1, size, size, channels).permute(0, 3, 1, 2)
            # Only the second convolution's outputs that the floor pooling keeps are computed.
            padded = F.pad(pooled, (pad, pad_after, pad, pad_after))
            y = F.conv2d(padded, conv2.weight, conv2.bias)
        emb = torch.addmm(model.fc.bias, y.tanh_().flatten(1), fc_weight).tanh_()
        out[:, start : start + len(chunk)] = emb.reshape(n_images, len(chunk), -1)
    return out


def patch_scores_at(
    model: SiameseScorer,
    real_slice: np.ndarray,
    recon_slice: np.ndarray,
    positions: np.ndarray,
    chunk_size: int = 512,
) -> np.ndarray:
    """Dissimilarity (k,) of the patch pairs with top-left corners `positions` (k, 2) of one slice.

    Equals the network on the cut-out patches (eval mode). For the padded (reference) network the
    first stage is computed once per slice and shared by all patches, and each distinct position
    is scored once.
    """
    real_slice = np.asarray(real_slice, dtype=np.float32)
    recon_slice = np.asarray(recon_slice, dtype=np.float32)
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    p = model.patch_size
    height, width = real_slice.shape
    if recon_slice.shape != real_slice.shape:
        raise ValueError(f"slices differ in shape: {real_slice.shape}, {recon_slice.shape}")
    if len(positions) and (
        positions.min() < 0
        or positions[:, 0].max() > height - p
        or positions[:, 1].max() > width - p
    ):
        raise ValueError(f"a patch position lies (partly) outside the {height}x{width} slice")
    model.eval()
    unique, inverse = np.unique(positions, axis=0, return_inverse=True)
    with torch.no_grad():
        if model.padding == 0:
            zeros = np.zeros(len(unique), dtype=np.int64)
            index = _patch_index(zeros, unique[:, 0], unique[:, 1], p)
            device = _device_of(model)
            a = torch.as_tensor(real_slice[None][index], device=device).unsqueeze(1)
            b = torch.as_tensor(recon_slice[None][index], device=device).unsqueeze(1)
            scores = _predict(model, a, b, chunk_size)
        else:
            pair = np.stack([real_slice, recon_slice])
            emb_a, emb_b = _padded_embeddings(model, pair, unique, chunk_size)
            scores = torch.sigmoid(model.logit_from_distance(_pair_distance(emb_a, emb_b)))
    return scores.cpu().numpy().astype(np.float32)[inverse.reshape(-1)]


def random_positions(
    n_patches: int, shape: tuple[int, int], patch_size: int, rng: np.random.Generator
) -> np.ndarray:
    """n random top-left corners (n, 2), drawn with replacement as the reference does: all rows
    first, then all columns."""
    height, width = shape
    ys = rng.integers(0, height - patch_size + 1, n_patches)
    xs = rng.integers(0, width - patch_size + 1, n_patches)
    return np.stack([ys, xs], axis=1)


def sampled_patch_scores(
    model: SiameseScorer,
    real_slice: np.ndarray,
    recon_slice: np.ndarray,
    n_patches: int = 10000,
    rng: np.random.Generator | None = None,
    positions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Published inference: random patch positions -> ((n, 2) top-left y, x; (n,) scores).

    Positions are drawn from `rng` unless given (the reference uses one seeded draw for every
    slice)."""
    real_slice = np.asarray(real_slice, dtype=np.float32)
    if positions is None:
        rng = np.random.default_rng(0) if rng is None else rng
        positions = random_positions(n_patches, real_slice.shape, model.patch_size, rng)
    return positions, patch_scores_at(model, real_slice, recon_slice, positions)


# ----------------------------------------------------------------------------------------------
# persistence


def save_scorer(
    path: str | os.PathLike,
    model: SiameseScorer,
    settings: ScorerSettings,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write weights, settings and a JSON-serialisable meta dict atomically."""
    payload = {
        # CPU tensors: the file loads on any machine, with or without a GPU.
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "settings": settings.to_dict(),
        "meta_json": json.dumps(meta or {}),
    }
    save_torch(payload, path)


def load_scorer(
    path: str | os.PathLike, device: str = "cpu"
) -> tuple[SiameseScorer, ScorerSettings, dict[str, Any]]:
    """Read a scorer written by save_scorer; the model is returned in eval mode on ``device``,
    where the scoring functions then run."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    saved = dict(payload["settings"])
    if "architecture" not in saved:
        # Written before the reference network became the default: it is one of ours.
        saved = {**LEGACY_SETTINGS, **saved}
    settings = ScorerSettings.from_dict(saved)
    model = build_siamese(settings)
    model.load_state_dict(payload["state_dict"])
    model.to(device)
    model.eval()
    return model, settings, json.loads(payload["meta_json"])
