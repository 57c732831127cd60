"""The published path run whole: config/published_smoke.yaml trains the published networks on
256² slices (a few steps each) and runs every rule, masks and the report included."""

import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from test_incremental import make_workdir, run_snakemake

from arepas import autoencoder, dae, io, scorer, translator

pytestmark = pytest.mark.slow
SMOKE = "config/published_smoke.yaml"
DATASETS = ("lung_ct", "brain_t1")


@pytest.fixture(scope="module")
def published_run(tmp_path_factory) -> Path:
    """The smoke run, here without the large intermediates (`keep_intermediates: false`)."""
    workdir = make_workdir(tmp_path_factory.mktemp("published") / "run")
    (workdir / "lean.yaml").write_text("keep_intermediates: false\n")
    result = run_snakemake(
        workdir, "--report", "results/report.zip", "--report-after-run",
        configs=(SMOKE, "lean.yaml"),
    )
    (workdir / "snakemake.log").write_text(result.stdout + result.stderr)
    return workdir


def test_the_published_networks_are_trained_on_256_slices(published_run):
    for dataset in DATASETS:
        models = published_run / "results" / dataset / "models"
        _, settings, _ = translator.load_translator(models / "translator.pt")
        assert (settings.base_channels, settings.n_blocks, settings.disc_channels) == (64, 9, 64)
        assert (settings.dropout, settings.augment_swaps, settings.amp) == (0.5, 20, False)
        assert scorer.load_scorer(models / "scorer.pt")[1].patch_size == 16
        assert autoencoder.load_autoencoder(models / "autoencoder.pt") is not None
        assert dae.load_dae(models / "dae.pt") is not None
        slices = io.load_arrays(published_run / f"results/{dataset}/preprocessed/"
                                f"{'lung' if dataset == 'lung_ct' else 'brain'}001/slices.npz")
        assert slices["slices"].shape[1:] == (256, 256)
        # The budget cut training to one step, and the log says so with its plan.
        history = pd.read_csv(models / "translator_history.tsv", sep="\t")
        assert int(history["step"].max()) == 1
        log = (published_run / f"logs/{dataset}/train_translator.log").read_text()
        assert "translator: step 1/1 (100.0 %)" in log and "cut short by max_steps" in log


def test_every_rule_ran_and_maps_lie_on_the_native_grid(published_run):
    results = published_run / "results"
    sheet = pd.read_csv(results / "demo/subjects.tsv", sep="\t", keep_default_na=False)
    for row in sheet[sheet["split"] != "train"].itertuples():
        native = nib.load(results / "demo" / row.image)
        for method in ("arepas", "residual", "patch", "ae", "dae"):
            path = results / row.dataset / "maps" / method / f"{row.subject}_native.nii.gz"
            image = nib.load(path)
            assert image.shape == native.shape and np.allclose(image.affine, native.affine)
            assert np.isfinite(np.asarray(image.dataobj)).all()
    for row in sheet[sheet["split"] == "test"].itertuples():
        mask = nib.load(results / row.dataset / "masks/arepas" / f"{row.subject}.nii.gz")
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
        assert (results / row.dataset / "figures/masks" / f"{row.subject}.png").exists()
    summary = pd.read_csv(results / "summary.tsv", sep="\t")
    assert set(summary["dataset"]) == set(DATASETS)
    with zipfile.ZipFile(results / "report.zip") as report:
        assert any(name.endswith("summary.md") for name in report.namelist())


def test_large_intermediates_are_removed_once_consumed(published_run):
    results = published_run / "results"
    for dataset in DATASETS:
        assert not list((results / dataset / "reconstruction").glob("*.npz"))
        assert not list((results / dataset / "maps").rglob("*_working.nii.gz"))
        assert not list((results / dataset / "maps").glob("*_slices.npz"))
        assert list((results / dataset / "maps").rglob("*_native.nii.gz"))
        assert list((results / dataset / "figures" / "subjects").glob("*.png"))


def test_start_up_names_no_preset_and_prints_the_budgeted_steps(published_run):
    assert "preset cpu_demo" not in (published_run / "snakemake.log").read_text()
    # Once the stacks exist, a dry run counts the training slices and plans each job's steps.
    result = run_snakemake(published_run, "-n", configs=(SMOKE, "lean.yaml"))
    lines = [line for line in (result.stdout + result.stderr).splitlines()
             if "training steps on" in line]
    assert len(lines) == len(DATASETS)
    for line in lines:
        assert "(preprocessed)" in line and "translator 1," in line and "autoencoder 1," in line
