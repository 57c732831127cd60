"""Training plans known before a run: slice counts and each training job's steps."""

import math
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from snakemake.utils import update_config

from arepas import io, planning, translator
from arepas.presets import apply_preset

REPO = Path(__file__).resolve().parents[1]


def readme_blocks() -> dict:
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- minimal-blocks -->")[1].split("<!-- /minimal-blocks -->")[0]
    return yaml.safe_load(block.split("```yaml")[1].split("```")[0])


def test_the_header_bound_covers_the_field_of_view_along_the_slice_axis():
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    assert planning.slice_count_bound((512, 512, 100), affine, [1, 1, 2.5], "axial") == 100
    assert planning.slice_count_bound((512, 512, 100), affine, [1, 1, 5.0], "axial") == 50
    # 512 x 0.8 mm = 409.6 mm across: 410 coronal slices of 1 mm.
    assert planning.slice_count_bound((512, 512, 100), affine, [1, 1, 2.5], "coronal") == 410
    # An LPS scan with swapped axes covers the same field of view.
    lps = np.array([[0, -0.8, 0, 0], [-2.5, 0, 0, 0], [0, 0, 0.8, 0], [0, 0, 0, 1.0]])
    assert planning.slice_count_bound((100, 512, 512), lps, [1, 1, 1], "coronal") == 250


def test_stored_counts_are_read_from_the_stack_header(tmp_path):
    stack = tmp_path / "slices.npz"
    io.save_arrays(stack, slices=np.zeros((37, 16, 16), np.float32), rows=np.arange(37))
    assert planning.stored_slice_count(stack) == 37


def test_training_slices_prefer_the_stacks_and_else_bound_from_headers(tmp_path):
    image = tmp_path / "a.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 12), np.int16), np.diag([2, 2, 5, 1.0])), image)
    stack = tmp_path / "slices.npz"
    settings = {"spacing": [2, 2, 10], "slice_axis": "axial"}
    assert planning.training_slices([str(image)], [str(stack)], settings) == (6, False)
    io.save_arrays(stack, slices=np.zeros((4, 16, 16), np.float32))
    assert planning.training_slices([str(image)], [str(stack)], settings) == (4, True)


def test_the_readme_blocks_train_the_published_networks():
    """Copied into a config of one's own and merged with config.yaml as `--configfile` does,
    the README's minimal blocks get none of the demo's miniature."""
    from arepas.autoencoder import AutoencoderSettings
    from arepas.scorer import ScorerSettings

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    update_config(config, readme_blocks())
    for name in ("chest_ct", "brain_mri"):
        block, origins = apply_preset(config["datasets"][name], name)
        assert origins["preset"] == "published" and not origins["from_preset"]
        assert translator.TranslatorSettings.from_dict(block.get("translator")) == (
            translator.TranslatorSettings()
        )
        assert ScorerSettings.from_dict(block.get("scorer")).patch_size == 16
        assert AutoencoderSettings.from_dict(block.get("autoencoder")) == AutoencoderSettings()
        assert block.get("slice_size", 256) == 256


@pytest.fixture()
def own_cohort(tmp_path):
    """Small CT scans of one's own, and the README's blocks pointed at their sheet."""
    rng = np.random.default_rng(0)
    rows = ["subject\tdataset\tsplit\timage\tlesion\troi"]
    for k, split in enumerate(["train", "train", "val", "test"]):
        hu = rng.normal(-800, 50, (40, 40, 24)).astype(np.float32)
        image = tmp_path / f"s{k}.nii.gz"
        nib.save(nib.Nifti1Image(hu, np.diag([8.0, 8.0, 10.0, 1.0])), image)
        lesion = ""
        if split == "test":
            mask = np.zeros(hu.shape, np.uint8)
            mask[18:22, 18:22, 10:12] = 1
            nib.save(nib.Nifti1Image(mask, np.diag([8.0, 8.0, 10.0, 1.0])), tmp_path / "les.nii.gz")
            lesion = "les.nii.gz"
        rows.append(f"s{k}\tchest_ct\t{split}\t{image.name}\t{lesion}\t")
    (tmp_path / "study.tsv").write_text("\n".join(rows) + "\n")
    config = readme_blocks()
    config["subjects"] = str(tmp_path / "study.tsv")
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def test_a_dry_run_on_ones_own_scans_prints_each_training_jobs_steps(own_cohort):
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--nolock", "--cores", "1",
         "--configfile", str(own_cohort / "study.yaml")],
        cwd=REPO, capture_output=True, text=True,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "chest_ct': preset" not in output  # nothing of the demo's
    line = next(x for x in output.splitlines() if x.startswith("dataset 'chest_ct': training"))
    # Two scans of 24 x 10 mm on the published 2.5 mm working grid: at most 96 slices each.
    assert "on 192 train slices (at most, from the image headers)" in line
    # One epoch (the reference's) of 3 augmented copies in batches of 8.
    steps = int(re.search(r"translator ([\d,]+)", line).group(1).replace(",", ""))
    assert steps == math.ceil(192 * 3 / 8)
    assert re.search(r"scorer [\d,]+, autoencoder [\d,]+, dae [\d,]+", line)
