"""Binary masks of test and predict subjects at the label-free threshold, and their files."""

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from arepas import io, masks, metrics

REPO = Path(__file__).resolve().parents[1]


def cohort(seed, n, shape=(10, 12, 14), lesioned=True):
    """Gamma-distributed background scores with a brighter cube where the lesion is."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        scores = rng.gamma(2.0, 0.05, shape).astype(np.float32)
        lesion = np.zeros(shape, bool)
        if lesioned:
            lesion[2:5, 3:7, 4 + i : 8 + i] = True
            scores[lesion] += rng.uniform(0.1, 0.4, int(lesion.sum())).astype(np.float32)
        roi = np.ones(shape, bool)
        roi[:, :2] = False
        scores[~roi] = 0
        cases.append((f"s{seed}-{i}", scores, lesion, roi))
    return cases


@pytest.mark.parametrize("mode, value", [("percentile", 99.0), ("fpr", 0.02)])
def test_masks_are_the_evaluations_segmentations_at_the_val_threshold(mode, value):
    test = cohort(1, 3)
    val = [(s, scores, roi) for s, scores, _, roi in cohort(2, 2, lesioned=False)]
    summary, table = metrics.evaluate_cohort(lambda: test, lambda: val, mode, value, n_bins=4096)
    threshold = metrics.healthy_threshold(lambda: val, mode, value, n_bins=4096)
    assert threshold == summary["val_threshold"]
    # The threshold leaves about the asked share of healthy val voxels above it.
    healthy = np.concatenate([scores[roi] for _, scores, roi in val])
    above = np.mean(healthy >= threshold)
    assert above <= (1 - value / 100 if mode == "percentile" else value) + 1 / healthy.size
    at_val_thr = table[table["threshold_kind"] == "val_thr"].set_index("subject")
    for subject, scores, lesion, roi in test:
        mask = masks.lesion_mask(scores, roi, threshold)
        assert mask.dtype == bool and not mask[~roi].any()
        assert mask.sum() == at_val_thr.loc[subject, "tp"] + at_val_thr.loc[subject, "fp"]
        assert (mask & lesion).sum() == at_val_thr.loc[subject, "tp"]


def test_lesion_mask_keeps_scores_at_the_threshold_inside_the_roi_only():
    scores = np.array([[0.0, 0.5, 0.5000001], [0.7, 0.49999, 2.0]], np.float32)
    roi = np.array([[True, True, True], [False, True, True]])
    mask = masks.lesion_mask(scores, roi, 0.5)
    assert mask.tolist() == [[False, True, True], [False, False, True]]
    with pytest.raises(ValueError, match="shape"):
        masks.lesion_mask(scores, roi[:, :2], 0.5)


def test_mask_facts_count_26_connected_components_and_millilitres():
    mask = np.zeros((8, 8, 8), bool)
    mask[1:3, 1:3, 1:3] = True  # 8 voxels
    mask[3, 3, 3] = True  # touches the first cube at a corner only: same lesion
    mask[6:8, 6, 6] = True  # a second lesion of 2 voxels
    facts = masks.mask_facts(mask, (2.0, 2.0, 2.5))
    assert facts == {
        "n_voxels": 11,
        "volume_ml": pytest.approx(11 * 10.0 / 1000),
        "n_components": 2,
    }
    assert masks.mask_facts(np.zeros((3, 3, 3), bool), (1, 1, 1))["n_components"] == 0


def test_thresholds_of_names_the_table_and_what_is_wrong():
    table = pd.DataFrame(
        [
            {
                "method": "arepas",
                "threshold": 0.25,
                "threshold_mode": "percentile",
                "threshold_value": 99.0,
                "n_val_subjects": 2,
            },
            {
                "method": "residual",
                "threshold": np.nan,
                "threshold_mode": "percentile",
                "threshold_value": 99.0,
                "n_val_subjects": 2,
            },
        ]
    )
    assert masks.thresholds_of(table, ["arepas"], "t.tsv") == {"arepas": 0.25}
    with pytest.raises(ValueError, match=r"'t.tsv' has no row for method 'ae'"):
        masks.thresholds_of(table, ["arepas", "ae"], "t.tsv")
    with pytest.raises(ValueError, match=r"'t.tsv', method 'residual'"):
        masks.thresholds_of(table, ["residual"], "t.tsv")
    with pytest.raises(ValueError, match="lacks columns"):
        masks.thresholds_of(table.drop(columns="threshold"), ["arepas"], "t.tsv")


def test_display_window_ct_from_settings_mri_from_roi_percentiles():
    image = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    roi = np.zeros(image.shape, bool)
    roi[5:] = True  # values 500 to 999
    # As the networks saw it: by default the window's darker half (the reference's stretch).
    assert masks.display_window(image, roi, "ct", {"window": [-1000, 200]}) == (-1000.0, -400.0)
    linear = {"window": [-1000, 200], "ct_mapping": "linear"}
    assert masks.display_window(image, roi, "ct", linear) == (-1000.0, 200.0)
    low, high = masks.display_window(image, roi, "mri", {"percentiles": [0.0, 100.0]})
    assert (low, high) == (500.0, 999.0)


def test_save_mask_keeps_the_native_header_and_writes_uint8(tmp_path):
    # A CT stored LPS as int16 with a slope, with a trailing time axis of one.
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    affine[:3, 3] = [100.0, 120.0, -50.0]
    ct = nib.Nifti1Image(np.zeros((6, 7, 5, 1), np.int16), affine)
    ct.header.set_slope_inter(2.0, -1024.0)
    ct.header.set_qform(affine, code=1)
    ct.header.set_sform(affine, code=2)
    ct.header.set_xyzt_units("mm", "sec")
    native = tmp_path / "ct.nii.gz"
    nib.save(ct, native)
    reference = io.open_nifti(native, "s1", "image")

    mask = np.zeros((6, 7, 5), bool)
    mask[1:3, 2:5, 1] = True
    out = tmp_path / "masks" / "s1.nii.gz"
    io.save_mask(out, mask, reference.affine, reference.header)
    written = nib.load(out)
    assert written.get_data_dtype() == np.uint8
    assert written.shape == mask.shape
    np.testing.assert_array_equal(np.asarray(written.dataobj), mask.astype(np.uint8))
    np.testing.assert_allclose(written.affine, affine)
    assert int(written.header["qform_code"]) == 1 and int(written.header["sform_code"]) == 2
    assert written.header.get_xyzt_units() == ("mm", "sec")
    assert written.header.get_slope_inter() in ((1.0, 0.0), (None, None))
    # It passes the checks any mask input gets, against the image's grid.
    assert io.load_mask(out, "s1", "mask", mask.shape, reference.affine).sum() == mask.sum()


def dry_run(tmp_path, overrides: dict) -> subprocess.CompletedProcess:
    """`snakemake -n` on the shipped config with `overrides` on top, as a user's --configfile."""
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump(overrides))
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--nolock", "--cores", "1"]
        + ["--configfile", str(extra)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )


def test_masked_methods_default_to_arepas_or_the_first_method(tmp_path):
    # A config that names no masks and does not compute `arepas` masks its first method.
    result = dry_run(tmp_path, {"methods": ["residual", "ae"]})
    assert result.returncode == 0, result.stderr[-3000:]
    planned = result.stdout + result.stderr
    assert "results/lung_ct/masks/residual/" in planned
    assert "results/lung_ct/figures/masks/" in planned
    assert "masks/ae/" not in planned


def test_masks_of_a_map_not_computed_stop_the_workflow_at_start(tmp_path):
    result = dry_run(tmp_path, {"methods": ["residual"], "masks": {"methods": ["arepas"]}})
    assert result.returncode != 0
    assert "config masks.methods: ['arepas'] are not among the maps computed" in (
        result.stdout + result.stderr
    )
