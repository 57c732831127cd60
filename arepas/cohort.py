"""The subjects sheet: reading it, checking it against the config, and the demo cohorts' rows.

Checks here run when the workflow's DAG is built, so they read headers only; voxel-level checks
(NaN, binary masks) run at the start of each subject's preprocessing, before any training.
"""

from __future__ import annotations

import warnings
from pathlib import Path

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


def check_sheet(table: pd.DataFrame, datasets: dict, check_files: bool = True) -> None:
    """Stop on the sheet errors that can be seen before any heavy work.

    ``table`` holds resolved paths. With ``check_files`` every image and mask must exist, be a 3D
    NIfTI with a positive voxel size and an invertible affine, and masks must share their image's
    grid.
    """
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
            check_subject_files(row._asdict())
    for name in {r.dataset for r in table.itertuples()}:
        splits = set(table.loc[table["dataset"] == name, "split"])
        for needed in ("train", "val"):
            if needed not in splits:
                raise SheetError(
                    f"dataset '{name}' has no '{needed}' subjects; "
                    "training needs healthy train and val subjects"
                )


def check_subject_files(row: dict) -> None:
    """Header-level checks of one subject's files (cheap: no voxel data is read)."""
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

