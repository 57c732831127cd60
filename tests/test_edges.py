import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from skimage.feature import canny
from skimage.filters import threshold_otsu

from arepas.edges import (
    EDGE_DETECTORS,
    SWAP_STYLES,
    BlobSwap,
    apply_blob_swap,
    augmented_training_set,
    blob_mask,
    canny_edges,
    draw_blob_swap,
    edge_maps,
    smooth_blob_mask,
    swap_augment,
    to_uint8,
)

torch.set_num_threads(1)

SIZE = 64


def disc_slice(radius: float, centre: tuple[float, float] = (31.5, 31.5), value: float = 0.5):
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    inside = np.hypot(yy - centre[0], xx - centre[1]) <= radius
    return np.where(inside, value, -1.0).astype(np.float32)


def shapes_slice(seed: int) -> np.ndarray:
    """A slice with several discs and bars of different grey levels (plenty of edges)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    image = np.full((SIZE, SIZE), -1.0, dtype=np.float32)
    for _ in range(5):
        cy, cx = rng.uniform(8, SIZE - 8, size=2)
        image[np.hypot(yy - cy, xx - cx) <= rng.uniform(3, 10)] = rng.uniform(-0.5, 0.9)
    for _ in range(3):
        top, left = rng.integers(0, SIZE - 12, size=2)
        image[top : top + 12, left : left + 3] = rng.uniform(-0.5, 0.9)
    return image


def noise_slice(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = ndi.gaussian_filter(rng.standard_normal((SIZE, SIZE)), sigma=3.0)
    return np.clip(smooth / smooth.std() * 0.4, -1.0, 1.0).astype(np.float32)


def sample_slices() -> list[np.ndarray]:
    return [
        disc_slice(14.0),
        disc_slice(6.0, centre=(15.5, 45.5), value=-0.6),
        *(shapes_slice(seed) for seed in range(4)),
        noise_slice(0),
    ]


def opencv_recipe(u8: np.ndarray) -> np.ndarray:
    """The reference's edge recipe on an 8-bit image, as 0/255."""
    blurred = cv2.GaussianBlur(u8, (5, 5), 1)
    otsu, _ = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return cv2.Canny(blurred, int(0.66 * otsu), int(0.66 * otsu))


def skimage_recipe(slice_: np.ndarray) -> np.ndarray:
    """The scikit-image detector as it was before OpenCV became the default, as a bool map."""
    u8 = np.clip(np.rint((slice_.astype(np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    blurred = ndi.gaussian_filter(u8.astype(np.float64), sigma=1.0, truncate=2.0, mode="mirror")
    blurred = np.clip(np.rint(blurred), 0, 255).astype(np.uint8)
    threshold = (0.66 * float(threshold_otsu(blurred)) + 1e-3) / (4.0 / np.pi)
    return canny(
        blurred, sigma=0.0, low_threshold=threshold, high_threshold=threshold, mode="mirror"
    )


def test_to_uint8_follows_the_reference_scaling():
    values = np.array([[-1.0, 0.0, 1.0, -2.0, 2.0]])
    assert to_uint8(values).tolist() == [[0, 128, 255, 0, 255]]
    assert to_uint8(values, truncate=True).tolist() == [[0, 127, 255, 0, 255]]


def test_to_uint8_truncates_like_the_reference():
    value = 10.6 / 127.5 - 1.0  # (x + 1) * 127.5 = 10.6
    assert to_uint8(np.array([[value]]), truncate=True).tolist() == [[10]]
    assert to_uint8(np.array([[value]])).tolist() == [[11]]


def test_to_uint8_truncation_computes_in_float32_for_float32_slices():
    # (x + 1) * 127.5 is exactly 112 in float32 arithmetic but just below 112 in float64.
    value = np.float32(-0.121568635)
    assert (np.float32(value) + np.float32(1.0)) * np.float32(127.5) == 112.0
    assert (float(value) + 1.0) * 127.5 < 112.0
    assert to_uint8(np.array([[value]], dtype=np.float32), truncate=True).tolist() == [[112]]
    assert to_uint8(np.array([[value]], dtype=np.float64), truncate=True).tolist() == [[111]]


def test_module_constants_list_the_options():
    assert EDGE_DETECTORS == ("opencv", "skimage")
    assert SWAP_STYLES == ("reference", "clean_source")


@pytest.mark.parametrize("index", range(7))
def test_default_detector_is_the_reference_opencv_recipe(index):
    slice_ = sample_slices()[index]
    u8 = np.clip((slice_ + 1.0) * 127.5, 0, 255).astype(np.uint8)
    expected = np.where(opencv_recipe(u8) > 0, 1.0, -1.0)
    edges = canny_edges(slice_)
    assert edges.dtype == np.float32
    assert np.any(edges > 0)
    np.testing.assert_array_equal(edges, expected)
    np.testing.assert_array_equal(canny_edges(slice_, detector="opencv"), edges)


def test_default_detector_truncates_rather_than_rounds():
    # The disc's grey level is 12.75: 12 truncated, 13 rounded, which moves the Otsu threshold.
    slice_ = disc_slice(10.0, value=-0.9)
    truncated = np.where(opencv_recipe(to_uint8(slice_, truncate=True)) > 0, 1.0, -1.0)
    rounded = np.where(opencv_recipe(to_uint8(slice_)) > 0, 1.0, -1.0)
    assert np.any(truncated != rounded)
    np.testing.assert_array_equal(canny_edges(slice_), truncated)


@pytest.mark.parametrize("index", range(7))
def test_skimage_detector_is_unchanged(index):
    slice_ = sample_slices()[index]
    expected = np.where(skimage_recipe(slice_), 1.0, -1.0)
    edges = canny_edges(slice_, detector="skimage")
    assert edges.dtype == np.float32
    assert np.any(edges > 0)
    np.testing.assert_array_equal(edges, expected)


def test_detectors_mostly_agree_on_piecewise_constant_slices():
    # On the smooth noise slice (last) non-maximum suppression differs more (overlap about 0.55).
    for slice_ in sample_slices()[:-1]:
        a, b = canny_edges(slice_) > 0, canny_edges(slice_, detector="skimage") > 0
        assert np.count_nonzero(a & b) / np.count_nonzero(a | b) > 0.75


@pytest.mark.parametrize("detector", EDGE_DETECTORS)
def test_canny_traces_the_outline_of_a_disc(detector):
    radius = 14.0
    edges = canny_edges(disc_slice(radius), detector=detector)
    assert edges.dtype == np.float32
    assert set(np.unique(edges)) == {-1.0, 1.0}
    ys, xs = np.nonzero(edges > 0)
    distance = np.hypot(ys - 31.5, xs - 31.5)
    assert np.all(np.abs(distance - radius) <= 1.5)
    # Every point of the circle has an edge pixel close by: the outline is closed.
    angles = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    circle = np.stack([31.5 + radius * np.sin(angles), 31.5 + radius * np.cos(angles)], axis=1)
    pixels = np.stack([ys, xs], axis=1)
    nearest = np.min(np.linalg.norm(circle[:, None, :] - pixels[None, :, :], axis=2), axis=1)
    assert nearest.max() <= 1.5


@pytest.mark.parametrize("detector", EDGE_DETECTORS)
def test_canny_finds_a_faint_disc_only_where_it_is(detector):
    edges = canny_edges(disc_slice(6.0, centre=(15.5, 45.5), value=-0.6), detector=detector)
    ys, xs = np.nonzero(edges > 0)
    assert len(ys) > 20
    assert np.all(np.hypot(ys - 15.5, xs - 45.5) <= 7.5)


@pytest.mark.parametrize("detector", EDGE_DETECTORS)
@pytest.mark.parametrize("value", [-1.0, 0.3, 1.0])
def test_blank_slice_has_no_edges(value, detector):
    edges = canny_edges(np.full((SIZE, SIZE), value, dtype=np.float32), detector=detector)
    assert edges.dtype == np.float32
    assert np.all(edges == -1.0)


def test_canny_rejects_a_stack():
    with pytest.raises(ValueError, match="2D"):
        canny_edges(np.zeros((2, SIZE, SIZE)))


def test_unknown_detector_is_refused_naming_the_choices():
    slice_ = disc_slice(10.0)
    with pytest.raises(ValueError, match="opencv, skimage"):
        canny_edges(slice_, detector="cv2")
    with pytest.raises(ValueError, match="opencv, skimage"):
        edge_maps(slice_[None], detector="sobel")
    with pytest.raises(ValueError, match="opencv, skimage"):
        augmented_training_set(slice_[None], np.random.default_rng(0), detector="sobel")


@pytest.mark.parametrize("detector", EDGE_DETECTORS)
def test_edge_maps_is_canny_per_slice(detector):
    slices = np.stack([disc_slice(10.0), shapes_slice(1), np.full((SIZE, SIZE), -1.0)])
    maps = edge_maps(slices, detector=detector)
    assert maps.shape == slices.shape
    assert maps.dtype == np.float32
    for i in range(len(slices)):
        np.testing.assert_array_equal(maps[i], canny_edges(slices[i], detector=detector))


def test_blob_mask_is_an_irregular_blob_inside_its_disc():
    rng = np.random.default_rng(3)
    size = 21
    yy, xx = np.mgrid[0:size, 0:size]
    disc = np.hypot(yy - 10, xx - 10) <= 10.5
    masks = [blob_mask(size, rng) for _ in range(10)]
    for mask in masks:
        assert mask.shape == (size, size)
        assert mask.any()
        assert not np.any(mask & ~disc)
    # Different draws give different shapes.
    assert len({mask.tobytes() for mask in masks}) == len(masks)
    for tiny in (1, 2, 3):
        assert blob_mask(tiny, rng).any()


def test_smooth_blob_mask_is_one_solid_irregular_piece():
    rng = np.random.default_rng(4)
    masks = [smooth_blob_mask(30, 24, rng) for _ in range(30)]
    fractions = []
    for mask in masks:
        assert mask.shape == (30, 24)
        assert mask.dtype == bool
        if not mask.any():
            continue
        _, pieces = ndi.label(mask, structure=np.ones((3, 3)))
        assert pieces == 1
        np.testing.assert_array_equal(ndi.binary_fill_holes(mask), mask)
        fractions.append(mask.mean())
    # Smoothed noise cut at its mean: the largest piece is a sizeable part, rarely all of it.
    assert len(fractions) >= 25
    assert 0.15 < np.mean(fractions) < 0.85
    assert np.mean(np.array(fractions) == 1.0) < 0.5
    assert len({mask.tobytes() for mask in masks}) > 25


def test_smooth_blob_mask_is_reproducible_and_handles_thin_rectangles():
    np.testing.assert_array_equal(
        smooth_blob_mask(17, 9, np.random.default_rng(8)),
        smooth_blob_mask(17, 9, np.random.default_rng(8)),
    )
    rng = np.random.default_rng(0)
    for height, width in [(1, 1), (1, 12), (12, 1), (2, 2)]:
        assert smooth_blob_mask(height, width, rng).shape == (height, width)
    with pytest.raises(ValueError):
        smooth_blob_mask(0, 5, rng)


def test_draw_blob_swap_respects_side_ranges_and_moves_away():
    rng = np.random.default_rng(11)
    height, width = 64, 96
    heights, widths = set(), set()
    for _ in range(400):
        swap = draw_blob_swap((height, width), rng)
        patch_h, patch_w = swap.mask.shape
        heights.add(patch_h)
        widths.add(patch_w)
        (sy, sx), (ty, tx) = swap.source, swap.target
        assert 0 <= sy <= height - patch_h and 0 <= ty <= height - patch_h
        assert 0 <= sx <= width - patch_w and 0 <= tx <= width - patch_w
        # A far enough destination always exists here; 10 draws practically always find one.
        assert abs(ty - sy) > patch_h // 2 or abs(tx - sx) > patch_w // 2
    # Reference ranges: max(1, n // 100) .. n // 3, height and width drawn independently.
    assert heights == set(range(1, 22))
    assert widths == set(range(1, 33))


def test_draw_blob_swap_scales_its_side_range_with_the_fractions():
    rng = np.random.default_rng(12)
    sides = set()
    for _ in range(200):
        sides.update(draw_blob_swap((300, 200), rng, min_frac=0.1, max_frac=0.2).mask.shape)
    assert sides == set(range(20, 41)) | set(range(30, 61))


def test_draw_blob_swap_without_room_to_move_keeps_the_last_draw():
    swap = draw_blob_swap((8, 8), np.random.default_rng(0), min_frac=1.0, max_frac=1.0)
    assert swap.mask.shape == (8, 8)
    assert swap.source == swap.target == (0, 0)


def test_apply_blob_swap_copies_masked_source_pixels_only():
    rng = np.random.default_rng(2)
    edges = np.where(rng.random((20, 30)) > 0.7, 1.0, -1.0).astype(np.float32)
    before = edges.copy()
    mask = np.zeros((5, 7), dtype=bool)
    mask[1:4, 2:6] = True
    mask[0, 0] = True
    out = apply_blob_swap(edges, BlobSwap(source=(2, 3), target=(12, 20), mask=mask))
    np.testing.assert_array_equal(edges, before)
    assert out.dtype == np.float32
    expected = before.copy()
    region = expected[12:17, 20:27]
    region[mask] = before[2:7, 3:10][mask]
    np.testing.assert_array_equal(out, expected)


def test_apply_blob_swap_reads_an_overlapping_source_before_writing():
    edges = np.full((1, 6), -1.0, dtype=np.float32)
    edges[0, 0] = 1.0
    out = apply_blob_swap(edges, BlobSwap(source=(0, 0), target=(0, 1), mask=np.ones((1, 3), bool)))
    assert out.tolist() == [[1.0, 1.0, -1.0, -1.0, -1.0, -1.0]]


def test_reference_swaps_apply_one_after_another_to_the_evolving_map():
    clean = canny_edges(shapes_slice(0))
    augmented = swap_augment(clean, np.random.default_rng(21))
    rng = np.random.default_rng(21)
    swaps = [draw_blob_swap(clean.shape, rng) for _ in range(20)]
    folded = clean
    for swap in swaps:
        folded = apply_blob_swap(folded, swap)
    np.testing.assert_array_equal(augmented, folded)
    # The same swaps, each taken from the clean map instead, give another map: later swaps did
    # carry earlier copies along.
    from_clean = clean.copy()
    for swap in swaps:
        (sy, sx), (ty, tx) = swap.source, swap.target
        patch_h, patch_w = swap.mask.shape
        source = clean[sy : sy + patch_h, sx : sx + patch_w]
        from_clean[ty : ty + patch_h, tx : tx + patch_w][swap.mask] = source[swap.mask]
    assert np.any(from_clean != augmented)


@pytest.mark.parametrize("style", SWAP_STYLES)
def test_swap_augment_moves_edges_and_leaves_its_input_alone(style):
    clean = canny_edges(shapes_slice(0))
    before = clean.copy()
    augmented = swap_augment(clean, np.random.default_rng(0), style=style)
    np.testing.assert_array_equal(clean, before)
    assert augmented is not clean
    assert augmented.shape == clean.shape
    assert augmented.dtype == np.float32
    assert set(np.unique(augmented)) <= {-1.0, 1.0}
    assert np.count_nonzero(augmented != clean) > 10


@pytest.mark.parametrize("style", SWAP_STYLES)
def test_swap_augment_is_reproducible_for_a_seed(style):
    clean = canny_edges(shapes_slice(2))
    first = swap_augment(clean, np.random.default_rng(5), style=style)
    again = swap_augment(clean, np.random.default_rng(5), style=style)
    other = swap_augment(clean, np.random.default_rng(6), style=style)
    np.testing.assert_array_equal(first, again)
    assert np.any(first != other)


def test_swap_styles_differ():
    clean = canny_edges(shapes_slice(3))
    reference = swap_augment(clean, np.random.default_rng(9))
    assert np.any(reference != swap_augment(clean, np.random.default_rng(9), style="clean_source"))
    np.testing.assert_array_equal(
        reference, swap_augment(clean, np.random.default_rng(9), style="reference")
    )


@pytest.mark.parametrize("style", SWAP_STYLES)
def test_swap_augment_without_swaps_returns_an_equal_copy(style):
    clean = canny_edges(shapes_slice(4))
    out = swap_augment(clean, np.random.default_rng(0), n_swaps=0, style=style)
    np.testing.assert_array_equal(out, clean)
    out[0, 0] = -out[0, 0]
    assert out[0, 0] != clean[0, 0]


def test_swap_augment_refuses_unknown_styles_and_bad_fractions():
    clean = canny_edges(shapes_slice(4))
    with pytest.raises(ValueError, match="reference, clean_source"):
        swap_augment(clean, np.random.default_rng(0), style="global")
    with pytest.raises(ValueError, match="min_frac"):
        swap_augment(clean, np.random.default_rng(0), min_frac=0.5, max_frac=0.2)


def test_augmented_training_set_defaults_to_three_copies_and_no_clean_map():
    slices = np.stack([shapes_slice(s) for s in range(3)])
    slices_before = slices.copy()
    inputs, targets = augmented_training_set(slices, np.random.default_rng(0))
    np.testing.assert_array_equal(slices, slices_before)
    assert inputs.shape == targets.shape == (9, SIZE, SIZE)
    assert inputs.dtype == targets.dtype == np.float32
    assert set(np.unique(inputs)) <= {-1.0, 1.0}
    clean = edge_maps(slices)
    rng = np.random.default_rng(0)
    for i in range(3):
        group = slice(3 * i, 3 * i + 3)
        np.testing.assert_array_equal(targets[group], np.repeat(slices[i : i + 1], 3, axis=0))
        for k in range(3):
            assert np.any(inputs[3 * i + k] != clean[i])
            np.testing.assert_array_equal(inputs[3 * i + k], swap_augment(clean[i], rng))


def test_augmented_training_set_with_clean_maps_keeps_the_old_layout():
    slices = np.stack([shapes_slice(s) for s in range(2)])
    options = {"swap_style": "clean_source", "detector": "skimage"}
    inputs, targets = augmented_training_set(
        slices, np.random.default_rng(4), include_clean=True, **options
    )
    assert inputs.shape == targets.shape == (8, SIZE, SIZE)
    clean = edge_maps(slices, detector="skimage")
    rng = np.random.default_rng(4)
    for i in range(2):
        np.testing.assert_array_equal(
            targets[4 * i : 4 * i + 4], np.repeat(slices[i : i + 1], 4, 0)
        )
        np.testing.assert_array_equal(inputs[4 * i], clean[i])
        for k in range(1, 4):
            expected = swap_augment(clean[i], rng, style="clean_source")
            np.testing.assert_array_equal(inputs[4 * i + k], expected)


def test_augmented_training_set_without_copies_needs_the_clean_pairs():
    slices = np.stack([shapes_slice(7), disc_slice(9.0)])
    inputs, targets = augmented_training_set(
        slices, np.random.default_rng(1), copies=0, include_clean=True
    )
    np.testing.assert_array_equal(inputs, edge_maps(slices))
    np.testing.assert_array_equal(targets, slices)
    with pytest.raises(ValueError, match="no training pairs"):
        augmented_training_set(slices, np.random.default_rng(1), copies=0)
    with pytest.raises(ValueError, match="copies"):
        augmented_training_set(slices, np.random.default_rng(1), copies=-1, include_clean=True)


def test_augmented_training_set_refuses_unknown_swap_styles():
    with pytest.raises(ValueError, match="reference, clean_source"):
        augmented_training_set(disc_slice(9.0)[None], np.random.default_rng(0), swap_style="x")
