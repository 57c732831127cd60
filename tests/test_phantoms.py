import json
import math

import numpy as np
import pytest
from scipy import ndimage

from arepas import phantoms

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the phantoms themselves do not need torch
    pass

# Small grids keep the file fast; the anatomy does not depend on the grid.
FOV = (300.0, 240.0, 220.0)
SPACING = (3.5, 3.5, 6.0)


def _grid(orientation="RAS", seed=0, fov=FOV, spacing=SPACING, **kw):
    return phantoms.native_grid(np.random.default_rng(seed), fov, spacing, orientation, **kw)


@pytest.fixture(scope="module")
def ras_grid():
    return _grid("RAS")


@pytest.fixture(scope="module")
def healthy_ct(ras_grid):
    return phantoms.lung_ct_phantom(5, *ras_grid, lesions=False)


@pytest.fixture(scope="module")
def sick_ct(ras_grid):
    return {seed: phantoms.lung_ct_phantom(seed, *ras_grid, lesions=True) for seed in (3, 5, 8)}


@pytest.fixture(scope="module")
def mni():
    return phantoms.load_mni152()


@pytest.fixture(scope="module")
def brain_grid():
    return _grid("RAS", fov=(180.0, 216.0, 180.0), spacing=(3.0, 3.0, 3.0),
                 center_mm=(0.0, -18.0, 18.0))


def _world_centres(shape, affine):
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


# Grids -------------------------------------------------------------------------------------


def test_native_grid_shapes_centres_and_orientations():
    shape, ras = _grid("RAS", center_mm=(10.0, -5.0, 3.0))
    assert shape == (86, 69, 37)
    assert np.allclose(np.diag(ras)[:3], SPACING)
    centre = ras[:3, :3] @ ((np.array(shape) - 1) / 2) + ras[:3, 3]
    assert np.allclose(centre, (10.0, -5.0, 3.0))

    shape_lps, lps = _grid("LPS", center_mm=(10.0, -5.0, 3.0))
    assert shape_lps == shape
    assert np.allclose(np.diag(lps)[:3], np.array(SPACING) * [-1, -1, 1])
    # Same voxel centres, listed in another order.
    a = _world_centres(shape, ras)
    b = _world_centres(shape, lps)
    assert np.allclose(np.sort(a, axis=0), np.sort(b, axis=0))

    _, oblique = _grid("oblique", seed=4, max_oblique_deg=10.0)
    rotation = oblique[:3, :3] / np.array(SPACING)
    assert np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-9)
    angle = math.degrees(math.acos(np.clip((np.trace(rotation) - 1) / 2, -1, 1)))
    assert 0.0 < angle <= 10.0 + 1e-9

    with pytest.raises(ValueError):
        _grid("RAI")


# Chest CT ----------------------------------------------------------------------------------


def test_lung_phantom_is_deterministic(ras_grid, healthy_ct):
    again = phantoms.lung_ct_phantom(5, *ras_grid, lesions=False)
    assert np.array_equal(again.image, healthy_ct.image)
    assert again.info == healthy_ct.info
    other = phantoms.lung_ct_phantom(6, *ras_grid, lesions=False)
    assert np.mean(np.abs(other.image - healthy_ct.image)) > 20.0
    assert healthy_ct.image.dtype == np.float32 and healthy_ct.lesion.dtype == np.uint8
    assert healthy_ct.image.shape == healthy_ct.lesion.shape == ras_grid[0]
    assert not healthy_ct.lesion.any() and healthy_ct.info["lesion_count"] == 0
    json.dumps(healthy_ct.info)  # info goes into logs and sidecars


def test_lung_phantom_intensities_follow_anatomy(healthy_ct):
    img, lungs = healthy_ct.image, healthy_ct.roi
    assert 0.05 < lungs.mean() < 0.5
    assert -905.0 < np.median(img[lungs]) < -795.0  # about -850, +-50 with inspiration
    # Air around the patient.
    corners = np.concatenate([img[:4, :4].ravel(), img[-4:, -4:].ravel()])
    assert abs(np.median(corners) + 1000.0) < 5.0
    # Body outside the lungs: fat, muscle, organs and bone, nothing lung-like.
    body = np.stack([ndimage.binary_fill_holes(img[:, :, k] > -400) for k in range(img.shape[2])],
                    axis=2)
    body &= ~ndimage.binary_dilation(lungs, iterations=2)
    assert np.median(img[body]) > -200.0
    assert np.mean(img[body] > -200.0) > 0.85
    assert np.percentile(img[body], 99.5) > 400.0  # spine and ribs


def test_lungs_hold_thin_branching_vessels(healthy_ct):
    img, lungs = healthy_ct.image, healthy_ct.roi
    bright = lungs & (img > -500.0)
    assert 0.01 < bright.mean() / lungs.mean() < 0.10
    # Many separate, mostly thin structures: few bright voxels survive an in-plane opening.
    opened = ndimage.binary_opening(bright, structure=np.ones((3, 3, 1), bool))
    assert opened.sum() < 0.5 * bright.sum()
    assert ndimage.label(bright)[1] > 30
    # Faint partial-volume lines: many lung voxels well above parenchyma but below blood.
    faint = lungs & (img > -700.0) & (img < -500.0)
    assert faint.sum() > 0.5 * bright.sum()


def test_lung_lesions_are_inside_the_lungs_with_published_densities(sick_ct):
    kinds = set()
    for ph in sick_ct.values():
        assert ph.lesion.any()
        assert not (ph.lesion.astype(bool) & ~ph.roi).any()
        info = ph.info
        assert 1 <= info["lesion_count"] <= 6 and len(info["lesions"]) == info["lesion_count"]
        json.dumps(info)
        centres = _world_centres(ph.image.shape, ph.affine).reshape(*ph.image.shape, 3)
        for les in info["lesions"]:
            kinds.add(les["kind"])
            near = np.linalg.norm(centres - les["centre_mm"], axis=-1) < 0.75 * les["diameter_mm"]
            voxels = ph.image[near & ph.lesion.astype(bool)]
            if voxels.size < 5:
                continue
            if les["kind"] == "ground_glass":
                assert -750.0 < voxels.mean() < -250.0
            else:
                assert voxels.mean() > -400.0
    assert kinds == {"ground_glass", "consolidation"}


def test_lesions_blend_into_the_same_subject(ras_grid, sick_ct):
    seed = 3
    healthy = phantoms.lung_ct_phantom(seed, *ras_grid, lesions=False)
    sick = sick_ct[seed]
    assert np.array_equal(healthy.roi, sick.roi)
    changed = np.abs(sick.image - healthy.image) > 1.0
    assert changed.any()
    # Changes stay within reach of a lesion's (soft, irregular) border, mostly next to its mask.
    centres = _world_centres(sick.image.shape, sick.affine).reshape(*sick.image.shape, 3)
    reach = np.zeros(sick.image.shape, bool)
    for les in sick.info["lesions"]:
        reach |= np.linalg.norm(centres - les["centre_mm"], axis=-1) < les["diameter_mm"] + 6.0
    assert not (changed & ~reach).any()
    near_mask = ndimage.binary_dilation(sick.lesion.astype(bool), iterations=2)
    assert (changed & near_mask).sum() > 0.8 * changed.sum()
    # Ground glass adds fluid to air spaces: it never darkens a voxel (an overwrite would darken
    # vessels brighter than its target) and lifts air-filled parenchyma more than vessels.
    ggo = np.zeros(sick.image.shape, bool)
    target = np.zeros(sick.image.shape, np.float32)
    for les in sick.info["lesions"]:
        if les["kind"] == "ground_glass":
            here = np.linalg.norm(centres - les["centre_mm"], axis=-1) < 0.75 * les["diameter_mm"]
            ggo |= here
            target[here] = les["target_hu"]
    ggo &= sick.lesion.astype(bool)
    rise = sick.image - healthy.image  # the noise is the same in both and cancels
    vessels = ggo & (healthy.image > target + 60.0)
    parenchyma = ggo & (healthy.image < -780.0)
    assert vessels.sum() >= 3 and parenchyma.sum() >= 50
    assert rise[ggo].min() > -0.5
    assert rise[parenchyma].mean() > 150.0
    assert rise[vessels].mean() < 0.7 * rise[parenchyma].mean()
    assert np.median(sick.image[vessels]) > np.median(sick.image[parenchyma]) + 100.0


def test_ras_and_lps_grids_give_the_same_world_image():
    ras = phantoms.lung_ct_phantom(11, *_grid("RAS"), lesions=True)
    lps = phantoms.lung_ct_phantom(11, *_grid("LPS"), lesions=True)
    flipped = lps.image[::-1, ::-1, :]
    assert np.allclose(flipped, ras.image, atol=0.5)
    assert np.array_equal(lps.lesion[::-1, ::-1, :], ras.lesion)
    assert lps.info["lesions"] == ras.info["lesions"]


def test_oblique_grid_samples_the_same_world_anatomy():
    shape, ras = _grid("RAS")
    _, tilted = _grid("oblique", seed=2, max_oblique_deg=25.0)
    rotation = tilted[:3, :3] / np.array(SPACING)
    assert math.degrees(math.acos((np.trace(rotation) - 1) / 2)) > 10.0
    straight = phantoms.lung_ct_phantom(4, shape, ras, lesions=False)
    oblique = phantoms.lung_ct_phantom(4, shape, tilted, lesions=False)
    assert straight.info["body_scale"] == oblique.info["body_scale"]
    # Resample the straight scan's lung mask at the oblique voxel centres.
    world = _world_centres(shape, tilted)
    ijk = world @ np.linalg.inv(ras)[:3, :3].T + np.linalg.inv(ras)[:3, 3]
    resampled = ndimage.map_coordinates(straight.roi.astype(np.float32), ijk.T, order=1)
    resampled = resampled.reshape(shape) > 0.5
    inside = ((ijk >= 0) & (ijk <= np.array(shape) - 1)).all(axis=1).reshape(shape)
    a, b = resampled[inside], oblique.roi[inside]
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice > 0.9
    # Without the tilt the two masks would disagree much more.
    naive = straight.roi[inside]
    assert 2 * (naive & b).sum() / (naive.sum() + b.sum()) < dice - 0.05


def test_body_scale_follows_grid_extent_or_caller():
    small = phantoms.lung_ct_phantom(2, *_grid(fov=(200.0, 160.0, 150.0)), lesions=False)
    big = phantoms.lung_ct_phantom(2, *_grid(fov=(360.0, 300.0, 300.0), spacing=(5.0, 5.0, 8.0)),
                                   lesions=False)
    assert big.info["body_scale"] == 1.0
    assert small.info["body_scale"] < 0.6
    lung_ml = [p.roi.sum() * np.prod(phantoms._voxel_sizes(p.affine)) / 1e3 for p in (small, big)]
    assert lung_ml[0] < 0.4 * lung_ml[1]
    chosen = phantoms.lung_ct_phantom(2, *_grid(fov=(200.0, 160.0, 150.0)), lesions=False,
                                      body_scale=0.5)
    assert chosen.info["body_scale"] == 0.5


# Brain T1 ----------------------------------------------------------------------------------


def test_load_mni152(mni):
    template, affine, mask = mni
    assert template.shape == mask.shape == (197, 233, 189)
    assert template.dtype == np.float32 and mask.dtype == bool
    assert np.allclose(np.diag(affine)[:3], 1.0)
    assert 1000 < mask.sum() / 1000 < 2500  # brain volume in ml


def test_brain_phantom_deterministic_and_non_negative(mni, brain_grid):
    a = phantoms.brain_t1_phantom(1, *brain_grid, True, *mni)
    b = phantoms.brain_t1_phantom(1, *brain_grid, True, *mni)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.lesion, b.lesion)
    assert a.image.dtype == np.float32 and a.image.min() >= 0.0
    json.dumps(a.info)
    assert phantoms.BRAIN_WARP_MM[0] <= a.info["warp_mm"] <= phantoms.BRAIN_WARP_MM[1]
    healthy = phantoms.brain_t1_phantom(1, *brain_grid, False, *mni)
    assert not healthy.lesion.any()
    assert np.array_equal(healthy.roi, a.roi)
    # Same subject: the lesion only changes its own neighbourhood (its soft rim may reach a
    # little further than the 0.5 level in a few places).
    changed = np.abs(a.image - healthy.image) > 1e-3
    near = ndimage.binary_dilation(a.lesion.astype(bool), iterations=3)
    assert changed.sum() > 0
    assert (changed & ~near).sum() <= 0.02 * changed.sum()
    # Brain, then background noise, on the right grid.
    assert 0.15 < a.roi.mean() < 0.6
    assert np.median(a.image[a.roi]) > 5 * np.median(a.image[~a.roi])


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_brain_lesions_are_dark_and_inside_the_brain(mni, brain_grid, seed):
    ph = phantoms.brain_t1_phantom(seed, *brain_grid, True, *mni)
    lesion = ph.lesion.astype(bool)
    assert ph.info["lesion_count"] >= 1
    assert lesion.sum() >= 2
    assert not (lesion & ~ph.roi).any()
    ring = ndimage.binary_dilation(lesion, iterations=3) & ~ndimage.binary_dilation(lesion) & ph.roi
    # White matter is the brightest tissue in T1; the infarct core is CSF-dark. (Unlesioned tissue
    # at the same voxels, cortex included, measures 0.75-1.0 of this white matter.)
    white = ring & (ph.image > np.percentile(ph.image[ph.roi], 60))
    assert white.sum() > 0
    assert ph.image[lesion].mean() < 0.55 * ph.image[white].mean()


def test_brain_same_world_image_on_ras_and_lps(mni):
    kw = dict(fov=(180.0, 216.0, 180.0), spacing=(3.0, 3.0, 3.0), center_mm=(0.0, -18.0, 18.0))
    ras = phantoms.brain_t1_phantom(7, *_grid("RAS", **kw), True, *mni)
    lps = phantoms.brain_t1_phantom(7, *_grid("LPS", **kw), True, *mni)
    assert np.allclose(lps.image[::-1, ::-1, :], ras.image, rtol=1e-4, atol=1e-2)
    assert np.array_equal(lps.lesion[::-1, ::-1, :], ras.lesion)


def test_demo_phantom_names_what_it_cannot_make():
    with pytest.raises(ValueError, match="no demo generator for dataset 'knee_mri'"):
        phantoms.demo_phantom("knee_mri", 0, 0, False)
    with pytest.raises(ValueError, match="MNI template"):
        phantoms.demo_phantom("brain_t1", 0, 0, False)


def test_demo_subjects_do_not_depend_on_the_other_cohort_or_the_test_count():
    from arepas.cohort import demo_numbers, demo_sheet

    def numbers(lung_test: int, brain_test: int) -> dict[str, int]:
        sheet = demo_sheet({"counts": {
            "lung_ct": {"train": 4, "val": 2, "test": lung_test},
            "brain_t1": {"train": 4, "val": 2, "test": brain_test},
        }})
        return dict(zip(sheet["subject"], demo_numbers(sheet), strict=True))

    small, large = numbers(4, 4), numbers(10, 10)
    # Every subject of the small demo is the same subject (same number) in the larger one ...
    assert all(large[subject] == n for subject, n in small.items())
    # ... numbered within its own dataset, train and val first.
    assert small["brain001"] == small["lung001"] == 0 and small["brain006"] == 5
    assert numbers(1, 4)["brain003"] == small["brain003"]


@pytest.mark.parametrize("dataset", ["lung_ct", "brain_t1"])
def test_demo_grids_differ_only_in_voxel_size(dataset):
    for number in range(3):  # RAS, LPS and oblique
        seed_c, orient_c, shape_c, coarse = phantoms.demo_grid(dataset, number, 5, "coarse")
        seed_f, orient_f, shape_f, clinical = phantoms.demo_grid(dataset, number, 5, "clinical")
        assert (seed_c, orient_c) == (seed_f, orient_f)
        size_c = np.linalg.norm(coarse[:3, :3], axis=0)
        size_f = np.linalg.norm(clinical[:3, :3], axis=0)
        assert np.allclose(size_f, phantoms.DEMO_SCAN_GRIDS["clinical"][dataset])
        # The same axes (a tilted gantry stays tilted the same way) and the same field of view.
        assert np.allclose(coarse[:3, :3] / size_c, clinical[:3, :3] / size_f)
        centre = [(affine[:3, :3] @ ((np.array(shape) - 1) / 2.0) + affine[:3, 3])
                  for affine, shape in ((coarse, shape_c), (clinical, shape_f))]
        assert np.allclose(*centre)
        assert np.allclose(np.array(shape_c) * size_c, np.array(shape_f) * size_f,
                           atol=size_c.max())
    if dataset == "lung_ct":
        assert np.allclose(size_c, (2.3, 2.3, 5.0))
    else:
        assert np.all((size_c >= 2.4) & (size_c <= 3.2))
    with pytest.raises(ValueError, match="scan_grid must be one of"):
        phantoms.demo_grid(dataset, 0, 0, "fine")
