"""The benchmark command's pure parts: job records, sums per rule and stage, mean ± sd over
seeds, growth fits, budget verdicts and the trade-off paragraph. No workflow runs here."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

# `bench/` sits at the repository root, outside the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arepas import metrics  # noqa: E402
from bench import quality, run, scaling, tables, threshold  # noqa: E402

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


def test_quality_reports_the_val_threshold_ratio_per_run():
    # Tables written before the ratio column: it is computed per run, then averaged.
    first, second = _summary(0.30, 0.20), _summary(0.50, 0.25)
    second.loc[second["method"] == "arepas", "honest_dice"] = 0.40
    second.loc[second["method"] == "ae", "best_dice"] = 0.0
    table = tables.aggregate_quality({"seed 0": first, "seed 1": second}).set_index("method")
    assert table.loc["arepas", "honest_over_best_mean"] == pytest.approx((0.5 + 0.8) / 2)
    # A best Dice of 0 has no ratio; the other run's ratio stands alone.
    assert table.loc["ae", "honest_over_best_mean"] == pytest.approx(0.5)
    assert math.isnan(table.loc["ae", "honest_over_best_sd"])


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
    (repo / "config" / "config.yaml").write_text(
        "seed: 0\nmethods: [arepas, residual]\n"
        "demo: {enabled: true, seed: 0, counts: {a: {train: 4, val: 2, test: 4}}}\n"
    )
    (repo / "Snakefile").write_text("")
    (repo / "workflow").mkdir()
    workdir = quality.make_seed_workdir(repo, tmp_path / "runs", 2)
    assert (workdir / "Snakefile").is_symlink()
    assert quality.run_seeds(workdir) == (2, 2)
    assert quality.run_seeds(repo) == (0, 0)
    # Merged as Snakemake merges config files: only the test count changes.
    from snakemake.utils import update_config

    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    update_config(config, yaml.safe_load((workdir / quality.SEED_CONFIG).read_text()))
    assert config["demo"]["counts"]["a"] == {
        "train": 4, "val": 2, "test": quality.QUALITY_TEST_SUBJECTS
    }
    assert config["methods"] == ["arepas", "residual", *quality.QUALITY_EXTRA_METHODS]
    # The timed demo run keeps the shipped counts and methods.
    demo = quality.make_seed_workdir(
        repo, tmp_path / "runs", 0, test_subjects=None, name="demo", extra_methods=()
    )
    shipped_run = yaml.safe_load((demo / quality.SEED_CONFIG).read_text())
    assert "counts" not in shipped_run["demo"] and "methods" not in shipped_run


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


def test_translator_schedule_table_counts_the_seeds_meeting_the_target():
    from bench import translator_schedule

    def row(dataset, variant, seed, own_other, own_mean):
        return {"dataset": dataset, "variant": variant, "why": "w", "seed": seed,
                "l1_own_edges": 0.1, "l1_other_edges": 0.1 / own_other,
                "l1_mean_image": 0.1 / own_mean, "own_over_other": own_other,
                "own_over_mean_image": own_mean}

    rows = [row("brain_t1", "base", 0, 0.6, 0.72), row("brain_t1", "base", 1, 0.6, 0.68),
            row("lung_ct", "base", 0, 0.65, 0.9)]
    text = translator_schedule.render({"rows": rows})
    # Brain needs both ratios under 0.7 (registered); lung only own / other.
    assert "| brain_t1 | base | w | 2 | 0.1000 | 0.600 | 0.700 | 0.720, 0.680 | 1 of 2 |" in text
    assert "| lung_ct | base | w | 1 | 0.1000 | 0.650 | 0.900 | 0.650 | 1 of 1 |" in text
    assert "translator_schedule" not in run.parse_args([]).only


def _cohort(seed: int, shift: float = 0.0):
    """Healthy val and test ROI scores with lesion flags: lesion voxels score higher."""
    rng = np.random.default_rng(seed)
    val = [rng.gamma(2.0, 0.1, 4000) for _ in range(2)]
    lesion = [rng.random(4000) < 0.02 for _ in range(3)]
    test = [rng.gamma(2.0, 0.1, 4000) + shift + 0.8 * flags for flags in lesion]
    return val, test, lesion


def test_threshold_study_dice_matches_the_workflow_metrics():
    val, test, lesion = _cohort(1)
    n_outside = 7
    for cut in (0.3, 0.6, 0.9):
        rows = []
        for values, flags in zip(test, lesion, strict=True):
            roi = np.ones(values.size + 3, bool)
            roi[-3:] = False
            whole = np.r_[flags, True, True, False]
            rows.append(metrics.subject_metrics(np.r_[values, 0, 0, 0], whole, roi, cut))
        # Two lesion voxels per subject lie outside the ROI: six misses, plus one more here.
        expected = metrics.pooled_dice(rows + [{"tp": 0, "fp": 0, "fn": 1}])
        assert threshold.pooled_dice_at(test, lesion, n_outside, cut) == pytest.approx(expected)
    scores = np.concatenate(test)
    flags = np.concatenate(lesion)
    hist = metrics.ScoreHistogram(scores.max(), 2**18)
    hist.add(scores, flags, np.ones(scores.size, bool))
    hist.n_lesion_outside = n_outside
    assert threshold.best_pooled_dice(test, lesion, n_outside) == pytest.approx(
        metrics.best_dice(hist)[0], abs=1e-4
    )


def test_threshold_study_rules_and_their_ratios():
    val, test, lesion = _cohort(2)
    rows = {r["rule"]: r for r in threshold.study_method(val, test, lesion, n_outside=0)}
    assert len(rows) == len(threshold.rules())
    best = rows["percentile 99"]["best_dice"]
    assert all(r["best_dice"] == best and r["dice"] <= best + 1e-12 for r in rows.values())
    # The percentile and the false-positive rate that leave the same share of healthy voxels.
    assert rows["percentile 99"]["dice"] == pytest.approx(rows["fpr 0.01"]["dice"], abs=0.02)
    healthy = np.concatenate(val)
    assert np.mean(healthy >= rows["percentile 99"]["threshold"]) == pytest.approx(0.01, abs=1e-3)
    assert rows["percentile 99.9"]["threshold"] > rows["percentile 99"]["threshold"]
    assert rows["percentile 99"]["ratio"] == pytest.approx(rows["percentile 99"]["dice"] / best)


def test_volume_normalisation_removes_a_shift_between_volumes():
    val, test, lesion = _cohort(3, shift=0.5)
    z = threshold.normalise_volume(test[0], "zscore")
    assert z.mean() == pytest.approx(0.0, abs=1e-9) and z.std() == pytest.approx(1.0)
    robust = threshold.normalise_volume(test[0], "robust")
    assert np.median(robust) == pytest.approx(0.0, abs=1e-9)
    assert np.all(threshold.normalise_volume(np.full(5, 2.0), "zscore") == 0)
    with pytest.raises(ValueError, match="unknown volume normalisation"):
        threshold.normalise_volume(test[0], "max")
    # Test volumes brighter than the healthy ones: the raw val percentile keeps too much, the
    # per-volume z-score follows the shift.
    rows = {r["rule"]: r for r in threshold.study_method(val, test, lesion, n_outside=0)}
    assert rows["zscore, percentile 99"]["ratio"] > rows["percentile 99"]["ratio"]


def test_excess_estimate_finds_the_lesion_tail_without_labels():
    val, test, lesion = _cohort(4)
    cut = threshold.excess_threshold(np.concatenate(val), np.concatenate(test))
    best = threshold.best_pooled_dice(test, lesion, 0)
    assert threshold.pooled_dice_at(test, lesion, 0, cut) > 0.8 * best


def test_threshold_ranking_and_report():
    frame = pd.DataFrame([
        {"rule": "percentile 99", "dataset": "a", "ratio": 0.9},
        {"rule": "percentile 99", "dataset": "b", "ratio": 0.5},
        {"rule": "percentile 98", "dataset": "a", "ratio": 0.85},
        {"rule": "percentile 98", "dataset": "b", "ratio": 0.82},
    ])
    ranked = threshold.rank_rules(frame, 0.8)
    assert list(ranked["rule"]) == ["percentile 98", "percentile 99"]
    assert list(ranked["reached"]) == [2, 1]
    assert ranked.set_index("rule").loc["percentile 99", "b"] == pytest.approx(0.5)
    # More cases at the target, but dataset a loses: not a clearly better default.
    assert threshold.better_rules(ranked, "percentile 99", ["a", "b"]) == []
    frame.loc[2, "ratio"] = 0.95
    ranked = threshold.rank_rules(frame, 0.8)
    assert threshold.better_rules(ranked, "percentile 99", ["a", "b"]) == ["percentile 98"]
    val, test, lesion = _cohort(5)
    rows = [{"dataset": "d", "method": "m", **r}
            for r in threshold.study_method(val, test, lesion, 0)]
    data = {"target": 0.8, "runs": [{
        "label": "seed 0", "evaluation": {"threshold_mode": "percentile", "threshold_value": 99},
        "rows": rows,
        "summary": [{"dataset": "d", "method": "m", "best_dice": rows[0]["best_dice"],
                     "honest_dice": next(r["dice"] for r in rows
                                         if r["rule"] == "percentile 99")}],
    }]}
    text = threshold.render(data)
    assert "**percentile 99** (default)" in text
    assert "within 0.0000" in text


def _ablation_subject(seed: int):
    """A small subject as the reconstruct rule stores it: slices, reconstruction, ROI, where
    the slices sit in the working volume."""
    from arepas.preprocessing import SliceGeometry

    rng = np.random.default_rng(seed)
    slices = rng.uniform(-1, 1, (3, 16, 16)).astype(np.float32)
    recon = np.clip(slices + rng.normal(0, 0.2, slices.shape), -1, 1).astype(np.float32)
    roi = np.zeros(slices.shape, bool)
    roi[:, 3:13, 3:13] = True
    geometry = SliceGeometry(axis=2, box=(0, 16, 0, 16), side=16, size=16,
                             volume_shape=(16, 16, 4))
    return {"slices": slices, "recon": recon, "roi": roi, "indices": np.array([0, 1, 3]),
            "geometry": geometry.as_array()}


def test_ablation_maps_every_setting_through_the_workflow_code():
    from arepas.maps import NORMALISATIONS, anomaly_maps, raw_patch_map
    from arepas.scorer import SiameseScorer
    from bench import ablation

    torch.manual_seed(0)
    model = SiameseScorer(6, 10).eval()
    rec = _ablation_subject(1)
    options = {**ablation.MAP_DEFAULTS, "n_patches": 50}
    maps = ablation.subject_maps(model, rec, options)
    # arepas and patch for every scaling and filter; the residual once per filter.
    expected = len(NORMALISATIONS) * len(ablation.MEDIAN_SIZES) * 2 + len(ablation.MEDIAN_SIZES)
    assert len(maps) == expected
    assert all(v.shape == (16, 16, 4) for v in maps.values())
    # The default setting is what the anomaly_maps rule writes for the same patch positions.
    raw = raw_patch_map(model, rec["slices"], rec["recon"], rec["roi"], options)
    direct = anomaly_maps(rec["slices"], rec["recon"], rec["roi"], raw, ["arepas"])["arepas"]
    np.testing.assert_allclose(maps[("arepas", "reference", 0)][:, :, 1], direct[1])
    assert np.all(maps[("arepas", "reference", 0)][:, :, 2] == 0)  # a slice not scored
    assert not np.allclose(maps[("arepas", "volume", 0)], maps[("arepas", "reference", 0)])
    assert not np.allclose(maps[("arepas", "reference", 5)], maps[("arepas", "reference", 0)])


def test_ablation_table_names_the_best_setting():
    from bench import ablation

    rows = []
    for norm, size, dice in (("reference", 0, 0.30), ("volume", 0, 0.40), ("reference", 5, 0.35)):
        rows.append({"dataset": "lung_ct", "method": "arepas", "normalise": norm,
                     "median_size": size, "best_dice": dice, "honest_dice": dice / 2})
    rows.append({"dataset": "lung_ct", "method": "residual", "normalise": "reference",
                 "median_size": 5, "best_dice": 0.33, "honest_dice": 0.2})
    text = ablation.render({"run_dir": "/run", "maps": {"scoring": "sampled"},
                            "threshold": ["percentile", 99.0], "rows": rows,
                            "seconds": {"lung_ct": 12.0}, "threads": 1})
    assert "`normalise: volume`, median off (0.400; the residual at its best 0.330)" in text
    assert "| residual | — | 5 × 5 | 0.330 | 0.200 |" in text


def test_demo_anatomy_table_leaves_the_mean_ratio_to_registered_data():
    from bench import demo_anatomy

    row = {"l1_own_edges": 0.16, "l1_other_edges": 0.30, "l1_mean_image": 0.24,
           "own_over_other": 0.16 / 0.30, "own_over_mean_image": 0.16 / 0.24, "seconds": 40.0,
           "epochs": 12}
    data = {"device": "cpu", "rows": [
        {**row, "dataset": "brain_t1", "anatomy": "3-6 mm", "variant": "demo settings"},
        {**row, "dataset": "lung_ct", "anatomy": "demo phantom", "variant": "8 epochs"},
    ]}
    lines = demo_anatomy.render(data).splitlines()
    brain = next(line for line in lines if line.startswith("| brain_t1"))
    lung = next(line for line in lines if line.startswith("| lung_ct"))
    assert "| 0.53 | 0.67 |" in brain
    assert "| 0.53 | n/a |" in lung


def test_variant_quantiles_and_intensity_scale_use_healthy_values_only():
    from bench import variants

    healthy = np.sort(np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32))
    real = np.array([[-1.0, -1.0, 1.0, 1.0]], dtype=np.float32)
    residual = np.array([[0.1, 0.3, 0.5, 0.7]], dtype=np.float32)
    roi = np.ones_like(real, dtype=bool)
    scale = variants.intensity_scale(real, residual, roi)
    # Dark voxels' normal error is 0.2 on average, bright ones' 0.6: the same residual of 0.6
    # is unusual in dark tissue and ordinary in bright tissue.
    assert scale[0] == pytest.approx(0.2) and scale[-1] == pytest.approx(0.6)
    s = {"roi": roi[None], "real": real[None], "residual": np.full((1, 1, 4), 0.6, np.float32),
         "dae": residual[None], "raw_patch": np.full((1, 1, 4), 0.35, np.float32)}
    maps = variants.variant_slices(s, healthy, scale)
    both = maps["arepas_calibrated_both"][0, 0]
    assert both[0] == pytest.approx(0.75 * 3.0) and both[-1] == pytest.approx(0.75 * 1.0)
    assert set(maps) >= {"arepas", "arepas+pp", "dae", "dae+pp", "arepas_dae"}
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


def test_repeated_speed_pairs_decide_the_speed_verdict():
    from bench import training_memory

    def pairs(rule, ratios):
        rows = []
        for repeat, ratio in enumerate(ratios):
            rows.append({"rule": rule, "repeat": repeat, "mode": "memory", "subjects": 40,
                         "steps": 60, "steps_per_s": 2.0})
            rows.append({"rule": rule, "repeat": repeat, "mode": "stream", "subjects": 40,
                         "steps": 60, "steps_per_s": 2.0 * ratio})
        return rows

    speed_rows = (
        pairs("translator", [1.02, 0.99, 1.01])
        + pairs("dae", [0.97, 1.01, 0.98])
        + pairs("scorer", [0.9, 0.95, 0.97])
    )
    verdicts = training_memory.speed_verdicts(speed_rows)
    assert verdicts["translator"]["verdict"] == "pass"
    assert verdicts["translator"]["ratio"] == pytest.approx(1.01)
    assert verdicts["dae"]["verdict"] == "inconclusive (slower in 2 of 3 pairs)"
    assert verdicts["scorer"]["verdict"] == "FAIL (slower in 3 of 3 pairs, p = 0.12)"
    assert verdicts["scorer"]["low"] == pytest.approx(0.9)
    assert "autoencoder" not in verdicts
    # The repeated pairs replace the single measurements in the summary verdict.
    rows = [
        {"rule": "scorer", "subjects": n, "size": 64, "mode": mode, "peak_mb": 300.0,
         "steps_per_s": 3.0 if mode == "stream" else 2.0}
        for n in training_memory.COHORTS
        for mode in ("memory", "stream")
    ]
    text = training_memory.render(
        {"baseline": "abc", "threads": 1, "rows": rows, "speed_rows": speed_rows}
    )
    assert "| scorer | +0.0% | +0.0% | pass | 0.95 | FAIL |" in text
    assert "| scorer | 2.00 | 1.90 | 0.95 | 0.90–0.97 | FAIL (slower in 3 of 3 pairs" in text


def test_heldout_target_needs_the_gain_its_interval_and_the_val_threshold():
    from bench import heldout

    def change(method, dataset, gain, low):
        return {
            "dataset": dataset, "method": method, "threshold_kind": "best", "own_dice": 0.5,
            "other_dice": 0.45, "best_other": "residual+pp", "relative_change": gain,
            "ci_low": low, "ci_high": gain + 0.05, "n_subjects": 10,
        }

    summary = [
        {"dataset": "lung_ct", "method": "arepas_calibrated", "honest_over_best": 0.9},
        {"dataset": "brain_t1", "method": "arepas_calibrated", "honest_over_best": 0.9},
        {"dataset": "lung_ct", "method": "arepas_calibrated+pp", "honest_over_best": 0.7},
        {"dataset": "lung_ct", "method": "residual", "honest_over_best": 0.9},
    ]
    run_record = {
        "label": "seed 100", "status": "finished",
        "relative_change": [
            change("arepas_calibrated", "lung_ct", 0.08, 0.01),  # met
            change("arepas_calibrated", "brain_t1", 0.08, -0.01),  # interval reaches 0
            change("arepas_calibrated+pp", "lung_ct", 0.08, 0.02),  # val threshold too low
            {**change("arepas_calibrated", "lung_ct", 0.08, 0.01), "threshold_kind": "honest"},
        ],
    }
    data = {"runs": [run_record], "summaries": {"seed 100": summary}}
    rows = heldout.target_rows(data)
    verdicts = {(r[0], r[1]): r[-1] for r in rows}
    assert verdicts == {
        ("lung_ct", "arepas_calibrated"): "met",
        ("brain_t1", "arepas_calibrated"): "missed",
        ("lung_ct", "arepas_calibrated+pp"): "missed",
    }
    assert [r[2] for r in rows] == ["seed 100"] * 3
    # The shortfall names each dataset's better variant on average and its intervals above 0.
    text = heldout.shortfall_text(data)
    assert "brain_t1: `arepas_calibrated` +8.0% on average (+5% asked: reached), " \
        "interval above 0 in 0 of 1 runs" in text
    assert "lung_ct: `arepas_calibrated` +8.0%" in text and "in 1 of 1 runs" in text
    assert heldout.shortfall_text({"runs": []}) == ""


def test_demo_budget_counts_the_fresh_clones_set_up(run_dir, tmp_path_factory):
    from bench import fresh_clone, speed

    sheet = pd.DataFrame({"subject": ["lung002"], "dataset": ["lung_ct"], "split": ["test"]})
    (run_dir / "results" / "demo").mkdir(parents=True)
    sheet.to_csv(run_dir / "results" / "demo" / "subjects.tsv", sep="\t", index=False)
    data = speed.measure(run_dir)
    assert data["fresh_clone"] is None
    rows = {r[0]: r for r in run.budget_rows({"speed": {"data": data}})}
    demo_row = rows["full default run (`make demo`) ≤ 15 min wall"]
    assert demo_row[-1] == "pass" and "fresh clone" not in demo_row[2]
    # The workflow alone fits; with the environment's set-up the fresh clone does not.
    record = {"commit": "0123456789abcdef", "install_s": 120.0, "demo_s": 800.0,
              "total_s": 920.0, "date": "2026-11-27 06:00 UTC"}
    (run_dir / fresh_clone.RECORD).write_text(__import__("json").dumps(record))
    data = speed.measure(run_dir)
    assert data["fresh_clone"] == record
    rows = {r[0]: r for r in run.budget_rows({"speed": {"data": data}})}
    demo_row = rows["full default run (`make demo`) ≤ 15 min wall"]
    assert demo_row[-1] == "FAIL"
    assert "fresh clone of commit 0123456: 15.3 min in all (920 s)" in demo_row[2]
    assert "set-up of the virtual environment 2.0 min" in demo_row[2]
    assert "fresh clone of commit 0123456" in speed.render(data)
    # A baseline clone timed on the same machine is reported beside it, with the ratio.
    baseline = tmp_path_factory.mktemp("baseline")
    (baseline / fresh_clone.RECORD).write_text(__import__("json").dumps(
        {**record, "commit": "fedcba9876543210", "total_s": 1000.0}))
    data = speed.measure(run_dir, baseline)
    text = "a fresh clone of commit fedcba9 timed the same way (2026-11-27 06:00 UTC) took " \
        "16.7 min (1000 s), so this commit's `make demo` is 0.92 × that commit's"
    assert text in speed.render(data)
    rows = {r[0]: r for r in run.budget_rows({"speed": {"data": data}})}
    assert text in rows["full default run (`make demo`) ≤ 15 min wall"][2]


def test_named_method_demo_wall_share_adds_its_jobs_and_maps_over_the_demo_wall():
    from bench import heldout

    data = {
        "calibration_jobs": [
            {"run": "seed 100", "dataset": "brain_t1", "s": 20.0, "run_wall_s": 1800.0},
            {"run": "seed 101", "dataset": "brain_t1", "s": 40.0, "run_wall_s": 1800.0},
            {"run": "seed 100", "dataset": "lung_ct", "s": 30.0, "run_wall_s": 1800.0},
        ],
        "map_cost": [
            {"dataset": "brain_t1", "maps_s": 0.5, "maps_with_calibrated_s": 1.5,
             "added_fraction": 0.1},
            {"dataset": "lung_ct", "maps_s": 0.5, "maps_with_calibrated_s": 0.5,
             "added_fraction": 0.6},
        ],
    }
    speed = {"wall_s": 400.0, "test_subjects": {"brain_t1": ["a", "b"], "lung_ct": ["c"]}}
    share = heldout.demo_wall_share(data, speed)
    # 30 s (brain mean) + 30 s (lung) + 2 brain test subjects x 1 s of extra maps.
    assert share["added_s"] == pytest.approx(62.0)
    assert share["fraction"] == pytest.approx(62.0 / 400.0)
    map_row, wall_row = heldout.budget_rows(data, speed)
    # The worst dataset decides the map budget; the wall share is within 25 %.
    assert map_row[-1] == "FAIL" and wall_row[-1] == "pass"
    assert "+15.5%" in wall_row[2]
    speed["wall_s"] = 200.0
    assert heldout.budget_rows(data, speed)[1][-1] == "FAIL"
    assert heldout.budget_rows(data, None)[1][-1] == "not measured"


def test_heldout_mining_reads_the_runs_seed_and_tables_the_change(tmp_path):
    from bench import heldout_mining

    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("seed: 3\n")
    assert heldout_mining.run_seed(tmp_path) == 3
    # The bench's own seed file wins over the linked shipped config.
    (tmp_path / quality.SEED_CONFIG).write_text("seed: 101\n")
    assert heldout_mining.run_seed(tmp_path) == 101
    rows = [
        {"run": f"/runs/seed{k}", "dataset": "lung_ct", "method": method,
         "best_dice": dice + k / 10, "honest_dice": dice / 2}
        for k in (0, 1) for method, dice in (("arepas", 0.3), ("arepas_heldout", 0.4))
    ]
    changes = [{"run": "/runs/seed0", "dataset": "lung_ct", "method": "arepas_heldout",
                "other": "arepas", "best_other": True, "own_dice": 0.4, "other_dice": 0.3,
                "relative_change": 1 / 3, "ci_low": 0.1, "ci_high": 0.5}]
    training = [{"scorer": name, "pairs": pairs, "heldout_acc": 0.8, "stalled": stalled}
                for name, pairs, stalled in (("all", 1000, ""), ("val001", 500, "stalled"))]
    text = heldout_mining.render({"rows": rows, "changes": changes, "training": training,
                                  "seconds": 120.0, "workers": 2})
    assert "| arepas_heldout | 0.450 ± 0.071 | 0.200 ± 0.000 |" in text
    assert "| seed0 | lung_ct | arepas_heldout | arepas (best other) | 0.400 vs 0.300 | +33.3% |" \
        in text
    assert "Scorers trained: 2 (1 stalled, kept flagged)" in text


def test_patch_size_study_tables_each_size_and_the_combination():
    from bench import patch_sizes

    rows = [
        {"run": f"/runs/seed{k}", "dataset": "brain_t1", "method": method,
         "best_dice": dice + k / 10, "honest_dice": dice / 2}
        for k in (0, 1)
        for method, dice in (("arepas", 0.3), ("arepas_p4", 0.2), ("arepas_sizes", 0.5))
    ]
    changes = [{"run": "/runs/seed1", "dataset": "brain_t1", "method": "arepas_sizes",
                "other": "arepas", "best_other": False, "own_dice": 0.6, "other_dice": 0.4,
                "relative_change": 0.5, "ci_low": -0.1, "ci_high": 0.9}]
    rows += [
        {"run": f"/runs/seed{k}", "dataset": "brain_t1", "method": "arepas_p4+pp",
         "best_dice": 0.5, "honest_dice": honest}
        for k, honest in ((0, 0.45), (1, 0.3))
    ]
    # Both +10 % over the best other with the interval above 0; seed1's label-free Dice is
    # below 0.8 of its best, so only seed0 meets the target.
    size_changes = [{"run": f"/runs/seed{k}", "dataset": "brain_t1", "method": "arepas_p4+pp",
                     "other": "residual+pp", "best_other": True, "own_dice": 0.5,
                     "other_dice": 0.5 / 1.1, "relative_change": 0.1, "ci_low": 0.02,
                     "ci_high": 0.2} for k in (0, 1)]
    training = [{"size": size, "pairs": pairs, "heldout_acc": acc, "stalled": ""}
                for size, pairs, acc in ((4, 900, 0.7), (4, 1100, 0.9), (10, 500, 0.8))]
    text = patch_sizes.render({"rows": rows, "changes": changes, "training": training,
                               "size_changes": size_changes,
                               "sizes": [4, 6, 10], "map_seconds": {"a": 3.0, "b": 5.0},
                               "seconds": 600.0, "workers": 2})
    assert "| seed0 | brain_t1 | arepas_p4+pp | residual+pp (best other) | 0.500 vs 0.455 |" \
        in text
    assert "`arepas_p4+pp` in 1 of 2" in text
    assert "patch sizes 4 × 4 and 6 × 6 and 10 × 10 px" in text
    assert "| arepas_sizes | 0.550 ± 0.071 | 0.250 ± 0.000 |" in text
    assert "| seed1 | brain_t1 | arepas_sizes | arepas | 0.600 vs 0.400 | +50.0% |" in text
    assert "Combining the sizes alone (raw `arepas_sizes` against raw `arepas`)" in text
    assert "4 px: 1000 ± 141 hard pairs, best held-out pair accuracy 0.800 ± 0.141" in text
    assert "4.0 s on average" in text and "10.0 min for the whole study" in text


def test_the_demo_config_comes_from_the_record_the_run_or_the_cloned_commit(tmp_path):
    from arepas.presets import resolve_presets
    from bench import speed

    record = {"run_dir": str(tmp_path / "gone"), "config": {"seed": 5}}
    assert speed.run_config(record) == {"seed": 5}
    (tmp_path / "run" / "config").mkdir(parents=True)
    (tmp_path / "run" / "config" / "config.yaml").write_text("seed: 6\n")
    assert speed.run_config({"run_dir": str(tmp_path / "run")}) == {"seed": 6}
    # A fresh clone's folder removed: the shipped config of the commit it cloned.
    head = subprocess.run(["git", "-C", str(speed.REPO), "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # With the demo's preset filled in, as the workflow sees it.
    shipped = resolve_presets(yaml.safe_load((speed.REPO / "config" / "config.yaml").read_text()))
    committed = subprocess.run(["git", "-C", str(speed.REPO), "diff", "--quiet", "HEAD", "--",
                                "config/config.yaml"]).returncode == 0
    found = speed.run_config({"run_dir": str(tmp_path / "gone"), "fresh_clone": {"commit": head}})
    assert found == shipped or not committed
    assert speed.run_config({"run_dir": str(tmp_path / "gone")}) is None


def test_edge_reliance_section_tables_fine_detail_only_where_runs_measured_it():
    row = {"dataset": "brain_t1", "l1_own_edges": 0.15, "l1_other_edges": 0.3,
           "l1_mean_image": 0.25, "l1_roi_mean": 0.3, "own_over_other": 0.5,
           "own_over_mean_image": 0.6, "pearson_own": 0.9, "registered": True}
    before = {"runs": [{"label": "seed 0", "edge_reliance": [row]}]}
    assert "fine detail" not in quality.render_edge_reliance(before)
    detail = {"detail_own": 0.6, "detail_other_edges": 0.1, "detail_mean_image": 0.2,
              "detail_blurred_input": 0.9}
    runs = [{"label": f"seed {k}", "edge_reliance": [{**row, **detail, "detail_own": own,
                                                       "detail_recomputed": k == 0}]}
            for k, own in enumerate((0.6, 0.15))]
    text = quality.render_edge_reliance({"runs": runs})
    # Seed 1's own-edge detail (0.15) is below the mean image's (0.2): 1 of 2 above both.
    assert "| brain_t1 | 2 | 0.375 ± 0.318 | 0.100 ± 0.000 | 0.200 ± 0.000 | 0.900 ± 0.000 " \
        "| 1 of 2 |" in text
    assert "1 of these 2 translators were trained before" in text


def test_edge_reliance_of_an_old_run_is_recomputed_and_must_match_its_stored_l1(
        tmp_path, monkeypatch):
    models = tmp_path / "results" / "lung_ct" / "models"
    models.mkdir(parents=True)
    stored = {"dataset": "lung_ct", "l1_own_edges": 0.12}
    pd.DataFrame([stored]).to_csv(models / "translator_edge_reliance.tsv", sep="\t", index=False)
    again = {"l1_own_edges": 0.12, "detail_own": 0.4, "detail_other_edges": 0.0,
             "detail_mean_image": 0.1, "detail_blurred_input": 0.9}
    monkeypatch.setattr(quality, "recompute_edge_reliance", lambda run, dataset: again)
    [row] = quality.edge_reliance_rows(tmp_path)
    assert row["detail_own"] == 0.4 and row["detail_recomputed"]
    again["l1_own_edges"] = 0.2
    with pytest.raises(ValueError, match="own-edge L1 0.200000, the run stored 0.120000"):
        quality.edge_reliance_rows(tmp_path)


def test_translator_detail_table_marks_the_runs_own_translator():
    from bench import translator_detail

    base = {"run": "seed 0", "dataset": "brain_t1", "l1_own_edges": 0.15,
            "own_over_other": 0.55, "own_over_mean_image": 0.65, "detail_own": 0.6,
            "detail_other_edges": 0.15, "detail_mean_image": 0.2, "detail_blurred_input": 0.9}
    rows = [{**base, "lambda_l1": 100.0, "trained": False, "seconds": 20.0},
            {**base, "lambda_l1": 10.0, "trained": True, "seconds": 420.0, "detail_own": 0.7}]
    text = translator_detail.render({"rows": rows, "workers": 2})
    assert "| brain_t1 | 100 | 0.1500 | 0.550 | 0.650 | 0.600 | 0.150 | 0.200 | 0.900 | stored |" \
        in text
    assert "| brain_t1 | 10 | 0.1500 | 0.550 | 0.650 | 0.700 | 0.150 | 0.200 | 0.900 | 7.0 |" \
        in text


def test_discriminator_study_tables_both_channel_counts_and_the_target_per_run():
    from bench import translator_disc

    base = {"l1_own_edges": 0.15, "own_over_other": 0.55, "own_over_mean_image": 0.65,
            "detail_own": 0.6, "detail_other_edges": 0.15, "detail_mean_image": 0.2,
            "detail_blurred_input": 0.9, "trained": True, "seconds": 300.0}
    rows = []
    for label, shift in (("seed 0", 0.0), ("seed 1", 0.1)):
        rows.append({**base, "run": label, "dataset": "brain_t1", "disc_channels": 32,
                     "own_over_mean_image": 0.65 + shift, "trained": False})
        rows.append({**base, "run": label, "dataset": "brain_t1", "disc_channels": 16,
                     "detail_own": 0.5})
    text = translator_disc.render({"rows": rows, "workers": 2})
    # Seed 1's own translator misses the brain's mean-image target (0.75 > 0.7).
    assert "| brain_t1 | 32 | 2 | 0.150 ± 0.000 | 0.550 ± 0.000 | 0.700 ± 0.071 |" in text
    assert text.count("1 of 2") == 1 and text.count("2 of 2") == 1
    assert "| seed 1 | brain_t1 | 0.550 → 0.550 | 0.750 → 0.650 | 0.600 → 0.500 |" in text
    assert "of 32 channels (the runs' own translators, checked again) and of 16 channels " \
        "(trained from scratch" in text
    assert translator_disc.render({"rows": []}) == "No run to study.\n"
    # The lung cohort is not registered: only own / other counts there.
    lung = {**base, "dataset": "lung_ct", "own_over_mean_image": 0.9}
    assert quality.meets_edge_target(pd.Series(lung))
    assert not quality.meets_edge_target(pd.Series({**lung, "dataset": "brain_t1"}))


def test_translator_speed_builds_a_variants_own_discriminator():
    from bench import translator_speed

    chosen = {v.name: v for v in translator_speed.variants(1)}
    half = chosen["64², pix2pix order, penalty every 16th step, 16-channel discriminator"]
    assert half.against in chosen
    from arepas import translator

    settings = translator.TranslatorSettings.from_dict(translator_speed.DEMO_SETTINGS)
    slices = np.zeros((2, 64, 64), dtype=np.float32)
    batch = (torch.zeros(2, 1, 64, 64), torch.from_numpy(slices).unsqueeze(1))
    runs = [translator_speed._replica(chosen[name], settings, batch, 0)
            for name in (half.name, half.against)]
    first_conv = [next(run["discriminator"].parameters()).shape[0] for run in runs]
    assert first_conv == [16, 32]


def test_readme_names_every_section_measured_only_on_request():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert [name for name in run.ON_REQUEST if f"`{name}`" not in readme] == []


def test_the_readmes_training_times_are_rendered_from_the_stored_measurement():
    import json

    from bench import training_time

    repo = Path(__file__).resolve().parents[1]
    record = json.loads((repo / "bench" / "measurements" / "translator_full.json").read_text())
    block = training_time.render(record)
    assert block in (repo / "README.md").read_text()
    assert "| 75,000 | 28,125 |" in block  # one epoch of 3 copies in batches of 8
