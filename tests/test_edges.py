import numpy as np
import pytest
import torch

from arepas.edges import (
    augmented_training_set,
    blob_mask,
    canny_edges,
    edge_maps,
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


def test_to_uint8_follows_the_reference_scaling():
    values = np.array([[-1.0, 0.0, 1.0, -2.0, 2.0]])
    assert to_uint8(values).tolist() == [[0, 128, 255, 0, 255]]


def test_canny_traces_the_outline_of_a_disc():
    radius = 14.0
    edges = canny_edges(disc_slice(radius))
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


def test_canny_finds_a_faint_disc_only_where_it_is():
    edges = canny_edges(disc_slice(6.0, centre=(15.5, 45.5), value=-0.6))
    ys, xs = np.nonzero(edges > 0)
    assert len(ys) > 20
    assert np.all(np.hypot(ys - 15.5, xs - 45.5) <= 7.5)


@pytest.mark.parametrize("value", [-1.0, 0.3, 1.0])
def test_blank_slice_has_no_edges(value):
    edges = canny_edges(np.full((SIZE, SIZE), value, dtype=np.float32))
    assert edges.dtype == np.float32
    assert np.all(edges == -1.0)


def test_canny_rejects_a_stack():
    with pytest.raises(ValueError, match="2D"):
        canny_edges(np.zeros((2, SIZE, SIZE)))


def test_edge_maps_is_canny_per_slice():
    slices = np.stack([disc_slice(10.0), shapes_slice(1), np.full((SIZE, SIZE), -1.0)])
    maps = edge_maps(slices)
    assert maps.shape == slices.shape
    assert maps.dtype == np.float32
    for i in range(len(slices)):
        np.testing.assert_array_equal(maps[i], canny_edges(slices[i]))


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


def test_swap_augment_moves_edges_and_leaves_its_input_alone():
    clean = canny_edges(shapes_slice(0))
    before = clean.copy()
    augmented = swap_augment(clean, np.random.default_rng(0))
    np.testing.assert_array_equal(clean, before)
    assert augmented is not clean
    assert augmented.shape == clean.shape
    assert augmented.dtype == np.float32
    assert set(np.unique(augmented)) <= {-1.0, 1.0}
    assert np.count_nonzero(augmented != clean) > 10


def test_swap_augment_is_reproducible_for_a_seed():
    clean = canny_edges(shapes_slice(2))
    first = swap_augment(clean, np.random.default_rng(5))
    again = swap_augment(clean, np.random.default_rng(5))
    other = swap_augment(clean, np.random.default_rng(6))
    np.testing.assert_array_equal(first, again)
    assert np.any(first != other)


def test_swap_augment_without_swaps_returns_an_equal_copy():
    clean = canny_edges(shapes_slice(4))
    out = swap_augment(clean, np.random.default_rng(0), n_swaps=0)
    np.testing.assert_array_equal(out, clean)
    out[0, 0] = -out[0, 0]
    assert out[0, 0] != clean[0, 0]


def test_augmented_training_set_changes_edges_but_never_targets():
    slices = np.stack([shapes_slice(s) for s in range(3)])
    slices_before = slices.copy()
    inputs, targets = augmented_training_set(slices, np.random.default_rng(0), copies=3)
    np.testing.assert_array_equal(slices, slices_before)
    assert inputs.shape == targets.shape == (12, SIZE, SIZE)
    assert inputs.dtype == targets.dtype == np.float32
    clean = edge_maps(slices)
    for i in range(3):
        group = slice(4 * i, 4 * i + 4)
        np.testing.assert_array_equal(targets[group], np.repeat(slices[i : i + 1], 4, axis=0))
        np.testing.assert_array_equal(inputs[4 * i], clean[i])
        for k in range(1, 4):
            assert np.any(inputs[4 * i + k] != clean[i])
    assert set(np.unique(inputs)) <= {-1.0, 1.0}


def test_augmented_training_set_without_copies_is_the_clean_pairs():
    slices = np.stack([shapes_slice(7), disc_slice(9.0)])
    inputs, targets = augmented_training_set(slices, np.random.default_rng(1), copies=0)
    np.testing.assert_array_equal(inputs, edge_maps(slices))
    np.testing.assert_array_equal(targets, slices)
