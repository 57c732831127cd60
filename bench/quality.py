"""Quality over seeds: each seed is one full workflow run (demo cohorts generated with that seed,
every network trained with it) in its own working directory."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from arepas import metrics
from arepas.diagnostics import CEILING_BLUR_PX, DETAIL_BORDER_PX, DETAIL_SIGMA_PX
from arepas.methods import CALIBRATED_METHOD
from bench import tables

# The paper's relative Dice improvement of AREPAS over the best other reconstruction-based method
# (Mitic & Langs, MLMI 2025, arXiv 2509.12905, abstract): chest CT and T1 brain MRI.
PUBLISHED_RELATIVE_DICE = {"lung_ct": 0.019, "brain_t1": 0.044}

SEED_CONFIG = "bench_seed.yaml"
WALL_RECORD = "bench_wall.json"
# run_wall's source for a run this command ran and timed in one go.
TIMED_WHOLE = "timed by the benchmark command"
# Test subjects per demo cohort in the quality runs: more than the demo's, so that paired
# bootstrap intervals over subjects mean something (training sees only the train subjects, so
# the models are those of the demo with the same seed).
QUALITY_TEST_SUBJECTS = 10
# Methods the quality runs add to the shipped config's: ours beyond the paper, measured on the
# same runs as the published method.
QUALITY_EXTRA_METHODS = ("arepas_calibrated",)
# The timed run of the shipped demo configuration, for the speed section and the budget.
DEMO_RUN = "demo"


def linked_workdir(repo: Path, workdir: Path) -> Path:
    """A working directory that runs the repository's workflow (links to its Snakefile,
    workflow and config); the run's results stay inside it."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "config"):
        link = workdir / name
        if not link.exists():
            link.symlink_to(repo / name)
    return workdir


def make_seed_workdir(
    repo: Path, runs_dir: Path, seed: int, test_subjects: int | None = QUALITY_TEST_SUBJECTS,
    name: str | None = None, extra_methods: tuple[str, ...] = QUALITY_EXTRA_METHODS,
) -> Path:
    """A working directory that runs the repository's workflow with `seed` for both the demo
    cohorts and training, with `test_subjects` per demo cohort (None: the shipped config's) and
    `extra_methods` beside the shipped config's methods."""
    workdir = linked_workdir(repo, runs_dir / (name or f"seed{seed}"))
    demo: dict = {"seed": seed}
    override: dict = {"seed": seed, "demo": demo}
    shipped = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    methods = list(shipped.get("methods") or [])
    added = [m for m in extra_methods if m not in methods]
    if added:
        override["methods"] = methods + added
    if test_subjects is not None:
        # Merged into the shipped counts key by key: train and val stay as shipped.
        counts = (shipped.get("demo") or {}).get("counts") or {}
        demo["counts"] = {dataset: {"test": test_subjects} for dataset in counts}
    (workdir / SEED_CONFIG).write_text(yaml.safe_dump(override))
    return workdir


def seed_run_args(cores: int, configfiles: list[str]) -> list[str]:
    return ["--cores", str(cores), "--configfile", *configfiles, SEED_CONFIG]


def demo_run(repo: Path, runs_dir: Path, cores: int, configfiles: list[str],
             progress=print) -> Path:
    """The shipped demo configuration (seed 0), run and timed alone unless already finished."""
    workdir = make_seed_workdir(repo, runs_dir, 0, test_subjects=None, name=DEMO_RUN,
                                extra_methods=())
    if finished(workdir) and (workdir / WALL_RECORD).exists():
        progress(f"speed: the demo run in {workdir} is finished; using it")
        return workdir
    progress(f"speed: running the shipped demo configuration in {workdir}")
    record = run_workflow(workdir, seed_run_args(cores, configfiles))
    if record["returncode"] != 0:
        raise RuntimeError(f"the demo run in {workdir} failed: see bench_snakemake.log there")
    progress(f"speed: the demo run took {record['wall_s']:.0f} s")
    return workdir


def run_workflow(workdir: Path, args: list[str], sampler=None) -> dict:
    """`snakemake ARGS` in `workdir` (its output in bench_snakemake.log there), run whole; its
    wall time, and the summary of `sampler` (a context that samples while it runs), recorded
    next to its results."""
    command = [sys.executable, "-m", "snakemake", *args]
    started = time.perf_counter()
    with open(workdir / "bench_snakemake.log", "w") as out, sampler or contextlib.nullcontext():
        result = subprocess.run(command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    record = {"wall_s": time.perf_counter() - started, "returncode": result.returncode,
              "command": " ".join(command[2:])}
    if sampler is not None:
        record["gpu_samples"] = sampler.summary()
    (workdir / WALL_RECORD).write_text(json.dumps(record, indent=1))
    return record


def run_seeds(run_dir: Path) -> tuple[int | None, int | None]:
    """(training seed, demo seed) a run used: its seed override file, else its config."""
    values: dict = {}
    config = run_dir / "config" / "config.yaml"
    if config.exists():
        values = yaml.safe_load(config.read_text()) or {}
    override = run_dir / SEED_CONFIG
    if override.exists():
        extra = yaml.safe_load(override.read_text()) or {}
        values = {**values, **extra, "demo": {**values.get("demo", {}), **extra.get("demo", {})}}
    demo = values.get("demo", {}) or {}
    return values.get("seed"), demo.get("seed")


def run_wall(run_dir: Path) -> tuple[float, str]:
    """A run's wall time and where it comes from: the record written when this command ran it,
    else the time during which any of its jobs ran (a run made in several invocations has
    pauses between them that are no part of its cost; Snakemake's start-up is left out too)."""
    record = run_dir / WALL_RECORD
    if record.exists():
        data = json.loads(record.read_text())
        if data.get("returncode") == 0:
            return float(data["wall_s"]), TIMED_WHOLE
    records = tables.read_job_records(run_dir)
    busy = tables.busy_seconds(records["start"], records["end"])
    span = tables.run_span_seconds(records)
    return busy, f"time with a job running; first start to last end {span / 60:.1f} min"


def test_subjects(run_dir: Path) -> dict[str, list[str]]:
    """Test subjects per dataset, from the run's demo subjects sheet."""
    sheet = pd.read_csv(run_dir / "results" / "demo" / "subjects.tsv", sep="\t",
                        keep_default_na=False)
    test = sheet[sheet["split"] == "test"]
    return {d: sorted(g["subject"]) for d, g in test.groupby("dataset")}


def finished(run_dir: Path) -> bool:
    return (run_dir / "results" / "summary.tsv").exists()


def measure(repo: Path, reuse: list[Path], seeds: Sequence[int], runs_dir: Path, cores: int,
            configfiles: list[str], progress=print) -> dict:
    """Collect finished runs (`reuse`), run the `seeds` they lack, and return every run's summary
    table and wall time."""
    runs = []
    covered = set()
    for run_dir in reuse:
        seed, demo_seed = run_seeds(run_dir)
        if not finished(run_dir):
            raise FileNotFoundError(f"{run_dir} has no results/summary.tsv: not a finished run")
        covered.add(seed)
        runs.append({"dir": str(run_dir), "seed": seed, "demo_seed": demo_seed, "reused": True})
    for seed in seeds:
        if seed in covered:
            continue
        workdir = make_seed_workdir(repo, runs_dir, seed)
        if finished(workdir) and (workdir / WALL_RECORD).exists():
            # An earlier seed run of this command (e.g. interrupted after it): keep its result.
            progress(f"quality: seed {seed} already finished in {workdir}; using it")
        else:
            progress(f"quality: running the workflow with seed {seed} in {workdir}")
            record = run_workflow(workdir, seed_run_args(cores, configfiles))
            progress(f"quality: seed {seed} ended with code {record['returncode']} "
                     f"after {record['wall_s']:.0f} s")
        runs.append({"dir": str(workdir), "seed": seed, "demo_seed": seed, "reused": False})

    summaries = {}
    for run in runs:
        run_dir = Path(run["dir"])
        label = f"seed {run['seed']}"
        label = run["label"] = label if label not in summaries else f"{label} #{len(runs)}"
        if finished(run_dir):
            run["wall_s"], run["wall_source"] = run_wall(run_dir)
            run["status"] = "finished"
            records = tables.read_job_records(run_dir)
            run["translator_s"] = float(records.loc[records["rule"] == "train_translator",
                                                    "s"].sum())
            summaries[label] = pd.read_csv(run_dir / "results" / "summary.tsv", sep="\t",
                                           keep_default_na=False, na_values=[""])
            run["edge_reliance"] = edge_reliance_rows(run_dir)
            # The run's own paired-bootstrap intervals over its test subjects (evaluate rule).
            intervals = run_dir / "results" / "relative_change.tsv"
            if intervals.exists():
                run["relative_change"] = pd.read_csv(intervals, sep="\t").to_dict("records")
        else:
            log = run_dir / "bench_snakemake.log"
            run.update(wall_s=float("nan"), wall_source="", status="failed",
                       log_tail=log.read_text().splitlines()[-15:] if log.exists() else [])
    return {"runs": runs, "summaries": {k: v.to_dict("records") for k, v in summaries.items()},
            "configfiles": configfiles}


def edge_reliance_rows(run_dir: Path) -> list[dict]:
    """Each dataset's translator edge-reliance table of a finished run (empty for runs made
    before translators reported it)."""
    return [row for path in sorted((run_dir / "results").glob("*/models/"
                                                               "translator_edge_reliance.tsv"))
            for row in pd.read_csv(path, sep="\t").to_dict("records")]


DETAIL_KEYS = ("detail_own", "detail_other_edges", "detail_mean_image", "detail_blurred_input")


# Issue 12's target: own-edge L1 at most 0.7 x another subject's edges and 0.7 x the training
# mean image (registered datasets).
EDGE_RELIANCE_TARGET = 0.7


def render_edge_reliance(data: dict) -> str:
    """Edge reliance of every run's translators, mean ± sd over runs per dataset."""
    records = [{**row, "run": run["label"]} for run in data["runs"]
               for row in run.get("edge_reliance", [])]
    if not records:
        return "No run reported its translators' edge reliance.\n"
    frame = pd.DataFrame(records)
    columns = [("l1_own_edges", "L1 own edges"), ("l1_other_edges", "L1 other subject's edges"),
               ("l1_mean_image", "L1 training mean image"), ("l1_roi_mean", "L1 ROI mean"),
               ("own_over_other", "own / other"), ("own_over_mean_image", "own / mean image"),
               ("pearson_own", "correlation")]
    rows = []
    for dataset, group in frame.groupby("dataset", sort=True):
        cells = [dataset, len(group), *(tables.mean_sd(*tables.mean_and_sd(
            group[column].astype(float))) for column, _ in columns)]
        # The mean image matches anatomy only on a template grid: on unregistered datasets the
        # target is own / other alone (runs made before the column existed are held to both).
        registered = (group["registered"].fillna(True).astype(bool) if "registered" in group
                      else pd.Series(True, index=group.index))
        mean_ratio = group["own_over_mean_image"].astype(float).where(registered, 0.0)
        worst = np.maximum(group["own_over_other"].astype(float), mean_ratio)
        met = int((worst <= EDGE_RELIANCE_TARGET).sum())
        cells.append(f"{met} of {len(group)}")
        rows.append(cells)
    text = (
        "How much the demo translators rely on their edges, on the healthy validation slices "
        "inside the ROI (`results/<dataset>/models/translator_edge_reliance.tsv` of each run): "
        "L1 of the reconstruction from the slice's own edges, from another healthy subject's "
        "edges at the same slice index, of the training subjects' mean image at that index and "
        "of the slice's own ROI mean (both edge-free). Target: own ≤ "
        f"{EDGE_RELIANCE_TARGET} × other and, on datasets registered to a template, ≤ "
        f"{EDGE_RELIANCE_TARGET} × mean image.\n\n"
    )
    text += tables.markdown_table(
        ["dataset", "runs", *(title for _, title in columns), "runs meeting the target"], rows)
    return text + render_fine_detail(frame)


def render_fine_detail(frame: pd.DataFrame) -> str:
    """The check's fine-detail correlations per dataset, mean ± sd over runs ('' if no run has
    them)."""
    if any(key not in frame for key in DETAIL_KEYS):
        return ""
    frame = frame.dropna(subset=list(DETAIL_KEYS), how="all")
    if frame.empty:
        return ""
    rows = []
    for dataset, group in frame.groupby("dataset", sort=True):
        values = {key: group[key].astype(float) for key in DETAIL_KEYS}
        above = int(((values["detail_own"] > values["detail_other_edges"])
                     & (values["detail_own"] > values["detail_mean_image"])).sum())
        rows.append([dataset, len(group),
                     *(tables.mean_sd(*tables.mean_and_sd(values[key])) for key in DETAIL_KEYS),
                     f"{above} of {len(group)}"])
    text = (
        "\nDoes the reconstruction carry the slice's fine anatomy, beyond the outline and tissue "
        "brightness that dominate L1? Correlation of the fine detail (the slice minus its "
        f"Gaussian blur of {DETAIL_SIGMA_PX:g} px sd) of each prediction with the slice's own, "
        f"over the ROI pixels at least {DETAIL_BORDER_PX} px inside its edge (the outline, which "
        "any edge map gives away, left out): 1 is all of it, 0 none. *Slice blurred*: the "
        f"slice's own Gaussian blur of {CEILING_BLUR_PX:g} px sd, what a faithful but slightly "
        "smooth reconstruction would score.\n\n"
    )
    return text + tables.markdown_table(
        ["dataset", "runs", "detail own edges", "detail other subject's edges",
         "detail training mean image", "detail slice blurred", "own above both references"],
        rows)


def render(data: dict) -> str:
    summaries = {k: pd.DataFrame(v) for k, v in data["summaries"].items()}
    finished_runs = [r for r in data["runs"] if r["status"] == "finished"]
    lines = [
        f"{len(finished_runs)} finished run(s) of the default workflow"
        + (f" with config files {', '.join(data['configfiles'])}" if data["configfiles"] else "")
        + "; each run generates its demo cohorts and trains every network with its own seed. "
        "Values are mean ± sd over the runs (sd with ddof 1; a single run shows its value).", ""]
    run_rows = [
        [run["label"], run["status"], "--reuse" if run["reused"] else "seed run",
         tables.number(run["wall_s"] / 60, "{:.1f}") if run["status"] == "finished" else "",
         tables.number(run.get("translator_s", float("nan")) / 60, "{:.1f}"),
         run.get("wall_source", ""), f"`{run['dir']}`"]
        for run in data["runs"]
    ]
    lines.append(tables.markdown_table(
        ["run", "status", "origin", "wall min", "translator training min", "wall time from",
         "directory"], run_rows, align="lllrrll"))
    lines += [f"Run {run['label']} failed; the end of its log:\n\n```\n"
              + "\n".join(run.get("log_tail", [])) + "\n```\n"
              for run in data["runs"] if run["status"] == "failed"]
    if not summaries:
        lines.append("No finished run: no quality numbers.\n")
        return "\n".join(lines)

    aggregate = tables.aggregate_quality(summaries)
    header = ["dataset", "method", *tables.QUALITY_METRICS.values(), "runs", "flagged runs"]
    rows = [
        [row.dataset, row.method,
         *(tables.mean_sd(getattr(row, f"{m}_mean"), getattr(row, f"{m}_sd"))
           for m in tables.QUALITY_METRICS),
         row.runs, getattr(row, "flagged_runs", 0)]
        for row in aggregate.itertuples()
    ]
    lines.append(tables.markdown_table(header, rows, left=2))
    lines.append(
        "Best Dice: at the threshold that maximises the pooled test Dice (an upper bound). "
        "Dice at val threshold: at the threshold taken from the healthy validation scans "
        "without lesion labels (what a user gets). Val thr. ÷ best: the two divided in each run, "
        "then averaged (target ≥ 0.8; other label-free rules: docs/studies.md, "
        "\"The label-free threshold\"). "
        "Flagged runs: the patch scorer stalled "
        "(pair accuracy near 50 %), so its maps are not the method's.\n"
    )

    present = {m for table in summaries.values() for m in table["method"]}
    compared = metrics.compared_methods(present)
    changes = pd.concat(
        [tables.relative_changes(summaries, method=m) for m in compared] or [pd.DataFrame()],
        ignore_index=True,
    )
    if not changes.empty:
        lines.append(
            "Relative Dice change of each AREPAS method over the best other method of the same "
            "run (`arepas.metrics.relative_dice_change`; the baselines raw and post-processed, "
            "not the other AREPAS methods); the paper reports +1.9 % (chest CT) and +4.4 % "
            "(brain MRI) for `arepas` with its own data and thresholds. "
            f"`{CALIBRATED_METHOD}` is ours (README), measured on the same runs; its "
            "target (issue \"a patch scoring that reliably beats the best baseline\") is +5 % "
            "of best Dice with the paired-bootstrap interval above 0 in every run (next table)."
            "\n"
        )
        rows = []
        for (method, dataset, column), group in changes.groupby(
            ["method", "dataset", "column"], sort=True
        ):
            mean, sd = tables.mean_and_sd(group["relative_change"])
            per_run = ", ".join(
                f"{r.run}: {tables.mean_sd(r.relative_change, float('nan'), percent=True)} "
                f"vs {r.best_other}"
                for r in group.itertuples()
            )
            published = PUBLISHED_RELATIVE_DICE.get(dataset)
            rows.append([dataset, method, tables.QUALITY_METRICS[column],
                         tables.mean_sd(mean, sd, percent=True), per_run,
                         f"{100 * published:+.1f} %"
                         if published is not None and method == "arepas" else ""])
        lines.append(tables.markdown_table(
            ["dataset", "method", "Dice", "relative change (mean ± sd)", "per run", "paper"],
            rows, align="lllrlr"))
    return "\n".join(lines)


def render_intervals(data: dict) -> str:
    """Per run: each compared method's relative Dice change over the best other method of that
    run, with the run's 95 % paired-bootstrap interval over its test subjects."""
    rows = [
        [r["dataset"], r["method"], "best" if r["threshold_kind"] == "best" else "val threshold",
         run["label"], f"{r['own_dice']:.3f} vs {r['other_dice']:.3f} ({r['best_other']})",
         _percent(r["relative_change"]), f"{_percent(r['ci_low'])} to {_percent(r['ci_high'])}",
         str(r["n_subjects"])]
        for run in data["runs"] for r in run.get("relative_change", [])
    ]
    if not rows:
        return "No run recorded bootstrap intervals (runs before they existed).\n"
    rows.sort(key=lambda row: (row[0], row[1], row[2], row[3]))
    text = (
        "Each run's relative Dice change of the AREPAS methods over the best other method of "
        "that run (raw and post-processed baselines, the denoising autoencoder included), with "
        "the 95 % interval of a paired bootstrap over its test subjects (subjects resampled, the "
        "best threshold chosen anew in every resample; `results/relative_change.tsv`). An "
        "interval whose lower end is above 0 is a gain that the test subjects support.\n"
    )
    header = ["dataset", "method", "Dice at", "run", "Dice vs best other", "change", "95 % CI",
              "subjects"]
    return text + "\n" + tables.markdown_table(header, rows, left=5) + "\n"


def _percent(value) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):+.1%}"

