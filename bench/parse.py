"""What a cohort's size costs before any job runs: the dry run that plans a run (the main process,
with every start-up check) and the parse each cluster job repeats (`--mode remote`, as a job
started by an executor plugin parses the workflow), for sheets of 10, 100 and 1,000 subjects of
small synthetic CT scans (one file each: a sheet of links to one scan would be refused as one
scan under many subjects)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

from bench import tables
from bench.quality import linked_workdir

SIZES = (10, 100, 1000)
REPEATS = 3
# Targets of the issue "A 1,000-subject cohort on a SLURM cluster".
JOB_PARSE_TARGET_S = 2.0
DRY_RUN_TARGET_S = 20.0
DRY_RUN_TARGET_SUBJECTS = 1000


def make_scans(folder: Path, n: int) -> list[Path]:
    """n distinct small CT volumes in HU and one lesion mask on their grid."""
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([6.0, 6.0, 10.0, 1.0])
    paths = []
    for k in range(n):
        path = folder / f"scan{k:04d}.nii.gz"
        if not path.exists():
            hu = np.random.default_rng(k).normal(-800, 60, (48, 48, 24)).astype(np.int16)
            nib.save(nib.Nifti1Image(hu, affine), path)
        paths.append(path)
    mask = folder / "lesion.nii.gz"
    if not mask.exists():
        lesion = np.zeros((48, 48, 24), np.uint8)
        lesion[20:26, 20:26, 10:12] = 1
        nib.save(nib.Nifti1Image(lesion, affine), mask)
    return paths


def make_workdir(repo: Path, runs_dir: Path, n: int, scans: list[Path]) -> Path:
    workdir = linked_workdir(repo, runs_dir / f"sheet{n}")
    n_val = n_test = max(1, n // 10)
    splits = ["val"] * n_val + ["test"] * n_test + ["train"] * (n - n_val - n_test)
    rows = ["subject\tdataset\tsplit\timage\tlesion\troi"]
    for k, split in enumerate(splits):
        lesion = str(scans[0].parent / "lesion.nii.gz") if split == "test" else ""
        rows.append(f"s{k:04d}\tcohort\t{split}\t{scans[k]}\t{lesion}\t")
    (workdir / "sheet.tsv").write_text("\n".join(rows) + "\n")
    (workdir / "cohort.yaml").write_text(yaml.safe_dump({
        "demo": {"enabled": False}, "subjects": "sheet.tsv",
        "datasets": {"cohort": {"preset": "published", "modality": "ct",
                                "spacing": [1.0, 1.0, 2.5], "intensity": {}}}}))
    return workdir


def timed(command: list[str], workdir: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed in {workdir}:\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


def measure(repo: Path, runs_dir: Path, sizes=SIZES, repeats: int = REPEATS,
            progress=print) -> dict:
    scans = make_scans(runs_dir / "scans", max(sizes))
    snakemake = [sys.executable, "-m", "snakemake", "--configfile", "cohort.yaml", "--nolock"]
    rows = []
    for n in sizes:
        workdir = make_workdir(repo, runs_dir, n, scans)
        progress(f"parse: {n} subjects")
        dry = [timed([*snakemake, "-n", "--cores", "1"], workdir) for _ in range(repeats)]
        job = [timed([*snakemake, "--mode", "remote", "--list-rules"], workdir)
               for _ in range(repeats)]
        rows.append({"subjects": n, "dry_run_s": dry, "job_parse_s": job})
    return {"rows": rows, "repeats": repeats}


def render(data: dict) -> str:
    rows = []
    for row in data["rows"]:
        dry, job = statistics.median(row["dry_run_s"]), statistics.median(row["job_parse_s"])
        rows.append([
            f"{row['subjects']:,}", f"{dry:.1f}", f"{job:.2f}",
            tables.verdict(job, JOB_PARSE_TARGET_S),
            tables.verdict(dry, DRY_RUN_TARGET_S) if row["subjects"] == DRY_RUN_TARGET_SUBJECTS
            else "",
        ])
    intro = (
        "A sheet of N subjects of one CT dataset at the published settings (small synthetic "
        "scans, one file each; a tenth val, a tenth test), planned with `snakemake -n` (the "
        "main process: config and sheet checks, every scan's header, the shared-scan check, "
        "each training job's planned steps, the job graph) and parsed as a cluster job does "
        "(`snakemake --mode remote --list-rules`: the workflow and the sheet, without the "
        f"start-up checks and without torch). Median of {data['repeats']} runs, each a fresh "
        f"process. Targets: a job's parse ≤ {JOB_PARSE_TARGET_S:g} s for any sheet, the dry run "
        f"of {DRY_RUN_TARGET_SUBJECTS:,} subjects ≤ {DRY_RUN_TARGET_S:g} s.\n\n"
    )
    return intro + tables.markdown_table(
        ["subjects", "dry run s", "job parse s", "job parse target", "dry run target"], rows
    ) + "\n"
