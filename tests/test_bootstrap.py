"""Paired bootstrap over test subjects for the relative Dice change of two methods."""

import numpy as np
import pytest

from arepas.metrics import (
    ScoreHistogram,
    best_dice,
    bootstrap_weights,
    evaluate_cohort,
    paired_bootstrap_change,
    pooled_dice,
    resampled_best_dice,
    resampled_pooled_dice,
    stack_histograms,
    subject_metrics,
)

SHAPE = (6, 24, 24)


def lesion_of(rng: np.random.Generator) -> np.ndarray:
    lesion = np.zeros(SHAPE, dtype=bool)
    z, y, x = rng.integers([1, 4, 4], [4, 16, 16])
    lesion[z : z + 2, y : y + rng.integers(3, 7), x : x + rng.integers(3, 7)] = True
    return lesion


def noisy_map(rng: np.random.Generator, lesion: np.ndarray, noise: float) -> np.ndarray:
    """Lesion at 1 over a half-normal background of scale `noise`: more noise, lower Dice."""
    return (lesion + np.abs(rng.normal(0.0, noise, SHAPE))).astype(np.float32)


def cohort_histograms(maps: list[np.ndarray], lesions: list[np.ndarray]) -> list[ScoreHistogram]:
    """Per-subject histograms on one cohort's bins, as evaluate_cohort collects them."""
    upper = max(float(m.max()) for m in maps)
    roi = np.ones(SHAPE, dtype=bool)
    hists = []
    for scores, lesion in zip(maps, lesions, strict=True):
        hist = ScoreHistogram(upper, 4096)
        hist.add(scores, lesion, roi)
        hists.append(hist)
    return hists


def two_methods(noise_own: float, noise_other: float, n_subjects: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    lesions = [lesion_of(rng) for _ in range(n_subjects)]
    own = cohort_histograms([noisy_map(rng, les, noise_own) for les in lesions], lesions)
    other = cohort_histograms([noisy_map(rng, les, noise_other) for les in lesions], lesions)
    return own, other


def test_weights_draw_each_resample_n_subjects_and_repeat_with_the_seed():
    weights = bootstrap_weights(7, 500, seed=3)
    assert weights.shape == (500, 7)
    assert np.all(weights.sum(axis=1) == 7)
    # Some subjects are drawn twice or more, some not at all: drawing is with replacement.
    assert (weights == 0).any() and (weights >= 2).any()
    np.testing.assert_array_equal(weights, bootstrap_weights(7, 500, seed=3))
    assert not np.array_equal(weights, bootstrap_weights(7, 500, seed=4))


def test_resampled_best_dice_is_the_best_dice_of_the_resampled_cohort():
    own, _ = two_methods(0.35, 0.35, n_subjects=5)
    merged = ScoreHistogram(own[0].upper, own[0].n_bins)
    for hist in own:
        merged.merge(hist)
    assert resampled_best_dice(own, np.ones((1, 5)))[0] == pytest.approx(best_dice(merged)[0])
    # Subject 0 drawn three times, subject 3 twice: the histogram of exactly that cohort.
    again = ScoreHistogram(own[0].upper, own[0].n_bins)
    for index in (0, 0, 0, 3, 3):
        again.merge(own[index])
    weights = np.array([[3.0, 0.0, 0.0, 2.0, 0.0]])
    assert resampled_best_dice(own, weights)[0] == pytest.approx(best_dice(again)[0])


def test_resampled_pooled_dice_pools_the_drawn_subjects():
    counts = [
        {"tp": 10, "fp": 5, "fn": 5},
        {"tp": 0, "fp": 20, "fn": 10},
        {"tp": 3, "fp": 0, "fn": 0},
    ]
    weights = np.array([[1.0, 1.0, 1.0], [2.0, 0.0, 1.0], [0.0, 0.0, 3.0]])
    expected = [
        pooled_dice(counts),
        pooled_dice([counts[0], counts[0], counts[2]]),
        1.0,
    ]
    np.testing.assert_allclose(resampled_pooled_dice(counts, weights), expected)


def test_identical_quality_gives_an_interval_around_zero():
    # Same noise level, independent draws: neither method is better.
    own, other = two_methods(0.35, 0.35)
    result = paired_bootstrap_change(own, other, n_resamples=1000, seed=0)
    assert result["ci_low"] < 0 < result["ci_high"]
    assert result["ci_low"] <= result["relative_change"] <= result["ci_high"]
    same = paired_bootstrap_change(own, own, n_resamples=200, seed=0)
    assert same["relative_change"] == same["ci_low"] == same["ci_high"] == 0


def test_clearly_better_method_gives_an_interval_above_zero():
    own, other = two_methods(0.2, 0.4)
    result = paired_bootstrap_change(own, other, n_resamples=1000, seed=0)
    assert result["own_dice"] > result["other_dice"]
    assert 0 < result["ci_low"] <= result["relative_change"] <= result["ci_high"]
    assert result["n_subjects"] == 10 and result["n_resamples"] == 1000
    worse = paired_bootstrap_change(other, own, n_resamples=1000, seed=0)
    assert worse["ci_high"] < 0


def test_same_seed_same_interval_other_seed_other_interval():
    own, other = two_methods(0.3, 0.35)
    first = paired_bootstrap_change(own, other, n_resamples=300, seed=5)
    assert paired_bootstrap_change(own, other, n_resamples=300, seed=5) == first
    moved = paired_bootstrap_change(own, other, n_resamples=300, seed=6)
    assert moved["relative_change"] == first["relative_change"]
    assert (moved["ci_low"], moved["ci_high"]) != (first["ci_low"], first["ci_high"])


def test_counts_at_a_fixed_threshold_and_mismatched_inputs():
    rng = np.random.default_rng(1)
    roi = np.ones(SHAPE, dtype=bool)
    lesions = [lesion_of(rng) for _ in range(10)]
    own = [subject_metrics(noisy_map(rng, les, 0.2), les, roi, 0.9) for les in lesions]
    other = [subject_metrics(noisy_map(rng, les, 0.45), les, roi, 0.9) for les in lesions]
    result = paired_bootstrap_change(own, other, n_resamples=500, seed=0)
    assert result["own_dice"] == pytest.approx(pooled_dice(own))
    assert result["ci_low"] > 0
    with pytest.raises(ValueError, match="same"):
        paired_bootstrap_change(own, other[:-1])
    hists, _ = two_methods(0.2, 0.2)
    with pytest.raises(ValueError, match="histograms or both as counts"):
        paired_bootstrap_change(hists, own)


def test_evaluate_cohort_hands_out_subject_histograms_that_sum_to_the_cohort():
    rng = np.random.default_rng(2)
    roi = np.ones(SHAPE, dtype=bool)
    lesions = [lesion_of(rng) for _ in range(3)]
    cases = [(f"s{i}", noisy_map(rng, les, 0.3), les, roi) for i, les in enumerate(lesions)]
    healthy = [("v", np.abs(rng.normal(0, 0.3, SHAPE)).astype(np.float32), roi)]
    collected: list[ScoreHistogram] = []
    summary, _, hist = evaluate_cohort(
        lambda: cases,
        lambda: healthy,
        "percentile",
        99.0,
        n_bins=1024,
        return_histogram=True,
        subject_histograms=collected,
    )
    assert len(collected) == 3
    np.testing.assert_array_equal(sum(h.lesion_counts for h in collected), hist.lesion_counts)
    np.testing.assert_array_equal(sum(h.nonlesion_counts for h in collected), hist.nonlesion_counts)
    assert resampled_best_dice(collected, np.ones((1, 3)))[0] == pytest.approx(summary["best_dice"])
    plain, _ = evaluate_cohort(lambda: cases, lambda: healthy, "percentile", 99.0, n_bins=1024)
    assert plain == summary


def test_resampled_dice_counts_the_drawn_subjects_misses_outside_the_roi():
    rng = np.random.default_rng(4)
    roi = np.ones(SHAPE, dtype=bool)
    roi[:, :, 12:] = False
    lesions = [lesion_of(rng) for _ in range(4)]
    maps = [np.where(roi, noisy_map(rng, les, 0.3), 0).astype(np.float32) for les in lesions]
    hists = []
    for scores, lesion in zip(maps, lesions, strict=True):
        hist = ScoreHistogram(float(max(m.max() for m in maps)), 4096)
        hist.add(scores, lesion, roi)
        hists.append(hist)
    assert sum(h.n_lesion_outside for h in hists) > 0
    weights = np.array([[2.0, 0.0, 1.0, 1.0]])
    again = ScoreHistogram(hists[0].upper, 4096)
    for index in (0, 0, 2, 3):
        again.merge(hists[index])
    assert resampled_best_dice(hists, weights)[0] == pytest.approx(best_dice(again)[0])


def test_stacked_histograms_give_the_same_interval_in_less_memory():
    own, other = two_methods(0.25, 0.35)
    plain = paired_bootstrap_change(own, other, n_resamples=300, seed=1)
    stacked_own, stacked_other = stack_histograms(own), stack_histograms(other)
    assert paired_bootstrap_change(stacked_own, stacked_other, n_resamples=300, seed=1) == plain
    assert stacked_own.lesion.dtype == np.int32 and len(stacked_own) == len(own)
    full = sum(h.lesion_counts.nbytes + h.nonlesion_counts.nbytes + h.bin_min.nbytes for h in own)
    assert stacked_own.lesion.nbytes + stacked_own.nonlesion.nbytes < full / 3
    with pytest.raises(ValueError, match="histograms or both as counts"):
        paired_bootstrap_change(stacked_own, [{"tp": 1, "fp": 0, "fn": 0}] * len(own))
