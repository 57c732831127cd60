"""Write a subjects sheet from a BIDS folder or from file-name patterns.

    python -m arepas.sheet bids DIR --dataset NAME --out SHEET.tsv --split-column COL
    python -m arepas.sheet pattern --images GLOB --dataset NAME --out SHEET.tsv --split SPLIT

Splits always come from the user (a participants.tsv column, a list file, or one split for all):
guessing them from whether a subject has a lesion mask would silently put lesioned scans in
training whenever a mask is missing. Files are found by name only; the workflow checks their
headers and contents when it starts. Nothing is written unless every check passes, and the sheet
is written atomically.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd

from arepas.cohort import COLUMNS, SPLITS, SheetError
from arepas.io import save_table

SUBJECT_ID = re.compile(r"[A-Za-z0-9_-]+")
NIFTI = (".nii.gz", ".nii")
# ATLAS R2.0 names its lesion masks label-L; the BIDS examples use label-lesion.
LESION_LABELS = ("L", "lesion")
# Entities that tell two images of one participant apart; they make the sheet's subject id.
ID_ENTITIES = ("sub", "ses", "acq", "run")
MAX_LISTED = 10


class IntakeError(SheetError):
    """The folder, the split source or the options cannot give a valid sheet."""


# ---------------------------------------------------------------- BIDS


def bids_rows(
    root: str | os.PathLike,
    dataset: str,
    *,
    derivatives: str | None = None,
    split_column: str | None = None,
    split_list: str | os.PathLike | None = None,
    session: str | None = None,
    suffix: str = "T1w",
    lesion_labels: tuple[str, ...] = LESION_LABELS,
) -> tuple[list[dict], list[str]]:
    """Sheet rows (absolute paths) for the ``suffix`` images of a BIDS folder, and warnings."""
    root = Path(root).absolute()
    if not root.is_dir():
        raise IntakeError(f"BIDS folder '{root}' does not exist")
    session = _strip_prefix(session, "ses") if session else None
    images = _bids_images(root, suffix, session)
    participants = {e["sub"] for e, _ in images}
    masks = _match_masks(images, _bids_masks(root, derivatives, session, lesion_labels), root)
    if split_column is not None:
        splits, source = _participants_splits(root, split_column), f"column '{split_column}'"
    elif split_list is not None:
        listed, source = read_split_list(split_list), f"split list '{split_list}'"
        splits = {f"sub-{_strip_prefix(k, 'sub')}": v for k, v in listed.items()}
    else:
        raise IntakeError("give the splits: --split-column COLUMN or --split-list FILE")
    missing = sorted(f"sub-{p}" for p in participants if f"sub-{p}" not in splits)
    if missing:
        raise IntakeError(
            f"no split in {source} for {_listed(missing)}: give every participant in '{root}' "
            f"one of {', '.join(SPLITS)}"
        )
    rows = []
    for entities, path in images:
        keep = [k for k in ID_ENTITIES if k in entities and not (k == "ses" and session)]
        rows.append(
            {
                "subject": "_".join(f"{k}-{entities[k]}" for k in keep),
                "dataset": dataset,
                "split": splits[f"sub-{entities['sub']}"],
                "image": str(path),
                "lesion": str(masks.get(path, "")),
                "roi": "",
            }
        )
    return _finish(rows)


def _bids_images(root: Path, suffix: str, session: str | None) -> list[tuple[dict, Path]]:
    ses = f"ses-{session}" if session else "ses-*"
    patterns = [f"sub-*/{ses}/anat/sub-*_{suffix}.nii*"]
    if not session:
        patterns.append(f"sub-*/anat/sub-*_{suffix}.nii*")
    found = sorted({p for pattern in patterns for p in root.glob(pattern) if _is_nifti(p)})
    if not found:
        where = f" in session '{session}'" if session else ""
        raise IntakeError(
            f"BIDS folder '{root}' has no {suffix} image{where} "
            f"(looked for sub-*/[ses-*/]anat/sub-*_{suffix}.nii[.gz])"
        )
    images = [(_entities(p), p) for p in found]
    by_id: dict[tuple, Path] = {}
    for entities, path in images:
        key = tuple(entities.get(k) for k in ID_ENTITIES)
        if key in by_id:
            raise IntakeError(
                f"'{by_id[key]}' and '{path}' are two {suffix} images of one participant, "
                "session, acquisition and run (they differ in space, rec, ce or desc): move "
                "one out of the folder"
            )
        by_id[key] = path
    return images


def _bids_masks(
    root: Path, derivatives: str | None, session: str | None, labels: tuple[str, ...]
) -> list[tuple[dict, Path]]:
    if derivatives:
        folder = Path(derivatives)
        if not folder.is_dir():
            folder = root / "derivatives" / derivatives
        if not folder.is_dir():
            raise IntakeError(
                f"derivatives folder '{derivatives}' not found (neither a folder nor a pipeline "
                f"under '{root / 'derivatives'}')"
            )
        folders = [folder.absolute()]
    else:
        # Beside the images too: ATLAS R2.0 ships its masks in the images' anat folders.
        folders = [root, *sorted(p for p in (root / "derivatives").glob("*") if p.is_dir())]
    wanted = {label.lower() for label in labels}
    found = set()
    for folder in folders:
        for pattern in ("sub-*/anat/sub-*", "sub-*/ses-*/anat/sub-*"):
            found.update(p for p in folder.glob(pattern) if _is_nifti(p))
    masks = []
    for path in sorted(found):
        entities = _entities(path)
        lesion = entities.get("label", "").lower() in wanted or "lesion" in entities.get(
            "desc", ""
        ).lower()
        if entities["suffix"] not in ("mask", "dseg") or not lesion:
            continue
        if session and entities.get("ses", session) != session:
            continue
        masks.append((entities, path))
    return masks


def _match_masks(
    images: list[tuple[dict, Path]], masks: list[tuple[dict, Path]], root: Path
) -> dict[Path, Path]:
    """Each image's lesion mask: same participant, and the same session, acquisition, run and
    space wherever the mask names them (a mask in another space lies on another grid)."""
    by_participant = defaultdict(list)
    for entities, path in images:
        by_participant[entities["sub"]].append((entities, path))
    chosen: dict[Path, Path] = {}
    for entities, mask in masks:
        if entities["sub"] not in by_participant:
            raise IntakeError(
                f"lesion mask '{mask}' is for sub-{entities['sub']}, which has no image in "
                f"'{root}'"
            )
        hits = [path for image, path in by_participant[entities["sub"]] if _fits(entities, image)]
        if not hits:
            names = ", ".join(p.name for _, p in by_participant[entities["sub"]])
            raise IntakeError(
                f"lesion mask '{mask}' fits none of sub-{entities['sub']}'s images ({names}): "
                "session, acquisition, run and space must match"
            )
        if len(hits) > 1:
            raise IntakeError(
                f"lesion mask '{mask}' fits several images ({', '.join(map(str, hits))}): "
                "name the session or run in the mask, or pick a session with --session"
            )
        if hits[0] in chosen:
            raise IntakeError(
                f"two lesion masks for '{hits[0]}': '{chosen[hits[0]]}' and '{mask}'; "
                "pick a pipeline with --derivatives or remove one"
            )
        chosen[hits[0]] = mask
    return chosen


def _fits(mask: dict, image: dict) -> bool:
    if any(k in mask and mask[k] != image.get(k) for k in ("ses", "acq", "run")):
        return False
    # Raw images name no space; a derivative on their grid says space-orig or nothing.
    return mask.get("space", "orig") == image.get("space", "orig")


def _participants_splits(root: Path, column: str) -> dict[str, str]:
    path = root / "participants.tsv"
    if not path.exists():
        raise IntakeError(f"--split-column '{column}' needs '{path}', which does not exist")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    table.columns = [c.strip() for c in table.columns]
    for needed in ("participant_id", column):
        if needed not in table.columns:
            raise IntakeError(
                f"'{path}' has no column '{needed}'; its columns are {list(table.columns)}"
            )
    splits = {}
    pairs = zip(table["participant_id"], table[column], strict=True)
    for n, (participant, value) in enumerate(pairs, 2):  # line numbers, after the header
        value = value.strip().lower()
        if value in ("", "n/a"):
            continue
        if value not in SPLITS:
            raise IntakeError(
                f"'{path}' line {n}, column '{column}': split '{value}' for {participant} is "
                f"not one of {', '.join(SPLITS)}"
            )
        splits[f"sub-{_strip_prefix(participant.strip(), 'sub')}"] = value
    return splits


def _entities(path: Path) -> dict[str, str]:
    parts = _stem(path).split("_")
    entities = dict(p.split("-", 1) for p in parts[:-1] if "-" in p)
    entities["suffix"] = parts[-1]
    return entities


# ---------------------------------------------------------------- file-name patterns


def pattern_rows(
    images: str,
    dataset: str,
    *,
    lesions: str | None = None,
    subject_regex: str | None = None,
    lesion_regex: str | None = None,
    split: str | None = None,
    split_list: str | os.PathLike | None = None,
) -> tuple[list[dict], list[str]]:
    """Sheet rows (absolute paths) for the images a glob finds, and warnings.

    The subject id is the regex's group ``subject`` (else its first group, else its match),
    searched in each path; without a regex, the file name less .nii/.nii.gz.
    """
    image_ids = _ids_by_glob(images, "--images", subject_regex)
    lesion_ids = {}
    if lesions:
        lesion_ids = _ids_by_glob(lesions, "--lesions", lesion_regex or subject_regex)
        strays = sorted(set(lesion_ids) - set(image_ids))
        if strays:
            raise IntakeError(
                f"lesion mask '{lesion_ids[strays[0]]}' (subject '{strays[0]}') matches no "
                f"image from --images '{images}' ({len(strays)} such masks); check "
                "--subject-regex / --lesion-regex"
            )
    warnings = []
    if split is not None:
        splits = dict.fromkeys(image_ids, _check_split(split, "--split"))
    elif split_list is not None:
        splits = read_split_list(split_list)
        missing = sorted(set(image_ids) - set(splits))
        if missing:
            raise IntakeError(f"split list '{split_list}' has no split for {_listed(missing)}")
        extra = sorted(set(splits) - set(image_ids))
        if extra:
            warnings.append(f"split list '{split_list}' names subjects without an image: "
                            f"{_listed(extra)}")
    else:
        raise IntakeError("give the splits: --split SPLIT or --split-list FILE")
    rows = [
        {
            "subject": subject,
            "dataset": dataset,
            "split": splits[subject],
            "image": str(path),
            "lesion": str(lesion_ids.get(subject, "")),
            "roi": "",
        }
        for subject, path in image_ids.items()
    ]
    rows, more = _finish(rows)
    return rows, warnings + more


def _ids_by_glob(pattern: str, option: str, regex: str | None) -> dict[str, Path]:
    paths = sorted(Path(p).absolute() for p in glob.glob(pattern, recursive=True))
    paths = [p for p in paths if _is_nifti(p)]
    if not paths:
        raise IntakeError(f"no NIfTI file (.nii, .nii.gz) matches {option} '{pattern}'")
    try:
        compiled = re.compile(regex) if regex else None
    except re.error as exc:
        raise IntakeError(
            f"subject regex '{regex}' is not a valid regular expression: {exc}"
        ) from exc
    ids: dict[str, Path] = {}
    for path in paths:
        if compiled is None:
            subject = _stem(path)
        else:
            match = compiled.search(str(path))
            if match is None:
                raise IntakeError(f"subject regex '{regex}' does not match '{path}'")
            group = "subject" if "subject" in compiled.groupindex else min(compiled.groups, 1)
            subject = match.group(group) or ""
        if not SUBJECT_ID.fullmatch(subject):
            raise IntakeError(
                f"subject id '{subject}' from '{path}' is not letters, digits, '_' and '-' "
                "only; choose another group with --subject-regex"
            )
        if subject in ids:
            raise IntakeError(
                f"'{ids[subject]}' and '{path}' both give subject id '{subject}' ({option}); "
                "make --subject-regex tell them apart"
            )
        ids[subject] = path
    return ids


# ---------------------------------------------------------------- shared


def read_split_list(path: str | os.PathLike) -> dict[str, str]:
    """Subject -> split from a two-column file (tab or blanks; '#' comments; a header line
    ``subject split`` is allowed)."""
    path = Path(path)
    if not path.exists():
        raise IntakeError(f"split list '{path}' does not exist")
    splits: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2:
            raise IntakeError(f"split list '{path}' line {n}: expected 'subject split', "
                              f"got {len(fields)} field(s)")
        subject, split = fields[0], fields[1].lower()
        if not splits and split == "split":
            continue
        split = _check_split(split, f"split list '{path}' line {n}")
        if splits.get(subject, split) != split:
            raise IntakeError(f"split list '{path}' line {n}: subject '{subject}' is "
                              f"'{splits[subject]}' on an earlier line and '{split}' here")
        splits[subject] = split
    if not splits:
        raise IntakeError(f"split list '{path}' lists no subject")
    return splits


def _check_split(split: str, where: str) -> str:
    split = split.strip().lower()
    if split not in SPLITS:
        raise IntakeError(f"{where}: split '{split}' is not one of {', '.join(SPLITS)}")
    return split


def _finish(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """The checks every sheet needs, whatever found its files."""
    warnings = []
    bad = [r["subject"] for r in rows if not SUBJECT_ID.fullmatch(r["subject"])]
    if bad:
        raise IntakeError(f"subject id(s) {_listed(bad)} are not letters, digits, '_' and '-' "
                          "only, as the sheet requires")
    no_mask = [r["subject"] for r in rows if r["split"] == "test" and not r["lesion"]]
    if no_mask:
        raise IntakeError(f"test subject(s) without a lesion mask: {_listed(no_mask)}; "
                          "evaluation needs one (use split 'predict' to map without evaluating)")
    # Train and val are the healthy reference: a mask there is a mistake in the split or the
    # masks, and the workflow would ignore it anyway.
    masked = [r["subject"] for r in rows if r["split"] in ("train", "val") and r["lesion"]]
    if masked:
        warnings.append(f"train/val subject(s) with a lesion mask: {_listed(masked)}; these "
                        "splits must be healthy: check the split (mask left out of the sheet)")
    for row in rows:
        if row["split"] != "test":
            row["lesion"] = ""
        for column in ("image", "lesion"):
            if any(c in row[column] for c in "#\t\n"):
                # read_sheet treats '#' as a comment and tabs as column breaks.
                raise IntakeError(f"path '{row[column]}' of subject '{row['subject']}' "
                                  "contains '#', a tab or a newline, which a sheet cannot hold")
    order = {s: n for n, s in enumerate(SPLITS)}
    return sorted(rows, key=lambda r: (order[r["split"]], r["subject"])), warnings


def write_sheet(rows: list[dict], out: str | os.PathLike, force: bool = False) -> Path:
    """Write the rows with paths relative to the sheet's folder, atomically."""
    out = Path(out).absolute()
    if out.exists() and not force:
        raise IntakeError(f"'{out}' exists; pass --force to replace it")
    if out.is_dir():
        raise IntakeError(f"'{out}' is a folder; --out takes the sheet's file name")
    table = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("image", "lesion", "roi"):
        table[column] = [_relative(p, out.parent) if p else "" for p in table[column]]
    save_table(out, table)
    return out


def _relative(path: str, folder: Path) -> str:
    # Relative paths survive moving the project folder; but a path that climbs to the
    # filesystem root (/home/me/sheets -> /data/...) is clearer, and as durable, absolute.
    path = os.path.abspath(path)
    if os.path.commonpath([path, folder]) == os.path.abspath(os.sep):
        return path
    try:
        return os.path.relpath(path, folder)
    except ValueError:  # another drive, on Windows
        return path


def _is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI) and path.is_file()


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name[: -len(".nii")]


def _strip_prefix(label: str, entity: str) -> str:
    return label[len(entity) + 1 :] if label.startswith(f"{entity}-") else label


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


# ---------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m arepas.sheet", description="Write a subjects sheet for the workflow."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    splits = ", ".join(SPLITS)

    bids = commands.add_parser("bids", help="a BIDS folder (lesion masks in derivatives)")
    bids.add_argument("dir", metavar="DIR", help="the BIDS folder (sub-*/, participants.tsv)")
    split = bids.add_mutually_exclusive_group(required=True)
    split.add_argument(
        "--split-column",
        metavar="COL",
        help=f"participants.tsv column holding {splits} (n/a: an error for a subject with images)",
    )
    split.add_argument(
        "--split-list", metavar="FILE", help="file of 'subject split' lines (sub-01 or 01)"
    )
    bids.add_argument(
        "--derivatives",
        metavar="DIR_OR_NAME",
        help="folder, or pipeline under DIR/derivatives, holding the lesion masks "
        "(default: DIR itself and every pipeline)",
    )
    bids.add_argument("--session", metavar="SES", help="this session only (ids then omit it)")
    bids.add_argument(
        "--modality-suffix", default="T1w", metavar="SUFFIX", help="image suffix (default T1w)"
    )
    bids.add_argument(
        "--lesion-label",
        action="append",
        metavar="LABEL",
        help=f"label-<LABEL> of the lesion masks (repeatable; default "
        f"{' and '.join(LESION_LABELS)}; a desc containing 'lesion' counts too)",
    )

    pattern = commands.add_parser("pattern", help="files found by a glob (non-BIDS, e.g. CT)")
    pattern.add_argument(
        "--images", required=True, metavar="GLOB", help="glob of the images ('**' recurses)"
    )
    pattern.add_argument("--lesions", metavar="GLOB", help="glob of the lesion masks")
    pattern.add_argument(
        "--subject-regex",
        metavar="REGEX",
        help="searched in each path; the subject id is its group 'subject', else group 1 "
        "(default: the file name less .nii/.nii.gz)",
    )
    pattern.add_argument(
        "--lesion-regex", metavar="REGEX", help="for the masks' paths (default: --subject-regex)"
    )
    split = pattern.add_mutually_exclusive_group(required=True)
    split.add_argument("--split", metavar="SPLIT", help=f"one split for every image ({splits})")
    split.add_argument("--split-list", metavar="FILE", help="file of 'subject split' lines")

    for command in (bids, pattern):
        command.add_argument(
            "--dataset", required=True, metavar="NAME", help="its key under datasets: in the config"
        )
        command.add_argument(
            "--out", required=True, metavar="SHEET.tsv", help="the sheet to write"
        )
        command.add_argument("--force", action="store_true", help="replace an existing sheet")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; errors print one line and return 1 (nothing is written then)."""
    args = _parser().parse_args(argv)
    try:
        if not args.dataset.strip() or any(c in args.dataset for c in "#\t\n"):
            raise IntakeError(f"dataset name '{args.dataset}' is empty or holds '#' or a tab")
        out = Path(args.out).absolute()
        # Before the search, so a long scan of a folder does not end in this error.
        if out.exists() and not args.force:
            raise IntakeError(f"'{out}' exists; pass --force to replace it")
        if args.command == "bids":
            rows, warnings = bids_rows(
                args.dir,
                args.dataset,
                derivatives=args.derivatives,
                split_column=args.split_column,
                split_list=args.split_list,
                session=args.session,
                suffix=args.modality_suffix,
                lesion_labels=tuple(args.lesion_label or LESION_LABELS),
            )
        else:
            rows, warnings = pattern_rows(
                args.images,
                args.dataset,
                lesions=args.lesions,
                subject_regex=args.subject_regex,
                lesion_regex=args.lesion_regex,
                split=args.split,
                split_list=args.split_list,
            )
        write_sheet(rows, out, force=args.force)
    except (SheetError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    counts = pd.Series([r["split"] for r in rows]).value_counts()
    summary = ", ".join(f"{counts[s]} {s}" for s in SPLITS if s in counts)
    print(f"wrote {len(rows)} subjects ({summary}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
