import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from arepas.metrics import (
    ScoreHistogram,
    average_precision,
    best_dice,
    coarsen,
    evaluate_cohort,
    load_histogram,
    pooled_dice,
    pr_curve,
    roc_auc,
    roi_max,
    save_histogram,
    subject_metrics,
    summarise,
    summary_markdown,
    threshold_from_healthy,
)

torch.set_num_threads(1)


def filled(scores, lesion, roi=None, n_bins=2**16):
    roi = np.ones(scores.shape, bool) if roi is None else roi
    hist = ScoreHistogram(max(roi_max(scores, roi), 1e-6), n_bins)
    hist.add(scores, lesion, roi)
    return hist


def brute_force_best_dice(scores, lesion):
    """Best Dice over every distinct score, by sorting all voxels."""
    scores = scores.astype(np.float64).ravel()
    lesion = lesion.ravel()
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    tp = np.cumsum(lesion[order])
    fp = np.cumsum(~lesion[order])
    last_of_value = np.r_[ordered[1:] != ordered[:-1], True]
    dice = 2 * tp[last_of_value] / (tp[last_of_value] + fp[last_of_value] + lesion.sum())
    best = np.argmax(dice)
    return dice[best], ordered[last_of_value][best]


def continuous_cohort(seed, n_subjects=3, shape=(12, 40, 40)):
    """Residual-like maps: skewed background, brighter blobs over the lesion, noise everywhere."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    cases = []
    for i in range(n_subjects):
        centre = rng.uniform([3, 10, 10], [9, 30, 30])
        distance = np.sqrt(((np.stack([zz, yy, xx], -1) - centre) ** 2).sum(-1))
        lesion = distance < rng.uniform(3, 6)
        scores = rng.gamma(1.5, 0.05, shape) + 0.4 * np.exp(-(distance**2) / 20)
        roi = np.ones(shape, bool)
        roi[:, :3] = False
        scores[~roi] = 0
        cases.append((f"sub-{i:02d}", scores.astype(np.float32), lesion, roi))
    return cases


def few_valued(seed, n=5000):
    rng = np.random.default_rng(seed)
    lesion = rng.random(n) < 0.2
    levels = np.array([0.0, 0.125, 0.25, 0.5, 0.75, 1.0])
    # Lesions lean towards high levels so that the curves are not trivial.
    index = np.where(lesion, rng.integers(2, 6, n), rng.integers(0, 5, n))
    return levels[index].astype(np.float32), lesion


def test_perfect_map_gives_dice_ap_auroc_one_and_ignores_scores_outside_roi():
    shape = (8, 16, 16)
    lesion = np.zeros(shape, bool)
    lesion[2:5, 4:9, 4:9] = True
    rng = np.random.default_rng(0)
    scores = (0.5 * rng.random(shape)).astype(np.float32)
    scores[lesion] = 0.75
    roi = np.ones(shape, bool)
    roi[:, :, 12:] = False
    scores[:, :, 12:] = 5.0  # a leak outside the ROI must not count
    hist = ScoreHistogram(roi_max(scores, roi))
    hist.add(scores, lesion, roi)

    dice, threshold = best_dice(hist)
    assert dice == 1.0
    assert threshold == pytest.approx(0.75)
    assert average_precision(hist) == 1.0
    assert roc_auc(hist) == 1.0
    assert hist.n_lesion == lesion.sum()
    assert hist.n_nonlesion == roi.sum() - lesion.sum()


def test_known_overlap_matches_hand_computed_dice_ap_and_auroc():
    shape = (10, 10, 10)
    lesion = np.zeros(shape, bool)
    lesion[2:6, 2:6, 2:6] = True  # 64 voxels
    scores = np.zeros(shape, np.float32)
    scores[4:8, 2:6, 2:6] = 1.0  # 32 of them on the lesion, 32 beside it
    uncovered = lesion & (scores == 0)
    scores[uncovered] = 0.5  # the other 32 lesion voxels
    far = np.zeros(shape, bool)
    far[8:10, 0:10, 0:5] = True  # 100 healthy voxels at 0.5
    scores[far] = 0.5
    hist = filled(scores, lesion)

    # score >= 1: TP 32, FP 32, FN 32 -> 64 / 128. score >= 0.5: TP 64, FP 132 -> 128 / 260.
    dice, threshold = best_dice(hist)
    assert dice == pytest.approx(0.5, abs=1e-12)
    assert threshold == 1.0
    ap_by_hand = 0.5 * (32 / 64) + 0.5 * (64 / 196)
    assert average_precision(hist) == pytest.approx(ap_by_hand, abs=1e-12)
    n_healthy = 1000 - 64
    auc_by_hand = (
        0.5 * (32 / n_healthy) * 0.5 + (100 / n_healthy) * 0.75 + (1 - 132 / n_healthy) * 1.0
    )
    assert roc_auc(hist) == pytest.approx(auc_by_hand, abs=1e-12)
    assert average_precision(hist) == pytest.approx(
        average_precision_score(lesion.ravel(), scores.ravel()), abs=1e-12
    )
    assert roc_auc(hist) == pytest.approx(roc_auc_score(lesion.ravel(), scores.ravel()), abs=1e-12)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_few_valued_scores_are_exact(seed):
    scores, lesion = few_valued(seed)
    hist = filled(scores, lesion)

    dice, threshold = best_dice(hist)
    exact_dice, exact_threshold = brute_force_best_dice(scores, lesion)
    assert dice == pytest.approx(exact_dice, abs=1e-12)
    assert threshold == exact_threshold
    assert average_precision(hist) == pytest.approx(
        average_precision_score(lesion, scores), abs=1e-12
    )
    assert roc_auc(hist) == pytest.approx(roc_auc_score(lesion, scores), abs=1e-12)
    precision, recall, thresholds = pr_curve(hist)
    sk_precision, sk_recall, sk_thresholds = precision_recall_curve(lesion, scores)
    np.testing.assert_allclose(precision, sk_precision, atol=1e-12)
    np.testing.assert_allclose(recall, sk_recall, atol=1e-12)
    np.testing.assert_array_equal(thresholds, sk_thresholds)


def test_continuous_scores_are_close_to_sklearn_and_to_the_exact_sweep():
    cases = continuous_cohort(seed=4)
    scores = np.concatenate([s[r] for _, s, _, r in cases])
    lesion = np.concatenate([les[r] for _, _, les, r in cases])
    hist = ScoreHistogram(max(roi_max(s, r) for _, s, _, r in cases))
    for _, s, les, r in cases:
        hist.add(s, les, r)

    assert average_precision(hist) == pytest.approx(
        average_precision_score(lesion, scores), abs=1e-3
    )
    assert roc_auc(hist) == pytest.approx(roc_auc_score(lesion, scores), abs=1e-4)
    exact_dice, _ = brute_force_best_dice(scores, lesion)
    assert best_dice(hist)[0] == pytest.approx(exact_dice, abs=5e-4)


def test_default_bins_are_fine_enough_for_the_third_decimal():
    cases = continuous_cohort(seed=5, n_subjects=4)
    upper = max(roi_max(s, r) for _, s, _, r in cases)
    dice = {}
    for n_bins in (2**14, 2**16, 2**18):
        hist = ScoreHistogram(upper, n_bins)
        for _, s, les, r in cases:
            hist.add(s, les, r)
        dice[n_bins] = best_dice(hist)[0]
    assert abs(dice[2**16] - dice[2**18]) < 5e-4
    assert abs(dice[2**14] - dice[2**16]) < 5e-4
    # and the coarsest sweep is not trivially equal to a constant: 16 bins lose accuracy
    coarse = ScoreHistogram(upper, 16)
    for _, s, les, r in cases:
        coarse.add(s, les, r)
    assert best_dice(coarse)[0] < dice[2**16] - 1e-3


def test_pooled_dice_at_best_threshold_matches_the_histogram_on_raw_maps():
    cases = continuous_cohort(seed=6)
    hist = ScoreHistogram(max(roi_max(s, r) for _, s, _, r in cases))
    for _, s, les, r in cases:
        hist.add(s, les, r)
    dice, threshold = best_dice(hist)
    rows = [subject_metrics(s, les, r, threshold) for _, s, les, r in cases]
    assert pooled_dice(rows) == pytest.approx(dice, abs=1e-12)


def test_scores_above_upper_go_to_the_last_bin():
    hist = ScoreHistogram(1.0, 8)
    scores = np.array([0.05, 0.5, 0.99, 1.0, 3.0, 7.0])
    lesion = np.array([False, False, False, True, True, False])
    hist.add(scores, lesion, np.ones(6, bool))
    np.testing.assert_array_equal(hist.lesion_counts, [0, 0, 0, 0, 0, 0, 0, 2])
    np.testing.assert_array_equal(hist.nonlesion_counts, [1, 0, 0, 0, 1, 0, 0, 2])
    assert hist.bin_min[-1] == 0.99
    assert hist.max_score == 7.0


def test_invalid_scores_are_rejected_but_outside_roi_is_ignored():
    roi = np.array([True, True, False])
    hist = ScoreHistogram(1.0, 4)
    with pytest.raises(ValueError):
        hist.add(np.array([0.1, -0.2, 0.0]), None, roi)
    with pytest.raises(ValueError):
        hist.add(np.array([0.1, np.nan, 0.0]), None, roi)
    with pytest.raises(ValueError):
        hist.add(np.array([0.1, 0.2]), None, roi)
    hist.add(np.array([0.1, 0.2, np.nan]), None, roi)
    assert hist.n_nonlesion == 2


def test_merge_save_load_and_coarsen_keep_counts(tmp_path):
    cases = continuous_cohort(seed=7)
    upper = max(roi_max(s, r) for _, s, _, r in cases)
    whole = ScoreHistogram(upper, 1024)
    parts = [ScoreHistogram(upper, 1024) for _ in cases]
    for part, (_, s, les, r) in zip(parts, cases, strict=True):
        whole.add(s, les, r)
        part.add(s, les, r)
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    np.testing.assert_array_equal(merged.lesion_counts, whole.lesion_counts)
    np.testing.assert_array_equal(merged.nonlesion_counts, whole.nonlesion_counts)
    np.testing.assert_array_equal(merged.bin_min, whole.bin_min)

    save_histogram(whole, tmp_path / "hist.npz")
    loaded = load_histogram(tmp_path / "hist.npz")
    assert best_dice(loaded) == best_dice(whole)
    assert loaded.max_score == whole.max_score

    coarse = coarsen(whole, 4)
    assert coarse.n_bins == 256
    assert coarse.n_lesion == whole.n_lesion and coarse.n_nonlesion == whole.n_nonlesion
    with pytest.raises(ValueError):
        merged.merge(coarse)


def test_percentile_threshold_matches_numpy_inverted_cdf():
    scores, _ = few_valued(8)
    hist = filled(scores, None)
    for p in (0, 10, 50, 83.3, 95, 100):
        expected = np.percentile(scores.astype(np.float64), p, method="inverted_cdf")
        assert threshold_from_healthy(hist, "percentile", p) == expected

    rng = np.random.default_rng(9)
    continuous = rng.gamma(2.0, 0.1, 20000)
    hist = filled(continuous, None)
    width = hist.upper / hist.n_bins
    for p in (90, 99, 99.9):
        expected = np.percentile(continuous, p, method="inverted_cdf")
        found = threshold_from_healthy(hist, "percentile", p)
        assert expected - width < found <= expected


def test_fpr_threshold_is_the_lowest_meeting_the_target():
    rng = np.random.default_rng(10)
    scores = np.round(rng.gamma(2.0, 0.1, 20000), 3)  # many ties, like quantised maps
    hist = filled(scores, None)
    distinct = np.unique(scores)
    for target in (0.2, 0.05, 0.01, 0.001):
        threshold = threshold_from_healthy(hist, "fpr", target)
        assert np.mean(scores >= threshold) <= target
        lower = distinct[distinct < threshold].max()
        assert np.mean(scores >= lower) > target
    above_all = threshold_from_healthy(hist, "fpr", 0.0)
    assert above_all > scores.max() and np.mean(scores >= above_all) == 0
    assert threshold_from_healthy(hist, "fpr", 1.0) == scores.min()


def test_healthy_threshold_refuses_lesion_labels():
    scores, lesion = few_valued(11)
    with pytest.raises(ValueError, match="healthy"):
        threshold_from_healthy(filled(scores, lesion), "percentile", 99)
    with pytest.raises(ValueError):
        threshold_from_healthy(filled(scores, None), "quantile", 99)


def test_val_threshold_does_not_move_when_test_lesion_masks_change():
    rng = np.random.default_rng(12)
    shape = (6, 24, 24)
    roi = np.ones(shape, bool)
    healthy = [(f"val-{i}", rng.gamma(1.5, 0.05, shape).astype(np.float32), roi) for i in range(2)]
    scores = rng.gamma(1.5, 0.05, shape).astype(np.float32)
    scores[2:4, 5:10, 5:10] += 0.6
    scores[2:4, 15:20, 15:20] += 0.3
    lesion_a = np.zeros(shape, bool)
    lesion_a[2:4, 5:10, 5:10] = True
    lesion_b = np.zeros(shape, bool)
    lesion_b[2:4, 15:20, 15:20] = True

    def run(lesion):
        return evaluate_cohort(
            lambda: [("sub-01", scores, lesion, roi)], lambda: healthy, "percentile", 99.0
        )[0]

    with_a, with_b = run(lesion_a), run(lesion_b)
    # The lesion labels change what the best threshold is...
    assert with_a["best_threshold"] != pytest.approx(with_b["best_threshold"], abs=0.05)
    assert with_a["best_dice"] == pytest.approx(1.0)
    # ...but the threshold picked on healthy scans stays put.
    assert with_a["val_threshold"] == with_b["val_threshold"]
    pooled_val = np.concatenate([s.ravel() for _, s, _ in healthy]).astype(np.float64)
    assert with_a["val_threshold"] == pytest.approx(
        np.percentile(pooled_val, 99, method="inverted_cdf"), abs=2 * pooled_val.max() / 2**16
    )


def test_empty_lesion_gives_undefined_dice_recall_and_detection():
    scores = np.zeros((5, 5, 5), np.float32)
    scores[2, 2, 2] = 1.0
    empty = np.zeros(scores.shape, bool)
    roi = np.ones(scores.shape, bool)
    found = subject_metrics(scores, empty, roi, 0.5)
    assert np.isnan(found["dice"]) and np.isnan(found["recall"])
    assert np.isnan(found["detection_rate"])
    assert found["precision"] == 0.0 and found["fp"] == 1
    assert found["n_lesions"] == 0

    nothing = subject_metrics(np.zeros_like(scores), empty, roi, 0.5)
    assert np.isnan(nothing["dice"]) and np.isnan(nothing["precision"])


def test_missed_lesion_gives_dice_zero():
    scores = np.zeros((5, 5, 5), np.float32)
    lesion = np.zeros(scores.shape, bool)
    lesion[1:3, 1:3, 1:3] = True
    found = subject_metrics(scores, lesion, np.ones(scores.shape, bool), 0.5)
    assert found["dice"] == 0.0 and found["recall"] == 0.0
    assert np.isnan(found["precision"])
    assert found["n_lesions"] == 1 and found["n_detected"] == 0 and found["detection_rate"] == 0.0


def test_detection_counts_26_connected_components():
    shape = (12, 12, 12)
    lesion = np.zeros(shape, bool)
    lesion[1:3, 1:3, 1:3] = True
    lesion[3, 3, 3] = True  # touches the first cube at a corner only: same lesion
    lesion[6:8, 6:8, 6:8] = True
    lesion[6:8, 6:8, 10:12] = True  # separated by a gap of one voxel: its own lesion
    scores = np.zeros(shape, np.float32)
    scores[3, 3, 3] = 0.9  # one corner voxel detects the whole first lesion
    scores[7, 7, 11] = 0.9
    scores[0, 11, 0] = 0.9  # a false positive far away
    roi = np.ones(shape, bool)
    found = subject_metrics(scores, lesion, roi, 0.5)
    assert found["n_lesions"] == 3
    assert found["n_detected"] == 2
    assert found["detection_rate"] == pytest.approx(2 / 3)
    assert (found["tp"], found["fp"]) == (2, 1)
    assert found["fn"] == lesion.sum() - 2

    roi[:, :, 9:] = False  # the third lesion lies wholly outside the ROI
    missed = subject_metrics(scores, lesion, roi, 0.5)
    assert (missed["n_lesions"], missed["n_detected"]) == (3, 1)
    assert subject_metrics(scores, lesion, roi, 0.5, outside_roi="ignore")["n_lesions"] == 2


def test_threshold_is_applied_to_float32_maps_without_rounding():
    value = np.float32(0.1)
    scores = np.array([value, np.nextafter(value, np.float32(0))], np.float32)
    lesion = np.array([True, False])
    found = subject_metrics(scores, lesion, np.ones(2, bool), float(value))
    assert (found["tp"], found["fp"]) == (1, 0)
    # A threshold a hair above the float32 value must exclude it, even though it rounds to it.
    above = float(value) + 1e-12
    assert np.float32(above) == value
    assert subject_metrics(scores, lesion, np.ones(2, bool), above)["tp"] == 0


def test_summary_row_pools_and_averages_subjects():
    cases = continuous_cohort(seed=13, n_subjects=3)
    healthy_shape = cases[0][1].shape
    rng = np.random.default_rng(14)
    healthy = [("val-0", rng.gamma(1.5, 0.05, healthy_shape).astype(np.float32), cases[0][3])]
    empty_case = ("sub-empty", cases[0][1], np.zeros(healthy_shape, bool), cases[0][3])
    cohort = [*cases, empty_case]
    summary, table = evaluate_cohort(lambda: cohort, lambda: healthy, "fpr", 0.01)

    assert summary["n_subjects"] == 4
    assert isinstance(table, pd.DataFrame) and len(table) == 8
    best_rows = table[table.threshold_kind == "best"]
    assert best_rows.dice.isna().sum() == 1  # the lesion-free subject
    assert summary["mean_dice_best"] == pytest.approx(best_rows.dice.mean())  # pandas skips NaN
    assert summary["sd_dice_best"] == pytest.approx(best_rows.dice.std())
    val_thr_rows = table[table.threshold_kind == "val_thr"]
    assert summary["dice_val_thr"] == pytest.approx(
        2
        * val_thr_rows.tp.sum()
        / (2 * val_thr_rows.tp.sum() + val_thr_rows.fp.sum() + val_thr_rows.fn.sum())
    )
    assert summary["detection_rate_val_thr"] == pytest.approx(
        val_thr_rows.n_detected.sum() / val_thr_rows.n_lesions.sum()
    )
    assert summary["n_lesions"] == 3
    assert 0 < summary["auprc"] <= 1 and 0.5 < summary["auroc"] <= 1
    assert summary["dice_bin_gap"] < 1e-3
    assert summary["best_dice"] >= summary["dice_val_thr"]
    assert summary["val_thr_over_best"] == pytest.approx(
        summary["dice_val_thr"] / summary["best_dice"]
    )

    again = summarise(
        ScoreHistogram(1.0, 4), 0.5, best_rows.to_dict("records"), val_thr_rows.to_dict("records")
    )
    assert np.isnan(again["best_dice"]) and np.isnan(again["auroc"])
    assert np.isnan(again["val_thr_over_best"])


def test_cohort_histogram_and_markdown_summary():
    cases = continuous_cohort(seed=15, n_subjects=2)
    rng = np.random.default_rng(16)
    healthy = [("val-0", rng.gamma(1.5, 0.05, cases[0][1].shape).astype(np.float32), cases[0][3])]
    summary, _, hist = evaluate_cohort(
        lambda: cases, lambda: healthy, "percentile", 99.5, n_bins=4096, return_histogram=True
    )
    assert hist.n_bins == 4096
    assert best_dice(hist) == (summary["best_dice"], summary["best_threshold"])
    assert hist.n_lesion == sum(int(les[r].sum()) for _, _, les, r in cases)

    rows = pd.DataFrame(
        [
            {"dataset": "thorax", "method": "arepas", **summary},
            {"dataset": "thorax", "method": "residual", **summary, "sd_dice_best": float("nan")},
        ]
    )
    lines = summary_markdown(rows).strip().splitlines()
    assert len(lines) == 4
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[:5] == [
        "dataset", "method", "best Dice", "Dice at val threshold", "val thr. ÷ best"
    ]
    first = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert first[2] == f"{summary['best_dice']:.3f}"
    assert first[4] == f"{summary['dice_val_thr'] / summary['best_dice']:.3f}"
    assert first[5] == f"{summary['mean_dice_best']:.3f} ± {summary['sd_dice_best']:.3f}"
    second = [cell.strip() for cell in lines[3].strip("|").split("|")]
    assert second[1] == "residual" and "±" not in second[5]


def lesion_partly_outside_roi():
    """A 4x4x4 lesion cut in half by the ROI border; the map is perfect inside the ROI."""
    shape = (8, 8, 8)
    lesion = np.zeros(shape, bool)
    lesion[2:6, 2:6, 2:6] = True
    roi = np.ones(shape, bool)
    roi[:, :, 4:] = False
    scores = np.where(lesion & roi, 0.9, 0.1).astype(np.float32)
    scores[~roi] = 0.0
    return scores, lesion, roi


def test_lesion_voxels_outside_the_roi_are_misses_of_every_threshold():
    scores, lesion, roi = lesion_partly_outside_roi()
    found = subject_metrics(scores, lesion, roi, 0.5)
    # 32 lesion voxels found in the ROI, 32 outside it missed: Dice 2*32 / (2*32 + 32).
    assert (found["tp"], found["fp"], found["fn"]) == (32, 0, 32)
    assert found["dice"] == pytest.approx(2 / 3)
    assert found["recall"] == pytest.approx(0.5)
    assert found["lesion_outside_roi"] == 32
    assert found["lesion_outside_fraction"] == pytest.approx(0.5)
    ignored = subject_metrics(scores, lesion, roi, 0.5, outside_roi="ignore")
    assert ignored["dice"] == 1.0 and ignored["fn"] == 0
    assert ignored["lesion_outside_fraction"] == pytest.approx(0.5)

    hist = ScoreHistogram(1.0, 256)
    hist.add(scores, lesion, roi)
    assert (hist.n_lesion, hist.n_lesion_outside, hist.n_positive) == (32, 32, 64)
    dice, threshold = best_dice(hist)
    assert dice == pytest.approx(2 / 3)
    assert pooled_dice([subject_metrics(scores, lesion, roi, threshold)]) == pytest.approx(dice)
    # Recall tops out at the share of lesion voxels inside the ROI.
    assert average_precision(hist) == pytest.approx(0.5)
    assert roc_auc(hist) == pytest.approx(0.5)
    kept = ScoreHistogram(1.0, 256, outside_roi="ignore")
    kept.add(scores, lesion, roi)
    assert best_dice(kept)[0] == 1.0 and average_precision(kept) == 1.0


def test_outside_count_survives_merge_coarsen_and_files(tmp_path):
    scores, lesion, roi = lesion_partly_outside_roi()
    first, second = ScoreHistogram(1.0, 256), ScoreHistogram(1.0, 256)
    first.add(scores, lesion, roi)
    second.add(scores, lesion, roi)
    first.merge(second)
    assert first.n_lesion_outside == 64
    assert coarsen(first, 4).n_lesion_outside == 64
    save_histogram(first, tmp_path / "h.npz")
    loaded = load_histogram(tmp_path / "h.npz")
    assert (loaded.n_lesion_outside, loaded.outside_roi) == (64, "miss")
    assert best_dice(loaded) == best_dice(first)
    with pytest.raises(ValueError, match="outside_roi"):
        first.merge(ScoreHistogram(1.0, 256, outside_roi="ignore"))
