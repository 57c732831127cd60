"""The full-size translator study (bench/translator_full.py): packing a run's stacks, training
in stages within a budget, storing the device runs and writing the section."""

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

# `bench/` sits at the repository root, outside the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import translator_full  # noqa: E402

torch.set_num_threads(1)

SIDE = 32
# A translator small enough to train an epoch of a few slices in well under a second.
TINY = {"base_channels": 4, "n_downsampling": 1, "n_blocks": 1, "disc_channels": 4,
        "epochs": 100, "augment_copies": 1, "augment_swaps": 2}


def _slices(rng: np.random.Generator, n: int, first_index: int) -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:SIDE, :SIDE]
    disc = (yy - SIDE / 2) ** 2 + (xx - SIDE / 2) ** 2 < (SIDE / 2.5) ** 2
    slices = np.where(disc, 0.2, -1.0)[None] + 0.3 * rng.random((n, SIDE, SIDE)) * disc
    return {"slices": slices.astype(np.float32), "roi": np.repeat(disc[None], n, axis=0),
            "lesion": np.zeros((n, SIDE, SIDE), bool),
            "indices": np.arange(first_index, first_index + n), "geometry": np.zeros(10, int)}


@pytest.fixture
def full_run(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A preprocessing run's layout: the demo sheet, each subject's scan and slices.npz."""
    rng = np.random.default_rng(0)
    run = tmp_path / "run"
    rows = []
    for dataset, prefix in (("brain_t1", "brain"), ("lung_ct", "lung")):
        for number, split in enumerate(("train", "train", "train", "val", "val"), start=1):
            subject = f"{prefix}{number:03d}"
            image = f"{dataset}/{subject}_image.nii.gz"
            (run / "results" / "demo" / dataset).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.diag([2.5, 2.5, 3, 1])),
                     run / "results" / "demo" / image)
            folder = run / "results" / dataset / "preprocessed" / subject
            folder.mkdir(parents=True)
            np.savez_compressed(folder / "slices.npz", **_slices(rng, 6, 2))
            rows.append({"subject": subject, "dataset": dataset, "split": split,
                         "image": image, "lesion": "", "roi": ""})
    pd.DataFrame(rows).to_csv(run / "results" / "demo" / "subjects.tsv", sep="\t", index=False)
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"seed": 3, "datasets": {
        d: {"spacing": [1, 1, 1], "translator": {**TINY, "lr": 0.001}}
        for d in translator_full.DATASETS}}))
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"datasets": {"lung_ct": {"translator": {"lr": 0.002}}}}))
    return run, [base, override]


def test_merged_config_merges_key_by_key_later_files_winning(full_run):
    _, configfiles = full_run
    config = translator_full.merged_config(configfiles)
    assert config["datasets"]["lung_ct"]["translator"]["lr"] == 0.002
    assert config["datasets"]["lung_ct"]["translator"]["n_blocks"] == 1
    assert config["datasets"]["brain_t1"]["translator"]["lr"] == 0.001


def test_pack_keeps_the_stacks_within_float16_rounding_and_records_the_scans(full_run, tmp_path):
    run, configfiles = full_run
    info = translator_full.pack(run, tmp_path / "pack", configfiles)
    lung = info["datasets"]["lung_ct"]
    assert (lung["n_train_slices"], lung["n_val_slices"], lung["slice_size"]) == (18, 12, SIDE)
    assert lung["translator"]["lr"] == 0.002 and info["seed"] == 3
    assert lung["native_spacing_mm"] == [[2.5, 2.5, 3.0]] * 5
    original = np.load(run / "results/lung_ct/preprocessed/lung004/slices.npz")["slices"]
    packed = translator_full.load_pack(tmp_path / "pack", "lung_ct")
    assert packed["val_slices"].dtype == np.float32
    np.testing.assert_allclose(packed["val_slices"][:6], original, atol=2e-3, rtol=0)
    assert packed["val_subject_ids"].tolist() == [0] * 6 + [1] * 6


@pytest.mark.parametrize(
    ("done", "epoch_s", "remaining", "expected"),
    [
        (1, 10.0, 1000.0, 2),  # doubles while time allows
        (8, 10.0, 1000.0, 16),
        (8, 10.0, 45.0, 12),  # fewer than double: 4 epochs and the check fit
        (8, 10.0, 12.0, 8),  # no whole epoch fits: stop
        (64, 1.0, 1000.0, 100),  # never past the published count
        (4, float("nan"), 1000.0, 4),
    ],
)
def test_next_stage_doubles_within_the_budget(done, epoch_s, remaining, expected):
    assert translator_full.next_stage(done, epoch_s, 5.0, remaining, 100) == expected


def test_example_rows_are_mid_organ_slices_of_the_first_val_subject():
    roi = np.zeros((10, 8, 8), bool)
    for row, width in enumerate([1, 2, 6, 8, 8, 8, 7, 2, 8, 8]):
        roi[row, :width, :width] = True
    subjects = np.array([0] * 8 + [1] * 2)
    rows = translator_full.example_rows(roi, subjects, n=3)
    assert set(rows) <= {2, 3, 4, 5, 6} and len(rows) == 3


def test_training_in_stages_checks_after_each_and_stores_the_section(full_run, tmp_path):
    run, configfiles = full_run
    pack_dir = tmp_path / "pack"
    translator_full.pack(run, pack_dir, configfiles)
    out = tmp_path / "out"
    data = translator_full.train(pack_dir, out, budget_s=6.0, device="cpu",
                                 datasets=("lung_ct",), progress=lambda _: None)
    rows = data["rows"]
    epochs = [row["epochs"] for row in rows]
    # Stages of doubling epochs (the last may be shorter), within the budget.
    assert epochs[0] == 1 and all(b > a for a, b in zip(epochs, epochs[1:], strict=False))
    assert all(b <= 2 * a for a, b in zip(epochs, epochs[1:], strict=False))
    assert rows[-1]["elapsed_s"] < 6.0 + rows[-1]["stage_train_s"] + rows[-1]["check_s"]
    assert rows[-1]["steps"] == epochs[-1] * rows[0]["steps"]
    for key in ("own_over_other", "own_over_mean_image", "detail_own", "detail_blurred_input"):
        assert np.isfinite(rows[-1][key])
    assert json.loads((out / translator_full.RESULT_NAME).read_text())["rows"] == rows
    with np.load(out / translator_full.EXAMPLES_NAME) as examples:
        assert examples["lung_ct/input"].shape == examples["lung_ct/recon_last"].shape
        assert int(examples["lung_ct/epochs_last"]) == epochs[-1]

    # Two device runs of one pack become one measurement; the section names both.
    target = translator_full.store([out / translator_full.RESULT_NAME] * 2, tmp_path / "m")
    record = json.loads(target.read_text())
    assert record["section"] == "translator_full" and len(record["data"]["runs"]) == 2
    text = translator_full.render(record["data"])
    assert "lung_ct was trained 2 times" in text
    assert "2.5 to 3.0 mm voxels" in text and "coarser than the working grid" in text
    assert text.count("| lung_ct |") == 2 * len(rows)
    translator_full.figure([out / translator_full.EXAMPLES_NAME], tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0


def test_store_refuses_runs_of_different_packs(tmp_path):
    base = {"rows": [], "machine": {}, "budget_s": 1.0, "device": "cpu"}
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({**base, "pack": {"seed": 0}}))
    second.write_text(json.dumps({**base, "pack": {"seed": 1}}))
    with pytest.raises(ValueError, match="different packs"):
        translator_full.store([first, second], tmp_path)


def test_render_without_finished_stages():
    assert translator_full.render({"runs": []}) == "No stage finished.\n"
