"""Voxel-level evaluation of anomaly maps inside the ROI.

Cohorts can be hundreds of CT volumes, so pooled metrics never hold all voxels at once: scores are
streamed into fixed-bin histograms (one for lesion voxels, one for the other ROI voxels) and Dice,
precision-recall and ROC are swept over the bins. Every threshold reported is the smallest score
seen in its bin, and a bin holds every score between its edges, so "score >= threshold" on the raw
maps selects exactly the voxels the histogram counted. The sweep is therefore exact whenever
distinct scores lie at least one bin width (upper / n_bins) apart, and otherwise only merges
scores closer than that.

The paper reports Dice (Mitic & Langs, MLMI 2025, arXiv 2509.12905); its reference code has no
thresholding or Dice, so the choices here (best threshold on the pooled test cohort, and the val
threshold, chosen on the healthy validation scans) are ours.

Lesion voxels outside the ROI are counted as misses by default (`outside_roi="miss"`): every map is
zero there and never segmented, so they are false negatives at every threshold, for every method
alike, as if scored below every ROI voxel. Dropping them instead (`"ignore"`) would reward an ROI
that leaves lesions out. The fraction of lesion voxels outside the ROI is reported per subject.
"""

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import Literal

import numpy as np
import pandas as pd
from scipy import ndimage

from arepas.postprocess import base_method, variant_name

# 2**16 bins: on maps shaped like residual x patch-score maps, halving or quadrupling this moved
# the best Dice by < 1e-4 (see tests/test_metrics.py), well below the 3rd decimal.
DEFAULT_BINS = 2**16

# Voxels handled per step in streaming loops; bounds temporaries to a few tens of MB.
_CHUNK_VOXELS = 1 << 22


OUTSIDE_ROI = ("miss", "ignore")


@dataclass
class ScoreHistogram:
    """Counts of lesion and non-lesion ROI voxels in `n_bins` equal bins over [0, upper].

    Scores above `upper` go in the last bin. Build with the cohort's maximum ROI score as `upper`
    (see `roi_max`), then call `add` once per subject. Lesion voxels outside the ROI are counted
    in `n_lesion_outside`; with `outside_roi="miss"` they are positives that no threshold finds.
    """

    upper: float
    n_bins: int = DEFAULT_BINS
    outside_roi: str = "miss"
    lesion_counts: np.ndarray = field(init=False, repr=False)
    nonlesion_counts: np.ndarray = field(init=False, repr=False)
    bin_min: np.ndarray = field(init=False, repr=False)
    max_score: float = field(init=False, default=-np.inf)
    n_lesion_outside: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.outside_roi not in OUTSIDE_ROI:
            raise ValueError(f"outside_roi must be one of {OUTSIDE_ROI}, got {self.outside_roi!r}")
        if not np.isfinite(self.upper) or self.upper <= 0:
            raise ValueError(f"upper must be a positive finite number, got {self.upper}")
        if self.n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {self.n_bins}")
        self.upper = float(self.upper)
        self.lesion_counts = np.zeros(self.n_bins, dtype=np.int64)
        self.nonlesion_counts = np.zeros(self.n_bins, dtype=np.int64)
        self.bin_min = np.full(self.n_bins, np.inf)

    @property
    def edges(self) -> np.ndarray:
        """Nominal bin edges (n_bins + 1 values from 0 to upper)."""
        return np.linspace(0.0, self.upper, self.n_bins + 1)

    @property
    def n_lesion(self) -> int:
        return int(self.lesion_counts.sum())

    @property
    def n_missed(self) -> int:
        """Lesion voxels outside the ROI that count as misses (0 with outside_roi="ignore")."""
        return self.n_lesion_outside if self.outside_roi == "miss" else 0

    @property
    def n_positive(self) -> int:
        """Every lesion voxel the metrics count: those in the ROI and the missed ones."""
        return self.n_lesion + self.n_missed

    @property
    def n_nonlesion(self) -> int:
        return int(self.nonlesion_counts.sum())

    def add(self, scores: np.ndarray, lesion_mask: np.ndarray | None, roi: np.ndarray) -> None:
        """Add one subject's ROI voxels; `lesion_mask=None` means a healthy subject."""
        scores = np.asarray(scores)
        roi = np.asarray(roi, dtype=bool)
        lesion = None if lesion_mask is None else np.asarray(lesion_mask, dtype=bool)
        _check_same_shape(scores=scores, roi=roi, lesion_mask=lesion)
        if lesion is not None:
            self.n_lesion_outside += int(np.count_nonzero(lesion & ~roi))
        for part in _slabs(scores.shape):
            inside = roi[part]
            values = scores[part][inside].astype(np.float64)
            if values.size == 0:
                continue
            if not np.all(np.isfinite(values)):
                raise ValueError("anomaly scores inside the ROI must be finite")
            if values.min() < 0:
                raise ValueError("anomaly scores must be >= 0")
            index = self._bin_index(values)
            if lesion is None:
                self.nonlesion_counts += np.bincount(index, minlength=self.n_bins)
            else:
                is_lesion = lesion[part][inside]
                self.lesion_counts += np.bincount(index[is_lesion], minlength=self.n_bins)
                self.nonlesion_counts += np.bincount(index[~is_lesion], minlength=self.n_bins)
            np.minimum.at(self.bin_min, index, values)
            self.max_score = max(self.max_score, float(values.max()))

    def merge(self, other: "ScoreHistogram") -> None:
        """Add another histogram with the same bins (e.g. one filled in a parallel job)."""
        if (other.n_bins, other.upper, other.outside_roi) != (
            self.n_bins,
            self.upper,
            self.outside_roi,
        ):
            raise ValueError("histograms must share upper, n_bins and outside_roi to be merged")
        self.n_lesion_outside += other.n_lesion_outside
        self.lesion_counts += other.lesion_counts
        self.nonlesion_counts += other.nonlesion_counts
        np.minimum(self.bin_min, other.bin_min, out=self.bin_min)
        self.max_score = max(self.max_score, other.max_score)

    def _bin_index(self, values: np.ndarray) -> np.ndarray:
        # Multiplying by a positive constant and flooring are both monotone, so binning never
        # reorders scores: every score in bin k is below every score in bin k + 1. That is what
        # makes the per-bin minimum a threshold that reproduces the bin counts exactly.
        position = np.minimum(values * (self.n_bins / self.upper), self.n_bins - 1)
        return position.astype(np.intp)


def coarsen(hist: ScoreHistogram, factor: int) -> ScoreHistogram:
    """Merge groups of `factor` adjacent bins (to check how much bin width matters)."""
    if factor < 1 or hist.n_bins % factor:
        raise ValueError(f"factor must divide n_bins ({hist.n_bins}), got {factor}")
    coarse = ScoreHistogram(hist.upper, hist.n_bins // factor, hist.outside_roi)
    coarse.n_lesion_outside = hist.n_lesion_outside
    coarse.lesion_counts = hist.lesion_counts.reshape(-1, factor).sum(axis=1)
    coarse.nonlesion_counts = hist.nonlesion_counts.reshape(-1, factor).sum(axis=1)
    coarse.bin_min = hist.bin_min.reshape(-1, factor).min(axis=1)
    coarse.max_score = hist.max_score
    return coarse


def save_histogram(hist: ScoreHistogram, path: str | Path) -> None:
    """Write a histogram to an .npz file."""
    np.savez_compressed(
        path,
        upper=hist.upper,
        n_bins=hist.n_bins,
        lesion_counts=hist.lesion_counts,
        nonlesion_counts=hist.nonlesion_counts,
        bin_min=hist.bin_min,
        max_score=hist.max_score,
        outside_roi=hist.outside_roi,
        n_lesion_outside=hist.n_lesion_outside,
    )


def load_histogram(path: str | Path) -> ScoreHistogram:
    """Read a histogram written by `save_histogram`."""
    with np.load(path) as stored:
        # Files written before lesions outside the ROI were counted hold neither key.
        outside = str(stored["outside_roi"]) if "outside_roi" in stored else "ignore"
        hist = ScoreHistogram(float(stored["upper"]), int(stored["n_bins"]), outside)
        hist.n_lesion_outside = (
            int(stored["n_lesion_outside"]) if "n_lesion_outside" in stored else 0
        )
        hist.lesion_counts = stored["lesion_counts"].astype(np.int64)
        hist.nonlesion_counts = stored["nonlesion_counts"].astype(np.int64)
        hist.bin_min = stored["bin_min"].astype(np.float64)
        hist.max_score = float(stored["max_score"])
    return hist


def roi_max(scores: np.ndarray, roi: np.ndarray) -> float:
    """Largest score inside the ROI (0.0 for an empty ROI), read in chunks."""
    scores = np.asarray(scores)
    roi = np.asarray(roi, dtype=bool)
    _check_same_shape(scores=scores, roi=roi)
    largest = 0.0
    for part in _slabs(scores.shape):
        values = scores[part][roi[part]]
        if values.size:
            largest = max(largest, float(values.max()))
    return largest


def _sweep(hist: ScoreHistogram) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds in decreasing order with the lesion (tp) and non-lesion (fp) voxels >= each."""
    # Only occupied bins are candidate thresholds: an empty bin selects the same voxels as the
    # next occupied bin above it.
    occupied = np.flatnonzero((hist.lesion_counts + hist.nonlesion_counts) > 0)[::-1]
    tp = np.cumsum(hist.lesion_counts[occupied])
    fp = np.cumsum(hist.nonlesion_counts[occupied])
    return hist.bin_min[occupied], tp, fp


def best_dice(hist: ScoreHistogram) -> tuple[float, float]:
    """Largest pooled Dice over thresholds and the threshold reaching it ("score >= threshold").

    Ties go to the highest threshold. Returns (nan, nan) when the cohort has no lesion voxel, and
    (0, nan) when its only lesion voxels lie outside the ROI of an empty histogram.
    """
    n_lesion = hist.n_positive
    if n_lesion == 0:
        return float("nan"), float("nan")
    thresholds, tp, fp = _sweep(hist)
    if thresholds.size == 0:
        return 0.0, float("nan")
    # Dice = 2 TP / (2 TP + FP + FN) and TP + FN is the fixed lesion volume, missed voxels included.
    dice = 2.0 * tp / (tp + fp + n_lesion)
    best = int(np.argmax(dice))
    return float(dice[best]), float(thresholds[best])


def pr_curve(hist: ScoreHistogram) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) ordered as sklearn.metrics.precision_recall_curve.

    Thresholds increase; precision and recall have one extra final point (1, 0).
    """
    thresholds, tp, fp = _sweep(hist)
    n_lesion = hist.n_positive
    precision = tp / (tp + fp)
    recall = tp / n_lesion if n_lesion else np.full(tp.shape, np.nan)
    return (
        np.concatenate([precision[::-1], [1.0]]),
        np.concatenate([recall[::-1], [0.0]]),
        thresholds[::-1].copy(),
    )


def average_precision(hist: ScoreHistogram) -> float:
    """AUPRC as the step sum of precision over recall increments, like
    sklearn.metrics.average_precision_score (no interpolation). NaN without lesion voxels; missed
    lesion voxels cap the recall below 1."""
    n_lesion = hist.n_positive
    if n_lesion == 0:
        return float("nan")
    _, tp, fp = _sweep(hist)
    recall_gain = np.diff(tp, prepend=0) / n_lesion
    return float(np.sum(recall_gain * tp / (tp + fp)))


def roc_auc(hist: ScoreHistogram) -> float:
    """Area under the ROC curve by the trapezoid rule, like sklearn.metrics.roc_auc_score.

    Tied scores count half, through the diagonal segment they form. NaN when either class is
    missing. Missed lesion voxels rank below every ROI voxel: the curve ends at their recall gap.
    """
    n_lesion, n_nonlesion = hist.n_positive, hist.n_nonlesion
    if n_lesion == 0 or n_nonlesion == 0:
        return float("nan")
    _, tp, fp = _sweep(hist)
    tpr = np.concatenate([[0.0], tp / n_lesion])
    fpr = np.concatenate([[0.0], fp / n_nonlesion])
    return float(np.trapezoid(tpr, fpr))


def threshold_from_healthy(
    healthy_hist: ScoreHistogram, mode: Literal["percentile", "fpr"], value: float
) -> float:
    """Threshold chosen on healthy validation ROI scores only, without any lesion label.

    mode="percentile": the `value`-th percentile of the pooled healthy scores (the
    numpy "inverted_cdf" definition; exact when its bin holds one distinct score, otherwise the
    smallest score of that bin).
    mode="fpr": the lowest threshold whose false-positive rate on the healthy voxels is at most
    `value`; above every healthy score when even the top bin exceeds it.
    """
    if healthy_hist.n_lesion:
        raise ValueError("the threshold must come from healthy scans: histogram has lesion voxels")
    counts = healthy_hist.nonlesion_counts
    total = int(counts.sum())
    if total == 0:
        raise ValueError("healthy histogram is empty")
    if mode == "percentile":
        if not 0 <= value <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {value}")
        # Smallest occupied bin whose cumulative count reaches value% of the voxels, i.e. the
        # bin holding the ceil(n q)-th smallest score, as numpy's inverted_cdf.
        cumulative = np.cumsum(counts)
        reached = (cumulative >= total * (value / 100.0)) & (counts > 0)
        return float(healthy_hist.bin_min[np.argmax(reached)])
    if mode == "fpr":
        if not 0 <= value <= 1:
            raise ValueError(f"false-positive rate must be in [0, 1], got {value}")
        thresholds, _, fp = _sweep(healthy_hist)
        allowed = np.flatnonzero(fp <= value * total)
        if allowed.size == 0:
            return float(np.nextafter(healthy_hist.max_score, np.inf))
        # fp grows as the threshold falls, so the last allowed entry is the lowest threshold.
        return float(thresholds[allowed[-1]])
    raise ValueError(f"mode must be 'percentile' or 'fpr', got {mode!r}")


TestCases = Callable[[], Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray]]]
HealthyCases = Callable[[], Iterable[tuple[str, np.ndarray, np.ndarray]]]


def healthy_threshold(
    healthy_cases: HealthyCases,
    mode: Literal["percentile", "fpr"],
    value: float,
    n_bins: int = DEFAULT_BINS,
) -> float:
    """The label-free threshold of one dataset x method: `threshold_from_healthy` on the pooled
    ROI scores of the healthy val subjects that `healthy_cases()` yields as (subject, scores,
    roi), one subject in memory at a time (it is called twice). The evaluation's "val_thr"
    threshold and the binary masks of `test` and `predict` subjects both come from here.
    """
    upper = max((roi_max(s, r) for _, s, r in healthy_cases()), default=0.0)
    # An all-zero map still needs a valid bin range; any positive upper puts it in bin 0.
    hist = ScoreHistogram(upper if upper > 0 else 1.0, n_bins)
    for _, scores, roi in healthy_cases():
        hist.add(scores, None, roi)
    return threshold_from_healthy(hist, mode, value)


def segment(scores: np.ndarray, roi: np.ndarray, threshold: float) -> np.ndarray:
    """The binary segmentation "score >= threshold" inside the ROI, as every metric counts it."""
    # A float64 scalar makes numpy compare float32 maps in float64 (buffered, no full copy), so the
    # threshold is not rounded to float32 on the way.
    return (np.asarray(scores) >= np.float64(threshold)) & np.asarray(roi, dtype=bool)


def subject_metrics(
    scores: np.ndarray,
    lesion: np.ndarray,
    roi: np.ndarray,
    threshold: float,
    outside_roi: Literal["miss", "ignore"] = "miss",
) -> dict[str, float]:
    """Voxel and lesion-wise metrics of one subject segmented as "score >= threshold" in the ROI.

    Lesions are 26-connected components (full connectivity in any dimension) of the lesion mask;
    a lesion is detected when any of its voxels is segmented. With outside_roi="miss" lesion voxels
    outside the ROI are false negatives and a lesion wholly outside is missed; with "ignore" the
    lesion mask is cut to the ROI first. With an empty lesion mask dice, recall and detection_rate
    are NaN (undefined); precision is NaN with an empty segmentation. tp, fp and fn are voxel
    counts for pooling over subjects; lesion_outside_roi counts the lesion voxels outside the ROI
    and lesion_outside_fraction is their share of the subject's lesion voxels, in either mode.
    """
    if outside_roi not in OUTSIDE_ROI:
        raise ValueError(f"outside_roi must be one of {OUTSIDE_ROI}, got {outside_roi!r}")
    scores = np.asarray(scores)
    roi = np.asarray(roi, dtype=bool)
    whole = np.asarray(lesion, dtype=bool)
    _check_same_shape(scores=scores, lesion=whole, roi=roi)
    n_whole = int(np.count_nonzero(whole))
    lesion = whole if outside_roi == "miss" else whole & roi
    outside = n_whole - int(np.count_nonzero(whole & roi))
    segmented = segment(scores, roi, threshold)
    tp = int(np.count_nonzero(segmented & lesion))
    fp = int(np.count_nonzero(segmented)) - tp
    fn = int(np.count_nonzero(lesion)) - tp

    labels, n_lesions = ndimage.label(lesion, structure=np.ones((3,) * lesion.ndim, dtype=bool))
    hit = np.bincount(labels[segmented], minlength=n_lesions + 1)[1:] > 0
    n_detected = int(np.count_nonzero(hit))

    has_lesion = tp + fn > 0
    nan = float("nan")
    return {
        "dice": 2.0 * tp / (2 * tp + fp + fn) if has_lesion else nan,
        "precision": tp / (tp + fp) if tp + fp > 0 else nan,
        "recall": tp / (tp + fn) if has_lesion else nan,
        "n_lesions": int(n_lesions),
        "n_detected": n_detected,
        "detection_rate": n_detected / n_lesions if n_lesions else nan,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "lesion_outside_roi": outside,
        "lesion_outside_fraction": outside / n_whole if n_whole else nan,
    }


def pooled_dice(rows: Iterable[Mapping[str, float]]) -> float:
    """Dice of the voxel counts summed over subjects (NaN without lesion voxels)."""
    tp = fp = fn = 0
    for row in rows:
        tp, fp, fn = tp + row["tp"], fp + row["fp"], fn + row["fn"]
    return 2.0 * tp / (2 * tp + fp + fn) if tp + fn > 0 else float("nan")


def summarise(
    test_hist: ScoreHistogram,
    val_threshold: float,
    at_best: Sequence[Mapping[str, float]],
    at_val_thr: Sequence[Mapping[str, float]],
) -> dict[str, float]:
    """Summary row for one dataset x method.

    `at_best` / `at_val_thr` are the `subject_metrics` of every test subject at the best-Dice
    threshold of `test_hist` and at `val_threshold` (from `threshold_from_healthy`).
    `dice_bin_gap` is how much the best Dice moves when bins are twice as wide: a check that the
    sweep is fine enough for these maps. `val_thr_over_best` is the val-threshold Dice divided by
    the best Dice: how much of the reachable Dice the label-free threshold keeps (NaN when the
    best Dice is 0 or undefined).
    """
    dice, threshold = best_dice(test_hist)
    if test_hist.n_bins % 2 == 0:
        dice_bin_gap = abs(dice - best_dice(coarsen(test_hist, 2))[0])
    else:
        dice_bin_gap = float("nan")
    n_voxels = test_hist.n_lesion + test_hist.n_nonlesion
    row = {
        "n_subjects": len(at_best),
        "best_dice": dice,
        "best_threshold": threshold,
        "dice_val_thr": pooled_dice(at_val_thr),
        "val_thr_over_best": val_thr_over_best(pooled_dice(at_val_thr), dice),
        "val_threshold": float(val_threshold),
        "auprc": average_precision(test_hist),
        "auroc": roc_auc(test_hist),
        "lesion_fraction": test_hist.n_lesion / n_voxels if n_voxels else float("nan"),
        "dice_bin_gap": dice_bin_gap,
    }
    for name, rows in (("best", at_best), ("val_thr", at_val_thr)):
        per_subject = np.array([r["dice"] for r in rows], dtype=np.float64)
        defined = per_subject[~np.isnan(per_subject)]
        row[f"mean_dice_{name}"] = float(defined.mean()) if defined.size else float("nan")
        row[f"sd_dice_{name}"] = float(defined.std(ddof=1)) if defined.size > 1 else float("nan")
        n_lesions = sum(int(r["n_lesions"]) for r in rows)
        n_detected = sum(int(r["n_detected"]) for r in rows)
        row[f"detection_rate_{name}"] = n_detected / n_lesions if n_lesions else float("nan")
    row["n_lesions"] = sum(int(r["n_lesions"]) for r in at_best)
    # Share of all lesion voxels that lie outside the ROI (missed by every method, or ignored).
    outside = sum(int(r.get("lesion_outside_roi", 0)) for r in at_best)
    inside = test_hist.n_lesion
    row["lesion_outside_fraction"] = (
        outside / (inside + outside) if inside + outside else float("nan")
    )
    return row


def val_thr_over_best(val_thr: float, best: float) -> float:
    """Val-threshold Dice / best Dice; NaN when the best Dice is 0 or NaN (nothing to reach)."""
    return float(val_thr) / float(best) if best > 0 else float("nan")


def evaluate_cohort(
    test_cases: TestCases,
    healthy_cases: HealthyCases,
    mode: Literal["percentile", "fpr"],
    value: float,
    n_bins: int = DEFAULT_BINS,
    return_histogram: bool = False,
    subject_histograms: list[ScoreHistogram] | None = None,
    outside_roi: Literal["miss", "ignore"] = "miss",
) -> tuple[dict[str, float], pd.DataFrame] | tuple[dict[str, float], pd.DataFrame, ScoreHistogram]:
    """Summary row and per-subject table for one dataset x method, one subject in memory at a time.

    `test_cases()` yields (subject, scores, lesion, roi) and `healthy_cases()` yields
    (subject, scores, roi); each is called once per pass (test: 3 passes, healthy: 2), so they
    should load from disk lazily. The per-subject table has one row per subject and threshold
    ("best" or "val_thr"). With `return_histogram` the test histogram comes third (for curves).
    A list given as `subject_histograms` receives each test subject's histogram, on the bins of
    the cohort's (for `paired_bootstrap_change`); they sum to the test histogram.
    `outside_roi` says how lesion voxels outside the ROI count (see `subject_metrics`).
    """
    val_threshold = healthy_threshold(healthy_cases, mode, value, n_bins)

    test_upper = max((roi_max(s, r) for _, s, _, r in test_cases()), default=0.0)
    test_hist = ScoreHistogram(test_upper if test_upper > 0 else 1.0, n_bins, outside_roi)
    for _, scores, lesion, roi in test_cases():
        if subject_histograms is None:
            test_hist.add(scores, lesion, roi)
            continue
        subject_hist = ScoreHistogram(test_hist.upper, n_bins, outside_roi)
        subject_hist.add(scores, lesion, roi)
        test_hist.merge(subject_hist)
        subject_histograms.append(subject_hist)
    _, threshold = best_dice(test_hist)

    rows: dict[str, list[dict]] = {"best": [], "val_thr": []}
    table = []
    for subject, scores, lesion, roi in test_cases():
        for name, value_at in (("best", threshold), ("val_thr", val_threshold)):
            metrics = subject_metrics(scores, lesion, roi, value_at, outside_roi)
            rows[name].append(metrics)
            table.append(
                {"subject": subject, "threshold_kind": name, "threshold": value_at, **metrics}
            )
    summary = summarise(test_hist, val_threshold, rows["best"], rows["val_thr"])
    if return_histogram:
        return summary, pd.DataFrame(table), test_hist
    return summary, pd.DataFrame(table)


# Columns of the Markdown summary, in reading order: what a reader compares first comes first.
_MARKDOWN_COLUMNS = {
    "dataset": "dataset",
    "method": "method",
    "best_dice": "best Dice",
    "dice_val_thr": "Dice at val threshold",
    "val_thr_over_best": "val thr. ÷ best",
    "mean_dice_best": "subject Dice (best)",
    "mean_dice_val_thr": "subject Dice (val thr.)",
    "auprc": "AUPRC",
    "auroc": "AUROC",
    "detection_rate_val_thr": "lesions found (val thr.)",
    "lesion_outside_fraction": "lesion outside ROI",
    "best_threshold": "best threshold",
    "val_threshold": "val threshold",
    "n_subjects": "subjects",
    "flag": "flag",
}


def summary_markdown(table: pd.DataFrame) -> str:
    """Markdown table of summary rows (as from `summarise`, plus dataset and method columns).

    Per-subject means are shown with their SD; missing columns are skipped.
    """
    columns = [c for c in _MARKDOWN_COLUMNS if c in table.columns]
    lines = [
        "| " + " | ".join(_MARKDOWN_COLUMNS[c] for c in columns) + " |",
        "|" + "|".join("---" if c in ("dataset", "method") else "---:" for c in columns) + "|",
    ]
    for _, row in table.iterrows():
        cells = []
        for column in columns:
            value = row[column]
            if column.startswith("mean_dice_"):
                sd = row.get(column.replace("mean_", "sd_"), float("nan"))
                cells.append(_number(value) + ("" if pd.isna(sd) else f" ± {_number(sd)}"))
            elif column.endswith("threshold"):
                cells.append(_number(value, "{:.4g}"))
            elif column == "n_subjects":
                cells.append(str(int(value)))
            elif column == "flag":
                cells.append("" if pd.isna(value) else str(value))
            else:
                cells.append(_number(value) if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value: float, pattern: str = "{:.3f}") -> str:
    return "n/a" if pd.isna(value) else pattern.format(value)


def _slabs(shape: tuple[int, ...]) -> Iterator[tuple[slice] | EllipsisType]:
    """Indices covering an array in slabs along its first axis."""
    if len(shape) == 0:
        yield ...
        return
    per_row = int(np.prod(shape[1:], dtype=np.int64)) or 1
    step = max(1, _CHUNK_VOXELS // per_row)
    for start in range(0, shape[0], step):
        yield (slice(start, start + step),)


def _check_same_shape(**arrays: np.ndarray | None) -> None:
    shapes = {name: a.shape for name, a in arrays.items() if a is not None}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"arrays must share one shape, got {shapes}")


def relative_dice_change(
    table: pd.DataFrame, method: str = "arepas", column: str = "best_dice"
) -> pd.DataFrame:
    """Per dataset, the relative change of ``method``'s Dice over the best other method, as the
    paper reports it (+1.9 % chest CT, +4.4 % brain MRI, relative Dice).

    Other methods are raw and post-processed alike (`residual`, `residual+pp`), so a baseline is
    never judged on its unfiltered maps alone; variants of ``method`` itself (`arepas+pp` beside
    `arepas`) are not "other", nor, for a method of the AREPAS family (`COMPARED_METHODS`), are
    the family's other members: each is measured against the baselines, as the paper measures
    AREPAS against other reconstruction-based methods.
    """
    rows = []
    for dataset, group in table.groupby("dataset", sort=False):
        own = group.loc[group["method"] == method, column]
        bases = group["method"].map(base_method)
        family = bases == base_method(method)
        if base_method(method) in COMPARED_METHODS:
            family |= bases.isin(COMPARED_METHODS)
        others = group.loc[~family].dropna(subset=[column])
        if own.empty or others.empty:
            continue
        best = others.loc[others[column].idxmax()]
        rows.append(
            {
                "dataset": dataset,
                "method": method,
                column: float(own.iloc[0]),
                "best_other": best["method"],
                f"best_other_{column}": float(best[column]),
                "relative_change": float(own.iloc[0]) / float(best[column]) - 1.0
                if best[column] > 0
                else float("nan"),
            }
        )
    return pd.DataFrame(rows)


# Methods reported against the best other method: the reference method, the project's earlier
# variant of it and its healthy-calibrated patch scoring, each raw and post-processed.
COMPARED_METHODS = ("arepas", "arepas_v0", "arepas_calibrated")


def compared_methods(available: Iterable[str]) -> list[str]:
    """The methods of `COMPARED_METHODS` among `available`, each followed by its `+pp` variant."""
    present = set(available)
    candidates = [m for base in COMPARED_METHODS for m in (base, variant_name(base))]
    return [m for m in candidates if m in present]


# Resamples of the paired bootstrap: 2,000 puts the Monte-Carlo error of a 2.5 % percentile at
# about 0.3 percentage points of coverage, small beside the interval itself with 10 subjects.
BOOTSTRAP_RESAMPLES = 2000


def bootstrap_weights(n_subjects: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n_subjects) counts of how often each subject is drawn, subjects drawn with
    replacement, n_subjects per resample; the same `seed` gives the same draws."""
    if n_subjects < 1 or n_resamples < 1:
        raise ValueError(f"need >= 1 subject and resample, got {n_subjects}, {n_resamples}")
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, n_subjects, size=(n_resamples, n_subjects))
    weights = np.zeros((n_resamples, n_subjects), dtype=np.float64)
    np.add.at(weights, (np.arange(n_resamples)[:, None], drawn), 1.0)
    return weights


@dataclass(frozen=True)
class SubjectHistograms:
    """One method's test-subject histograms, stacked compactly for the bootstrap: lesion and
    non-lesion counts (n_subjects, k) on the k bins any subject occupies, highest scores first,
    and each subject's missed lesion voxels (n_subjects,). A third of the memory of the
    `ScoreHistogram`s it comes from at most, since thresholds are not needed to resample Dice."""

    lesion: np.ndarray
    nonlesion: np.ndarray
    missed: np.ndarray

    def __len__(self) -> int:
        return len(self.lesion)


def stack_histograms(hists: Sequence[ScoreHistogram]) -> SubjectHistograms:
    """Stack subject histograms of one cohort's bins (as `evaluate_cohort` collects them)."""
    if not len(hists):
        raise ValueError("no subject histograms to stack")
    first = hists[0]
    if any(
        (h.n_bins, h.upper, h.outside_roi) != (first.n_bins, first.upper, first.outside_roi)
        for h in hists
    ):
        raise ValueError("subject histograms must share one cohort's bins and outside_roi")
    occupied = np.zeros(first.n_bins, dtype=bool)
    for h in hists:
        occupied |= (h.lesion_counts + h.nonlesion_counts) > 0
    index = np.flatnonzero(occupied)[::-1]
    largest = max(int(max(h.lesion_counts.max(), h.nonlesion_counts.max())) for h in hists)
    dtype = np.int32 if largest < 2**31 else np.int64
    return SubjectHistograms(
        lesion=np.stack([h.lesion_counts[index] for h in hists]).astype(dtype),
        nonlesion=np.stack([h.nonlesion_counts[index] for h in hists]).astype(dtype),
        missed=np.array([h.n_missed for h in hists], dtype=np.int64),
    )


def resampled_best_dice(
    hists: Sequence[ScoreHistogram] | SubjectHistograms, weights: np.ndarray, chunk: int = 32
) -> np.ndarray:
    """Best pooled Dice of each resample (rows of `weights`, as from `bootstrap_weights`), the
    threshold chosen anew on each resample's own pooled histogram, as `best_dice` chooses it on
    the cohort; NaN for a resample without lesion voxels. All-ones weights give `best_dice` of
    the merged histogram."""
    stacked = hists if isinstance(hists, SubjectHistograms) else stack_histograms(hists)
    lesion = stacked.lesion.astype(np.float64)
    nonlesion = stacked.nonlesion.astype(np.float64)
    missed = stacked.missed.astype(np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != len(hists):
        raise ValueError(f"weights must be (resamples, {len(hists)}), got {weights.shape}")
    out = np.full(len(weights), np.nan)
    # Chunks of resamples bound the (chunk, bins) cumulative sums to a few tens of MB.
    for start in range(0, len(weights), chunk):
        w = weights[start : start + chunk]
        tp = np.cumsum(w @ lesion, axis=1)
        fp = np.cumsum(w @ nonlesion, axis=1)
        in_roi = tp[:, -1:] if tp.shape[1] else np.zeros((len(w), 1))
        # Lesion voxels outside the ROI of the drawn subjects: misses at every threshold.
        n_lesion = in_roi + (w @ missed)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            dice = 2.0 * tp / (tp + fp + n_lesion)
        has_lesion = n_lesion[:, 0] > 0
        best = np.nanmax(dice, axis=1) if dice.shape[1] else np.zeros(len(w))
        out[start : start + len(w)] = np.where(has_lesion, best, np.nan)
    return out


def resampled_pooled_dice(counts: Sequence[Mapping[str, float]], weights: np.ndarray) -> np.ndarray:
    """Pooled Dice of each resample from per-subject tp, fp, fn at a fixed threshold (as
    `pooled_dice`); NaN for a resample without lesion voxels."""
    table = np.array([[row["tp"], row["fp"], row["fn"]] for row in counts], dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != len(table):
        raise ValueError(f"weights must be (resamples, {len(table)}), got {weights.shape}")
    tp, fp, fn = (weights @ table).T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tp + fn > 0, 2.0 * tp / (2.0 * tp + fp + fn), np.nan)


def paired_bootstrap_change(
    own: SubjectHistograms | Sequence[ScoreHistogram] | Sequence[Mapping[str, float]],
    other: SubjectHistograms | Sequence[ScoreHistogram] | Sequence[Mapping[str, float]],
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """Relative Dice change of one method over another on the same test subjects, with a paired
    bootstrap percentile interval.

    Subjects, not voxels, are resampled with replacement (voxels of one scan are not independent),
    and each resample draws the same subjects for both methods (paired), seeded by `seed`.

    With per-subject histograms (`ScoreHistogram`s of one cohort's bins, as `evaluate_cohort`
    collects them, or their `stack_histograms`), the Dice is the best-threshold pooled Dice, and
    each resample chooses its threshold anew for each method, so the interval includes the
    variability of the threshold choice itself rather than treating the cohort's best threshold
    as given. With per-subject
    counts (mappings with tp, fp, fn at a fixed threshold, e.g. the one chosen on healthy
    validation scans, which does not depend on the test subjects) the Dice is the pooled Dice
    at that threshold.

    Returns own_dice, other_dice, relative_change (own / other - 1, all subjects once),
    ci_low and ci_high (the (1 - level) / 2 and (1 + level) / 2 percentiles over resamples),
    n_subjects and n_resamples (resamples where both Dice are defined and other > 0).
    """
    if len(own) != len(other) or len(own) == 0:
        raise ValueError(
            f"both methods need the same, non-empty list of subjects, got {len(own)}, {len(other)}"
        )
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")

    def histograms(data) -> bool:
        return isinstance(data, SubjectHistograms) or isinstance(data[0], ScoreHistogram)

    if histograms(own) != histograms(other):
        raise ValueError("give both methods as histograms or both as counts")
    resample = resampled_best_dice if histograms(own) else resampled_pooled_dice
    n = len(own)
    everyone = np.ones((1, n))
    own_dice, other_dice = float(resample(own, everyone)[0]), float(resample(other, everyone)[0])
    weights = bootstrap_weights(n, n_resamples, seed)
    a, b = resample(own, weights), resample(other, weights)
    valid = np.isfinite(a) & np.isfinite(b) & (b > 0)
    change = a[valid] / b[valid] - 1.0
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(change, [tail, 100.0 - tail]) if change.size else (np.nan, np.nan)
    return {
        "own_dice": own_dice,
        "other_dice": other_dice,
        "relative_change": own_dice / other_dice - 1.0 if other_dice > 0 else float("nan"),
        "ci_low": float(low),
        "ci_high": float(high),
        "n_subjects": n,
        "n_resamples": int(valid.sum()),
    }
