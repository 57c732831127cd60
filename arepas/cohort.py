"""The subjects sheet: reading it, checking it against the config, and the demo cohorts' rows.

Checks here run when the workflow's DAG is built, so they read headers only (and a few sampled
blocks of equal-sized images, to find one scan used twice); voxel-level checks (NaN, binary
masks) run at the start of each subject's preprocessing, before any training.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from arepas.io import InputError, open_nifti

COLUMNS = ["subject", "dataset", "split", "image", "lesion", "roi"]
SPLITS = ("train", "val", "test", "predict")


class SheetError(ValueError):
    """The sheet itself is malformed (as opposed to one subject's file)."""


def read_sheet(path: str | Path) -> pd.DataFrame:
    """Read the tab-separated sheet; empty cells become empty strings."""
    path = Path(path)
    if not path.exists():
        raise SheetError(f"subjects sheet '{path}' does not exist")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in ("subject", "dataset", "split", "image") if c not in table.columns]
    if missing:
        raise SheetError(f"subjects sheet '{path}' lacks the column(s) {missing}")
    for column in ("lesion", "roi"):
        if column not in table.columns:
            table[column] = ""
    return table[COLUMNS].apply(lambda col: col.str.strip())


def resolve_paths(table: pd.DataFrame, sheet_dir: str | Path) -> pd.DataFrame:
    """Make relative file paths relative to the sheet's folder, as the data contract says."""
    sheet_dir = Path(sheet_dir)
    out = table.copy()
    for column in ("image", "lesion", "roi"):
        out[column] = [
            str(p) if not p or Path(p).is_absolute() else str(sheet_dir / p) for p in out[column]
        ]
    return out


def check_sheet(
    table: pd.DataFrame, datasets: dict, check_files: bool = True
) -> dict[str, tuple[tuple[int, ...], np.ndarray]]:
    """Stop on the sheet errors that can be seen before any heavy work.

    ``table`` holds resolved paths. With ``check_files`` every image and mask must exist, be a 3D
    NIfTI with a positive voxel size and an invertible affine, masks must share their image's
    grid, and no two subjects may use the same scan (:func:`check_shared_scans`). Returns the
    grid (shape, affine) of every image read on the way, so that nothing reads its header again.
    """
    grids: dict[str, tuple[tuple[int, ...], np.ndarray]] = {}
    dupes = table["subject"][table["subject"].duplicated()].unique().tolist()
    if dupes:
        raise SheetError(f"subject id(s) {dupes} appear more than once in the sheet")
    for row in table.itertuples(index=False):
        if row.dataset not in datasets:
            raise InputError(
                row.subject,
                "dataset",
                row.image,
                f"unknown dataset '{row.dataset}'; the config defines {sorted(datasets)}",
            )
        if row.split not in SPLITS:
            raise InputError(
                row.subject,
                "split",
                row.image,
                f"unknown split '{row.split}', expected one of {SPLITS}",
            )
        if row.split == "test" and not row.lesion:
            raise InputError(row.subject, "lesion", "", "a test subject needs a lesion mask")
        if row.split != "test" and row.lesion:
            warnings.warn(
                f"subject '{row.subject}': lesion mask given for split '{row.split}' "
                "is not used (only test subjects are evaluated)",
                stacklevel=2,
            )
        if check_files:
            image = check_subject_files(row._asdict())
            grids[row.image] = (tuple(image.shape[:3]), image.affine)
    if check_files:
        check_shared_scans(table)
    for name in {r.dataset for r in table.itertuples()}:
        splits = set(table.loc[table["dataset"] == name, "split"])
        for needed in ("train", "val"):
            if needed not in splits:
                raise SheetError(
                    f"dataset '{name}' has no '{needed}' subjects; "
                    "training needs healthy train and val subjects"
                )
    return grids


def check_subject_files(row: dict) -> nib.Nifti1Image:
    """Header-level checks of one subject's files (cheap: no voxel data is read); the image,
    opened."""
    image = open_nifti(row["image"], row["subject"], "image")
    for column in ("lesion", "roi"):
        if not row.get(column):
            continue
        mask = open_nifti(row[column], row["subject"], column)
        if mask.shape[:3] != image.shape[:3]:
            raise InputError(
                row["subject"],
                column,
                row[column],
                f"shape {mask.shape[:3]} differs from the image's {image.shape[:3]}",
            )
        if not (abs(mask.affine - image.affine) <= 1e-3).all():
            raise InputError(
                row["subject"],
                column,
                row[column],
                "affine differs from the image's: the mask must be on the image's grid",
            )
    return image


# The sampled-content fingerprint: the NIfTI-1 header, and a few blocks spread over the file.
HEADER_BYTES = 352
SAMPLE_BLOCKS = 8
SAMPLE_BLOCK_BYTES = 64 * 1024


def check_shared_scans(table: pd.DataFrame) -> None:
    """Stop when two subjects' images are one scan: a training scan among the test subjects
    inflates every Dice, and the workflow would never notice.

    Images are compared by resolved path (symlinks, one file named twice), then files of equal
    size by header and sampled content (:func:`scan_fingerprint`), never by whole-file hashes.
    Only the ``image`` column counts: masks may be shared legitimately (one ROI for a cohort).
    """
    rows = [(r.subject, r.split, r.image) for r in table.itertuples(index=False) if r.image]
    seen: dict[str, tuple[str, str, str]] = {}
    for row in rows:
        real = os.path.realpath(row[2])
        if real in seen:
            _shared_scan_error(seen[real], row, f"both resolve to the same file '{real}'")
        seen[real] = row
    # Size first: it costs a stat, and scans of different size are different scans.
    by_size: dict[int, list[tuple[str, str, str]]] = defaultdict(list)
    for real, row in seen.items():
        by_size[os.path.getsize(real)].append(row)
    for group in by_size.values():
        if len(group) < 2:
            continue
        by_print: dict[bytes, tuple[str, str, str]] = {}
        for row in group:
            key = scan_fingerprint(row[2])
            if key in by_print:
                _shared_scan_error(
                    by_print[key], row, "have identical size, header and sampled content"
                )
            by_print[key] = row


def scan_fingerprint(path: str | os.PathLike) -> bytes:
    """Size, header bytes and a BLAKE2b hash of evenly spaced blocks of a file (a few hundred
    KiB read at most, whatever its size).

    The bytes are those on disk: for a ``.nii.gz`` the compressed stream, so a copy of a file is
    caught but not the same scan compressed again or stored once as ``.nii`` and once as
    ``.nii.gz``.
    """
    size = os.path.getsize(path)
    digest = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as handle:
        header = handle.read(HEADER_BYTES)
        if size <= SAMPLE_BLOCKS * SAMPLE_BLOCK_BYTES:
            offsets = [0]
            length = size
        else:
            step = (size - SAMPLE_BLOCK_BYTES) / (SAMPLE_BLOCKS - 1)
            offsets = [round(i * step) for i in range(SAMPLE_BLOCKS)]
            length = SAMPLE_BLOCK_BYTES
        for offset in offsets:
            handle.seek(offset)
            digest.update(handle.read(length))
    return size.to_bytes(8, "little") + header + digest.digest()


def _shared_scan_error(first: tuple[str, str, str], second: tuple[str, str, str], how: str):
    (subject_a, split_a, path_a), (subject_b, split_b, path_b) = first, second
    raise SheetError(
        f"subjects '{subject_a}' ({split_a}) and '{subject_b}' ({split_b}) use the same scan: "
        f"'{path_a}' and '{path_b}' {how}; a scan in two subjects (or two splits) leaks "
        "training data into the evaluation: keep it in one subject only"
    )


def demo_sheet(demo: dict, folder: str = "results/demo") -> pd.DataFrame:
    """Rows of the bundled demo cohorts (paths relative to the sheet's folder, ``folder``)."""
    rows = []
    factor = 3 if demo.get("large") else 1
    for dataset, counts in demo.get("counts", {}).items():
        prefix = {"lung_ct": "lung", "brain_t1": "brain"}.get(dataset, dataset)
        n = 0
        for split in SPLITS:
            for _ in range(counts.get(split, 0) * factor):
                n += 1
                subject = f"{prefix}{n:03d}"
                rows.append(
                    {
                        "subject": subject,
                        "dataset": dataset,
                        "split": split,
                        "image": f"{dataset}/{subject}_image.nii.gz",
                        "lesion": f"{dataset}/{subject}_lesion.nii.gz" if split == "test" else "",
                        "roi": "",
                    }
                )
    return pd.DataFrame(rows, columns=COLUMNS)


def demo_numbers(sheet: pd.DataFrame) -> list[int]:
    """Each demo row's position among its dataset's rows (0-based, in sheet order: train, val,
    test, predict), the number its phantom is generated from: a subject then depends only on its
    dataset, that position and the demo seed, so one cohort's counts do not change the other's
    subjects, and more test subjects leave the train and val subjects as they were."""
    return [int(n) for n in sheet.groupby("dataset", sort=False).cumcount()]

