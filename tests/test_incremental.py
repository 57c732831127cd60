"""Reruns do only what a change needs: a scoring or evaluation setting reruns maps, metrics,
masks and reports, a translator setting retrains the translator and what depends on it, never the
preprocessing; a training job killed mid-way resumes from its checkpoint.

The helpers here are shared with test_pretrained.py and test_slurm.py: one finished tiny run per
pytest session, which those tests only read."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
TINY = "config/tiny.yaml"

pytestmark = pytest.mark.slow


def snakemake_env() -> dict[str, str]:
    # One BLAS/OpenMP thread per job, as in the other workflow tests; rules set torch's threads.
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run_snakemake(
    workdir: Path, *args: str, configs: tuple[str, ...] = (TINY,), check: bool = True
) -> subprocess.CompletedProcess:
    command = [*SNAKEMAKE, *args, "--cores", "2", "--configfile", *configs]
    result = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, env=snakemake_env()
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return result


def make_workdir(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    for name in ("Snakefile", "workflow", "config", "profiles"):
        (path / name).symlink_to(REPO / name)
    return path


def shared_tiny_run(tmp_path_factory) -> Path:
    """The tiny config run to the end once per session, in a folder that tests must not change."""
    workdir = tmp_path_factory.getbasetemp() / "finished_tiny_run"
    done = workdir / ".finished"
    if not done.exists():
        shutil.rmtree(workdir, ignore_errors=True)
        make_workdir(workdir)
        run_snakemake(workdir)
        done.touch()
    return workdir


def planned_jobs(output: str) -> dict[str, int]:
    """Rule name -> job count from the "Job stats" table of a dry run."""
    lines = output.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.split() == ["job", "count"])
    except StopIteration:
        return {}
    counts = {}
    for line in lines[start + 2 :]:
        fields = line.split()
        if len(fields) != 2 or fields[0] == "total":
            break
        counts[fields[0]] = int(fields[1])
    return counts


def dry_run(workdir: Path, *overrides: str | Path) -> dict[str, int]:
    result = run_snakemake(workdir, "-n", configs=(TINY, *map(str, overrides)))
    return planned_jobs(result.stdout + result.stderr)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return shared_tiny_run(tmp_path_factory)


def dataset_sheet(
    tiny_run: Path,
    workdir: Path,
    dataset: str,
    splits=("train", "val", "test", "predict"),
) -> Path:
    """A config naming a user's sheet (no demo) of the tiny run's scans of one dataset in
    `splits`: a one-dataset workflow on files whose results the tiny run already holds."""
    sheet = pd.read_csv(tiny_run / "results/demo/subjects.tsv", sep="\t", keep_default_na=False)
    rows = sheet[(sheet["dataset"] == dataset) & sheet["split"].isin(splits)].copy()
    for column in ("image", "lesion"):
        rows[column] = [str(tiny_run / "results/demo" / p) if p else "" for p in rows[column]]
    name = dataset.split("_")[0]
    rows.to_csv(workdir / f"{name}.tsv", sep="\t", index=False)
    config = workdir / f"{name}.yaml"
    config.write_text(f"subjects: {name}.tsv\ndemo: {{enabled: false}}\n")
    return config


def lung_sheet(tiny_run: Path, workdir: Path, splits=("train", "val", "test", "predict")) -> Path:
    return dataset_sheet(tiny_run, workdir, "lung_ct", splits)


def write_override(path: Path, text: str) -> Path:
    # Nested numbers need a YAML file: `--config` reads nested values as strings.
    path.write_text(text)
    return path


UPSTREAM = {"make_demo", "preprocess", "prepare_template"}
TRAINING = {"train_translator", "train_scorer", "train_autoencoder", "train_dae"}


def test_a_finished_run_plans_no_job(tiny_run):
    assert dry_run(tiny_run) == {}


def test_map_setting_reruns_only_maps_metrics_and_reports(tiny_run, tmp_path):
    override = write_override(tmp_path / "maps.yaml", "maps: {median_size: 3}\n")
    planned = dry_run(tiny_run, override)
    assert set(planned) == {
        "all",
        "anomaly_maps",
        "evaluate",
        "subject_figure",
        "dataset_figures",
        "summary_table",
        "mask_thresholds",
        "lesion_masks",
    }
    # One map job per mapped subject: val, test and predict rows of both datasets.
    sheet = pd.read_csv(tiny_run / "results/demo/subjects.tsv", sep="\t")
    assert planned["anomaly_maps"] == int((sheet["split"] != "train").sum())


def test_evaluation_setting_reruns_only_metrics_and_reports(tiny_run, tmp_path):
    override = write_override(tmp_path / "eval.yaml", "evaluation: {threshold_value: 95.0}\n")
    planned = dry_run(tiny_run, override)
    # The val threshold moves, and with it the binary masks of the test and predict subjects.
    masks = {"mask_thresholds", "lesion_masks"}
    assert set(planned) == {"all", "evaluate", "dataset_figures", "summary_table"} | masks
    assert planned["evaluate"] == planned["mask_thresholds"] == 2
    sheet = pd.read_csv(tiny_run / "results/demo/subjects.tsv", sep="\t")
    assert planned["lesion_masks"] == int(sheet["split"].isin(["test", "predict"]).sum())


def test_translator_setting_retrains_downstream_of_the_translator_only(tiny_run, tmp_path):
    override = write_override(
        tmp_path / "translator.yaml",
        "datasets: {lung_ct: {translator: {lr: 0.002}}}\n",
    )
    planned = dry_run(tiny_run, override)
    assert not (UPSTREAM | {"train_autoencoder", "train_dae"}) & set(planned)
    # Only the dataset whose translator changed: one translator, one scorer.
    assert planned["train_translator"] == planned["train_scorer"] == 1
    sheet = pd.read_csv(tiny_run / "results/demo/subjects.tsv", sep="\t")
    lung_mapped = int(((sheet["dataset"] == "lung_ct") & (sheet["split"] != "train")).sum())
    assert planned["reconstruct"] == planned["anomaly_maps"] == lung_mapped
    assert {"evaluate", "translator_figure", "scorer_figure", "summary_table"} <= set(planned)


def test_preprocessing_setting_reruns_everything_of_its_dataset(tiny_run, tmp_path):
    override = write_override(
        tmp_path / "prep.yaml", "datasets: {brain_t1: {intensity: {percentiles: [2.0, 98.0]}}}\n"
    )
    planned = dry_run(tiny_run, override)
    sheet = pd.read_csv(tiny_run / "results/demo/subjects.tsv", sep="\t")
    assert planned["preprocess"] == int((sheet["dataset"] == "brain_t1").sum())
    assert "make_demo" not in planned and "prepare_template" not in planned
    assert TRAINING <= set(planned) and planned["train_translator"] == 1


def checkpoint_epoch(workdir: Path, dataset: str) -> tuple[Path, int]:
    """The translator checkpoint of a dataset and the last epoch it holds (0 if there is none)."""
    found = sorted((workdir / f"results/{dataset}/models/translator_checkpoint").glob("*/last.pt"))
    if not found:
        return Path(), 0
    try:
        return found[0], int(torch.load(found[0], weights_only=True)["epoch"])
    except (OSError, RuntimeError, EOFError, KeyError):
        return found[0], 0  # being replaced right now


def test_killed_translator_resumes_from_its_checkpoint(tiny_run, tmp_path):
    workdir = make_workdir(tmp_path / "killed")
    epochs = 30  # enough to kill the job mid-way
    sheet = lung_sheet(tiny_run, workdir)
    longer = write_override(
        tmp_path / "longer.yaml",
        f"datasets: {{lung_ct: {{translator: {{epochs: {epochs}}}}}}}\n",
    )
    configs = (TINY, str(sheet), str(longer))
    # Only the translator and what it needs: the rest of the workflow adds nothing to this test.
    target = "results/lung_ct/models/translator.pt"
    first = subprocess.Popen(
        [*SNAKEMAKE, target, "--cores", "2", "--configfile", *configs],
        cwd=workdir, env=snakemake_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while checkpoint_epoch(workdir, "lung_ct")[1] < 2:
            assert first.poll() is None, "the run ended before the translator could be killed"
            assert time.monotonic() < deadline, "no translator checkpoint after 300 s"
            time.sleep(0.1)
        # As a batch system at a time limit: the job is killed outright, Snakemake is told to stop.
        for child in psutil.Process(first.pid).children(recursive=True):
            try:
                child.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    checkpoint, killed_at = checkpoint_epoch(workdir, "lung_ct")
    assert 2 <= killed_at < epochs, "the job was not killed mid-training"
    assert not (workdir / "results/lung_ct/models/translator.pt").exists()

    run_snakemake(workdir, target, "--rerun-incomplete", configs=configs)
    log = (workdir / "logs/lung_ct/train_translator.log").read_text()
    assert f"resuming from {checkpoint.relative_to(workdir)} after epoch {killed_at}" in log
    trained = [int(n) for n in re.findall(rf"translator: epoch (\d+)/{epochs} ", log)]
    assert trained == list(range(killed_at + 1, epochs + 1))
    history = pd.read_csv(workdir / "results/lung_ct/models/translator_history.tsv", sep="\t")
    assert history["epoch"].tolist() == list(range(1, epochs + 1))
    # The resumed model is final: nothing of it is left to do.
    assert (workdir / target).exists()
    planned = run_snakemake(workdir, target, "-n", configs=configs)
    assert planned_jobs(planned.stdout + planned.stderr) == {}

    # A changed setting retrains from scratch: the old checkpoint does not fit, and goes.
    other = write_override(
        tmp_path / "other.yaml", "datasets: {lung_ct: {translator: {lr: 0.002, epochs: 2}}}\n"
    )
    run_snakemake(workdir, target, configs=(TINY, str(sheet), str(other)))
    log = (workdir / "logs/lung_ct/train_translator.log").read_text()
    assert "resuming" not in log and "epoch 2/2" in log
    assert not checkpoint.exists() and checkpoint_epoch(workdir, "lung_ct")[1] == 2
