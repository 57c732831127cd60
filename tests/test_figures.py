import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.image import imread

from arepas.figures import (
    dice_strip,
    display_aspect,
    mask_overlay,
    most_lesioned_slice,
    overlay_slices,
    pr_curves,
    ras_ordered,
    save_figure,
    slice_for_display,
    subject_panel,
    training_curves,
)

torch.set_num_threads(1)


def synthetic_slice(size=64, seed=0):
    """A bright disc with a darker lesion, an imperfect reconstruction and the derived maps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((size, size))
    body = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 2.5) ** 2
    lesion = (yy - 28) ** 2 + (xx - 36) ** 2 < 25
    image = np.where(body, 0.3, -1.0) + 0.05 * rng.standard_normal((size, size))
    image[lesion] = -0.4
    recon = np.where(body, 0.3, -1.0) + 0.05 * rng.standard_normal((size, size))
    edges = np.where(np.abs(np.gradient(body.astype(float))[0]) > 0, 1.0, -1.0)
    residual = np.abs(recon - image)
    patch = np.clip(residual / residual.max() + 0.1 * rng.random((size, size)), 0, 1)
    return image, edges, recon, residual, patch, patch * residual, lesion


def png_size(path):
    return imread(path).shape[:2]


def test_subject_panel_has_seven_panels_with_shared_scales_and_saves(tmp_path):
    image, edges, recon, residual, patch, arepas_map, lesion = synthetic_slice()
    fig = subject_panel(image, edges, recon, residual, patch, arepas_map, lesion, "sub-01 z=12")
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [
        "input",
        "edge map",
        "reconstruction",
        "|recon - input|",
        "patch dissimilarity",
        "AREPAS map",
        "ground truth",
    ]
    assert len(fig.axes) == 12  # seven panels and five colour bars
    limits = [ax.images[0].get_clim() for ax in panels]
    assert limits[0] == limits[2] == (-1.0, 1.0)
    assert limits[3] == limits[5] == (0.0, pytest.approx(residual.max()))
    assert limits[4] == (0.0, 1.0)
    assert len(panels[6].collections) >= 1  # the lesion outline

    path = tmp_path / "figures" / "panel.png"
    save_figure(fig, path)
    height, width = png_size(path)
    assert width > 4 * height  # one wide row
    assert list(path.parent.iterdir()) == [path]  # no temporary left behind


def test_subject_panel_without_lesion_and_with_mismatched_shapes():
    image, edges, recon, residual, patch, arepas_map, lesion = synthetic_slice()
    fig = subject_panel(image, edges, recon, residual, patch, arepas_map, lesion & False, "healthy")
    assert fig.axes[6].get_title() == "ground truth (no lesion here)"
    assert len(fig.axes[6].collections) == 0
    with pytest.raises(ValueError):
        subject_panel(image, edges, recon[:-1], residual, patch, arepas_map, lesion, "bad")


def test_most_lesioned_slice_and_display_orientation():
    lesion = np.zeros((4, 6, 8), bool)
    lesion[1, 2, 3] = True
    lesion[3, 1:4, 2:6] = True
    assert most_lesioned_slice(lesion, axis=0) == 3
    assert most_lesioned_slice(lesion, axis=2) in (3, 4, 5)
    assert most_lesioned_slice(lesion, axis=-1) == most_lesioned_slice(lesion, axis=2)
    assert most_lesioned_slice(np.zeros((4, 6, 8), bool), axis=1) == 3

    volume = np.arange(4 * 6 * 8).reshape(4, 6, 8)
    shown = slice_for_display(volume, axis=2, index=5)
    assert shown.shape == (6, 4)
    # highest second-axis index (anterior for RAS) on the top row, first axis right to left
    assert shown[0, 0] == volume[3, 5, 5] and shown[-1, -1] == volume[0, 0, 5]


def right_anterior_superior_marker(shape=(20, 24, 16)):
    """A RAS-ordered volume (x towards the patient's right, y anterior, z superior) that is 1 in
    a small block near the patient's right, anterior and superior side, 0 elsewhere."""
    volume = np.zeros(shape, np.float32)
    volume[-5:-2, -5:-2, -5:-2] = 1.0
    return volume


def quadrant(shown):
    """Where the marker lands in a displayed slice: ("top" | "bottom", "left" | "right")."""
    rows, cols = np.nonzero(shown)
    height, width = shown.shape
    return (
        "top" if rows.mean() < height / 2 else "bottom",
        "left" if cols.mean() < width / 2 else "right",
    )


@pytest.mark.parametrize(
    "axis, view", [(2, "axial"), (1, "coronal"), (0, "sagittal")], ids=["axial", "coronal", "sag"]
)
def test_slices_are_shown_the_radiological_way(axis, view):
    # Axial: anterior up, the patient's right on the image's left. Coronal: superior up, right on
    # the left. Sagittal: superior up, anterior on the left. The marker is right, anterior and
    # superior, so it lands top left in every view.
    volume = right_anterior_superior_marker()
    index = volume.shape[axis] - 4
    assert quadrant(slice_for_display(volume, axis, index)) == ("top", "left")


def test_lungs_sit_side_by_side_in_axial_panels():
    # Two lungs, left and right of the patient: on an axial slice they are apart along x.
    volume = np.zeros((30, 20, 10), np.float32)
    volume[3:12, 4:16] = 1.0  # patient's left lung (low x)
    volume[18:27, 4:16] = 2.0  # patient's right lung (high x)
    shown = slice_for_display(volume, axis=2, index=5)
    rows_right, cols_right = np.nonzero(shown == 2.0)
    rows_left, cols_left = np.nonzero(shown == 1.0)
    assert cols_right.max() < cols_left.min()  # right lung on the image's left
    assert set(rows_right) == set(rows_left)  # same rows: side by side, not stacked


def test_native_scans_stored_lps_display_like_the_working_grid():
    # The same anatomy stored LPS (x towards the left, y posterior): after ras_ordered the
    # right-anterior-superior marker lands top left again, and the voxel sizes follow.
    ras = right_anterior_superior_marker()
    lps = ras[::-1, ::-1, :].copy()
    affine = np.diag([-0.7, -0.9, 2.5, 1.0])
    ordered, zooms = ras_ordered(lps, affine)
    np.testing.assert_array_equal(ordered, ras)
    np.testing.assert_allclose(zooms, [0.7, 0.9, 2.5])
    assert quadrant(slice_for_display(ordered, 2, 12)) == ("top", "left")
    # A grid stored with axes permuted (z, x, y) comes back in x, y, z order.
    permuted = np.transpose(ras, (2, 0, 1))
    swap = np.zeros((4, 4))
    swap[0, 1], swap[1, 2], swap[2, 0], swap[3, 3] = 0.7, 0.9, 2.5, 1.0
    ordered, zooms = ras_ordered(permuted, swap)
    np.testing.assert_array_equal(ordered, ras)
    np.testing.assert_allclose(zooms, [0.7, 0.9, 2.5])
    # Row spacing over column spacing: axial rows run along y, columns along x.
    assert display_aspect(zooms, 2) == pytest.approx(0.9 / 0.7)
    assert display_aspect(zooms, 0) == pytest.approx(2.5 / 0.9)


def test_network_slices_in_the_subject_panel_are_shown_the_radiological_way():
    # The working volume's network slices (arepas.preprocessing.slice_stack), drawn by the
    # subject panel: the marker is top left in the input panel and inside the lesion outline.
    from arepas.preprocessing import slice_stack

    volume = right_anterior_superior_marker((24, 24, 16))
    roi = np.ones(volume.shape, bool)
    stack = slice_stack(volume * 2 - 1, roi, volume > 0, axis=2, size=16)
    k = most_lesioned_slice(stack["lesion"], axis=0)
    s = stack["slices"][k]
    fig = subject_panel(s, s, s, s, s * 0, s * 0, stack["lesion"][k], "marker")
    shown = np.asarray(fig.axes[0].images[0].get_array())
    assert quadrant(shown > 0) == ("top", "left")
    outline = np.concatenate([p.vertices for p in fig.axes[6].collections[0].get_paths()])
    # Contour vertices are (column, row) in display coordinates.
    assert outline[:, 0].mean() < shown.shape[1] / 2 and outline[:, 1].mean() < shown.shape[0] / 2


def test_mask_overlay_two_rows_per_method_three_views_and_outlines(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(20, 24, 16)).astype(np.float32)
    scores = right_anterior_superior_marker() * 0.8 + 0.1 * rng.random(image.shape)
    mask = scores > 0.5
    fig = mask_overlay(
        image,
        (1.0, 1.0, 2.0),
        {"arepas": (scores, mask, 0.5), "residual": (scores, mask & False, 0.95)},
        window=(-2.0, 2.0),
        title="s1",
        notes={"arepas": "0.03 mL, 1 component(s)"},
    )
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 * 2 * 3
    arepas_rows = panels[:6]
    assert [ax.get_title().split()[0] for ax in arepas_rows[:3]] == ["sagittal", "coronal", "axial"]
    # The slices picked hold the mask, so both rows of the masked method carry its outline;
    # the method with an empty mask has none.
    assert all(ax.collections for ax in arepas_rows)
    assert not any(ax.collections for ax in panels[6:])
    assert "0.5" in arepas_rows[0].get_ylabel() and "0.03 mL" in arepas_rows[0].get_ylabel()
    # Anisotropic voxels keep their shape: axial rows 1 mm (y), columns 1 mm (x); sagittal
    # rows 2 mm (z), columns 1 mm (y).
    assert arepas_rows[2].get_aspect() == pytest.approx(1.0)
    assert arepas_rows[0].get_aspect() == pytest.approx(2.0)
    # The map row's axial panel: the right-anterior marker top left, as in every slice figure.
    assert quadrant(np.asarray(arepas_rows[5].images[0].get_array()) > 0.5) == ("top", "left")
    path = tmp_path / "overlay.png"
    save_figure(fig, path)
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match="residual"):
        mask_overlay(image, (1, 1, 1), {"residual": (scores[:-1], mask, 0.5)}, (-1, 1), "bad")


def test_overlay_slices_follow_the_mask_then_the_highest_score():
    mask = np.zeros((6, 7, 8), bool)
    mask[4, 1:6, 2] = True
    mask[4, 3, 3] = True
    assert overlay_slices(mask, np.zeros(mask.shape)) == (4, 3, 2)
    scores = np.zeros(mask.shape)
    scores[1, 2, 3] = 0.9
    assert overlay_slices(mask & False, scores) == (1, 2, 3)
    assert overlay_slices(mask & False, scores * 0) == (3, 3, 4)


def test_pr_curves_one_line_per_method_and_saves(tmp_path):
    recall = np.array([1.0, 0.6, 0.2, 0.0])
    curves = {
        "AREPAS": (np.array([0.1, 0.5, 0.9, 1.0]), recall),
        "residual": (np.array([0.1, 0.3, 0.6, 1.0]), recall),
    }
    fig = pr_curves(curves, {"AREPAS": 0.51, "residual": 0.33}, prevalence=0.1)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.lines) == 3
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:2] == ["AREPAS (AP 0.510)", "residual (AP 0.330)"]
    path = tmp_path / "pr.png"
    save_figure(fig, path)
    assert path.stat().st_size > 1000


def test_dice_strip_box_and_dots_per_method(tmp_path):
    rng = np.random.default_rng(1)
    per_subject = pd.DataFrame(
        {
            "subject": [f"sub-{i}" for i in range(6)] * 2,
            "method": ["AREPAS"] * 6 + ["residual"] * 6,
            "dice": np.r_[rng.uniform(0.3, 0.8, 5), np.nan, rng.uniform(0.2, 0.7, 6)],
        }
    )
    fig = dice_strip(per_subject)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    dots = [c for c in ax.collections if c.get_offsets().shape[0] > 0]
    assert [len(c.get_offsets()) for c in dots] == [5, 6]  # the NaN subject is left out
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["AREPAS\n(n=5, 1 n/a)", "residual\n(n=6)"]
    path = tmp_path / "dice.png"
    save_figure(fig, path)
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError):
        dice_strip(per_subject.drop(columns="dice"))


def test_training_curves_one_panel_per_column(tmp_path):
    history = pd.DataFrame(
        {"epoch": np.arange(10), "loss_g": np.linspace(2, 1, 10), "l1": np.linspace(0.5, 0.1, 10)}
    )
    fig = training_curves(history, "epoch", ["loss_g", "l1"], "translator")
    assert len(fig.axes) == 2
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss_g", "l1"]
    assert fig.axes[-1].get_xlabel() == "epoch"
    np.testing.assert_array_equal(fig.axes[1].lines[0].get_ydata(), history["l1"])
    path = tmp_path / "curves.png"
    save_figure(fig, path)
    assert path.stat().st_size > 1000


def test_save_figure_leaves_no_file_when_writing_fails(tmp_path):
    fig = training_curves(
        pd.DataFrame({"step": [0, 1], "loss": [1.0, 0.5]}), "step", ["loss"], "scorer"
    )
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "curves.not-a-format")
    assert list(tmp_path.iterdir()) == []


def test_pr_step_line_encloses_the_average_precision():
    from arepas.metrics import ScoreHistogram, average_precision, pr_curve

    rng = np.random.default_rng(2)
    lesion = rng.random(4000) < 0.2
    levels = np.array([0.0, 0.125, 0.25, 0.5, 0.75, 1.0])
    # The lowest levels hold healthy voxels only, so recall stays 1 over several thresholds.
    scores = levels[np.where(lesion, rng.integers(2, 6, 4000), rng.integers(0, 5, 4000))]
    hist = ScoreHistogram(1.0, 256)
    hist.add(scores, lesion, np.ones(4000, bool))
    precision, recall, _ = pr_curve(hist)
    fig = pr_curves({"map": (precision, recall)}, {"map": average_precision(hist)})
    drawn_recall, drawn_precision = fig.axes[0].lines[0].get_data()
    # steps-pre: the segment from x[i] to x[i + 1] is drawn at y[i + 1]
    area = np.sum(np.diff(drawn_recall) * drawn_precision[1:])
    assert area == pytest.approx(average_precision(hist), abs=1e-12)
