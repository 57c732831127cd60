"""Post-processing: the median filter cleans salt noise and keeps lesion blobs; component removal
equals removing small components of the binary mask at every threshold; baselines are compared
post-processed."""

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from arepas.metrics import ScoreHistogram, best_dice, relative_dice_change
from arepas.postprocess import (
    PostprocessSettings,
    base_method,
    evaluated_methods,
    median_per_slice,
    remove_small_components,
)

FULL = np.ones((3, 3, 3), dtype=bool)


def salt_and_blob(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(maps, lesion, roi): a 9x9x4 lesion of score 1 and 2 % isolated salt pixels of score 1."""
    rng = np.random.default_rng(seed)
    shape = (8, 48, 48)
    roi = np.zeros(shape, dtype=bool)
    roi[:, 4:44, 4:44] = True
    lesion = np.zeros(shape, dtype=bool)
    lesion[2:6, 20:29, 20:29] = True
    maps = rng.uniform(0.0, 0.2, shape).astype(np.float32)
    maps[rng.random(shape) < 0.02] = 1.0
    maps[lesion] = 1.0
    return np.where(roi, maps, 0.0).astype(np.float32), lesion, roi


def test_median_removes_salt_noise_and_keeps_the_lesion():
    maps, lesion, roi = salt_and_blob()
    filtered = median_per_slice(maps, roi, 5)
    salt = (maps == 1.0) & ~lesion
    assert salt.sum() > 100
    # Isolated salt pixels fall to the background level; the lesion core keeps its score.
    assert filtered[salt].max() <= 0.2
    core = ndimage.binary_erosion(lesion, structure=np.ones((1, 5, 5), bool))
    assert np.all(filtered[core] == 1.0)
    assert np.all(filtered[~roi] == 0)

    # The lesion becomes separable: best Dice rises from the salt-limited value to about 1.
    def dice(m):
        hist = ScoreHistogram(1.0, 1024)
        hist.add(m, lesion, roi)
        return best_dice(hist)[0]

    n_lesion, n_salt = int(lesion.sum()), int((salt & roi).sum())
    assert dice(maps) == pytest.approx(2 * n_lesion / (2 * n_lesion + n_salt))
    assert dice(maps) < 0.75
    assert dice(filtered) > 0.9


def test_median_size_zero_or_one_only_cuts_to_the_roi():
    maps, _, roi = salt_and_blob()
    for size in (0, 1):
        np.testing.assert_array_equal(median_per_slice(maps, roi, size), maps)


def brute_force_component_filter(volume: np.ndarray, threshold: float, min_voxels: int):
    mask = volume >= threshold
    labels, _ = ndimage.label(mask, structure=FULL)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[labels]


@pytest.mark.parametrize("min_voxels", [2, 5, 30])
def test_component_removal_equals_the_binary_filter_at_every_threshold(min_voxels):
    rng = np.random.default_rng(min_voxels)
    volume = ndimage.gaussian_filter(rng.random((10, 24, 24)), 1.0).astype(np.float32)
    volume -= volume.min()
    opened = remove_small_components(volume, min_voxels)
    assert np.all(opened <= volume)
    for threshold in np.unique(volume)[:: max(1, volume.size // 300)]:
        expected = brute_force_component_filter(volume, threshold, min_voxels)
        np.testing.assert_array_equal(opened >= threshold, expected)


def test_component_removal_drops_specks_and_keeps_a_lesion_blob():
    volume = np.zeros((12, 20, 20), dtype=np.float32)
    volume[3:6, 3:6, 3:6] = 0.9  # 27 voxels
    volume[9, 15, 15] = volume[9, 15, 16] = 0.95  # a 2-voxel speck, brighter than the blob
    volume[0, 0, 0] = 0.5  # a single voxel
    opened = remove_small_components(volume, 5)
    np.testing.assert_array_equal(opened[3:6, 3:6, 3:6], np.float32(0.9))
    assert opened[9, 15, 15] == opened[9, 15, 16] == opened[0, 0, 0] == 0
    # Diagonal neighbours are connected (26-connectivity), as lesions are counted.
    diagonal = np.zeros((5, 5, 5), dtype=np.float32)
    for k in range(5):
        diagonal[k, k, k] = 1.0
    np.testing.assert_array_equal(remove_small_components(diagonal, 5), diagonal)
    np.testing.assert_array_equal(remove_small_components(volume, 0), volume)


def test_settings_name_the_variants_and_refuse_bad_values():
    settings = PostprocessSettings.from_dict({"median_size": 5})
    assert evaluated_methods(["arepas", "residual"], settings) == [
        "arepas",
        "residual",
        "arepas+pp",
        "residual+pp",
    ]
    off = PostprocessSettings.from_dict({"median_size": 0, "min_component_voxels": 0})
    assert evaluated_methods(["arepas"], off) == ["arepas"]
    assert PostprocessSettings(median_size=0, min_component_voxels=8).active
    assert base_method("residual+pp") == "residual" == base_method("residual")
    with pytest.raises(ValueError, match="median"):
        PostprocessSettings.from_dict({"median": 5})
    with pytest.raises(ValueError, match="min_component_voxels"):
        PostprocessSettings(min_component_voxels=-1)


def test_best_other_method_includes_post_processed_baselines_but_not_own_variants():
    table = pd.DataFrame(
        {
            "dataset": ["d"] * 5,
            "method": ["arepas", "arepas+pp", "residual", "residual+pp", "ae"],
            "best_dice": [0.50, 0.70, 0.40, 0.60, 0.30],
        }
    )
    raw = relative_dice_change(table, "arepas").iloc[0]
    assert raw["best_other"] == "residual+pp"
    assert raw["relative_change"] == pytest.approx(0.5 / 0.6 - 1)
    filtered = relative_dice_change(table, "arepas+pp").iloc[0]
    assert filtered["best_other"] == "residual+pp"
    assert filtered["relative_change"] == pytest.approx(0.7 / 0.6 - 1)
    # Members of the AREPAS family are measured against the baselines, not against each other.
    family = pd.concat([table, pd.DataFrame(
        {"dataset": ["d"] * 2, "method": ["arepas_calibrated", "arepas_v0+pp"],
         "best_dice": [0.66, 0.90]}
    )], ignore_index=True)
    calibrated = relative_dice_change(family, "arepas_calibrated").iloc[0]
    assert calibrated["best_other"] == "residual+pp"
    assert calibrated["relative_change"] == pytest.approx(0.66 / 0.6 - 1)
    assert relative_dice_change(family, "arepas").iloc[0]["best_other"] == "residual+pp"
    # A baseline's best other method is still the best of all others, AREPAS included.
    assert relative_dice_change(family, "residual").iloc[0]["best_other"] == "arepas_v0+pp"
