import numpy as np
import pytest
import torch
from scipy import ndimage

from arepas.maps import (
    CALIBRATED_METHOD,
    anomaly_maps,
    calibrated_patch_map,
    healthy_patch_scores,
    normalise_per_slice,
    patch_map_dense,
    patch_map_sampled,
    reference_scores_for,
    spread_patch_scores,
)
from arepas.scorer import ScorerSettings, mine_hard_pairs, train_scorer

torch.set_num_threads(1)


def naive_spread(scores, positions, patch_size, shape):
    total = np.zeros(shape)
    count = np.zeros(shape)
    for score, (y, x) in zip(scores, positions, strict=True):
        total[y : y + patch_size, x : x + patch_size] += score
        count[y : y + patch_size, x : x + patch_size] += 1
    return np.divide(total, count, out=np.zeros(shape), where=count > 0)


def test_spread_of_constant_score_is_constant_where_covered():
    positions = np.array([[0, 0], [5, 3], [20, 30]])
    spread = spread_patch_scores(np.full(3, 0.7), positions, 16, (48, 48))
    covered = naive_spread(np.ones(3), positions, 16, (48, 48)) > 0
    np.testing.assert_allclose(spread[covered], 0.7, rtol=1e-6)
    assert np.all(spread[~covered] == 0)
    assert (~covered).any()

    # Grid corners 0, 5, ..., 20 on a 40-pixel side cover 0..35; the last 4 rows/columns are not.
    grid = spread_patch_scores(np.full((5, 5), 0.3), 5, 16, (40, 40))
    np.testing.assert_allclose(grid[:36, :36], 0.3, rtol=1e-6)
    assert np.all(grid[36:, :] == 0) and np.all(grid[:, 36:] == 0)


def test_spread_averages_overlaps_like_the_definition():
    rng = np.random.default_rng(0)
    positions = rng.integers(0, 40 - 16 + 1, (300, 2))
    scores = rng.uniform(size=300)
    np.testing.assert_allclose(
        spread_patch_scores(scores, positions, 16, (40, 40)),
        naive_spread(scores, positions, 16, (40, 40)),
        atol=1e-6,
    )
    for stride in (1, 3):
        corners = np.arange(0, 40 - 16 + 1, stride)
        grid = rng.uniform(size=(2, corners.size, corners.size))
        ys, xs = (g.ravel() for g in np.meshgrid(corners, corners, indexing="ij"))
        expected = [naive_spread(g.ravel(), np.stack([ys, xs], 1), 16, (40, 40)) for g in grid]
        np.testing.assert_allclose(
            spread_patch_scores(grid, stride, 16, (40, 40)), np.stack(expected), atol=1e-6
        )


def test_spread_rejects_positions_outside_the_slice():
    with pytest.raises(ValueError, match="outside"):
        spread_patch_scores(np.ones(1), np.array([[30, 0]]), 16, (40, 40))


def test_normalise_per_slice():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(3, 20, 20)).astype(np.float32)
    roi = np.zeros((3, 20, 20), dtype=bool)
    roi[0, 5:15, 5:15] = True
    roi[1] = True
    maps[0, 0, 0] = 100.0  # outside the ROI: must not set the scale
    out = normalise_per_slice(maps, roi)
    for k in (0, 1):
        assert out[k][roi[k]].min() == 0.0 and out[k][roi[k]].max() == 1.0
        ranked = np.argsort(maps[k][roi[k]])
        assert np.all(np.diff(out[k][roi[k]][ranked]) >= 0)
    assert np.all(out[~roi] == 0)
    assert np.all(out[2] == 0)  # empty ROI
    assert np.all(normalise_per_slice(np.ones((20, 20)), np.ones((20, 20), bool)) == 0)


def test_anomaly_maps_definitions():
    rng = np.random.default_rng(2)
    real = rng.uniform(-1, 1, (2, 24, 24)).astype(np.float32)
    recon = rng.uniform(-1, 1, (2, 24, 24)).astype(np.float32)
    ae = rng.uniform(-1, 1, (2, 24, 24)).astype(np.float32)
    roi = np.zeros((2, 24, 24), dtype=bool)
    roi[:, 4:20, 2:22] = True
    patch = rng.uniform(3, 5, (2, 24, 24))
    maps = anomaly_maps(
        real, recon, roi, patch, ["residual", "patch", "arepas", "ae"], extra_recons={"ae": ae}
    )
    residual = np.abs(recon - real)
    np.testing.assert_allclose(maps["residual"][roi], residual[roi])
    np.testing.assert_allclose(maps["ae"][roi], np.abs(ae - real)[roi])
    # Reference scaling: min-max over the whole slice, outside the ROI included.
    whole = (patch - patch.min(axis=(1, 2), keepdims=True)) / (
        np.ptp(patch, axis=(1, 2), keepdims=True) + 1e-8
    )
    np.testing.assert_allclose(maps["patch"], np.where(roi, whole, 0), rtol=1e-5, atol=1e-6)
    in_roi = anomaly_maps(real, recon, roi, patch, ["patch"], normalise="slice")["patch"]
    np.testing.assert_allclose(in_roi, normalise_per_slice(patch, roi))
    np.testing.assert_allclose(maps["arepas"][roi], (maps["patch"] * residual)[roi], rtol=1e-6)
    for m in maps.values():
        assert m.dtype == np.float32 and np.all(m[~roi] == 0)

    with pytest.raises(ValueError, match="unknown method"):
        anomaly_maps(real, recon, roi, patch, ["vae"])
    with pytest.raises(ValueError, match="need a patch map"):
        anomaly_maps(real, recon, roi, None, ["arepas"])
    assert set(anomaly_maps(real, recon, roi, None, ["residual"])) == {"residual"}


def test_calibrated_patch_score_is_its_quantile_among_healthy_scores():
    roi = np.zeros((1, 4, 4), dtype=bool)
    roi[0, :2] = True
    healthy = healthy_patch_scores(np.arange(16, dtype=np.float32).reshape(1, 4, 4) / 10, roi)
    np.testing.assert_array_equal(healthy, np.arange(8, dtype=np.float32) / 10)
    raw = np.full((1, 4, 4), 0.35, dtype=np.float32)
    raw[0, 0, :4] = [-1.0, 0.0, 0.7, 5.0]
    calibrated = calibrated_patch_map(raw, roi, healthy)
    # Below every healthy score 0, at or above the highest 1, between: the fraction at or below.
    np.testing.assert_allclose(calibrated[0, 0], [0.0, 1 / 8, 1.0, 1.0])
    np.testing.assert_allclose(calibrated[0, 1], 4 / 8)
    assert not calibrated[~roi].any()
    # Monotone in the raw score, whatever the slice: no per-slice rescaling.
    order = np.argsort(raw[roi], kind="stable")
    assert np.all(np.diff(calibrated[roi][order]) >= 0)
    with pytest.raises(ValueError, match="sorted"):
        calibrated_patch_map(raw, roi, healthy[::-1])
    with pytest.raises(ValueError, match="non-empty"):
        calibrated_patch_map(raw, roi, np.empty(0))


def test_calibrated_map_of_a_healthy_subject_leaves_out_its_own_scores():
    scores = [np.array([1.0, 3.0]), np.array([2.0]), np.array([0.5, 4.0])]
    subjects = ["v1", "v2", "v3"]
    np.testing.assert_array_equal(reference_scores_for("v2", subjects, scores), [0.5, 1, 3, 4])
    np.testing.assert_array_equal(
        reference_scores_for("test1", subjects, scores), [0.5, 1, 2, 3, 4]
    )
    with pytest.raises(ValueError, match="no healthy patch scores to calibrate subject 'v1'"):
        reference_scores_for("v1", ["v1"], [np.array([1.0])])


def test_calibrated_arepas_is_the_calibrated_patch_score_times_the_residual():
    rng = np.random.default_rng(5)
    real = rng.uniform(-1, 1, (2, 16, 16)).astype(np.float32)
    recon = rng.uniform(-1, 1, (2, 16, 16)).astype(np.float32)
    roi = np.zeros((2, 16, 16), dtype=bool)
    roi[:, 3:13, 2:14] = True
    patch = rng.uniform(0, 1, (2, 16, 16)).astype(np.float32)
    healthy = np.sort(rng.uniform(0, 0.8, 500)).astype(np.float32)
    maps = anomaly_maps(
        real, recon, roi, patch, ["arepas", CALIBRATED_METHOD], healthy_scores=healthy
    )
    expected = calibrated_patch_map(patch, roi, healthy) * np.abs(recon - real)
    np.testing.assert_allclose(maps[CALIBRATED_METHOD], np.where(roi, expected, 0), rtol=1e-6)
    # Unlike the reference, a slice whose patch scores are all low for healthy tissue stays low.
    low = patch.copy()
    low[1] *= 0.1
    low_maps = anomaly_maps(
        real, recon, roi, low, ["arepas", CALIBRATED_METHOD], healthy_scores=healthy
    )
    assert low_maps[CALIBRATED_METHOD][1].max() < 0.5 * maps[CALIBRATED_METHOD][1].max()
    np.testing.assert_allclose(low_maps["arepas"][1], maps["arepas"][1], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="needs healthy patch scores"):
        anomaly_maps(real, recon, roi, patch, [CALIBRATED_METHOD])


def test_median_filter_removes_isolated_spikes():
    real = np.zeros((1, 20, 20), np.float32)
    recon = real.copy()
    recon[0, 10, 10] = 1.0  # a single-pixel spike
    recon[0, 2:8, 2:8] = 0.5  # a blob larger than the filter
    roi = np.ones_like(real, dtype=bool)
    raw = anomaly_maps(real, recon, roi, None, ["residual"])["residual"]
    filtered = anomaly_maps(real, recon, roi, None, ["residual"], median_size=3)["residual"]
    assert raw[0, 10, 10] == 1.0 and filtered[0, 10, 10] == 0.0
    assert filtered[0, 4, 4] == pytest.approx(0.5)


# ---- a lesion against a healthy-but-badly-reconstructed region, with a trained scorer ----


def smooth_slices(rng, n, size=64):
    field = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 2, 2))
    return (0.8 * field / np.abs(field).max(axis=(1, 2), keepdims=True)).astype(np.float32)


def imperfect_reconstruction(rng, real):
    """Same structure, pixel-level error: blur, a smooth intensity bias and noise."""
    bias = ndimage.gaussian_filter(rng.normal(size=real.shape), sigma=(0, 8, 8))
    bias = 0.25 * bias / np.abs(bias).max(axis=(1, 2), keepdims=True)
    recon = ndimage.gaussian_filter(real, sigma=(0, 1, 1)) + bias + rng.normal(0, 0.05, real.shape)
    return np.clip(recon, -1, 1).astype(np.float32)


SCORER_VARIANTS = {
    "reference": {},
    "ours": {"architecture": "unpadded", "loss": "detached_head"},
}


@pytest.fixture(scope="module", params=sorted(SCORER_VARIANTS))
def trained_scorer(request):
    rng = np.random.default_rng(0)
    real = smooth_slices(rng, 30)
    recon = imperfect_reconstruction(rng, real)
    settings = ScorerSettings(
        slice_step=1, epochs=5, batch_size=256, **SCORER_VARIANTS[request.param]
    )
    pairs = mine_hard_pairs(real, recon, settings, rng)
    model, history = train_scorer(
        pairs["patches_a"], pairs["patches_b"], pairs["labels"], settings, 0, lambda _: None
    )
    assert history["heldout_acc"].max() > 0.9
    model.variant = request.param
    return model


@pytest.fixture(scope="module")
def lesion_case():
    healthy = smooth_slices(np.random.default_rng(100), 1)
    recon = imperfect_reconstruction(np.random.default_rng(200), healthy)
    yy, xx = np.mgrid[:64, :64]
    lesion = (yy - 20) ** 2 + (xx - 20) ** 2 <= 7**2
    # A region the reconstruction gets structurally right but 0.35 too bright: large residual,
    # nothing abnormal. Residual maps flag it; the patch scorer should not.
    misfit = (yy >= 36) & (yy < 56) & (xx >= 36) & (xx < 56)
    real = healthy.copy()
    real[0, lesion] = 0.9  # a bright homogeneous lesion the reconstruction does not show
    recon[0, misfit] += 0.35
    return real, recon, np.ones_like(real, dtype=bool), lesion, misfit


def test_arepas_scores_a_lesion_above_healthy_tissue(trained_scorer, lesion_case):
    real, recon, roi, lesion, misfit = lesion_case
    patch = patch_map_dense(trained_scorer, real, recon, roi, stride=1)
    maps = anomaly_maps(real, recon, roi, patch, ["residual", "patch", "arepas"])
    arepas, residual, patch = maps["arepas"][0], maps["residual"][0], maps["patch"][0]
    assert arepas[lesion].mean() > 5 * arepas[~lesion].mean()
    # The semantic patch score is what separates the lesion from the misfit healthy region
    # better than the residual does. Measured on this case: the reference scorer 1.22 (patch
    # lesion / misfit) and 1.22 (contrast over the residual's), ours (unpadded, detached head)
    # 2.05 and 2.04.
    margin = 1.15 if trained_scorer.variant == "reference" else 1.5
    assert patch[lesion].mean() > margin * patch[misfit].mean()
    arepas_contrast = arepas[lesion].mean() / arepas[misfit].mean()
    residual_contrast = residual[lesion].mean() / residual[misfit].mean()
    assert arepas_contrast > margin * residual_contrast


def test_dense_and_sampled_patch_maps_agree(trained_scorer, lesion_case):
    real, recon, roi, _, _ = lesion_case
    dense = patch_map_dense(trained_scorer, real, recon, roi, stride=1)
    sampled = patch_map_sampled(trained_scorer, real, recon, roi, n_patches=10000)
    both = (dense > 0) & (sampled > 0)
    assert both.mean() > 0.9
    assert np.corrcoef(dense[both], sampled[both])[0, 1] > 0.95
    strided = patch_map_dense(trained_scorer, real, recon, roi, stride=4)
    assert np.corrcoef(dense[both], strided[both])[0, 1] > 0.95


def test_patch_map_scaling_per_slice_per_volume_or_none():
    from arepas.maps import normalise_patch_map

    maps = np.stack([np.full((8, 8), 0.2, np.float32), np.full((8, 8), 0.6, np.float32)])
    maps[0, 0, 0], maps[1, 0, 0] = 0.1, 0.9
    roi = np.ones(maps.shape, bool)
    per_slice = normalise_patch_map(maps, roi, "slice")
    per_volume = normalise_patch_map(maps, roi, "volume")
    # Per slice, each slice's own maximum becomes 1, so the weak slice is lifted as high as
    # the strong one; over the volume the strong slice stays stronger.
    assert per_slice[0].max() == per_slice[1].max() == 1.0
    assert per_volume[1].max() == 1.0 and per_volume[0].max() == pytest.approx(0.125)
    np.testing.assert_allclose(normalise_patch_map(maps, roi, "none"), maps)
    roi[1] = False
    assert np.all(normalise_patch_map(maps, roi, "volume")[1] == 0)
    with pytest.raises(ValueError, match="unknown patch map normalisation"):
        normalise_patch_map(maps, roi, "subject")


def test_reference_scaling_divides_by_the_slice_maximum():
    from arepas.maps import normalise_patch_map, spread_patch_scores

    # Two patches on a 10x10 slice leave pixels uncovered (0), so the minimum is 0.
    spread = spread_patch_scores(np.array([0.4, 0.8]), np.array([[0, 0], [4, 4]]), 4, (10, 10))
    assert spread[9, 0] == 0
    roi = np.zeros((10, 10), bool)
    roi[:5, :5] = True  # the larger score lies mostly outside the ROI and still sets the scale
    scaled = normalise_patch_map(spread[None], roi[None], "reference")[0]
    np.testing.assert_allclose(scaled[roi], (spread / 0.8)[roi], rtol=1e-6)
    assert np.all(scaled[~roi] == 0)
    assert scaled[0, 0] == pytest.approx(0.5)


def test_sampled_map_uses_one_draw_from_seed_42_on_every_slice(trained_scorer, lesion_case):
    from arepas.maps import patch_map_sampled

    real, recon, roi, _, _ = lesion_case
    two_real = np.concatenate([real, real])
    two_recon = np.concatenate([recon, recon])
    fixed = patch_map_sampled(
        trained_scorer, two_real, two_recon, np.ones_like(two_real, bool), 200
    )
    # The same draw on both slices, and the reference's seed by default.
    np.testing.assert_array_equal(fixed[0], fixed[1])
    seeded = patch_map_sampled(
        trained_scorer, real, recon, roi, 200, rng=np.random.default_rng(42), normalise=None
    )
    default = patch_map_sampled(trained_scorer, real, recon, roi, 200, normalise=None)
    np.testing.assert_array_equal(seeded, default)
    per_slice = patch_map_sampled(
        trained_scorer,
        two_real,
        two_recon,
        np.ones_like(two_real, bool),
        200,
        positions="per_slice",
    )
    assert not np.array_equal(per_slice[0] > 0, per_slice[1] > 0)
