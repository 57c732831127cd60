"""The translator's edge-reliance check: numbers, matching by slice index, verdict, figure."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from arepas import diagnostics, figures
from arepas.diagnostics import (
    IGNORES_EDGES,
    RELIANCE_KEYS,
    USES_EDGES,
    edge_reliance,
    edge_reliance_examples,
    edge_reliance_table,
    edge_reliance_warning,
    edge_verdict,
    partner_slices,
    training_mean_images,
)
from arepas.translator import TranslatorSettings

SIZE = 32
SETTINGS = TranslatorSettings(base_channels=4, n_blocks=1, disc_channels=4)
BLOB = 0.8
# Four blob centres far enough apart (radius 5) never to overlap.
CENTRES = ((9, 9), (9, 22), (22, 9), (22, 22))


class FillsEdges(nn.Module):
    """Follows its input: the regions its edge map encloses get the blob's grey, the rest 0."""

    def forward(self, edges: torch.Tensor) -> torch.Tensor:
        on = edges.numpy()[:, 0] > 0
        filled = np.stack([ndimage.binary_fill_holes(e) for e in on])
        return torch.from_numpy(np.where(filled, BLOB, 0.0).astype(np.float32))[:, None]


class DrawsImage(nn.Module):
    """Ignores its input: always the same image."""

    def __init__(self, image: np.ndarray) -> None:
        super().__init__()
        self.image = torch.from_numpy(np.asarray(image, dtype=np.float32))

    def forward(self, edges: torch.Tensor) -> torch.Tensor:
        return self.image.expand(edges.shape[0], 1, *self.image.shape).clone()


def blob_slice(centre: tuple[int, int]) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    return np.where(np.hypot(yy - centre[0], xx - centre[1]) <= 5, BLOB, 0.0).astype(np.float32)


def blob_problem() -> dict[str, np.ndarray]:
    """Four training and two val subjects, slice indices 10..13, the whole slice their ROI.

    Training subject s has its blob at centre (s + k) % 4 at index k, so every index has the same
    training mean image; val subject 0 has it at k % 4 and val subject 1 at the opposite corner.
    """
    indices = np.arange(10, 14)
    train = [blob_slice(CENTRES[(s + k) % 4]) for s in range(4) for k in indices]
    val = [blob_slice(CENTRES[(k + 2 + s) % 4]) for s in range(2) for k in indices]
    return {
        "val_slices": np.stack(val),
        "val_subject_ids": np.repeat(["v0", "v1"], len(indices)),
        "val_slice_index": np.tile(indices, 2),
        "val_roi": np.ones((len(val), SIZE, SIZE), dtype=bool),
        "train_slices": np.stack(train),
        "train_slice_index": np.tile(indices, 4),
        "train_roi": np.ones((len(train), SIZE, SIZE), dtype=bool),
    }


def test_a_translator_that_follows_its_edges_uses_them():
    result = edge_reliance(FillsEdges(), SETTINGS, **blob_problem())
    assert result["n_slices"] == result["n_other_edges"] == result["n_mean_image"] == 8
    assert result["own_over_other"] < 0.3
    assert result["own_over_mean_image"] < 0.3
    assert result["own_over_roi_mean"] < 0.3
    assert result["pearson_own"] > 0.9
    # Its fine detail (blob borders) lies where the slice has it, up to the pixel that filling
    # Canny edges loses; the other subject's blob has none there, and the mean of four blobs
    # has the right one at a quarter of the contrast beside three wrong ones (correlation
    # about 1/2).
    assert result["detail_own"] > result["detail_mean_image"] > 0.4
    assert abs(result["detail_other_edges"]) < 0.1
    assert edge_verdict(result) == USES_EDGES
    assert edge_reliance_warning(result, "blobs") is None


def test_a_translator_that_draws_the_mean_image_ignores_its_edges():
    problem = blob_problem()
    images, _ = training_mean_images(
        problem["train_slices"], problem["train_slice_index"], np.array([10])
    )
    result = edge_reliance(DrawsImage(images[0]), SETTINGS, **problem)
    assert result["own_over_other"] == pytest.approx(1.0)
    assert result["own_over_mean_image"] == pytest.approx(1.0, abs=1e-6)
    # Drawing the mean image, it has exactly the mean image's detail whatever the edges.
    assert result["detail_own"] == pytest.approx(result["detail_mean_image"], abs=1e-6)
    assert result["detail_own"] == pytest.approx(result["detail_other_edges"], abs=1e-6)
    assert edge_verdict(result) == IGNORES_EDGES
    warning = edge_reliance_warning(result, "blobs")
    assert warning.startswith("WARNING:") and "'blobs'" in warning
    assert "own_over_other 1.00 > 0.90" in warning
    table = edge_reliance_table(result, "blobs", registered=False)
    assert list(table.columns) == ["dataset", *RELIANCE_KEYS, "verdict", "registered"]
    assert table.loc[0, "verdict"] == IGNORES_EDGES
    assert not table.loc[0, "registered"]


def test_l1_by_hand_on_two_slices():
    size = 8
    val = np.full((2, size, size), -1.0, dtype=np.float32)
    roi = np.zeros((2, size, size), dtype=bool)
    roi[:, :2, :2] = True
    val[0, :2, :2] = [[0.5, 0.5], [0.1, 0.1]]
    val[1, :2, :2] = [[0.0, 0.0], [0.0, 0.8]]
    # One training slice inside its ROI everywhere (0.6), one all background (-1, empty ROI).
    train = np.stack([np.full((size, size), 0.6), np.full((size, size), -1.0)]).astype(np.float32)
    train_roi = np.stack([np.ones((size, size), bool), np.zeros((size, size), bool)])
    arrays = {
        "val_slices": val,
        "val_subject_ids": ["a", "b"],
        "val_slice_index": np.array([3, 3]),
        "val_roi": roi,
        "train_slices": train,
        "train_slice_index": np.array([3, 3]),
    }
    # A constant 0.1 everywhere; outside the ROI it would add 1.1 per pixel if counted.
    generator = DrawsImage(np.full((size, size), 0.1))
    masked = edge_reliance(generator, SETTINGS, **arrays, train_roi=train_roi)
    # Own: slice a |0.4|*2 + |0|*2 = 0.8, slice b 0.1*3 + 0.7 = 1.0; 8 ROI pixels.
    assert masked["l1_own_edges"] == pytest.approx(1.8 / 8)
    assert masked["l1_other_edges"] == pytest.approx(1.8 / 8)
    assert masked["own_over_other"] == pytest.approx(1.0)
    # Mean image over ROI pixels only: 0.6; a 0.1*2 + 0.5*2 = 1.2, b 0.6*3 + 0.2 = 2.0.
    assert masked["l1_mean_image"] == pytest.approx(3.2 / 8)
    assert masked["own_over_mean_image"] == pytest.approx(1.8 / 3.2)
    # ROI means 0.3 and 0.2: a 0.2*4 = 0.8, b 0.2*3 + 0.6 = 1.2.
    assert masked["l1_roi_mean"] == pytest.approx(2.0 / 8)
    assert masked["own_over_roi_mean"] == pytest.approx(1.8 / 2.0)
    # A constant reconstruction has no correlation with anything, and a 2 x 2 ROI has no
    # pixel 3 pixels from its edge to compare detail on.
    assert math.isnan(masked["pearson_own"])
    assert math.isnan(masked["detail_own"]) and math.isnan(masked["detail_mean_image"])
    # Without training ROIs the mean is plain, (0.6 - 1) / 2 = -0.2: a 0.7*2 + 0.3*2, b 0.2*3 + 1.
    plain = edge_reliance(generator, SETTINGS, **arrays)
    assert plain["l1_mean_image"] == pytest.approx(3.6 / 8)


def test_fine_detail_is_what_a_blur_removes_and_the_inner_roi_keeps_off_the_edge():
    flat = np.full((1, 16, 16), 0.3)
    assert np.allclose(diagnostics.fine_detail(flat), 0.0)
    line = np.zeros((1, 16, 16))
    line[0, :, 8] = 1.0
    detail = diagnostics.fine_detail(line)
    # A one-pixel line keeps most of itself, and its blurred spill becomes negative beside it.
    assert detail[0, 4, 8] > 0.5 and detail[0, 4, 9] < 0
    roi = np.zeros((1, 16, 16), dtype=bool)
    roi[0, 2:14, 2:14] = True
    inner = diagnostics.inner_roi(roi, border=3)
    assert inner[0, 5:11, 5:11].all() and inner.sum() == 36


def test_partners_are_matched_by_slice_index_across_subjects():
    # a -> b -> c -> a, in order of first appearance; rows without that index in the partner: -1.
    rows, from_train = partner_slices(
        ["a", "a", "b", "b", "c"], np.array([1, 2, 1, 3, 2]), np.array([1, 2])
    )
    assert not from_train
    assert rows.tolist() == [2, -1, -1, -1, 1]
    # One val subject: the first training slice with the same index.
    rows, from_train = partner_slices(["a", "a", "a"], np.array([5, 7, 9]), np.array([7, 5, 5]))
    assert from_train
    assert rows.tolist() == [1, 0, -1]


def test_mean_images_group_training_slices_by_index():
    train = np.stack([np.full((2, 2), v) for v in (1.0, 2.0, 3.0)]).astype(np.float32)
    images, which = training_mean_images(train, np.array([0, 1, 0]), np.array([1, 0, 9, 1]))
    assert which.tolist() == [1, 0, -1, 1]
    assert images[:, 0, 0].tolist() == [2.0, 2.0]


def test_single_val_subject_borrows_training_partners_and_skips_missing_indices():
    problem = blob_problem()
    keep = problem["val_subject_ids"] == "v0"
    for key in ("val_slices", "val_subject_ids", "val_slice_index", "val_roi"):
        problem[key] = problem[key][keep]
    # Index 13 only in val: no partner and no mean image for it.
    problem["val_slice_index"] = problem["val_slice_index"] + (problem["val_slice_index"] == 13)
    result = edge_reliance(FillsEdges(), SETTINGS, **problem)
    assert result["n_slices"] == 4
    assert result["n_other_edges"] == result["n_mean_image"] == 3
    assert edge_verdict(result) == USES_EDGES


def test_examples_feed_a_five_column_figure(tmp_path):
    examples = edge_reliance_examples(FillsEdges(), SETTINGS, **blob_problem(), n_examples=3)
    assert len(examples["input"]) == 3
    assert examples["has_mean_image"].all()
    np.testing.assert_array_equal(examples["input"], blob_problem()["val_slices"][examples["row"]])
    fig = figures.edge_reliance_panel(examples, "blobs: edge reliance")
    assert len(fig.axes) == 15
    figures.save_figure(fig, tmp_path / "edges.png")
    assert (tmp_path / "edges.png").stat().st_size > 0


def test_load_slice_stacks_numbers_subjects_by_file(tmp_path):
    paths = []
    for number, n in enumerate((2, 3)):
        path = tmp_path / f"s{number}.npz"
        np.savez(
            path,
            slices=np.zeros((n, 4, 4), np.float32),
            roi=np.ones((n, 4, 4), bool),
            indices=np.arange(n) + 5,
        )
        paths.append(path)
    slices, roi, index, subject = diagnostics.load_slice_stacks(paths)
    assert slices.shape == (5, 4, 4) and roi.dtype == bool
    assert index.tolist() == [5, 6, 5, 6, 7]
    assert subject.tolist() == [0, 0, 1, 1, 1]
