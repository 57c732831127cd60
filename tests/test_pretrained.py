"""Models trained once are applied to new scans without training, and only to scans preprocessed
the way the models were trained."""

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from test_incremental import (
    TINY,
    lung_sheet,
    make_workdir,
    planned_jobs,
    run_snakemake,
    shared_tiny_run,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return shared_tiny_run(tmp_path_factory)


def new_scans_config(tiny_run, workdir, models, splits=("val", "test", "predict")):
    """Configs that apply the lung models in `models` to the tiny run's lung scans in `splits`."""
    sheet = lung_sheet(tiny_run, workdir, splits)
    rows = pd.read_csv(workdir / "lung.tsv", sep="\t", keep_default_na=False)
    apply = workdir / "apply.yaml"
    apply.write_text(f"datasets: {{lung_ct: {{pretrained: {models}}}}}\n")
    return rows, (TINY, str(sheet), str(apply))


@pytest.fixture(scope="module")
def models(tiny_run, tmp_path_factory) -> Path:
    """The lung models as a user would keep them: a copy of the training run's models folder."""
    folder = tmp_path_factory.mktemp("lung_models")
    (folder / "arepas_v0").mkdir()
    for name in (
        "translator.pt",
        "scorer.pt",
        "autoencoder.pt",
        "dae.pt",
        "arepas_v0/translator.pt",
        "arepas_v0/scorer.pt",
    ):
        shutil.copy(tiny_run / "results/lung_ct/models" / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def applied_run(tiny_run, models, tmp_path_factory):
    """The lung models applied to the tiny run's lung val, test and predict scans. The healthy
    predict scan is entered as a second val scan, so that arepas_calibrated, which needs two,
    runs beside every other method."""
    workdir = make_workdir(tmp_path_factory.mktemp("applied"))
    _, configs = new_scans_config(tiny_run, workdir, models)
    rows = pd.read_csv(workdir / "lung.tsv", sep="\t", keep_default_na=False)
    rows.loc[rows["split"] == "predict", "split"] = "val"
    rows.to_csv(workdir / "lung.tsv", sep="\t", index=False)
    methods = workdir / "methods.yaml"
    methods.write_text(
        "methods: [arepas, residual, patch, ae, dae, arepas_v0, arepas_calibrated]\n"
    )
    result = run_snakemake(workdir, configs=(*configs, str(methods)))
    return workdir, rows, result.stdout + result.stderr


def test_pretrained_models_are_applied_without_training(applied_run):
    workdir, rows, output = applied_run
    ran = planned_jobs(output)
    assert ran, "no job table in the log"
    trainers = {"train_translator", "train_scorer", "train_autoencoder", "train_dae"}
    trainers |= {"train_translator_v0", "train_scorer_v0"}
    assert not (trainers | {"make_demo"}) & set(ran)
    # Only the sheet's scans are preprocessed: there are no train rows to preprocess.
    assert ran["preprocess"] == ran["reconstruct"] == ran["anomaly_maps"] == len(rows)
    # No model is written: only the calibration of arepas_calibrated's patch scores.
    models = workdir / "results/lung_ct/models"
    assert [p.name for p in models.iterdir()] == ["patch_calibration.npz"]
    assert (workdir / "results/lung_ct/metrics/summary.tsv").exists()
    assert (workdir / "results/lung_ct/figures/pr_curves.png").exists()


def test_applied_models_give_the_training_runs_maps(applied_run, tiny_run):
    # Same scans, same preprocessing, same models and seed: the same maps, bit for bit.
    workdir, rows, _ = applied_run
    for subject in rows["subject"]:
        for method in ("arepas", "residual", "patch", "ae", "dae", "residual+pp"):
            rel = f"results/lung_ct/maps/{method}/{subject}_native.nii.gz"
            applied = np.asarray(nib.load(workdir / rel).dataobj)
            trained = np.asarray(nib.load(tiny_run / rel).dataobj)
            assert np.array_equal(applied, trained), rel


def refusal(tiny_run, models, tmp_path, override: str) -> str:
    """The message of a dry run of the applied lung models with one more config, which must be
    refused; whitespace collapsed, since the message may wrap."""
    workdir = make_workdir(tmp_path)
    _, configs = new_scans_config(tiny_run, workdir, models)
    extra = tmp_path / "override.yaml"
    extra.write_text(override)
    result = run_snakemake(workdir, "-n", configs=(*configs, str(extra)), check=False)
    assert result.returncode != 0
    return " ".join((result.stdout + result.stderr).split())


def test_model_for_other_preprocessing_is_refused(tiny_run, models, tmp_path):
    message = refusal(
        tiny_run, models, tmp_path, "datasets: {lung_ct: {spacing: [6.0, 6.0, 10.0]}}\n"
    )
    assert "dataset 'lung_ct'" in message
    assert "datasets.lung_ct.spacing: model [7.0, 7.0, 10.0], config [6.0, 6.0, 10.0]" in message


def test_missing_model_is_named(tiny_run, models, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(models, partial)
    (partial / "scorer.pt").unlink()
    workdir = make_workdir(tmp_path / "run")
    _, configs = new_scans_config(tiny_run, workdir, partial)
    result = run_snakemake(workdir, "-n", configs=configs, check=False)
    assert result.returncode != 0
    assert "lacks ['scorer.pt']" in result.stdout + result.stderr


def test_test_scans_without_healthy_val_scans_are_refused(tiny_run, models, tmp_path):
    workdir = make_workdir(tmp_path)
    _, configs = new_scans_config(tiny_run, workdir, models, splits=("test",))
    result = run_snakemake(workdir, "-n", configs=configs, check=False)
    assert result.returncode != 0
    assert "no 'val' subjects" in result.stdout + result.stderr


def test_predict_only_scans_need_neither_train_nor_val(tiny_run, models, tmp_path):
    workdir = make_workdir(tmp_path)
    rows, configs = new_scans_config(tiny_run, workdir, models, splits=("predict",))
    result = run_snakemake(workdir, "-n", configs=configs)
    output = result.stdout + result.stderr
    planned = planned_jobs(output)
    assert planned["anomaly_maps"] == len(rows) >= 1
    assert "evaluate" not in planned
    # Without val scans there is no threshold: continuous maps only, and the workflow says so.
    assert not {"mask_thresholds", "lesion_masks"} & set(planned)
    assert "no binary masks for its 'predict' subjects" in " ".join(output.split())


def test_calibrated_method_scores_patches_against_healthy_val_scans(applied_run):
    """arepas_calibrated, run for real on the tiny run's lung scans: the val scan and the healthy
    predict scan serve as the two val subjects, the lesioned scan as the test subject."""
    workdir, rows, output = applied_run
    ran = planned_jobs(output)
    assert ran["patch_calibration"] == 1
    results = workdir / "results/lung_ct"
    calibration = np.load(results / "models/patch_calibration.npz")
    val = sorted(rows.loc[rows["split"] == "val", "subject"])
    assert sorted(calibration["subjects"]) == val and len(val) == 2
    assert calibration["counts"].sum() == calibration["scores"].size > 0
    for subject in rows["subject"]:
        slices = np.load(results / "maps" / f"{subject}_slices.npz")
        calibrated, residual = slices["map_arepas_calibrated"], slices["map_residual"]
        # A quantile in [0, 1] times the residual: never above the residual.
        assert np.all(calibrated <= residual + 1e-6) and calibrated.min() >= 0
        native = nib.load(results / "maps/arepas_calibrated" / f"{subject}_native.nii.gz")
        image = nib.load(rows.set_index("subject").loc[subject, "image"])
        assert native.shape == image.shape
    summary = pd.read_csv(results / "metrics/summary.tsv", sep="\t")
    assert {"arepas_calibrated", "arepas_calibrated+pp"} <= set(summary["method"])
    changes = pd.read_csv(results / "metrics/relative_change.tsv", sep="\t")
    calibrated_rows = changes[changes["method"] == "arepas_calibrated"]
    # Measured against the baselines, not against the reference AREPAS.
    assert not calibrated_rows.empty
    assert not calibrated_rows["best_other"].str.startswith("arepas").any()


def test_calibrated_method_needs_two_healthy_val_scans(tiny_run, models, tmp_path):
    message = refusal(tiny_run, models, tmp_path, "methods: [arepas, arepas_calibrated]\n")
    assert "method arepas_calibrated: dataset 'lung_ct' has 1 val subjects" in message
    assert "at least 2" in message
