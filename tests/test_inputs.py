"""Bad input stops early with one message naming the subject, the column and the file."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from arepas import cohort, io, pipeline

DATASETS = {"lung_ct": {"modality": "ct"}}


def _write(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return str(path)


@pytest.fixture
def cohort_dir(tmp_path):
    lesion = np.zeros((8, 8, 6), np.uint8)
    lesion[3:5, 3:5, 2:4] = 1
    # Three different scans: one scan in two subjects is an error of its own (test_duplicates).
    for n, name in enumerate(("a", "b", "c")):
        _write(tmp_path / f"{name}.nii.gz", np.full((8, 8, 6), -900 + n, np.int16))
    _write(tmp_path / "c_lesion.nii.gz", lesion)
    return tmp_path


def _sheet(rows):
    table = pd.DataFrame(rows)
    for column in ("lesion", "roi"):
        if column not in table:
            table[column] = ""
    return table.fillna("")[cohort.COLUMNS]


def _good_rows(d):
    return [
        {"subject": "a", "dataset": "lung_ct", "split": "train", "image": f"{d}/a.nii.gz"},
        {"subject": "b", "dataset": "lung_ct", "split": "val", "image": f"{d}/b.nii.gz"},
        {
            "subject": "c",
            "dataset": "lung_ct",
            "split": "test",
            "image": f"{d}/c.nii.gz",
            "lesion": f"{d}/c_lesion.nii.gz",
        },
    ]


def test_a_good_sheet_passes(cohort_dir):
    cohort.check_sheet(_sheet(_good_rows(cohort_dir)), DATASETS)


def _expect(rows, *fragments, datasets=DATASETS):
    with pytest.raises((io.InputError, cohort.SheetError)) as err:
        cohort.check_sheet(_sheet(rows), datasets)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_missing_file(cohort_dir):
    rows = _good_rows(cohort_dir)
    rows[0]["image"] = f"{cohort_dir}/missing.nii.gz"
    _expect(rows, "subject 'a'", "column 'image'", "missing.nii.gz", "does not exist")


def test_unreadable_nifti(cohort_dir):
    (cohort_dir / "broken.nii.gz").write_bytes(b"not a nifti at all")
    rows = _good_rows(cohort_dir)
    rows[1]["image"] = f"{cohort_dir}/broken.nii.gz"
    _expect(rows, "subject 'b'", "column 'image'", "broken.nii.gz", "cannot be read")


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 6, 3)])
def test_not_3d(cohort_dir, shape):
    path = _write(cohort_dir / "wrong_dims.nii.gz", np.zeros(shape, np.float32))
    rows = _good_rows(cohort_dir)
    rows[0]["image"] = path
    _expect(rows, "subject 'a'", "column 'image'", "expected a 3D volume")


def test_mask_on_another_grid(cohort_dir):
    rows = _good_rows(cohort_dir)
    rows[2]["lesion"] = _write(cohort_dir / "small.nii.gz", np.zeros((8, 8, 5), np.uint8))
    _expect(rows, "subject 'c'", "column 'lesion'", "small.nii.gz", "shape")
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    rows[2]["lesion"] = _write(
        cohort_dir / "shifted.nii.gz", np.zeros((8, 8, 6), np.uint8), shifted
    )
    _expect(rows, "subject 'c'", "column 'lesion'", "shifted.nii.gz", "affine")


def test_unknown_dataset_duplicate_and_test_without_lesion(cohort_dir):
    rows = _good_rows(cohort_dir)
    rows[0]["dataset"] = "liver_mr"
    _expect(rows, "subject 'a'", "column 'dataset'", "unknown dataset 'liver_mr'")
    rows = _good_rows(cohort_dir)
    rows[1]["subject"] = "a"
    _expect(rows, "['a']", "more than once")
    rows = _good_rows(cohort_dir)
    rows[2]["lesion"] = ""
    _expect(rows, "subject 'c'", "column 'lesion'", "needs a lesion mask")


def test_zero_voxel_size(cohort_dir):
    path = cohort_dir / "flat.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 6), np.float32), np.eye(4)), str(path))
    raw = bytearray(path.read_bytes())
    raw[88:92] = np.float32(0.0).tobytes()  # pixdim[3]: nibabel would not write a zero itself
    path.write_bytes(bytes(raw))
    rows = _good_rows(cohort_dir)
    rows[0]["image"] = str(path)
    _expect(rows, "subject 'a'", "column 'image'", "flat.nii", "voxel size must be positive")


def test_nan_voxels_and_non_binary_mask(cohort_dir):
    data = np.zeros((8, 8, 6), np.float32)
    data[1, 1, 1] = np.nan
    path = _write(cohort_dir / "nan.nii.gz", data)
    with pytest.raises(
        io.InputError, match=r"subject 'a', column 'image', file '.*nan.nii.gz': 1 voxels"
    ):
        io.load_volume(path, "a", "image")
    mask = np.zeros((8, 8, 6), np.float32)
    mask[2, 2, 2] = 0.5
    path = _write(cohort_dir / "soft.nii.gz", mask)
    with pytest.raises(io.InputError, match="not binary"):
        io.load_mask(path, "c", "lesion", (8, 8, 6), np.eye(4))


def test_ct_not_in_hounsfield_units_warns_with_the_range(recwarn):
    image = np.random.default_rng(0).integers(0, 4096, (8, 8, 6)).astype(np.float32)
    pipeline.check_subject_data("s1", {"image": "s1.nii.gz"}, image, None, None, "ct")
    assert any("0..4095" in str(w.message) or "Hounsfield" in str(w.message) for w in recwarn)


def test_empty_lesion_warns_and_empty_roi_stops():
    image = np.full((8, 8, 6), -900.0, np.float32)
    with pytest.warns(UserWarning, match="lesion mask is empty"):
        pipeline.check_subject_data(
            "s1",
            {"image": "i", "lesion": "l.nii.gz"},
            image,
            np.zeros(image.shape, bool),
            None,
            "ct",
        )
    with pytest.raises(io.InputError, match="subject 's1', column 'roi', file 'r.nii.gz'"):
        pipeline.check_subject_data(
            "s1", {"image": "i", "roi": "r.nii.gz"}, image, None, np.zeros(image.shape, bool), "ct"
        )


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_disk_full_gives_a_clear_error_and_no_file(tmp_path, monkeypatch):
    import errno

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", no_space)
    target = tmp_path / "maps" / "s1.npz"
    with pytest.raises(OSError, match=r"cannot write '.*s1.npz': No space left on device"):
        io.save_arrays(target, a=np.zeros(3))
    assert list(target.parent.iterdir()) == []


def test_unwritable_results_folder_gives_a_clear_error(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be")
    with pytest.raises(OSError, match=r"cannot write '.*results/lung_ct/roi.nii.gz'"):
        io.save_volume(blocker / "lung_ct" / "roi.nii.gz", np.zeros((2, 2, 2)), np.eye(4))


def test_a_folder_without_write_permission_names_the_file_and_the_fix(tmp_path, monkeypatch):
    import errno

    # What a shared folder created by another member gives (simulated: the tests run as root).
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(np, "savez_compressed", denied)
    target = tmp_path / "results" / "lung_ct" / "maps" / "s1.npz"
    with pytest.raises(OSError) as error:
        io.save_arrays(target, a=np.zeros(3))
    message = str(error.value)
    assert f"cannot write '{target}': Permission denied" in message
    assert f"make '{target.parent}' writable" in message and "chmod -R g+w" in message
    assert list(target.parent.iterdir()) == []
