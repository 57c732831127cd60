"""Training pairs: the edge maps a translator expects, blob-swap augmented copies, mirroring,
crops, and the loader that makes them a batch at a time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from arepas.edges import canny_edges, edge_maps, swap_augment
from arepas.stacks import StackArray, StackReadError
from arepas.translator.settings import TranslatorSettings


def _as_slices(array: np.ndarray, settings: TranslatorSettings, name: str) -> np.ndarray:
    # Slices on disk stay there; they are read a batch at a time.
    slices = array if isinstance(array, StackArray) else np.asarray(array, dtype=np.float32)
    if slices.ndim != 3 or slices.shape[1] != slices.shape[2]:
        raise ValueError(f"{name} must have shape (n, S, S), got {slices.shape}")
    if slices.shape[1] % settings.size_multiple:
        raise ValueError(
            f"{name}: slice size {slices.shape[1]} is not a multiple of {settings.size_multiple}"
        )
    return slices


def edges_for(settings: TranslatorSettings, slices: np.ndarray) -> np.ndarray:
    """Edge maps of slices (n, S, S) with the detector a translator with these settings expects."""
    return edge_maps(slices, detector=settings.edge_detector)


# Second entry of each training pair's augmentation seed, apart from the batch order's and the
# crops' streams.
_AUGMENT_STREAM = 2
# Apart from the swaps' stream, so mirroring leaves every copy's swaps as they were.
_MIRROR_STREAM = 4


def pairs_per_slice(settings: TranslatorSettings) -> int:
    """Training pairs made from each slice: its unaugmented edge map if augment_keep_unaugmented,
    then the augmented copies."""
    return int(settings.augment_keep_unaugmented) + settings.augment_copies


def training_pair_batch(
    train_slices: np.ndarray, pairs: np.ndarray, settings: TranslatorSettings, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The training pairs numbered `pairs` (edge inputs, target slices), each (len(pairs), S, S)
    float32, computed from the slices they come from alone.

    Pair p is made from slice p // pairs_per_slice: number 0 is its unaugmented edge map when
    augment_keep_unaugmented, the others blob-swap augmented copies of it, each drawn from its own
    generator seeded with (seed, slice, copy). A pair is thus the same in every epoch, in a
    resumed run, in a data-loader worker and in the patch scorer's mining, and only the slices
    of one batch need to be in memory. train_slices may be an array or a StackArray on disk.
    """
    per_slice = pairs_per_slice(settings)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1)
    slice_rows, copies = np.divmod(pairs, per_slice)
    # Each slice once, however many of its copies the batch holds.
    distinct, position = np.unique(slice_rows, return_inverse=True)
    slices = np.asarray(train_slices[distinct], dtype=np.float32)
    clean = [canny_edges(slice_, detector=settings.edge_detector) for slice_ in slices]
    inputs = np.empty((len(pairs), *slices.shape[1:]), dtype=np.float32)
    for k, (row, copy, at) in enumerate(zip(slice_rows, copies, position, strict=True)):
        if settings.augment_keep_unaugmented and copy == 0:
            inputs[k] = clean[at]
            continue
        rng = np.random.default_rng([seed, _AUGMENT_STREAM, int(row), int(copy)])
        inputs[k] = swap_augment(
            clean[at], rng, n_swaps=settings.augment_swaps, style=settings.swap_style
        )
    targets = slices[position]
    for k in np.flatnonzero(mirrored_pairs(settings, pairs, seed)):
        inputs[k] = inputs[k][::-1]
        targets[k] = targets[k][::-1]
    return inputs, targets


def mirrored_pairs(settings: TranslatorSettings, pairs: np.ndarray, seed: int) -> np.ndarray:
    """Which of the training pairs numbered `pairs` are mirrored across the slice's first axis
    (augment_mirror: each augmented copy with probability 1/2, never an unaugmented edge map), so
    that anything read per slice for a pair (its ROI) can be mirrored with it."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1)
    if not settings.augment_mirror:
        return np.zeros(len(pairs), dtype=bool)
    slice_rows, copies = np.divmod(pairs, pairs_per_slice(settings))
    return np.array([
        not (settings.augment_keep_unaugmented and copy == 0)
        and np.random.default_rng([seed, _MIRROR_STREAM, int(row), int(copy)]).random() < 0.5
        for row, copy in zip(slice_rows, copies, strict=True)
    ], dtype=bool)


def training_pairs(
    train_slices: np.ndarray, settings: TranslatorSettings, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The (edge input, target slice) pairs train_translator trains on for this seed, all of them.

    Each (m, S, S) float32, m = n x pairs_per_slice, pair p made by training_pair_batch. The set
    depends only on the slices, the settings and the seed, so a resumed run, or anything mining
    pairs from the same set (the patch scorer), gets the same one.
    """
    train = _as_slices(train_slices, settings, "train_slices")
    return training_pair_batch(
        train, np.arange(len(train) * pairs_per_slice(settings)), settings, seed
    )


class _PairSource(torch.utils.data.Dataset):
    """Training pairs made on demand, a batch at a time (in data-loader workers if any).

    A batch that cannot be read is returned as its StackReadError rather than raised: the
    loader would re-raise it in the main process as a plain RuntimeError.
    """

    def __init__(self, slices: np.ndarray, settings: TranslatorSettings, seed: int) -> None:
        self.slices, self.settings, self.seed = slices, settings, seed

    def __len__(self) -> int:
        return len(self.slices) * pairs_per_slice(self.settings)

    def __getitems__(self, pairs: list[int]):
        try:
            inputs, targets = training_pair_batch(self.slices, pairs, self.settings, self.seed)
        except StackReadError as exc:
            return exc
        return torch.from_numpy(inputs).unsqueeze(1), torch.from_numpy(targets).unsqueeze(1)

    def __getitem__(self, pair: int):
        return self.__getitems__([pair])


class _EpochBatches(torch.utils.data.Sampler):
    """The current epoch's batches of pair numbers; the training loop sets them each epoch, so
    persistent workers serve every epoch."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return (batch.tolist() for batch in self.batches)


def _as_loaded(batch):
    return batch


def _quiet_worker(_: int) -> None:
    # A worker only reads and augments; one thread each leaves the cores to the training step.
    # Nothing random is drawn from the worker's own generators (every pair has its own seed),
    # so worker seeding cannot change a batch.
    import cv2

    cv2.setNumThreads(0)


@contextmanager
def _pair_loader(
    slices: np.ndarray, settings: TranslatorSettings, seed: int, num_workers: int
) -> Iterator[tuple[torch.utils.data.DataLoader, _EpochBatches]]:
    import cv2

    batches = _EpochBatches()
    loader = torch.utils.data.DataLoader(
        _PairSource(slices, settings, seed),
        batch_sampler=batches,
        collate_fn=_as_loaded,
        num_workers=num_workers,
        worker_init_fn=_quiet_worker if num_workers else None,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers else None,
    )
    # OpenCV's thread pool, once started, deadlocks forked workers that use it.
    threads = cv2.getNumThreads()
    if num_workers:
        cv2.setNumThreads(0)
    try:
        yield loader, batches
    finally:
        cv2.setNumThreads(threads)
        # Persistent workers end with the loader's iterator.
        del loader


def loader_workers(threads: int) -> int:
    """Data-loader worker processes for a job with `threads` CPUs: none on one CPU (batches are
    then made between steps), else one per CPU beyond the first, at most 8 (a worker makes a
    batch far faster than a step trains on it)."""
    return 0 if threads <= 1 else min(threads - 1, 8)


_CROP_STREAM = 1


def crop_corners(seed: int, epoch: int, n: int, side: int, size: int) -> np.ndarray:
    """Top-left (row, column) of each training pair's size x size crop in an epoch, (n, 2).

    A function of (seed, epoch) alone, like the batch order, so a resumed run crops as an
    uninterrupted one; pair i keeps its corner wherever the shuffle puts it.
    """
    rng = np.random.default_rng([seed, epoch, _CROP_STREAM])
    return rng.integers(0, side - size + 1, size=(n, 2))


def crop_pairs(
    edges: torch.Tensor, real: torch.Tensor, corners: np.ndarray, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same size x size window of each pair: (b, 1, S, S) -> (b, 1, size, size)."""
    windows = [
        (slice(None), slice(int(top), int(top) + size), slice(int(left), int(left) + size))
        for top, left in corners
    ]
    cropped_edges = torch.stack([e[w] for e, w in zip(edges, windows, strict=True)])
    cropped_real = torch.stack([r[w] for r, w in zip(real, windows, strict=True)])
    return cropped_edges, cropped_real
