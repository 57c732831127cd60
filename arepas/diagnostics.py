"""Does a trained translator use its edge maps? A check run once, on healthy validation slices.

A translator that ignores its input can still reach a fair L1 by drawing an average slice; its
residual then shows how a subject differs from the average rather than from its own healthy
anatomy, and the anomaly maps built on it mean little. Inside the ROI of healthy validation
slices the check compares the reconstruction from each slice's own Canny edges with three
predictions that do not see those edges:

- the same translator fed another healthy subject's edges at the same slice index;
- the per-position mean of the training slices at that slice index (what a translator that
  learned only "the average slice here" would draw);
- the slice's own ROI mean intensity everywhere in its ROI, which needs no matching at all.

L1 is dominated by the coarse picture (outline, ventricles, tissue brightness). Whether the
reconstruction also carries the slice's fine anatomy (vessels, sulci, the grey/white border) is
asked separately: the slice's fine detail (itself minus its Gaussian blur of DETAIL_SIGMA_PX)
is correlated with the same detail of each prediction, inside the ROI shrunk by
DETAIL_BORDER_PX so that the organ's outline, which any edge map gives away, does not count.

"Slice index" is where a slice lies in its subject's working volume along the slicing axis:
the `indices` array of the `slices.npz` that the preprocess rule writes for each subject, not
the slice's row in that stack (a stack starts at the first plane holding ROI, so row 10 of two
subjects may be different planes). On registered datasets every working volume lies on the
template's grid, so one index is one anatomical level in every subject. Without registration
each working grid is centred on its own scan, so an index matches levels only roughly and the
two matched references are rough too; the ROI-mean reference holds either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from torch import nn

from arepas import io
from arepas.stacks import SliceStacks, StackArray
from arepas.translator import TranslatorSettings, edges_for, translate

# Own-edge L1 above 90% of an edge-free reference's means the edges explain little of the slice
# beyond what its position and average brightness already give. The 10% margin is a judgement,
# not a fitted value: the demo brain translator that drew an average slice measured 0.92 against
# other subjects' edges and 1.11 against the training mean image, so 0.9 catches it, while one
# that follows its edges should sit well below on all three.
OTHER_EDGES_RATIO_MAX = 0.9
MEAN_IMAGE_RATIO_MAX = 0.9
ROI_MEAN_RATIO_MAX = 0.9

USES_EDGES = "uses edges"
IGNORES_EDGES = "ignores edges"

# The numbers edge_reliance returns, in the order of the table edge_reliance_table writes.
RELIANCE_KEYS = (
    "n_slices",
    "n_other_edges",
    "n_mean_image",
    "l1_own_edges",
    "l1_other_edges",
    "l1_mean_image",
    "l1_roi_mean",
    "own_over_other",
    "own_over_mean_image",
    "own_over_roi_mean",
    "pearson_own",
    "detail_own",
    "detail_other_edges",
    "detail_mean_image",
    "detail_blurred_input",
)
# Fine detail: structure narrower than a Gaussian of this sd removes, about 3 to 4 pixels wide
# (a lung vessel or a sulcus on the 3 to 3.5 mm demo grids, finer anatomy on 1 mm slices).
DETAIL_SIGMA_PX = 1.5
# The ceiling the detail numbers are read against: the slice itself blurred by this sd, what a
# faithful but slightly smooth reconstruction would give.
CEILING_BLUR_PX = 1.0
# Pixels taken off the ROI's edge before the detail is compared: twice the blur's sd, so that
# no compared pixel sees the steep step at the organ's outline through the blur.
DETAIL_BORDER_PX = 3
# (ratio, threshold, what the own-edge reconstruction was compared with)
_CHECKS = (
    ("own_over_other", OTHER_EDGES_RATIO_MAX, "another subject's edges"),
    ("own_over_mean_image", MEAN_IMAGE_RATIO_MAX, "the training mean image"),
    ("own_over_roi_mean", ROI_MEAN_RATIO_MAX, "the slice's ROI mean"),
)


# --------------------------------------------------------------------------------------------
# Matching slices across subjects


def load_slice_stacks(
    paths: Sequence[str | Path],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(slices, roi, slice index, subject number) of several subjects' slices.npz, joined.

    One file is one subject (the preprocess rule writes one per subject), so its position in
    paths is the subject's number.
    """
    slices, roi, index, subject = [], [], [], []
    for number, path in enumerate(paths):
        stack = io.load_arrays(path)
        slices.append(stack["slices"])
        roi.append(stack["roi"].astype(bool))
        index.append(stack["indices"].astype(np.int64))
        subject.append(np.full(len(stack["indices"]), number, dtype=np.int64))
    return tuple(np.concatenate(parts) for parts in (slices, roi, index, subject))


def load_check_slices(
    train_paths: Sequence[str | Path],
    val_paths: Sequence[str | Path],
    train_stacks: SliceStacks | None = None,
) -> dict[str, np.ndarray]:
    """The training and validation stacks the check compares, keyed by the keyword arguments of
    edge_reliance and edge_reliance_examples (pass them with **).

    With train_stacks (the training job's on-disk cache of train_paths) the training slices and
    ROIs are read from it a few at a time instead of all into memory."""
    if train_stacks is not None:
        train, train_roi, train_index = train_stacks.slices, train_stacks.roi, train_stacks.indices
    else:
        train, train_roi, train_index, _ = load_slice_stacks(train_paths)
    val, val_roi, val_index, val_subject = load_slice_stacks(val_paths)
    return {
        "val_slices": val,
        "val_subject_ids": val_subject,
        "val_slice_index": val_index,
        "val_roi": val_roi,
        "train_slices": train,
        "train_slice_index": train_index,
        "train_roi": train_roi,
    }


def _find_rows(pool_keys: np.ndarray, wanted_keys: np.ndarray) -> np.ndarray:
    # For each wanted key the first pool row holding it (stable sort: smallest row), else -1.
    if len(pool_keys) == 0:
        return np.full(len(wanted_keys), -1, dtype=np.int64)
    order = np.argsort(pool_keys, kind="stable")
    ordered = pool_keys[order]
    position = np.searchsorted(ordered, wanted_keys, side="left")
    clipped = np.minimum(position, len(ordered) - 1)
    found = (position < len(ordered)) & (ordered[clipped] == wanted_keys)
    return np.where(found, order[clipped], -1)


def partner_slices(
    val_subject_ids: Sequence | np.ndarray,
    val_slice_index: np.ndarray,
    train_slice_index: np.ndarray,
) -> tuple[np.ndarray, bool]:
    """Where each val slice finds another healthy subject's slice at the same slice index.

    With two or more val subjects, each is paired with the next one in order of first
    appearance, the last with the first; the partner is that subject's slice with the same index.
    With a single val subject the partner is the first training slice with that index. Returns
    (rows, from_train): rows into the val arrays (from_train False) or the training arrays
    (True), -1 where the partner has no slice at that index.
    """
    index = np.asarray(val_slice_index, dtype=np.int64)
    codes, subjects = pd.factorize(np.asarray(val_subject_ids))
    if len(codes) != len(index):
        raise ValueError("val_subject_ids and val_slice_index must have one entry per slice")
    if len(index) == 0:
        return np.empty(0, dtype=np.int64), len(subjects) < 2
    if len(subjects) < 2:
        return _find_rows(np.asarray(train_slice_index, dtype=np.int64), index), True
    # One integer key per (subject, index) pair.
    span = int(index.max()) - int(index.min()) + 1
    keys = codes * span + (index - index.min())
    partner_keys = (codes + 1) % len(subjects) * span + (index - index.min())
    return _find_rows(keys, partner_keys), False


def training_mean_images(
    train_slices: np.ndarray,
    train_slice_index: np.ndarray,
    wanted_index: np.ndarray,
    train_roi: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-position mean of the training slices at each wanted slice index.

    Returns (images, which): one mean image per distinct wanted index that some training slice
    has, and for each wanted entry its row in images (-1 where no training slice has that
    index). With train_roi, a pixel averages only the training slices whose ROI covers it (their
    background, -1, would otherwise darken the mean near the ROI border), and the plain mean
    where none does.
    """
    train_index = np.asarray(train_slice_index, dtype=np.int64)
    wanted = np.asarray(wanted_index, dtype=np.int64)
    distinct = np.unique(wanted)
    distinct = distinct[np.isin(distinct, train_index)]
    size = np.shape(train_slices)[1:]
    images = np.empty((len(distinct), *size), dtype=np.float32)
    # One index at a time: a few subjects' slices each, never a copy of the whole training set.
    for number, value in enumerate(distinct):
        group = np.asarray(train_slices[train_index == value], dtype=np.float64)
        plain = group.mean(axis=0)
        if train_roi is None:
            images[number] = plain
            continue
        inside = np.asarray(train_roi[train_index == value], dtype=bool)
        counts = inside.sum(axis=0)
        sums = np.where(inside, group, 0.0).sum(axis=0)
        images[number] = np.where(counts > 0, sums / np.maximum(counts, 1), plain)
    which = np.full(len(wanted), -1, dtype=np.int64)
    known = np.isin(wanted, distinct)
    which[known] = np.searchsorted(distinct, wanted[known])
    return images, which


# --------------------------------------------------------------------------------------------
# The check


def _checked(array: np.ndarray, name: str, n: int | None = None) -> np.ndarray:
    # A StackArray (training slices on disk) is indexed as it is: converting it would read the
    # whole training set into memory.
    if not isinstance(array, StackArray):
        array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{name} must have shape (n, S, S), got {array.shape}")
    if n is not None and len(array) != n:
        raise ValueError(f"{name} has {len(array)} slices, expected {n}")
    return array


def _other_edges(
    settings: TranslatorSettings,
    val_slices: np.ndarray,
    own_edges: np.ndarray | None,
    train_slices: np.ndarray,
    rows: np.ndarray,
    from_train: bool,
) -> np.ndarray:
    # Edge maps of the partner slices at rows (all >= 0); val edges are reused when at hand.
    if from_train:
        return edges_for(settings, np.asarray(train_slices[rows], dtype=np.float32))
    if own_edges is not None:
        return own_edges[rows]
    return edges_for(settings, np.asarray(val_slices[rows], dtype=np.float32))


def _l1_sums(prediction: np.ndarray, target: np.ndarray, roi: np.ndarray) -> np.ndarray:
    # Per-slice sum of |prediction - target| over the ROI; pooled L1 = sums / ROI pixel counts.
    difference = np.abs(prediction.astype(np.float64) - target)
    return np.where(roi, difference, 0.0).sum(axis=(1, 2))


def _pooled(sums: np.ndarray, counts: np.ndarray, rows: np.ndarray) -> float:
    total = counts[rows].sum()
    return float(sums[rows].sum() / total) if total > 0 else math.nan


def fine_detail(slices: np.ndarray, sigma: float = DETAIL_SIGMA_PX) -> np.ndarray:
    """Each (n, S, S) slice minus its in-plane Gaussian blur of sd `sigma` pixels."""
    slices = np.asarray(slices, dtype=np.float64)
    return slices - ndimage.gaussian_filter(slices, sigma=(0, sigma, sigma))


def inner_roi(roi: np.ndarray, border: int = DETAIL_BORDER_PX) -> np.ndarray:
    """The (n, S, S) ROI masks with `border` pixels taken off their in-plane edge."""
    square = np.ones((1, 2 * border + 1, 2 * border + 1), dtype=bool)
    return ndimage.binary_erosion(np.asarray(roi, dtype=bool), structure=square)


def _detail_correlation(prediction: np.ndarray, target_detail: np.ndarray,
                        inner: np.ndarray) -> float:
    # Pearson correlation of the fine detail over the inner ROI pixels; NaN where either side
    # has none (too small an ROI, or a flat prediction).
    if not inner.any():
        return math.nan
    own = fine_detail(prediction)[inner]
    reference = target_detail[inner]
    if own.size < 2 or own.std() == 0 or reference.std() == 0:
        return math.nan
    return float(np.corrcoef(own, reference)[0, 1])


def _ratio(numerator: float, denominator: float) -> float:
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator


def edge_reliance(
    generator: nn.Module,
    settings: TranslatorSettings,
    *,
    val_slices: np.ndarray,
    val_subject_ids: Sequence | np.ndarray,
    val_slice_index: np.ndarray,
    val_roi: np.ndarray,
    train_slices: np.ndarray,
    train_slice_index: np.ndarray,
    train_roi: np.ndarray | None = None,
    device: str = "cpu",
) -> dict[str, float]:
    """How much better a translator rebuilds healthy val slices from their own edges than without.

    Arrays are stacks of (n, S, S) slices in [-1, 1] with their ROI masks, the subject each
    slice comes from (any labels) and its slice index (see the module docstring: the position
    in the subject's working volume, the slices.npz `indices`). Every L1 is the mean absolute
    difference over the ROI pixels of the slices it covers, pooled:

    - l1_own_edges: translate(edges of the slice) against the slice, all val slices;
    - l1_other_edges: translate(edges of another healthy subject's slice at the same index)
      against the slice (partners as partner_slices chooses; slices without one are skipped);
    - l1_mean_image: the per-position mean of the training slices at the same index
      (training_mean_images; slices whose index no training slice has are skipped);
    - l1_roi_mean: the slice's own ROI mean intensity everywhere in its ROI.

    Each own_over_* ratio divides the own-edge L1 over the same slices as its reference by that
    reference's L1, so skipped slices do not tilt it; a ratio near 1 means the edges add nothing.
    pearson_own correlates reconstruction and input over all ROI pixels. detail_own,
    detail_other_edges and detail_mean_image correlate the fine detail (fine_detail) of the
    own-edge reconstruction, of the other-edge reconstruction and of the training mean image
    with the slice's own, over the ROI pixels at least DETAIL_BORDER_PX from its edge: near 0
    where a prediction has no fine structure of this slice, near 1 where it has all of it;
    detail_blurred_input is the slice's own blur of CEILING_BLUR_PX, the ceiling to read them
    against. n_* count the slices behind each number. Deterministic (eval mode, no sampling);
    the translator runs on at most two copies of the val set.
    """
    val = _checked(val_slices, "val_slices")
    roi = _checked(val_roi, "val_roi", len(val)).astype(bool)
    train = _checked(train_slices, "train_slices")
    if train_roi is not None:
        _checked(train_roi, "train_roi", len(train))
    if len(np.asarray(train_slice_index)) != len(train):
        raise ValueError("train_slice_index must have one entry per training slice")
    if len(val) == 0:
        raise ValueError("val_slices is empty: the check needs healthy validation slices")
    target = np.asarray(val, dtype=np.float32)
    counts = roi.sum(axis=(1, 2)).astype(np.float64)
    every = np.arange(len(val))

    own_edges = edges_for(settings, target)
    own = translate(generator, own_edges, device=device)
    own_sums = _l1_sums(own, target, roi)
    target_detail, inner = fine_detail(target), inner_roi(roi)
    detail_own = _detail_correlation(own, target_detail, inner)
    blurred = ndimage.gaussian_filter(target, sigma=(0, CEILING_BLUR_PX, CEILING_BLUR_PX))
    detail_blurred = _detail_correlation(blurred, target_detail, inner)

    partners, from_train = partner_slices(val_subject_ids, val_slice_index, train_slice_index)
    paired = np.flatnonzero(partners >= 0)
    other_sums = np.zeros(len(val))
    detail_other = math.nan
    if len(paired):
        other_edges = _other_edges(settings, target, own_edges, train, partners[paired], from_train)
        other = translate(generator, other_edges, device=device)
        other_sums[paired] = _l1_sums(other, target[paired], roi[paired])
        detail_other = _detail_correlation(other, target_detail[paired], inner[paired])

    images, which = training_mean_images(train, train_slice_index, val_slice_index, train_roi)
    matched = np.flatnonzero(which >= 0)
    mean_sums = np.zeros(len(val))
    detail_mean = math.nan
    if len(matched):
        mean_sums[matched] = _l1_sums(images[which[matched]], target[matched], roi[matched])
        detail_mean = _detail_correlation(images[which[matched]], target_detail[matched],
                                          inner[matched])

    roi_means = np.where(roi, target, 0.0).sum(axis=(1, 2)) / np.maximum(counts, 1)
    roi_mean_sums = _l1_sums(np.broadcast_to(roi_means[:, None, None], target.shape), target, roi)

    l1_own = _pooled(own_sums, counts, every)
    l1_other = _pooled(other_sums, counts, paired)
    l1_mean = _pooled(mean_sums, counts, matched)
    l1_roi_mean = _pooled(roi_mean_sums, counts, every)
    inside_input, inside_recon = target[roi].astype(np.float64), own[roi].astype(np.float64)
    pearson = math.nan
    if inside_input.size > 1 and inside_input.std() > 0 and inside_recon.std() > 0:
        pearson = float(np.corrcoef(inside_input, inside_recon)[0, 1])
    return {
        "n_slices": len(val),
        "n_other_edges": len(paired),
        "n_mean_image": len(matched),
        "l1_own_edges": l1_own,
        "l1_other_edges": l1_other,
        "l1_mean_image": l1_mean,
        "l1_roi_mean": l1_roi_mean,
        "own_over_other": _ratio(_pooled(own_sums, counts, paired), l1_other),
        "own_over_mean_image": _ratio(_pooled(own_sums, counts, matched), l1_mean),
        "own_over_roi_mean": _ratio(l1_own, l1_roi_mean),
        "pearson_own": pearson,
        "detail_own": detail_own,
        "detail_other_edges": detail_other,
        "detail_mean_image": detail_mean,
        "detail_blurred_input": detail_blurred,
    }


def edge_reliance_problems(result: dict[str, float]) -> list[str]:
    """One phrase per ratio above its threshold; references that could not be formed are skipped."""
    problems = []
    for key, threshold, reference in _CHECKS:
        value = result.get(key, math.nan)
        if not math.isnan(value) and value > threshold:
            problems.append(f"{key} {value:.2f} > {threshold:.2f} (vs {reference})")
    return problems


def edge_verdict(result: dict[str, float]) -> str:
    """'uses edges' unless own-edge reconstruction is not clearly better than a reference."""
    return IGNORES_EDGES if edge_reliance_problems(result) else USES_EDGES


def edge_reliance_table(
    result: dict[str, float], dataset: str, registered: bool = True
) -> pd.DataFrame:
    """One-row table of the check: dataset, the numbers of edge_reliance, verdict, and whether
    the dataset is registered to a template (only then is the mean image a matched reference)."""
    row = {"dataset": dataset, **{key: result[key] for key in RELIANCE_KEYS}}
    row["verdict"] = edge_verdict(result)
    row["registered"] = bool(registered)
    return pd.DataFrame([row])


def edge_reliance_warning(result: dict[str, float], dataset: str) -> str | None:
    """The training log's warning when the translator ignores its edges, else None."""
    problems = edge_reliance_problems(result)
    if not problems:
        return None
    return (
        f"WARNING: the translator of dataset '{dataset}' barely uses its edge maps "
        f"({'; '.join(problems)}). Healthy val L1 inside the ROI: own edges "
        f"{result['l1_own_edges']:.4f}, another subject's edges {result['l1_other_edges']:.4f}, "
        f"training mean image {result['l1_mean_image']:.4f}, ROI mean "
        f"{result['l1_roi_mean']:.4f}; correlation with the input {result['pearson_own']:.2f}, "
        f"of its fine detail with the input's {result['detail_own']:.2f} (training mean image "
        f"{result['detail_mean_image']:.2f}). "
        "It rebuilds a healthy slice not clearly better from the slice's own edges than without "
        "them, so residual and AREPAS maps largely show how a subject differs from what the "
        "translator draws for any slice, not from the subject's own anatomy. Train longer or on "
        "more slices before trusting the maps."
    )


def edge_reliance_examples(
    generator: nn.Module,
    settings: TranslatorSettings,
    *,
    val_slices: np.ndarray,
    val_subject_ids: Sequence | np.ndarray,
    val_slice_index: np.ndarray,
    val_roi: np.ndarray,
    train_slices: np.ndarray,
    train_slice_index: np.ndarray,
    train_roi: np.ndarray | None = None,
    n_examples: int = 4,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """A few val slices with every image the check compares, for a figure.

    Slices are taken from those with a partner (and, where any has one, a training mean image),
    among those with at least half the largest ROI so that none is a sliver, evenly spread
    through the stack. Returns arrays with one entry per example: input, roi, edges, recon_own,
    edges_other, recon_other, mean_image (all -1 where training has no slice at that index,
    as has_mean_image says), slice_index and row (in the val arrays). Only the chosen slices go
    through the translator.
    """
    val = np.asarray(_checked(val_slices, "val_slices"), dtype=np.float32)
    roi = np.asarray(_checked(val_roi, "val_roi", len(val)), dtype=bool)
    partners, from_train = partner_slices(val_subject_ids, val_slice_index, train_slice_index)
    images, which = training_mean_images(
        train_slices, train_slice_index, val_slice_index, train_roi
    )
    eligible = partners >= 0
    if (eligible & (which >= 0)).any():
        eligible &= which >= 0
    area = roi.sum(axis=(1, 2))
    if eligible.any():
        eligible &= area >= 0.5 * area[eligible].max()
    candidates = np.flatnonzero(eligible)
    if len(candidates) == 0:
        raise ValueError("no val slice has another subject's slice at the same index")
    picks = np.linspace(0, len(candidates) - 1, min(n_examples, len(candidates)))
    rows = candidates[np.unique(np.round(picks).astype(np.int64))]

    edges = edges_for(settings, val[rows])
    edges_other = _other_edges(settings, val, None, train_slices, partners[rows], from_train)
    mean_image = np.full((len(rows), *val.shape[1:]), -1.0, dtype=np.float32)
    has_mean = which[rows] >= 0
    mean_image[has_mean] = images[which[rows][has_mean]]
    return {
        "input": val[rows],
        "roi": roi[rows],
        "edges": edges,
        "recon_own": translate(generator, edges, device=device),
        "edges_other": edges_other,
        "recon_other": translate(generator, edges_other, device=device),
        "mean_image": mean_image,
        "has_mean_image": has_mean,
        "slice_index": np.asarray(val_slice_index, dtype=np.int64)[rows],
        "row": rows,
    }
