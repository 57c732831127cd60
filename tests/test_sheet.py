"""`python -m arepas.sheet` writes sheets that the workflow accepts, or one clear error and no
sheet."""

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from arepas import cohort, sheet

ATLAS_SPACE = "space-MNI152NLin2009aSym"
_counter = iter(range(1, 10_000))


def _nii(path, mask=False):
    """A tiny volume; every image differs, so the shared-scan check sees different scans."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mask:
        data = np.zeros((4, 4, 4), np.uint8)
        data[1:3, 1:3, 1:3] = 1
    else:
        data = np.full((4, 4, 4), next(_counter), np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def _participants(root, rows, columns=("participant_id", "split", "age")):
    lines = ["\t".join(columns)] + ["\t".join(row) for row in rows]
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")


SPLITS = {"r001s001": "train", "r001s002": "train", "r001s003": "val", "r001s004": "test",
          "r001s005": "test", "r001s006": "predict"}


@pytest.fixture
def atlas(tmp_path):
    """An ATLAS R2.0-like tree: images in MNI space, masks label-L in derivatives/ATLAS."""
    root = tmp_path / "bids"
    for sub, split in SPLITS.items():
        anat = root / f"sub-{sub}" / "ses-1" / "anat"
        _nii(anat / f"sub-{sub}_ses-1_{ATLAS_SPACE}_T1w.nii.gz")
        if split in ("test", "predict"):
            _nii(
                root / "derivatives" / "ATLAS" / f"sub-{sub}" / "ses-1" / "anat"
                / f"sub-{sub}_ses-1_{ATLAS_SPACE}_label-L_desc-T1lesion_mask.nii.gz",
                mask=True,
            )
    _participants(root, [(f"sub-{s}", v, "60") for s, v in SPLITS.items()])
    return root


def _run(*argv):
    return sheet.main([str(a) for a in argv])


def _accepted(path, datasets):
    """The checks the workflow runs on a sheet before any job."""
    table = cohort.resolve_paths(cohort.read_sheet(path), path.parent)
    cohort.check_sheet(table, datasets)
    return table


def _fails(capsys, out, *argv, fragments=()):
    assert _run(*argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err
    assert not out.exists() and not [p for p in out.parent.glob(".*") if out.name in p.name]
    return err


def test_bids_atlas_layout(atlas, tmp_path, capsys):
    out = tmp_path / "sheets" / "subjects.tsv"
    assert _run("bids", atlas, "--dataset", "brain_t1", "--out", out,
                "--split-column", "split", "--derivatives", "ATLAS") == 0
    assert "wrote 6 subjects (2 train, 1 val, 2 test, 1 predict)" in capsys.readouterr().out
    table = _accepted(out, {"brain_t1": {"modality": "mri"}})
    assert list(table["subject"]) == [
        f"sub-{s}_ses-1" for s in ("r001s001", "r001s002", "r001s003", "r001s004", "r001s005",
                                   "r001s006")
    ]
    raw = cohort.read_sheet(out).set_index("subject")
    # Relative to the sheet's folder; masks only where they are used.
    assert raw.loc["sub-r001s004_ses-1", "image"] == (
        f"../bids/sub-r001s004/ses-1/anat/sub-r001s004_ses-1_{ATLAS_SPACE}_T1w.nii.gz"
    )
    assert raw.loc["sub-r001s004_ses-1", "lesion"].startswith("../bids/derivatives/ATLAS/")
    assert raw.loc["sub-r001s006_ses-1", "lesion"] == ""
    assert set(raw["dataset"]) == {"brain_t1"}


def test_bids_masks_found_without_derivatives_and_one_session(atlas, tmp_path):
    out = tmp_path / "subjects.tsv"
    assert _run("bids", atlas, "--dataset", "brain_t1", "--out", out,
                "--split-column", "split", "--session", "ses-1") == 0
    table = _accepted(out, {"brain_t1": {}})
    assert "sub-r001s004" in set(table["subject"])  # --session: the id omits it
    assert table.set_index("subject").loc["sub-r001s005", "lesion"].endswith("_mask.nii.gz")


def test_bids_generic_masks_split_list_and_sessions(tmp_path, capsys):
    root = tmp_path / "ds"
    for sub in ("01", "02", "03"):
        _nii(root / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii")
    for ses in ("1", "2"):
        _nii(root / "sub-04" / f"ses-{ses}" / "anat" / f"sub-04_ses-{ses}_T1w.nii.gz")
    lesions = root / "derivatives" / "lesions"
    _nii(lesions / "sub-03" / "anat" / "sub-03_label-lesion_mask.nii.gz", mask=True)
    _nii(lesions / "sub-04" / "ses-2" / "anat" / "sub-04_ses-2_label-lesion_dseg.nii.gz",
         mask=True)
    # Another pipeline's brain mask and the raw tree's own files are not lesion masks.
    _nii(root / "derivatives" / "fmriprep" / "sub-01" / "anat" / "sub-01_desc-brain_mask.nii.gz",
         mask=True)
    splits = tmp_path / "splits.tsv"
    splits.write_text("subject\tsplit\n# healthy\nsub-01\ttrain\n02 val\nsub-03\ttest\n"
                      "sub-04\ttest\n")
    out = tmp_path / "subjects.tsv"
    # sub-04's first session has no mask: a test subject cannot be evaluated without one.
    _fails(capsys, out, "bids", root, "--dataset", "brain_t1", "--out", out,
           "--split-list", splits, fragments=["test subject(s) without a lesion mask",
                                              "sub-04_ses-1"])
    splits.write_text(splits.read_text().replace("sub-04\ttest", "sub-04\tpredict"))
    assert _run("bids", root, "--dataset", "brain_t1", "--out", out, "--split-list", splits) == 0
    table = _accepted(out, {"brain_t1": {}}).set_index("subject")
    assert list(table.index) == ["sub-01", "sub-02", "sub-03", "sub-04_ses-1", "sub-04_ses-2"]
    assert table.loc["sub-03", "lesion"].endswith("sub-03_label-lesion_mask.nii.gz")
    assert table.loc["sub-04_ses-2", "split"] == "predict"
    assert table.loc["sub-04_ses-2", "lesion"] == ""  # predict rows are not evaluated


def test_bids_errors(atlas, tmp_path, capsys):
    out = tmp_path / "subjects.tsv"
    base = ("bids", atlas, "--dataset", "brain_t1", "--out", out)
    _fails(capsys, out, *base, "--split-column", "group",
           fragments=["no column 'group'", "['participant_id', 'split', 'age']"])
    _participants(atlas, [(f"sub-{s}", "training" if v == "train" else v, "60")
                          for s, v in SPLITS.items()])
    _fails(capsys, out, *base, "--split-column", "split",
           fragments=["participants.tsv' line 2", "split 'training'", "sub-r001s001",
                      "train, val, test, predict"])
    _participants(atlas, [(f"sub-{s}", "test", "60") for s in SPLITS])
    _fails(capsys, out, *base, "--split-column", "split",
           fragments=["test subject(s) without a lesion mask: sub-r001s001_ses-1"])
    _participants(atlas, [(f"sub-{s}", v, "60") for s, v in SPLITS.items() if s != "r001s003"])
    _fails(capsys, out, *base, "--split-column", "split",
           fragments=["no split in column 'split' for sub-r001s003"])
    stray = (atlas / "derivatives" / "ATLAS" / "sub-r009s001" / "ses-1" / "anat"
             / f"sub-r009s001_ses-1_{ATLAS_SPACE}_label-L_desc-T1lesion_mask.nii.gz")
    _nii(stray, mask=True)
    _participants(atlas, [(f"sub-{s}", v, "60") for s, v in SPLITS.items()])
    _fails(capsys, out, *base, "--split-column", "split",
           fragments=[str(stray), "sub-r009s001, which has no image"])
    stray.unlink()
    # One mask in the raw tree, one in derivatives: which is meant is not for us to guess.
    twin = (atlas / "sub-r001s004" / "ses-1" / "anat"
            / f"sub-r001s004_ses-1_{ATLAS_SPACE}_label-L_desc-T1lesion_mask.nii.gz")
    _nii(twin, mask=True)
    _fails(capsys, out, *base, "--split-column", "split",
           fragments=["two lesion masks for", str(twin), "--derivatives"])
    twin.unlink()
    _fails(capsys, out, *base, "--split-column", "split", "--derivatives", "nope",
           fragments=["derivatives folder 'nope' not found"])
    _fails(capsys, out, *base, "--split-column", "split", "--session", "2",
           fragments=["has no T1w image in session '2'"])


def test_bids_folder_without_images(tmp_path, capsys):
    root = tmp_path / "empty"
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "sub-01" / "anat" / "sub-01_T2w.nii.gz").write_bytes(b"")
    _participants(root, [("sub-01", "train", "1")])
    out = tmp_path / "subjects.tsv"
    _fails(capsys, out, "bids", root, "--dataset", "d", "--out", out, "--split-column", "split",
           fragments=[f"BIDS folder '{root}' has no T1w image"])
    _fails(capsys, out, "bids", tmp_path / "absent", "--dataset", "d", "--out", out,
           "--split-column", "split", fragments=["does not exist"])


def test_a_split_source_is_required(atlas, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        _run("bids", atlas, "--dataset", "brain_t1", "--out", tmp_path / "s.tsv")
    assert exit_.value.code != 0
    assert not (tmp_path / "s.tsv").exists()


def test_an_existing_sheet_needs_force(atlas, tmp_path, capsys):
    out = tmp_path / "subjects.tsv"
    out.write_text("mine\n")
    argv = ("bids", atlas, "--dataset", "brain_t1", "--out", out, "--split-column", "split")
    assert _run(*argv) == 1
    assert "exists; pass --force" in capsys.readouterr().err
    assert out.read_text() == "mine\n"
    assert _run(*argv, "--force") == 0
    assert len(cohort.read_sheet(out)) == 6


def test_a_failed_write_leaves_no_sheet(atlas, tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    out = tmp_path / "subjects.tsv"
    _fails(capsys, out, "bids", atlas, "--dataset", "brain_t1", "--out", out,
           "--split-column", "split", fragments=["cannot write", "No space left"])


@pytest.fixture
def ct(tmp_path):
    for n in range(1, 6):
        _nii(tmp_path / "ct" / "images" / f"case{n:03d}.nii.gz")
    for n in (4, 5):
        _nii(tmp_path / "ct" / "labels" / f"case{n:03d}.nii.gz", mask=True)
    return tmp_path / "ct"


def test_pattern_mode(ct, tmp_path, capsys):
    splits = tmp_path / "splits.tsv"
    splits.write_text("case001\ttrain\ncase002\ttrain\ncase003\tval\ncase004\ttest\n"
                      "case005\ttest\ncase999\ttrain\n")
    out = ct / "subjects.tsv"
    assert _run("pattern", "--images", ct / "images" / "*.nii.gz", "--lesions",
                ct / "labels" / "*.nii.gz", "--dataset", "lung_ct", "--out", out,
                "--split-list", splits) == 0
    assert "names subjects without an image: case999" in capsys.readouterr().err
    table = _accepted(out, {"lung_ct": {"modality": "ct"}}).set_index("subject")
    assert list(table["split"]) == ["train", "train", "val", "test", "test"]
    raw = cohort.read_sheet(out).set_index("subject")
    assert raw.loc["case004", "image"] == "images/case004.nii.gz"
    assert raw.loc["case004", "lesion"] == "labels/case004.nii.gz"


def test_pattern_mode_subject_regex_and_one_split(tmp_path):
    for n in (7, 12):
        _nii(tmp_path / "LIDC" / f"LIDC-IDRI-{n:04d}" / "scan" / "ct.nii.gz")
    out = tmp_path / "subjects.tsv"
    assert _run("pattern", "--images", tmp_path / "LIDC" / "**" / "*.nii.gz",
                "--subject-regex", r"(?P<subject>LIDC-IDRI-\d+)/", "--dataset", "lung_ct",
                "--out", out, "--split", "predict") == 0
    table = cohort.read_sheet(out)
    assert list(table["subject"]) == ["LIDC-IDRI-0007", "LIDC-IDRI-0012"]
    assert set(table["split"]) == {"predict"}
    assert table["image"][0] == "LIDC/LIDC-IDRI-0007/scan/ct.nii.gz"


def test_pattern_errors(ct, tmp_path, capsys):
    out = tmp_path / "subjects.tsv"
    images = ("pattern", "--images", ct / "images" / "*.nii.gz", "--dataset", "lung_ct",
              "--out", out)
    _fails(capsys, out, *images, "--split", "test",
           fragments=["test subject(s) without a lesion mask: case001"])
    _fails(capsys, out, *images, "--split", "healthy", fragments=["split 'healthy'"])
    _nii(ct / "labels" / "case042.nii.gz", mask=True)
    _fails(capsys, out, *images, "--lesions", ct / "labels" / "*.nii.gz", "--split", "predict",
           fragments=["case042.nii.gz", "matches no image"])
    _fails(capsys, out, *images, "--subject-regex", r"patient(\d+)", "--split", "train",
           fragments=["does not match", "case001.nii.gz"])
    _fails(capsys, out, *images, "--subject-regex", r"(case)\d+", "--split", "train",
           fragments=["both give subject id 'case'"])
    _fails(capsys, out, *images, "--subject-regex", r"(case\d+\.nii)", "--split", "train",
           fragments=["subject id 'case001.nii'"])
    _fails(capsys, out, "pattern", "--images", ct / "nothing" / "*.nii", "--dataset", "d",
           "--out", out, "--split", "train", fragments=["no NIfTI file", "nothing"])


def test_the_module_runs_from_the_command_line(ct, tmp_path):
    out = tmp_path / "subjects.tsv"
    command = [sys.executable, "-m", "arepas.sheet", "pattern", "--images",
               str(ct / "images" / "*.nii.gz"), "--dataset", "lung_ct", "--out", str(out),
               "--split", "train"]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          cwd=os.path.dirname(os.path.dirname(sheet.__file__)))
    assert done.returncode == 0, done.stderr
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and "exists; pass --force" in done.stderr


def test_two_images_of_one_session(atlas, tmp_path, capsys):
    anat = atlas / "sub-r001s001" / "ses-1" / "anat"
    _nii(anat / "sub-r001s001_ses-1_T1w.nii.gz")  # the native-space image beside the MNI one
    out = tmp_path / "subjects.tsv"
    _fails(capsys, out, "bids", atlas, "--dataset", "brain_t1", "--out", out,
           "--split-column", "split", fragments=["two T1w images of one participant",
                                                 "sub-r001s001_ses-1_T1w.nii.gz"])
