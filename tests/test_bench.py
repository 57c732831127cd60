"""The benchmark command's pure parts: job records, sums per rule and stage, mean ± sd over
seeds, growth fits, budget verdicts and the trade-off paragraph. No workflow runs here."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

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
                "dice_val_thr": dice / 2,
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
    second.loc[second["method"] == "arepas", "dice_val_thr"] = 0.40
    second.loc[second["method"] == "ae", "best_dice"] = 0.0
    table = tables.aggregate_quality({"seed 0": first, "seed 1": second}).set_index("method")
    assert table.loc["arepas", "val_thr_over_best_mean"] == pytest.approx((0.5 + 0.8) / 2)
    # A best Dice of 0 has no ratio; the other run's ratio stands alone.
    assert table.loc["ae", "val_thr_over_best_mean"] == pytest.approx(0.5)
    assert math.isnan(table.loc["ae", "val_thr_over_best_sd"])


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


def test_training_memory_table_gives_growth_and_verdicts():
    from bench import training_memory

    rows = []
    for mode, peaks in (("memory", (300.0, 420.0, 900.0)), ("stream", (300.0, 303.0, 306.0))):
        for n, peak in zip(training_memory.COHORTS, peaks, strict=True):
            rows.append(
                {"rule": "dae", "subjects": n, "size": 64, "mode": mode, "peak_mb": peak,
                 "steps_per_s": 2.0 if mode == "memory" else 2.5}
            )
    rows.append({"rule": "scorer", "subjects": 10, "size": 64, "peak_mb": 500.0,
                 "steps_per_s": None})
    text = training_memory.render({"threads": 1, "rows": rows})
    # The in-memory code's rows of older records stay out of the tables.
    assert "| dae | +2.0% | pass |" in text and "+200.0%" not in text
    assert "| dae | 64² | 160 | 306 | 2.50 |" in text and "| 900 |" not in text
    assert "| scorer | 64² | 10 | 500 | n/a |" in text and "| scorer | n/a | not measured |" in text
    assert training_memory.FIGURE.as_posix() in text


def test_heldout_target_needs_the_gain_its_interval_and_the_val_threshold():
    from bench import heldout

    def change(method, dataset, gain, low):
        return {
            "dataset": dataset, "method": method, "threshold_kind": "best", "own_dice": 0.5,
            "other_dice": 0.45, "best_other": "residual+pp", "relative_change": gain,
            "ci_low": low, "ci_high": gain + 0.05, "n_subjects": 10,
        }

    summary = [
        {"dataset": "lung_ct", "method": "arepas_calibrated", "val_thr_over_best": 0.9},
        {"dataset": "brain_t1", "method": "arepas_calibrated", "val_thr_over_best": 0.9},
        {"dataset": "lung_ct", "method": "arepas_calibrated+pp", "val_thr_over_best": 0.7},
        {"dataset": "lung_ct", "method": "residual", "val_thr_over_best": 0.9},
    ]
    run_record = {
        "label": "seed 100", "status": "finished",
        "relative_change": [
            change("arepas_calibrated", "lung_ct", 0.08, 0.01),  # met
            change("arepas_calibrated", "brain_t1", 0.08, -0.01),  # interval reaches 0
            change("arepas_calibrated+pp", "lung_ct", 0.08, 0.02),  # val threshold too low
            {**change("arepas_calibrated", "lung_ct", 0.08, 0.01), "threshold_kind": "val_thr"},
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


def test_demo_budget_counts_the_fresh_clones_set_up(run_dir):
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


def test_the_demo_config_comes_from_the_record_or_the_run(tmp_path):
    from bench import speed

    record = {"run_dir": str(tmp_path / "gone"), "config": {"seed": 5}}
    assert speed.run_config(record) == {"seed": 5}
    (tmp_path / "run" / "config").mkdir(parents=True)
    (tmp_path / "run" / "config" / "config.yaml").write_text("seed: 6\n")
    assert speed.run_config({"run_dir": str(tmp_path / "run")}) == {"seed": 6}
    assert speed.run_config({"run_dir": str(tmp_path / "gone")}) is None


def test_edge_reliance_section_tables_fine_detail_only_where_runs_measured_it():
    row = {"dataset": "brain_t1", "l1_own_edges": 0.15, "l1_other_edges": 0.3,
           "l1_mean_image": 0.25, "l1_roi_mean": 0.3, "own_over_other": 0.5,
           "own_over_mean_image": 0.6, "pearson_own": 0.9, "registered": True}
    before = {"runs": [{"label": "seed 0", "edge_reliance": [row]}]}
    assert "fine detail" not in quality.render_edge_reliance(before)
    detail = {"detail_own": 0.6, "detail_other_edges": 0.1, "detail_mean_image": 0.2,
              "detail_blurred_input": 0.9}
    runs = [{"label": f"seed {k}", "edge_reliance": [{**row, **detail, "detail_own": own}]}
            for k, own in enumerate((0.6, 0.15))]
    text = quality.render_edge_reliance({"runs": runs})
    # Seed 1's own-edge detail (0.15) is below the mean image's (0.2): 1 of 2 above both.
    assert "| brain_t1 | 2 | 0.375 ± 0.318 | 0.100 ± 0.000 | 0.200 ± 0.000 | 0.900 ± 0.000 " \
        "| 1 of 2 |" in text


def test_readme_names_every_section_measured_only_on_request():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert [name for name in run.ON_REQUEST if f"`{name}`" not in readme] == []


def test_the_readmes_training_times_are_rendered_from_the_stored_measurement():
    import json

    from bench import training_time

    repo = Path(__file__).resolve().parents[1]
    block = training_time.render(json.loads(training_time.RECORD.read_text()))
    assert block in (repo / "README.md").read_text()
    assert "| 75,000 | 28,125 |" in block  # one epoch of 3 copies in batches of 8


REPO = Path(__file__).resolve().parents[1]


def test_benchmarks_md_is_the_render_of_the_stored_measurements():
    """BENCHMARKS.md as `python -m bench --only none` writes it at this commit and working tree
    (the stale marks depend on both)."""
    rendered = run.report(REPO / "bench" / "measurements", REPO)
    stored = (REPO / "BENCHMARKS.md").read_text()
    assert rendered == stored, (
        "BENCHMARKS.md differs from its measurements' render: `python -m bench --only none`"
    )


def test_every_section_is_registered_titled_and_says_what_code_it_measures():
    assert set(run.TITLES) == set(run.MEASURES) == set(run.SECTIONS)
    assert set(run.ON_REQUEST) <= set(run.SECTIONS)
    numbers = [int(run.TITLES[name].split(".", 1)[0]) for name in run.SECTIONS]
    assert numbers == sorted(set(numbers))  # in order, none twice
    for name in run.SECTIONS:
        assert (REPO / "bench" / f"{name}.py").exists(), name
        for path in run.MEASURES[name]:
            assert (REPO / path.removeprefix(run.NOT_MEASURED)).exists(), (name, path)
    # No measurement file without a section (an archived study's numbers stay in its commit)
    # but the GPU step times the README's training times use.
    stored = {p.stem for p in (REPO / "bench" / "measurements").glob("*.json")}
    assert stored - set(run.SECTIONS) <= {"translator_step"}


# bench's helpers for reading finished runs, tables and machine facts: what they import is no
# part of what the sections that use them measure.
BENCH_HELPERS = {"quality", "tables", "machine"}


def _bench_modules_reached(name: str, seen: set[str], top: bool = True) -> None:
    """bench modules a section's module imports, itself included, recursively, helpers aside."""
    import re

    if name in seen or (not top and name in BENCH_HELPERS) \
            or not (REPO / "bench" / f"{name}.py").exists():
        return
    seen.add(name)
    source = (REPO / "bench" / f"{name}.py").read_text()
    for names in re.findall(r"^\s*from bench import ([\w, ]+)", source, re.M):
        for other in names.split(","):
            _bench_modules_reached(other.strip(), seen, top=False)
    for other in re.findall(r"^\s*from bench\.(\w+) import", source, re.M):
        _bench_modules_reached(other, seen, top=False)


def test_each_sections_measured_paths_cover_the_library_modules_it_reaches():
    """A module split or added to what a section runs must enter its MEASURES, or the section
    would not go stale when that code changes."""
    from arepas.provenance import modules_reached

    for section in run.SECTIONS:
        modules: set[str] = set()
        bench_modules: set[str] = set()
        _bench_modules_reached(section, bench_modules)
        for module in bench_modules:
            modules.update(modules_reached(REPO / "bench" / f"{module}.py", REPO))
        files = []
        for module in sorted(m for m in modules if m.split(".")[0] == "arepas"):
            path = REPO.joinpath(*module.split("."))
            files.append(
                f"{path.relative_to(REPO)}/__init__.py" if path.is_dir()
                else f"{path.relative_to(REPO)}.py"
            )
        missing = [f for f in files if not run._measured_by(run.MEASURES[section], f)]
        assert missing == [], (section, missing)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


def test_a_section_is_stale_when_its_code_changed_after_the_measured_commit(tmp_path):
    repo = tmp_path / "repo"
    (repo / "arepas" / "scorer").mkdir(parents=True)
    _git(repo, "init", "-q")
    (repo / "arepas" / "scorer" / "training.py").write_text("a = 1\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "scorer")
    first = _git(repo, "rev-parse", "HEAD")
    (repo / "README.md").write_text("other code\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "readme")
    unrelated = _git(repo, "rev-parse", "HEAD")

    def status(record: dict) -> tuple[str, str]:
        return run.code_status("scoring", record, repo=repo)

    # A later commit that leaves the measured code alone keeps the section current.
    for commit in (first, unrelated):
        said, stale = status({"commit": commit, "dirty_paths": ["README.md"]})
        assert said.startswith(f"at commit {commit[:12]}; ") and "unchanged since" in said
        assert stale == ""
    (repo / "arepas" / "scorer" / "training.py").write_text("a = 2\n")
    said, stale = status({"commit": unrelated})
    assert stale.startswith("**Stale:**") and "in uncommitted changes" in stale
    _git(repo, "commit", "-q", "-am", "scorer again")
    changed = _git(repo, "rev-parse", "HEAD")
    said, stale = status({"commit": first})
    assert said == f"at commit {first[:12]}"
    assert f"in commit {changed[:12]}" in stale and "--only scoring" in stale
    assert status({"commit": changed})[1] == ""
    # Unknown: no commit, a commit not in this repository, measured with uncommitted code.
    assert status({})[0] == "commit not recorded, so not known to be current"
    assert "does not hold" in status({"commit": "0" * 40})[0]
    said, stale = status({"commit": changed, "dirty_paths": ["arepas/scorer/training.py"]})
    assert "uncommitted changes to the code it measures (arepas/scorer/training.py)" in said
    assert stale == ""


def test_a_saved_section_records_the_commit_and_whether_the_tree_was_dirty(tmp_path):
    import json

    run.save_section(tmp_path, "scoring", {"rows": []})
    measured = json.loads((tmp_path / "scoring.json").read_text())["machine"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert measured["commit"] == head
    assert measured["dirty"] == bool(measured["dirty_paths"])


def test_archived_studies_name_their_commit_and_are_gone_from_bench():
    import re

    studies = (REPO / "docs" / "studies.md").read_text()
    named = re.findall(r"commit `([0-9a-f]{40})`, `bench/(\w+)\.py`", studies)
    assert len(named) >= 11
    for commit, study in named:
        assert study not in run.SECTIONS and not (REPO / "bench" / f"{study}.py").exists()
        held = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
                              capture_output=True)
        if held.returncode == 0:  # a shallow clone may not hold it
            shown = subprocess.run(
                ["git", "-C", str(REPO), "cat-file", "-e", f"{commit}:bench/{study}.py"],
                capture_output=True,
            )
            assert shown.returncode == 0, (commit, study)
