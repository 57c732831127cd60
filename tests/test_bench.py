"""The benchmark command's pure parts: job records, sums per rule and stage, mean ± sd over
seeds, growth fits, budget verdicts and the trade-off paragraph. No workflow runs here."""

import math
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

# `bench/` sits at the repository root, outside the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import quality, run, scaling, tables  # noqa: E402

torch.set_num_threads(1)


def _write_tsv(path: Path, rows: list[dict], end: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    os.utime(path, (end, end))


def _benchmark_row(s: float, cpu: float, rss: float) -> dict:
    # Snakemake's benchmark columns; only s, cpu_time and max_rss are read.
    return {"s": s, "h:m:s": "0:00:00", "max_rss": rss, "max_vms": 1.0, "cpu_time": cpu}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    t0 = 1_000_000.0
    bench = tmp_path / "benchmarks"
    _write_tsv(bench / "demo" / "make_demo.tsv", [_benchmark_row(10, 9, 300)], t0 + 10)
    # Two preprocess jobs in parallel (10..20 and 15..25), then a gap, then maps.
    _write_tsv(bench / "lung_ct/preprocess/lung001.tsv", [_benchmark_row(10, 8, 200)], t0 + 20)
    _write_tsv(bench / "lung_ct/preprocess/lung002.tsv", [_benchmark_row(10, 9, 250)], t0 + 25)
    _write_tsv(bench / "lung_ct/anomaly_maps/lung002.tsv", [_benchmark_row(4, 3, 400)], t0 + 104)
    _write_tsv(bench / "summary_table.tsv", [_benchmark_row(1, 1, 90)], t0 + 110)
    usage = tmp_path / "results/lung_ct/models/translator_usage.tsv"
    _write_tsv(usage, [{"s": 60.0, "max_rss": 500.0, "cpu_time": 110.0}], t0 + 90)
    return tmp_path


def test_benchmark_paths_name_rule_dataset_and_job():
    assert tables.benchmark_job(Path("summary_table.tsv")) == ("summary_table", "", "")
    assert tables.benchmark_job(Path("lung_ct/evaluate.tsv")) == ("evaluate", "lung_ct", "")
    assert tables.benchmark_job(Path("brain_t1/preprocess/brain003.tsv")) == (
        "preprocess",
        "brain_t1",
        "brain003",
    )


def test_job_records_read_benchmarks_and_usage_files(run_dir):
    records = tables.read_job_records(run_dir)
    assert len(records) == 6
    translator = records[records["rule"] == "train_translator"].iloc[0]
    assert translator["dataset"] == "lung_ct"
    assert translator["s"] == 60.0 and translator["cpu_time"] == 110.0
    assert translator["start"] == pytest.approx(1_000_030.0)
    assert tables.run_span_seconds(records) == pytest.approx(110.0)


def test_rule_summary_sums_seconds_and_keeps_the_peak_memory(run_dir):
    summary = tables.rule_summary(tables.read_job_records(run_dir)).set_index("rule")
    pre = summary.loc["preprocess"]
    assert pre["jobs"] == 2
    assert pre["wall_s"] == 20.0 and pre["cpu_s"] == 17.0
    assert pre["peak_rss_mb"] == 250.0
    # Pipeline order, not alphabetical.
    assert list(summary.index[:3]) == ["make_demo", "preprocess", "train_translator"]


def test_stage_summary_counts_parallel_jobs_once(run_dir):
    stages = tables.stage_summary(tables.read_job_records(run_dir)).set_index("stage")
    demo = stages.loc["demo + preprocessing"]
    assert demo["jobs"] == 3
    assert demo["wall_s"] == 30.0
    assert demo["busy_s"] == pytest.approx(25.0)  # 0..10 and 10..25
    assert stages.loc["training", "peak_rss_mb"] == 500.0


def test_busy_seconds_is_the_union_of_intervals():
    assert tables.busy_seconds([0, 5, 20], [10, 12, 25]) == 17
    assert tables.busy_seconds([3], [3]) == 0
    assert tables.busy_seconds([], []) == 0


def test_mean_sd_formatting():
    assert tables.mean_sd(*tables.mean_and_sd([0.4, 0.5, 0.6])) == "0.500 ± 0.100"
    assert tables.mean_sd(*tables.mean_and_sd([0.25])) == "0.250"
    assert tables.mean_sd(*tables.mean_and_sd([float("nan")])) == "n/a"
    assert tables.mean_sd(0.019, 0.004, percent=True) == "+1.9 ± 0.4 %"
    assert tables.mean_sd(-0.05, float("nan"), percent=True) == "-5.0 %"


def _summary(arepas: float, residual: float, flag: str = "") -> pd.DataFrame:
    rows = []
    for method, dice in (("arepas", arepas), ("residual", residual), ("ae", 0.1)):
        rows.append(
            {
                "dataset": "lung_ct",
                "method": method,
                "best_dice": dice,
                "honest_dice": dice / 2,
                "auprc": dice,
                "auroc": 0.9,
                "flag": flag if method == "arepas" else "",
            }
        )
    return pd.DataFrame(rows)


def test_quality_aggregates_over_seeds():
    runs = {"seed 0": _summary(0.30, 0.20), "seed 1": _summary(0.50, 0.25, "scorer stalled")}
    table = tables.aggregate_quality(runs).set_index("method")
    assert table.loc["arepas", "runs"] == 2
    assert table.loc["arepas", "best_dice_mean"] == pytest.approx(0.40)
    assert table.loc["arepas", "best_dice_sd"] == pytest.approx(math.sqrt(0.02))
    assert table.loc["arepas", "flagged_runs"] == 1
    assert table.loc["residual", "flagged_runs"] == 0
    changes = tables.relative_changes(runs)
    best = changes[changes["column"] == "best_dice"].set_index("run")
    assert best.loc["seed 0", "relative_change"] == pytest.approx(0.5)
    assert best.loc["seed 1", "relative_change"] == pytest.approx(1.0)
    assert set(best["best_other"]) == {"residual"}


def test_growth_fits_recover_known_laws():
    voxels = [1e6, 8e6, 64e6]
    assert tables.power_law_exponent(voxels, [2 * v for v in voxels]) == pytest.approx(1.0)
    assert tables.power_law_exponent(voxels, [v**0.5 for v in voxels]) == pytest.approx(0.5)
    peak = [300e6 + 40 * v for v in voxels]
    fits = tables.largest_fitting_voxels(voxels, peak, 24 * tables.GIB)
    assert fits == pytest.approx((24 * tables.GIB - 300e6) / 40)


def test_verdicts():
    assert tables.verdict(170, 180) == "pass"
    assert tables.verdict(190, 180) == "FAIL"
    assert tables.verdict(9.5, 20, at_most=False) == "FAIL"
    assert tables.verdict(float("nan"), 20) == "not measured"


def test_seed_workdir_overrides_both_seeds(tmp_path):
    repo = tmp_path / "repo"
    (repo / "config").mkdir(parents=True)
    (repo / "config" / "config.yaml").write_text("seed: 0\ndemo: {enabled: true, seed: 0}\n")
    (repo / "Snakefile").write_text("")
    (repo / "workflow").mkdir()
    workdir = quality.make_seed_workdir(repo, tmp_path / "runs", 2)
    assert (workdir / "Snakefile").is_symlink()
    assert quality.run_seeds(workdir) == (2, 2)
    assert quality.run_seeds(repo) == (0, 0)


def _scaling_data() -> dict:
    sizes = []
    for shape, seconds, peak in (((64, 64, 32), 1.0, 400.0), ((128, 128, 64), 8.0, 1100.0)):
        stage = {"seconds": seconds, "process_s": seconds + 2, "peak_rss_mb": peak, "parts": {}}
        sizes.append(
            {
                "shape": list(shape),
                "voxels": math.prod(shape),
                "generate": {"seconds": 1.0, "peak_rss_mb": 100.0, "spacing_mm": [1, 1, 1]},
                **{name: dict(stage) for name in scaling.STAGES},
            }
        )
    return {"threads": 1, "seed": 7, "sizes": sizes, "field_of_view_mm": [1, 1, 1]}


def test_scaling_summary_and_budget_rows():
    data = _scaling_data()
    summary = scaling.summarise(data)
    assert summary["per_size"][1]["seconds"] == 24.0
    assert summary["per_size"][1]["process_s"] == 30.0
    assert summary["exponents"]["total"] == pytest.approx(1.0)
    assert summary["memory_bytes_per_voxel"] == pytest.approx(
        700 * 1024**2 / (128 * 128 * 64 - 64 * 64 * 32)
    )
    scoring = {
        "rows": [
            {"dataset": "lung_ct", "size": 64, "stride": 1, "speedup": 40.0, "correlation": 0.95},
            {"dataset": "lung_ct", "size": 256, "stride": 1, "speedup": 9.5, "correlation": 0.97},
        ]
    }
    rows = run.budget_rows({"scaling": {"data": data}, "scoring": {"data": scoring}})
    verdicts = {row[0]: row[-1] for row in rows}
    prefix = "dense scoring ≥ 20× sampled per slice, correlation > 0.9"
    assert verdicts[f"{prefix} (64², stride 1)"] == "pass"
    assert verdicts[f"{prefix} (256², stride 1)"] == "FAIL"
    assert verdicts["128×128×64 CT subject < 3 min and < 4 GiB"] == "pass"


def test_tradeoffs_come_from_the_config():
    config = {
        "demo": {"counts": {"lung_ct": {"train": 5, "val": 2, "test": 3}}},
        "datasets": {
            "lung_ct": {
                "spacing": [3.5, 3.5, 5.0],
                "slice_size": 48,
                "translator": {"base_channels": 8, "n_blocks": 2, "epochs": 7},
                "scorer": {},
            }
        },
    }
    speed = {"translator": {"lung_ct": {"steps": 1234, "epochs": 7, "mean_epoch_s": 1.0}}}
    text = run.tradeoffs(config, speed)
    assert "48² slices on a 3.5 × 3.5 × 5 mm" in text
    assert "8 base channels, 2 residual blocks" in text
    assert "1,234 generator steps" in text
    assert "5 train, 2 val, 3 test" in text
    # The published sizes come from the library's defaults, not from the config.
    assert "256² slices, 64 base channels, 9 residual blocks" in text


def test_sizes_parse():
    assert run.parse_size("512x512x256") == (512, 512, 256)
    with pytest.raises(Exception, match="512x512x256"):
        run.parse_size("512x512")


def test_bootstrap_intervals_of_each_run_are_tabled():
    row = {
        "dataset": "lung_ct", "method": "arepas", "threshold_kind": "best", "own_dice": 0.42,
        "other_dice": 0.40, "best_other": "residual+pp", "relative_change": 0.05,
        "ci_low": -0.02, "ci_high": 0.11, "n_subjects": 10,
    }
    data = {"runs": [{"label": "seed 0", "relative_change": [row]}, {"label": "seed 1"}]}
    text = quality.render_intervals(data)
    assert "| lung_ct | arepas | best | seed 0 | 0.420 vs 0.400 (residual+pp) | +5.0% |" in text
    assert "-2.0% to +11.0%" in text and "| 10 |" in text
    assert "No run" in quality.render_intervals({"runs": [{"label": "seed 0"}]})


def test_translator_knob_table_gives_the_ratios():
    from bench import translator_knobs

    row = {
        "variant": "reference", "dataset": "brain_t1", "why": "baseline", "steps": 936,
        "own": 0.24, "other": 0.30, "mean": 0.20, "blur1": 0.11, "own_over_other": 0.8,
        "own_over_mean": 1.2,
    }
    text = translator_knobs.render({"run_dir": "/r", "seed": 0, "rows": [row]})
    expected = (
        "| brain_t1 | reference | baseline | 936 | 0.240 | 0.300 | 0.200 | 0.110 | 0.80 | 1.20 |"
    )
    assert expected in text
    # Hours of training: never measured unless asked for.
    assert "translator_knobs" not in run.parse_args([]).only


def test_training_memory_table_gives_growth_and_verdicts():
    from bench import training_memory

    rows = []
    for mode, peaks in (("memory", (300.0, 420.0, 900.0)), ("stream", (300.0, 303.0, 306.0))):
        for n, peak in zip(training_memory.COHORTS, peaks, strict=True):
            rows.append(
                {"rule": "dae", "subjects": n, "size": 64, "mode": mode, "peak_mb": peak,
                 "steps_per_s": 2.0 if mode == "memory" else 2.5}
            )
    text = training_memory.render({"baseline": "abc", "threads": 1, "rows": rows})
    assert "| dae | +200.0% | +2.0% | pass | 1.25 | pass |" in text
    assert "| dae | 64² | 160 | 900 | 306 | 2.00 | 2.50 |" in text
    assert training_memory.FIGURE.as_posix() in text
