"""Every rule at the published sizes on the CPU: the workflow run whole with
config/published_smoke.yaml (published networks, 256² slices on the demo's clinical scan grids,
16 px patches at 10,000 positions, training cut to a few steps), timed per rule and per subject,
with each job's peak memory: what the rules' memory requests are sized from."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from arepas.planning import stored_slice_count
from bench import tables
from bench.quality import WALL_RECORD as RECORD
from bench.quality import finished, linked_workdir, run_workflow

CONFIG = "config/published_smoke.yaml"
# Rules run once per subject, whose cost grows with the subject's slices.
PER_SUBJECT = ("preprocess", "reconstruct", "anomaly_maps", "subject_figure", "lesion_masks")


def subject_slices(workdir: Path) -> dict[str, int]:
    """Network slices of every preprocessed subject, keyed 'dataset/subject'."""
    return {
        f"{path.parts[-4]}/{path.parts[-2]}": stored_slice_count(path)
        for path in sorted(workdir.glob("results/*/preprocessed/*/slices.npz"))
    }


def training_steps(workdir: Path) -> dict[str, dict[str, int]]:
    steps: dict[str, dict[str, int]] = {}
    for row in tables.training_histories(workdir):
        steps.setdefault(row["dataset"], {})[row["network"]] = row["steps"]
    return steps


def measure(repo: Path, runs_dir: Path, cores: int, progress=print) -> dict:
    workdir = linked_workdir(repo, runs_dir / "published_smoke")
    if not (finished(workdir) and (workdir / RECORD).exists()):
        progress(f"published_sizes: running {CONFIG} in {workdir}")
        # The whole workflow and its report, in one invocation as `make demo` does.
        record = run_workflow(workdir, ["--cores", str(cores), "--configfile", CONFIG,
                                        "--report", "results/report.zip", "--report-after-run"])
        if record["returncode"] != 0:
            raise RuntimeError(f"the run in {workdir} failed: see bench_snakemake.log there")
    record = json.loads((workdir / RECORD).read_text())
    records = tables.read_job_records(workdir)
    return {"run_dir": str(workdir), "wall_s": record["wall_s"], "cores": cores,
            "records": records.drop(columns=["source"]).to_dict("records"),
            "slices": subject_slices(workdir), "training_steps": training_steps(workdir),
            "report_bytes": (workdir / "results" / "report.zip").stat().st_size,
            "disk": tables.subject_disk(workdir)}


def render(data: dict) -> str:
    records = pd.DataFrame(data["records"])
    slices = data["slices"]
    rows = []
    for rule, dataset, group in tables.rule_dataset_groups(records):
        per_subject = rule in PER_SUBJECT and dataset in {k.split("/")[0] for k in slices}
        seconds_per_slice = ""
        if per_subject:
            counts = [slices.get(f"{dataset}/{job}") for job in group["job"]]
            if all(counts):
                seconds_per_slice = f"{group['s'].sum() / sum(counts):.2f}"
        rows.append([
            rule, dataset or "—", str(len(group)), f"{group['s'].mean():.1f}",
            f"{group['s'].max():.1f}", seconds_per_slice, f"{group['max_rss'].max():.0f}",
        ])
    n_slices = ", ".join(
        f"{dataset} {min(v for k, v in slices.items() if k.startswith(dataset + '/'))}-"
        f"{max(v for k, v in slices.items() if k.startswith(dataset + '/'))}"
        for dataset in sorted({k.split("/")[0] for k in slices})
    )
    steps = "; ".join(
        f"{dataset}: " + ", ".join(f"{name} {count}" for name, count in sorted(names.items()))
        for dataset, names in sorted(data["training_steps"].items())
    )
    intro = (
        f"`{CONFIG}` run whole on this machine (`--cores {data['cores']}`, the report built in "
        f"the same invocation): {data['wall_s'] / 60:.1f} min wall. The published networks "
        "(64-channel generator with 9 residual blocks, 64-channel discriminator, batch 8; "
        "reference Siamese scorer, 16 px patches at 10,000 sampled positions; autoencoder and "
        "DAE at 256²) on 256² slices of the demo cohorts' clinical scan grids, 1 mm in-plane; one "
        "subject per split, a thick working slice, so that each subject has few slices "
        f"(slices per subject: {n_slices}), and training cut by `max_steps` (steps taken: "
        f"{steps}). Per rule: Snakemake's benchmark files and the training rules' usage records; "
        "*s per slice* divides a per-subject rule's time by the subject's network slices, to "
        "scale to a subject of N slices (fixed costs such as reading the scan and loading the "
        "networks make it an overestimate for large N). Peak RSS is the largest job's; the "
        "training rules' peaks hold for any number of steps but grow with the training set "
        "(section 9), and the per-subject rules' with the native scan (section 4).\n\n"
    )
    table = tables.markdown_table(
        ["rule", "dataset", "jobs", "mean s/job", "longest job s", "s per slice",
         "peak RSS MB"], rows, left=2,
    )
    disk = ""
    if data.get("disk"):
        disk = (
            "\n\nDisk under `results/<dataset>/` per subject of this run, by kind of file (mean "
            "over the dataset's subjects; train subjects have preprocessed files only). The "
            "thick working slices make the working-grid files (reconstructions, working-grid "
            "maps, map slices) smaller than at the published slice spacing, in proportion to "
            "the slices; the native-grid maps (one per method and variant) have the scan's own "
            "size. `keep_intermediates: false` removes the reconstructions, working-grid maps "
            f"and map slices once consumed. The report: {data['report_bytes'] / 1e6:.1f} MB.\n\n"
            + tables.disk_table(data["disk"])
        )
    return intro + table + disk + "\n"

