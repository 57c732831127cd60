import numpy as np
import pytest
from scipy import ndimage

from arepas import preprocessing as prep


def _smooth_volume(shape, seed=0):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), 3).astype(np.float32) * 100


def _affine(spacing, flips=(1, 1, 1), angle_deg=0.0, origin=(0, 0, 0)):
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(np.array(spacing) * np.array(flips))
    aff[:3, 3] = origin
    return aff


@pytest.mark.parametrize("flips,angle", [((1, 1, 1), 0.0), ((-1, -1, 1), 0.0), ((-1, 1, -1), 12.0)])
def test_native_working_native_round_trip(flips, angle):
    shape = (40, 36, 24)
    native_affine = _affine((2.0, 2.2, 3.0), flips, angle, origin=(5, -7, 11))
    volume = _smooth_volume(shape)
    w_shape, w_affine = prep.working_grid(shape, native_affine, (1.0, 1.0, 1.5))
    working = prep.resample(volume, native_affine, w_shape, w_affine)
    back = prep.resample(working, w_affine, shape, native_affine)
    inner = (slice(3, -3),) * 3  # edges lose interpolation support
    err = np.abs(back[inner] - volume[inner])
    assert err.max() < 0.05 * np.abs(volume).max()
    # The working grid is RAS-aligned at the requested spacing.
    assert np.allclose(w_affine[:3, :3], np.diag([1.0, 1.0, 1.5]))


def test_known_voxel_lands_at_the_same_world_point():
    shape = (30, 30, 20)
    native_affine = _affine((2.0, 2.0, 4.0), (-1, -1, 1), 0.0, origin=(60, 60, -40))
    volume = np.zeros(shape, np.float32)
    volume[10, 12, 8] = 1.0
    w_shape, w_affine = prep.working_grid(shape, native_affine, (2.0, 2.0, 4.0))
    working = prep.resample(volume, native_affine, w_shape, w_affine, order=0)
    peak = np.array(np.unravel_index(working.argmax(), w_shape))
    world_native = native_affine @ [10, 12, 8, 1]
    world_working = w_affine @ [*peak, 1]
    assert np.allclose(world_native, world_working, atol=1e-3)


def _toy_thorax(where: str):
    shape = (80, 64, 20)
    z = np.zeros(shape, bool)
    xx, yy = np.meshgrid(np.arange(80), np.arange(64), indexing="ij")
    body = ((xx - 40) / 36) ** 2 + ((yy - 32) / 28) ** 2 < 1
    left = ((xx - 24) / 12) ** 2 + ((yy - 32) / 18) ** 2 < 1
    right = ((xx - 56) / 12) ** 2 + ((yy - 32) / 18) ** 2 < 1
    hu = np.full(shape, -1000.0, np.float32)
    hu[body] = 40.0
    hu[left | right] = -850.0
    lesion = z.copy()
    centre = {"pleura": 14, "inside": 26}[where]
    blob = ((xx - centre) / 5) ** 2 + ((yy - 32) / 6) ** 2 < 1
    lesion[:, :, 5:15] = (blob & left)[:, :, None]
    hu[lesion] = 20.0  # consolidation: soft-tissue density
    return hu, lesion


def test_lung_mask_two_lungs_and_keeps_an_inserted_consolidation():
    hu, lesion = _toy_thorax("inside")
    mask = prep.lung_mask(hu, (2.0, 2.0, 5.0), closing_mm=20)
    labels, n = ndimage.label(mask)
    assert n == 2
    assert mask[lesion].all(), "a consolidation inside the lung must stay inside the lung mask"
    # At the pleura a threshold mask cannot tell a consolidation from the chest wall; the
    # closing recovers most of it (a known limit of threshold lung masks, see README).
    hu, lesion = _toy_thorax("pleura")
    mask = prep.lung_mask(hu, (2.0, 2.0, 5.0), closing_mm=20)
    assert mask[lesion].mean() > 0.7
    # Air outside the body is never lung.
    assert not mask[0].any() and not mask[:, 0].any()


def test_normalisation_ranges():
    hu = np.linspace(-2000, 1000, 1000, dtype=np.float32).reshape(10, 10, 10)
    ct = prep.normalise_ct(hu, (-1000, 200))
    assert ct.min() == -1 and ct.max() == 1
    assert ct[hu <= -1000].max() == -1 and ct[hu >= 200].min() == 1
    mri = np.random.default_rng(0).gamma(2.0, 100.0, (20, 20, 20)).astype(np.float32)
    roi = np.zeros(mri.shape, bool)
    roi[5:15, 5:15, 5:15] = True
    out = prep.normalise(mri, roi, "mri", {"percentiles": [1, 99]})
    assert out.min() >= -1 and out.max() <= 1
    assert np.all(out[~roi] == -1)
    inside = out[roi]
    assert abs(np.mean(inside <= -1 + 1e-6) - 0.01) < 0.01
    assert abs(np.mean(inside >= 1 - 1e-6) - 0.01) < 0.01


def test_lower_half_ct_mapping_is_the_reference_notebooks_stretch():
    """The reference notebook, on slices already in [-1, 1]: x[x > 0] = 0, then 2x + 1."""
    hu = np.linspace(-1500, 800, 2301, dtype=np.float32)
    reference = prep.normalise_ct(hu, (-1000, 200)).copy()
    reference[reference > 0] = 0
    reference = 2 * reference + 1
    ours = prep.normalise_ct(hu, (-1000, 200), "lower_half")
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    # [-1000, -400] HU spans the range; denser tissue is flat white.
    assert ours[hu == -1000] == -1 and ours[hu == -400] == 1 and ours[hu > -400].min() == 1
    with pytest.raises(ValueError, match="lower_half"):
        prep.normalise_ct(hu, (-1000, 200), "upper")


def test_ct_mapping_is_refused_for_mri():
    with pytest.raises(ValueError, match="ct_mapping"):
        prep.bias_correction_settings("mri", {"ct_mapping": "lower_half"}, "brain")


def test_slices_extract_and_assemble_round_trip():
    shape = (50, 40, 12)
    roi = np.zeros(shape, bool)
    roi[10:40, 8:30, 2:10] = True
    volume = _smooth_volume(shape, 1)
    geometry = prep.slice_geometry(roi, axis=2, size=32)
    indices = prep.roi_slice_indices(roi, 2)
    assert indices.tolist() == list(range(2, 10))
    slices = prep.extract_slices(volume, geometry, indices, fill=0.0)
    assert slices.shape == (8, 32, 32)
    back = prep.assemble_volume(slices, indices, geometry)
    inner = roi.copy()
    inner[:12], inner[38:], inner[:, :10], inner[:, 28:] = False, False, False, False
    assert np.corrcoef(back[inner], volume[inner])[0, 1] > 0.98
    assert np.all(back[:, :, :2] == 0)
    assert prep.SliceGeometry.from_array(geometry.as_array()) == geometry


def _biased_brain(shape=(40, 48, 40), spacing=3.0):
    """A T1-like toy brain: an inner class (100) inside an outer one (60), times a smooth bias
    field of about -30 %..+28 %, with 1 % noise; returns image, affine, brain mask, classes."""
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -spacing * (np.array(shape) - 1) / 2
    world = [(np.arange(n) - (n - 1) / 2) * spacing for n in shape]
    x, y, z = np.meshgrid(*world, indexing="ij")
    radius = np.sqrt((x / 55) ** 2 + (y / 65) ** 2 + (z / 55) ** 2)
    brain, inner = radius < 1.0, radius < 0.6
    tissue = np.where(inner, 100.0, np.where(brain, 60.0, 0.0))
    u, v, w = x / 60, y / 60, z / 60
    bias = np.exp(0.25 * u - 0.15 * v + 0.1 * w + 0.12 * u * v - 0.1 * w**2)
    noise = np.random.default_rng(0).normal(0.0, 1.0, shape)
    image = (tissue * bias + noise).astype(np.float32)
    return image, affine, brain, [inner, brain & ~inner]


def _spread(image, classes):
    """Coefficient of variation of each tissue class."""
    return [float(image[c].std() / image[c].mean()) for c in classes]


def test_n4_removes_a_smooth_bias_field_and_repeats_exactly():
    image, affine, brain, classes = _biased_brain()
    bias = prep.bias_correction_settings("mri", {})
    assert bias == {"method": "n4", "shrink_factor": 4}
    corrected, facts = prep.correct_bias(image, affine, brain, bias)
    before, after = _spread(image, classes), _spread(corrected, classes)
    # Measured: 0.080 -> 0.015 and 0.145 -> 0.025; the noise (1 %) is the floor.
    for b, a in zip(before, after, strict=True):
        assert a < 0.5 * b, (before, after)
    lo, hi = facts["field_range_in_mask"]
    assert facts["method"] == "n4" and lo < 0.9 and hi > 1.1
    # Same input, same output, to the bit (one ITK thread).
    again, _ = prep.correct_bias(image, affine, brain, bias)
    assert np.array_equal(again, corrected)


def test_no_bias_correction_leaves_the_image_untouched():
    image, affine, brain, _ = _biased_brain((12, 12, 12))
    bias = prep.bias_correction_settings("mri", {"bias_correction": "none"})
    out, facts = prep.correct_bias(image, affine, brain, bias)
    assert out is image and facts == {"method": "none"}
    assert prep.bias_correction_settings("ct", {"window": [-1000, 200]}) == {"method": "none"}


def test_ct_refuses_n4_naming_the_dataset_and_key():
    with pytest.raises(ValueError, match=r"datasets\.lung_ct\.intensity\.bias_correction") as e:
        prep.bias_correction_settings("ct", {"bias_correction": "n4"}, "lung_ct")
    assert "MRI only" in str(e.value) and "'lung_ct'" in str(e.value)
    with pytest.raises(ValueError, match=r"datasets\.brain\.intensity\.n4_shrink_factor"):
        prep.bias_correction_settings("mri", {"n4_shrink_factor": 0}, "brain")
    # The subject step refuses it too, before any work on the scan.
    from arepas import pipeline

    settings = {"modality": "ct", "spacing": [2, 2, 2], "slice_size": 32}
    settings["intensity"] = {"bias_correction": "n4"}
    hu = np.full((8, 8, 8), -1000.0, np.float32)
    with pytest.raises(ValueError, match=r"datasets\.lung_ct\.intensity\.bias_correction"):
        pipeline.preprocess_subject(
            "s", {"image": "s.nii"}, hu, np.eye(4), None, None, settings, dataset="lung_ct"
        )


def test_preprocess_subject_runs_n4_on_mri_and_records_it():
    from arepas import pipeline

    image, affine, brain, _ = _biased_brain((24, 28, 24), 5.0)
    settings = {"modality": "mri", "spacing": [5, 5, 5], "slice_size": 32}
    results = {}
    for method in ("n4", "none"):
        settings["intensity"] = {"percentiles": [1, 99], "bias_correction": method}
        results[method] = pipeline.preprocess_subject(
            "s", {"image": "s.nii"}, image, affine, None, brain, settings, dataset="brain"
        )
    recorded = results["n4"]["mapping"]["bias_correction"]
    assert recorded["method"] == "n4" and recorded["mask"] == "roi"
    assert recorded["shrink_factor"] == 4
    assert results["none"]["mapping"]["bias_correction"] == {"method": "none"}
    roi = results["none"]["roi"]
    assert not np.array_equal(results["n4"]["working"][roi], results["none"]["working"][roi])


def test_schema_takes_the_bias_correction_keys():
    from pathlib import Path

    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    schema = str(Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml")
    dataset = {"modality": "mri", "spacing": [3, 3, 3], "slice_size": 64}
    dataset["intensity"] = {"bias_correction": "n4", "n4_shrink_factor": 2}
    config = {"subjects": "s.tsv", "datasets": {"brain": dataset}}
    validate(config, schema)
    # Old configs keep working: nothing is added to `intensity`, the code fills the defaults.
    dataset["intensity"] = {"percentiles": [1, 99]}
    validate(config, schema)
    assert dataset["intensity"] == {"percentiles": [1, 99]}
    dataset["intensity"] = {"bias_correction": "n3"}
    with pytest.raises(WorkflowError, match="n3"):
        validate(config, schema)
