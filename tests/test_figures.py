import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.image import imread

from arepas.figures import (
    dice_strip,
    most_lesioned_slice,
    pr_curves,
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
    # highest second-axis index (anterior for RAS) on the top row, first axis left to right
    assert shown[0, 0] == volume[0, 5, 5] and shown[-1, -1] == volume[3, 0, 5]


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
