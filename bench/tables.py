"""The pure parts of the benchmarks: reading job records, summing them per rule and stage,
mean ± sd over seeds, growth fits and Markdown tables. Nothing here measures anything."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from arepas import metrics

# Pipeline order, for tables that read top to bottom like the workflow runs.
RULE_ORDER = ("make_demo", "prepare_template", "preprocess", "train_translator", "reconstruct",
              "train_scorer", "train_autoencoder", "train_dae", "anomaly_maps", "evaluate",
              "summary_table", "subject_figure", "dataset_figures")

STAGES = {
    "demo + preprocessing": ("make_demo", "prepare_template", "preprocess"),
    "training": ("train_translator", "train_scorer", "train_autoencoder", "train_dae"),
    "reconstruction + maps": ("reconstruct", "anomaly_maps"),
    "evaluation + figures": ("evaluate", "summary_table", "subject_figure", "dataset_figures"),
}

QUALITY_METRICS = {"best_dice": "best Dice", "dice_val_thr": "Dice at val threshold",
                   "val_thr_over_best": "val thr. ÷ best", "auprc": "AUPRC", "auroc": "AUROC"}

GIB = 1024**3


def benchmark_job(relative: Path) -> tuple[str, str, str]:
    """(rule, dataset, job) of a Snakemake benchmark file from its path under `benchmarks/`.

    The workflow's layout: `<rule>.tsv`, `<dataset>/<rule>.tsv` and
    `<dataset>/<rule>/<subject>.tsv` (the demo rule sits under `demo/`).
    """
    parts = relative.with_suffix("").parts
    if len(parts) == 1:
        return parts[0], "", ""
    if len(parts) == 2:
        return parts[1], parts[0], ""
    return parts[1], parts[0], "/".join(parts[2:])


def read_job_records(run_dir: str | Path) -> pd.DataFrame:
    """One row per finished job of a run: rule, dataset, job, s, cpu_time, max_rss (MB), start,
    end (epoch seconds) and source file.

    Sources: Snakemake's `benchmarks/**.tsv` and the training rules' own
    `results/<dataset>/models/<name>_usage.tsv` (same columns; those rules are cached between
    workflows and write no benchmark file). A file's modification time is when its job ended.
    """
    run_dir = Path(run_dir)
    rows = []
    bench_root = run_dir / "benchmarks"
    for path in sorted(bench_root.rglob("*.tsv")):
        rule, dataset, job = benchmark_job(path.relative_to(bench_root))
        rows.append(_record(path, rule, dataset, job))
    for path in sorted(run_dir.glob("results/*/models/*_usage.tsv")):
        name = path.name.removesuffix("_usage.tsv")
        rows.append(_record(path, f"train_{name}", path.parts[-3], ""))
    columns = ["rule", "dataset", "job", "s", "cpu_time", "max_rss", "start", "end", "source"]
    return pd.DataFrame(rows, columns=columns)


def _record(path: Path, rule: str, dataset: str, job: str) -> dict:
    table = pd.read_csv(path, sep="\t")
    # Several rows mean Snakemake's `repeat`; their mean is the job's cost.
    seconds = float(table["s"].mean())
    cpu = float(table["cpu_time"].mean()) if "cpu_time" in table else float("nan")
    rss = float(table["max_rss"].max()) if "max_rss" in table else float("nan")
    end = path.stat().st_mtime
    return {"rule": rule, "dataset": dataset, "job": job, "s": seconds, "cpu_time": cpu,
            "max_rss": rss, "start": end - seconds, "end": end, "source": str(path)}


def training_histories(run_dir: str | Path) -> list[dict]:
    """Steps, epochs and seconds of every network's training in a run, from its history."""
    rows = []
    for path in sorted(Path(run_dir).glob("results/*/models/*_history.tsv")):
        history = pd.read_csv(path, sep="\t")
        if "step" not in history or history.empty:
            continue
        row = {"dataset": path.parts[-3], "network": path.name.removesuffix("_history.tsv"),
               "steps": int(history["step"].max()), "epochs": int(len(history))}
        if "seconds" in history:
            row["train_s"] = float(history["seconds"].sum())
            row["s_per_step"] = row["train_s"] / max(row["steps"], 1)
        rows.append(row)
    return rows


def rule_dataset_groups(records: pd.DataFrame) -> list[tuple[str, str, pd.DataFrame]]:
    """(rule, dataset, its jobs) in pipeline order (rule_summary's), then by dataset."""
    order = {rule: k for k, rule in enumerate(rule_summary(records)["rule"])}
    groups = [(rule, dataset, group) for (rule, dataset), group
              in records.groupby(["rule", "dataset"], sort=False)]
    return sorted(groups, key=lambda g: (order.get(g[0], len(order)), g[1] or "—"))


def busy_seconds(starts: Iterable[float], ends: Iterable[float]) -> float:
    """Length of the union of the intervals [start, end]: the wall time during which at least
    one of the jobs was running (parallel jobs count once, gaps not at all)."""
    total, reached = 0.0, -math.inf
    for start, end in sorted(zip(starts, ends, strict=True)):
        # Only the part of the interval past the end reached so far is new time.
        total += max(0.0, end - max(start, reached))
        reached = max(reached, end)
    return total


def _order_key(rule: str) -> tuple[int, str]:
    return (RULE_ORDER.index(rule) if rule in RULE_ORDER else len(RULE_ORDER), rule)


def rule_summary(records: pd.DataFrame) -> pd.DataFrame:
    """Per rule: jobs, summed / mean / longest job wall s, summed CPU s, peak RSS (MB)."""
    rows = [{"rule": rule, "jobs": len(group), "wall_s": group["s"].sum(),
             "mean_s": group["s"].mean(), "max_s": group["s"].max(),
             "cpu_s": group["cpu_time"].sum(), "peak_rss_mb": group["max_rss"].max()}
            for rule, group in records.groupby("rule")]
    table = pd.DataFrame(
        rows, columns=["rule", "jobs", "wall_s", "mean_s", "max_s", "cpu_s", "peak_rss_mb"]
    )
    return table.sort_values("rule", key=lambda s: s.map(_order_key)).reset_index(drop=True)


def stage_summary(records: pd.DataFrame, stages: dict[str, Sequence[str]] = STAGES) -> pd.DataFrame:
    """Per stage (a group of rules): jobs, summed job wall s, busy wall s (union of the jobs'
    intervals), CPU s and peak RSS (MB). Rules in no stage form an 'other' stage."""
    known = {rule for rules in stages.values() for rule in rules}
    groups = {name: list(rules) for name, rules in stages.items()}
    others = sorted(set(records["rule"]) - known)
    if others:
        groups["other"] = others
    rows = []
    for name, rules in groups.items():
        group = records[records["rule"].isin(rules)]
        if group.empty:
            continue
        rows.append({"stage": name, "jobs": len(group), "wall_s": group["s"].sum(),
                     "busy_s": busy_seconds(group["start"], group["end"]),
                     "cpu_s": group["cpu_time"].sum(), "peak_rss_mb": group["max_rss"].max()})
    return pd.DataFrame(rows, columns=["stage", "jobs", "wall_s", "busy_s", "cpu_s", "peak_rss_mb"])


def run_span_seconds(records: pd.DataFrame) -> float:
    """First job start to last job end: a run's wall time less Snakemake's own start-up."""
    if records.empty:
        return float("nan")
    return float(records["end"].max() - records["start"].min())


def quality_long(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Stack per-run summary tables (dataset, method, metrics...) with a `run` column; the
    val-threshold ratio is computed per run where a table predates it."""
    frames = [
        table.assign(run=label, val_thr_over_best=_val_thr_over_best(table))
        for label, table in tables.items()
    ]
    if not frames:
        return pd.DataFrame(columns=["run", "dataset", "method", *QUALITY_METRICS])
    return pd.concat(frames, ignore_index=True)


def _val_thr_over_best(table: pd.DataFrame) -> pd.Series:
    best = table["best_dice"].astype(float)
    return table["dice_val_thr"].astype(float) / best.where(best > 0)


def aggregate_quality(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per dataset x method: number of runs and mean / sd (ddof 1) of each quality metric."""
    long = quality_long(tables)
    rows = []
    for (dataset, method), group in long.groupby(["dataset", "method"], sort=False):
        row = {"dataset": dataset, "method": method, "runs": len(group)}
        for column in QUALITY_METRICS:
            values = group[column].to_numpy(dtype=float)
            row[f"{column}_mean"], row[f"{column}_sd"] = mean_and_sd(values)
        if "flag" in group:
            flags = group["flag"].fillna("").astype(str)
            row["flagged_runs"] = int((flags != "").sum())
        rows.append(row)
    return pd.DataFrame(rows)


def relative_changes(
    tables: dict[str, pd.DataFrame],
    columns: Sequence[str] = ("best_dice", "dice_val_thr"),
    method: str = "arepas",
) -> pd.DataFrame:
    """Per run, dataset and Dice column: `method`'s relative change over the best other method
    (`arepas.metrics.relative_dice_change`) and which method that was; the `arepas` column holds
    `method`'s own Dice."""
    rows = [
        {"run": label, "method": method, "column": column, "dataset": row.dataset,
         "arepas": getattr(row, column), "best_other": row.best_other,
         "best_other_value": getattr(row, f"best_other_{column}"),
         "relative_change": row.relative_change}
        for label, table in tables.items()
        for column in columns
        for row in metrics.relative_dice_change(table, method, column).itertuples()
    ]
    return pd.DataFrame(rows, columns=["run", "method", "column", "dataset", "arepas",
                                       "best_other", "best_other_value", "relative_change"])


def mean_and_sd(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample sd (ddof 1) of the finite values; sd is NaN below two values."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return float("nan"), float("nan")
    sd = float(finite.std(ddof=1)) if finite.size > 1 else float("nan")
    return float(finite.mean()), sd


def mean_sd(mean: float, sd: float, digits: int = 3, percent: bool = False) -> str:
    """'0.412 ± 0.031'; '+1.9 ± 2.4 %' with `percent` (values as fractions); the mean alone when
    sd is undefined (one run); 'n/a' without a mean."""
    if mean is None or not math.isfinite(mean):
        return "n/a"
    if percent:
        text = f"{100 * mean:+.{max(digits - 2, 1)}f}"
        if sd is not None and math.isfinite(sd):
            text += f" ± {100 * sd:.{max(digits - 2, 1)}f}"
        return text + " %"
    text = f"{mean:.{digits}f}"
    if sd is not None and math.isfinite(sd):
        text += f" ± {sd:.{digits}f}"
    return text


def power_law_exponent(sizes: Sequence[float], values: Sequence[float]) -> float:
    """Exponent k of values ~ sizes**k, least squares on log-log (1 = linear in the size)."""
    x = np.log(np.asarray(sizes, dtype=float))
    y = np.log(np.asarray(values, dtype=float))
    if x.size < 2 or not np.all(np.isfinite(y)):
        return float("nan")
    slope, _ = np.polyfit(x, y, 1)
    return float(slope)


def linear_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line y = intercept + slope * x."""
    slope, intercept = np.polyfit(np.asarray(x, dtype=float), np.asarray(y, dtype=float), 1)
    return float(intercept), float(slope)


def largest_fitting_voxels(
    voxels: Sequence[float], peak_bytes: Sequence[float], limit_bytes: float
) -> float:
    """Voxels at which the straight line through (voxels, peak memory) reaches `limit_bytes`:
    an extrapolation, only as good as the line."""
    intercept, slope = linear_fit(voxels, peak_bytes)
    if slope <= 0:
        return float("inf")
    return (limit_bytes - intercept) / slope


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[object]], left: int = 1, align: str = ""
) -> str:
    """A Markdown table; the first `left` columns left-aligned (labels), the rest right-aligned,
    unless `align` gives one letter per column ('l' or 'r')."""
    align = align or "l" * left + "r" * (len(header) - left)
    if len(align) != len(header):
        raise ValueError(f"align {align!r} does not match {len(header)} columns")
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|",
             *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]
    return "\n".join(lines) + "\n"


def number(value: float | None, pattern: str = "{:.1f}") -> str:
    """A number for a table; 'n/a' for missing or NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return pattern.format(value)


def verdict(value: float | None, limit: float, at_most: bool = True) -> str:
    """'pass' / 'FAIL' of a measured value against a budget; 'not measured' without a value."""
    if value is None or not math.isfinite(value):
        return "not measured"
    ok = value <= limit if at_most else value >= limit
    return "pass" if ok else "FAIL"


DISK_KINDS = (
    ("preprocessed", "/preprocessed/"),
    ("reconstruction", "/reconstruction/"),
    ("working-grid maps", "_working.nii.gz"),
    ("native maps", "_native.nii.gz"),
    ("map slices", "_slices.npz"),
    ("masks", "/masks/"),
    ("figures", "/figures/"),
)


def subject_disk(run_dir: str | Path) -> list[dict]:
    """Bytes each subject of a finished run holds under results/<dataset>/, by kind of file (the
    first kind in DISK_KINDS whose fragment the path holds): one row per dataset and subject."""
    results = Path(run_dir) / "results"
    rows = []
    for dataset_dir in sorted(p for p in results.iterdir() if (p / "preprocessed").is_dir()):
        for subject_dir in sorted((dataset_dir / "preprocessed").iterdir()):
            subject = subject_dir.name
            sizes = dict.fromkeys((kind for kind, _ in DISK_KINDS), 0)
            for path in dataset_dir.rglob("*"):
                if not path.is_file() or subject not in path.relative_to(dataset_dir).parts and \
                        not path.name.startswith(f"{subject}_") and \
                        not path.name.startswith(f"{subject}."):
                    continue
                text = path.as_posix()
                kind = next((k for k, fragment in DISK_KINDS if fragment in text), None)
                if kind:
                    sizes[kind] += path.stat().st_size
            rows.append({"dataset": dataset_dir.name, "subject": subject, **sizes})
    return rows


def disk_table(rows: list[dict]) -> str:
    """Mean MB per subject and kind, per dataset (subjects without a kind, such as train
    subjects without maps, count in its mean as 0)."""
    frame = pd.DataFrame(rows)
    kinds = [kind for kind, _ in DISK_KINDS]
    body = []
    for dataset, group in frame.groupby("dataset"):
        mapped = group[group["native maps"] > 0]
        body.append([dataset, f"{len(group)}",
                     *[f"{group[k].mean() / 1e6:.1f}" for k in kinds],
                     f"{mapped[kinds].sum(axis=1).mean() / 1e6:.1f}" if len(mapped) else ""])
    return markdown_table(["dataset", "subjects", *[f"{k} MB" for k in kinds],
                           "a mapped subject, all MB"], body)
