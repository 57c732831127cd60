"""Speed per rule and stage of one finished workflow run, from its job records."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from arepas.presets import resolve_presets
from bench import fresh_clone, quality, tables


def measure(run_dir: Path) -> dict:
    """The timed run's job records and wall time."""
    records = tables.read_job_records(run_dir)
    if records.empty:
        raise FileNotFoundError(f"{run_dir} has no benchmarks/ or *_usage.tsv: not a finished run")
    wall, source = quality.run_wall(run_dir)
    translator = {}
    for path in sorted(run_dir.glob("results/*/models/translator_history.tsv")):
        history = pd.read_csv(path, sep="\t")
        translator[path.parts[-3]] = {
            "epochs": int(history["epoch"].max()),
            "steps": int(history["step"].max()),
            "mean_epoch_s": float(history["seconds"].mean()),
        }
    return {
        "run_dir": str(run_dir),
        "wall_s": wall,
        "wall_source": source,
        "records": records.drop(columns=["source"]).to_dict("records"),
        "translator": translator,
        "test_subjects": quality.test_subjects(run_dir),
        "disk": tables.subject_disk(run_dir),
        # Set only for a run made by bench.fresh_clone: `make demo` timed from a fresh clone.
        "fresh_clone": fresh_clone.read(run_dir),
        # Kept with the numbers: the trade-off paragraph describes this configuration even
        # after the run's folder is gone.
        "config": _config_of(run_dir),
    }


def _config_of(run_dir: Path) -> dict | None:
    path = run_dir / "config" / "config.yaml"
    return resolve_presets(yaml.safe_load(path.read_text())) if path.exists() else None


def run_config(data: dict) -> dict | None:
    """The configuration the timed run used: stored with it, else read from the run's folder."""
    return data.get("config") or _config_of(Path(data["run_dir"]))


def fresh_clone_text(clone: dict, workflow_s: float) -> str:
    """`make demo` on a fresh clone: in all, and its parts."""
    rest = clone["demo_s"] - workflow_s
    return (
        f"`make demo` on a fresh clone of commit {clone['commit'][:7]}: "
        f"{clone['total_s'] / 60:.1f} min in all ({clone['total_s']:.0f} s): set-up of the "
        f"virtual environment {clone['install_s'] / 60:.1f} min, the workflow "
        f"{workflow_s / 60:.1f} min (first job start to last end), Snakemake's start-up and "
        f"the report {rest:.0f} s"
    )


def records_of(data: dict) -> pd.DataFrame:
    return pd.DataFrame(data["records"])


def render(data: dict) -> str:
    records = records_of(data)
    lines = [
        f"One run: `{data['run_dir']}`, wall time {data['wall_s'] / 60:.1f} min "
        f"({data['wall_source']}). From Snakemake's benchmark files and the training rules' "
        "own usage records: wall s and CPU s summed over a rule's jobs, peak RSS the largest "
        "of its jobs. Busy wall: time during which at least one job of the stage ran "
        "(parallel jobs count once).\n"
    ]
    if data.get("fresh_clone"):
        span = tables.run_span_seconds(records)
        lines.append(fresh_clone_text(data["fresh_clone"], span) + ".\n")
    by_rule = tables.rule_summary(records)
    rows = [[r.rule, r.jobs, *(tables.number(v) for v in (r.wall_s, r.mean_s, r.max_s, r.cpu_s)),
             tables.number(r.peak_rss_mb, "{:.0f}")] for r in by_rule.itertuples()]
    lines.append(tables.markdown_table(
        ["rule", "jobs", "wall s", "mean s/job", "longest job s", "CPU s", "peak RSS MB"], rows))
    by_stage = tables.stage_summary(records)
    rows = [[r.stage, r.jobs, *(tables.number(v) for v in (r.wall_s, r.busy_s, r.cpu_s)),
             tables.number(r.peak_rss_mb, "{:.0f}")] for r in by_stage.itertuples()]
    rows.append(["**whole run**", len(records), tables.number(records["s"].sum()),
                 tables.number(data["wall_s"]), tables.number(records["cpu_time"].sum()),
                 tables.number(records["max_rss"].max(), "{:.0f}")])
    lines.append(tables.markdown_table(
        ["stage", "jobs", "summed job s", "busy wall s (whole run: its wall)", "CPU s",
         "peak RSS MB"], rows))
    per_dataset = []
    for dataset, facts in data["translator"].items():
        rec = records[(records["rule"] == "reconstruct") & (records["dataset"] == dataset)]
        maps = records[(records["rule"] == "anomaly_maps") & (records["dataset"] == dataset)]
        per_dataset.append([
            dataset, facts["epochs"], facts["steps"], tables.number(facts["mean_epoch_s"]),
            *(tables.number(v, "{:.2f}") for v in (rec["s"].mean(), maps["s"].mean(),
                                                    maps["s"].max())),
        ])
    if per_dataset:
        lines.append(
            "Translator training (from its history) and per-subject inference, per dataset:\n"
        )
        lines.append(tables.markdown_table(
            ["dataset", "epochs", "generator steps", "s/epoch", "reconstruct s/subject",
             "maps s/subject (mean)", "maps s/subject (max)"], per_dataset))
    if data.get("disk"):
        lines.append(
            "\nDisk under `results/<dataset>/` per subject of this run, by kind of file (mean "
            "over the dataset's subjects; train subjects have preprocessed files only; "
            "`keep_intermediates: false` removes the reconstructions, working-grid maps and map "
            "slices once consumed):\n"
        )
        lines.append(tables.disk_table(data["disk"]))
    return "\n".join(lines)
