"""One scan in two subjects stops the workflow at the start: a training scan among the test
subjects would inflate every Dice."""

import os
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from arepas import cohort

DATASETS = {"brain_t1": {"modality": "mri"}}
SHAPE = (64, 64, 40)  # float32, uncompressed: 640 KiB, over the 512 KiB read whole


def _scan(path, seed):
    data = np.random.default_rng(seed).normal(100, 20, SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return str(path)


@pytest.fixture
def scans(tmp_path):
    lesion = np.zeros(SHAPE, np.uint8)
    lesion[10:14, 10:14, 10:14] = 1
    nib.save(nib.Nifti1Image(lesion, np.eye(4)), str(tmp_path / "lesion.nii"))
    return {name: _scan(tmp_path / f"{name}.nii", n) for n, name in enumerate("abc")}


def _table(scans, **images):
    rows = [
        {"subject": "a", "split": "train", "image": scans["a"], "lesion": ""},
        {"subject": "b", "split": "val", "image": scans["b"], "lesion": ""},
        {
            "subject": "c",
            "split": "test",
            "image": scans["c"],
            "lesion": os.path.join(os.path.dirname(scans["c"]), "lesion.nii"),
        },
    ]
    for row in rows:
        row["image"] = images.get(row["subject"], row["image"])
    table = pd.DataFrame(rows).assign(dataset="brain_t1", roi="")
    return table[cohort.COLUMNS]


def _shared(table, *fragments):
    with pytest.raises(cohort.SheetError) as err:
        cohort.check_sheet(table, DATASETS)
    message = str(err.value)
    for fragment in ("leaks training data into the evaluation", *fragments):
        assert fragment in message
    return message


def test_different_scans_of_equal_size_pass(scans):
    sizes = {os.path.getsize(p) for p in scans.values()}
    assert len(sizes) == 1  # same size and header: only the sampled content tells them apart
    cohort.check_sheet(_table(scans), DATASETS)


def test_the_same_path_twice(scans):
    _shared(
        _table(scans, c=scans["a"]),
        "subjects 'a' (train) and 'c' (test) use the same scan",
        "resolve to the same file",
    )


def test_the_same_file_named_two_ways(scans):
    other = os.path.join(os.path.dirname(scans["a"]), ".", "a.nii")
    _shared(_table(scans, b=other), "'a' (train) and 'b' (val)", "resolve to the same file")


def test_a_symlink(scans, tmp_path):
    link = tmp_path / "elsewhere" / "scan.nii"
    link.parent.mkdir()
    link.symlink_to(scans["a"])
    message = _shared(_table(scans, c=str(link)), "'a' (train) and 'c' (test)")
    assert f"'{scans['a']}' and '{link}'" in message


@pytest.mark.parametrize("compressed", [False, True])
def test_a_byte_identical_copy(scans, tmp_path, compressed):
    source = scans["a"]
    if compressed:
        source = str(tmp_path / "a.nii.gz")
        nib.save(nib.load(scans["a"]), source)
    copy = tmp_path / "copies" / os.path.basename(source).replace("a.", "copy.")
    copy.parent.mkdir()
    shutil.copy(source, copy)
    message = _shared(
        _table(scans, a=source, c=str(copy)),
        "subjects 'a' (train) and 'c' (test) use the same scan",
        "identical size, header and sampled content",
    )
    assert f"'{source}' and '{copy}'" in message


def test_only_with_file_checks(scans):
    # The demo's sheet is checked before its files exist; nothing to compare then.
    cohort.check_sheet(_table(scans, c=scans["a"]), DATASETS, check_files=False)


def test_the_fingerprint_reads_sampled_blocks_only(scans, tmp_path):
    raw = bytearray(open(scans["a"], "rb").read())
    size = len(raw)
    assert size > cohort.SAMPLE_BLOCKS * cohort.SAMPLE_BLOCK_BYTES
    sampled, unsampled = tmp_path / "sampled.nii", tmp_path / "unsampled.nii"
    # The last block ends at the end of the file; a byte just before the second block's start
    # lies between blocks.
    step = (size - cohort.SAMPLE_BLOCK_BYTES) / (cohort.SAMPLE_BLOCKS - 1)
    gap = round(step) - 1
    assert gap >= cohort.SAMPLE_BLOCK_BYTES
    for path, offset in ((sampled, size - 1), (unsampled, gap)):
        changed = bytearray(raw)
        changed[offset] ^= 0xFF
        path.write_bytes(bytes(changed))
    original = cohort.scan_fingerprint(scans["a"])
    assert cohort.scan_fingerprint(sampled) != original
    assert cohort.scan_fingerprint(unsampled) == original  # the price of not reading it all
