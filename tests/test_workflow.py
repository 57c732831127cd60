"""The whole workflow on the tiny config: every stage runs, outputs land where the README says,
and maps sit on each subject's native grid."""

import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from test_incremental import TINY, dataset_sheet, make_workdir, run_snakemake, shared_tiny_run

from arepas import scorer, translator

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return shared_tiny_run(tmp_path_factory)


def test_every_stage_writes_its_outputs(tiny_run):
    results = tiny_run / "results"
    sheet = pd.read_csv(results / "demo" / "subjects.tsv", sep="\t", keep_default_na=False)
    assert set(sheet["dataset"]) == {"lung_ct", "brain_t1"}
    for dataset in ("lung_ct", "brain_t1"):
        models = results / dataset / "models"
        for name in (
            "translator.pt",
            "scorer.pt",
            "autoencoder.pt",
            "dae.pt",
            "translator_history.tsv",
        ):
            assert (models / name).stat().st_size > 0
        # arepas_v0 trains a translator and a scorer of its own, with its own choices.
        v0 = translator.load_translator(models / "arepas_v0" / "translator.pt")[1]
        assert v0.augment_keep_unaugmented and v0.swap_style == "clean_source"
        assert translator.load_translator(models / "translator.pt")[1].swap_style == "reference"
        v0_scorer = scorer.load_scorer(models / "arepas_v0" / "scorer.pt")[1]
        assert (v0_scorer.architecture, v0_scorer.mining_source) == (
            "unpadded", "unaugmented_edges"
        )
        reliance = pd.read_csv(models / "translator_edge_reliance.tsv", sep="\t")
        assert reliance.loc[0, "verdict"] in ("uses edges", "ignores edges")
        summary = pd.read_csv(results / dataset / "metrics" / "summary.tsv", sep="\t")
        methods = ["ae", "arepas", "arepas_v0", "dae", "patch", "residual"]
        # Every method raw and post-processed, in the same table.
        assert sorted(summary["method"]) == sorted(methods + [f"{m}+pp" for m in methods])
        assert summary["auroc"].between(0, 1).all()
        changes = pd.read_csv(results / dataset / "metrics" / "relative_change.tsv", sep="\t")
        compared = ["arepas", "arepas+pp", "arepas_v0", "arepas_v0+pp"]
        assert sorted(set(changes["method"])) == compared
        best = changes[changes["threshold_kind"] == "best"]
        assert (best["ci_low"] <= best["relative_change"]).all()
        assert (best["relative_change"] <= best["ci_high"]).all()
        # At the val threshold the tiny networks may find nothing: the change is then undefined.
        at_val_thr = changes[changes["threshold_kind"] == "val_thr"]
        assert (at_val_thr["ci_low"].isna() == (at_val_thr["other_dice"] == 0)).all()
        figures = ("pr_curves", "dice_per_subject", "translator_training", "scorer_training")
        for figure in (*figures, "translator_edge_reliance"):
            assert (results / dataset / "figures" / f"{figure}.png").stat().st_size > 0
    assert "arepas" in (results / "summary.md").read_text()
    # Every rule leaves a log, and rules without between-workflow caching a benchmark.
    assert list((tiny_run / "logs" / "lung_ct" / "preprocess").glob("*.log"))
    assert list((tiny_run / "benchmarks" / "lung_ct" / "anomaly_maps").glob("*.tsv"))


def test_maps_lie_on_the_native_grid_and_vanish_outside_the_roi(tiny_run):
    sheet = pd.read_csv(tiny_run / "results/demo/subjects.tsv", sep="\t", keep_default_na=False)
    mapped = sheet[sheet["split"].isin(["val", "test", "predict"])]
    assert "predict" in set(mapped["split"])
    for row in mapped.itertuples():
        image = nib.load(tiny_run / "results/demo" / row.image)
        roi = nib.load(
            tiny_run / f"results/{row.dataset}/preprocessed/{row.subject}/roi_native.nii.gz"
        )
        for method in ("arepas", "residual", "patch", "ae", "dae", "arepas_v0", "dae+pp"):
            path = tiny_run / f"results/{row.dataset}/maps/{method}/{row.subject}_native.nii.gz"
            amap = nib.load(path)
            assert amap.shape == image.shape
            assert np.allclose(amap.affine, image.affine, atol=1e-4)
            data = np.asarray(amap.dataobj)
            assert np.all(data[np.asarray(roi.dataobj) == 0] == 0)
            assert data.min() >= 0 and np.isfinite(data).all()


def test_test_and_predict_subjects_get_binary_masks_at_the_val_threshold(tiny_run):
    results = tiny_run / "results"
    sheet = pd.read_csv(results / "demo/subjects.tsv", sep="\t", keep_default_na=False)
    assert {"test", "predict"} <= set(sheet["split"])
    for row in sheet.itertuples():
        mask_path = results / row.dataset / "masks" / "arepas" / f"{row.subject}.nii.gz"
        figure = results / row.dataset / "figures" / "masks" / f"{row.subject}.png"
        if row.split not in ("test", "predict"):
            assert not mask_path.exists() and not figure.exists()
            continue
        image = nib.load(results / "demo" / row.image)
        mask = nib.load(mask_path)
        assert mask.get_data_dtype() == np.uint8
        assert mask.shape == image.shape[:3]
        assert np.allclose(mask.affine, image.affine, atol=1e-4)
        data = np.asarray(mask.dataobj)
        assert set(np.unique(data)) <= {0, 1}
        roi = nib.load(results / row.dataset / "preprocessed" / row.subject / "roi_native.nii.gz")
        assert not data[np.asarray(roi.dataobj) == 0].any()
        assert figure.stat().st_size > 10_000
        if row.split == "test":
            # The mask is the segmentation the evaluation scored at the val threshold.
            table = pd.read_csv(results / row.dataset / "metrics/per_subject.tsv", sep="\t")
            at_val_thr = table[
                (table["method"] == "arepas")
                & (table["subject"] == row.subject)
                & (table["threshold_kind"] == "val_thr")
            ].iloc[0]
            assert data.sum() == at_val_thr["tp"] + at_val_thr["fp"]
    for dataset in ("lung_ct", "brain_t1"):
        thresholds = pd.read_csv(results / dataset / "masks/thresholds.tsv", sep="\t")
        summary = pd.read_csv(results / dataset / "metrics/summary.tsv", sep="\t")
        val_threshold = summary.set_index("method").loc["arepas", "val_threshold"]
        assert thresholds.set_index("method").loc["arepas", "threshold"] == pytest.approx(
            val_threshold
        )


def test_stalled_scorer_is_flagged_in_the_tables(tiny_run):
    # The tiny networks cannot learn the pairs; the config asks to keep the model, flagged.
    summary = pd.read_csv(
        tiny_run / "results/lung_ct/metrics/summary.tsv", sep="\t", keep_default_na=False
    )
    flags = dict(zip(summary["method"], summary["flag"], strict=True))
    assert flags["arepas"] == flags["patch"] in ("", "scorer stalled")
    assert flags["residual"] == flags["ae"] == flags["dae"] == flags["residual+pp"] == ""
    assert flags["arepas+pp"] == flags["arepas"]
    clean_log = (tiny_run / "logs/lung_ct/arepas_v0/train_scorer.log").read_text()
    assert ("stalled" in clean_log) == (flags["arepas_v0"] == "scorer stalled")
    log = (tiny_run / "logs/lung_ct/train_scorer.log").read_text()
    assert ("stalled" in log) == (flags["arepas"] == "scorer stalled")


def test_report_builds(tiny_run, tmp_path):
    report_path = tmp_path / "report.zip"
    run_snakemake(tiny_run, "--report", str(report_path))
    assert report_path.stat().st_size > 10_000
    with zipfile.ZipFile(report_path) as report:
        names = report.namelist()
    # The lesion masks, their overlay figures and thresholds are in the report.
    for name in ("lung005.nii.gz", "lung005.png", "brain004.nii.gz", "thresholds.tsv"):
        assert any(n.endswith(f"/{name}") for n in names), name
    assert sum(n.endswith("/lung004.png") for n in names) == 2  # panel and mask overlay


def test_same_seed_gives_bit_identical_maps_and_metrics(tiny_run, tmp_path):
    """The brain scans run again from scratch, registration included. The lung scans' second
    run is the SLURM test's, which compares its maps and metrics with this run's in the same way."""
    again = make_workdir(tmp_path)
    run_snakemake(again, configs=(TINY, str(dataset_sheet(tiny_run, again, "brain_t1"))))
    produced = sorted(
        p.relative_to(tiny_run)
        for p in (tiny_run / "results/brain_t1").rglob("*_native.nii.gz")
    )
    assert produced
    for rel in produced:
        first = np.asarray(nib.load(tiny_run / rel).dataobj)
        second = np.asarray(nib.load(again / rel).dataobj)
        assert np.array_equal(first, second), f"{rel} differs between two runs with one seed"
    rel = Path("results/brain_t1/metrics/per_subject.tsv")
    assert (tiny_run / rel).read_text() == (again / rel).read_text()


def test_a_report_to_share_holds_no_subject(tiny_run, tmp_path):
    """`report: {subjects: false}`: aggregate tables and curves, no subject's images or rows,
    and nothing computed again."""
    overlay = tmp_path / "share.yaml"
    overlay.write_text("report: {subjects: false}\n")
    planned = run_snakemake(tiny_run, "-n", configs=(TINY, str(overlay)))
    assert "Nothing to be done" in planned.stdout + planned.stderr
    report_path = tmp_path / "shared.zip"
    run_snakemake(tiny_run, "--report", str(report_path), configs=(TINY, str(overlay)))
    with zipfile.ZipFile(report_path) as report:
        names = report.namelist()
    assert any(n.endswith("/summary.tsv") for n in names)
    assert any(n.endswith("/pr_curves.png") for n in names)
    for fragment in ("lung005", "brain004", "per_subject.tsv", "dice_per_subject.png",
                     "translator_edge_reliance.png"):
        assert not any(fragment in n for n in names), fragment
